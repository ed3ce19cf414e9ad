"""`dmpose train CONFIG`: train from a YAML config, with a live progress display (rich lives here only)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dmpose.cli.errors import fail
from dmpose.train.config import ConfigError, load_config
from dmpose.train.events import EpochEnd, Message, RunEnd, RunStart, StepEnd, ValidationEnd
from dmpose.train.loop import TrainingError, train
from dmpose.train.run_folder import latest_run_dir, new_run_dir


def _fmt_eta(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Display:
    """Renders the trainer's events: a live status line, the validation table, the summary."""

    def __init__(self, console: Console, live: Live | None):
        self.console, self.live = console, live
        self.last_draw = 0.0

    def __call__(self, event) -> None:
        c = self.console
        if isinstance(event, Message):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            c.print(Text(event.text, style=style))
        elif isinstance(event, RunStart):
            p = event.plan
            c.print(escape(f"run folder: {event.run_dir}") if event.run_dir else "dry run: nothing is written",
                    highlight=False)
            c.print(escape(f"{p['arch']} {p['input_wh'][0]}x{p['input_wh'][1]} (WxH), loss {p['loss']} "
                    f"(decode {p['decode']}), "
                    f"{p['train_samples']} training samples, {p['epochs']} epochs x {p['steps_per_epoch']} steps = "
                    f"{p['total_steps']} steps, effective batch {p['effective_batch']} ({p['batch_per_device']} x "
                    f"{p['accum_steps']} accum x {p['world_size']} process(es)), lr {p['lr']:.3g}"
                    + (f" (scaled from {p['base_lr']:.3g} at reference batch {p['ref_batch']})"
                       if p['ref_batch'] else "")
                    + f", {p['device']}, amp {p['amp']}; validation on {p['val_samples']} {p['val_boxes']}"),
                    highlight=False)
        elif isinstance(event, StepEnd):
            now = time.perf_counter()
            if self.live is None or (now - self.last_draw < 0.25 and event.step != event.total_steps):
                return
            self.last_draw = now
            self.live.update(Text(
                f"epoch {event.epoch}  step {event.step}/{event.total_steps}  loss {event.smoothed_loss:.4g}  "
                f"lr {event.lr:.3g}  {event.images_per_second:.1f} img/s  data wait {event.data_wait:.0%}  "
                f"ETA {_fmt_eta(event.eta_s)}" + (f"  skipped {event.skipped}" if event.skipped else "")))
        elif isinstance(event, ValidationEnd):
            t = Table(title=escape(f"epoch {event.epoch} validation | {event.boxes}"), title_justify="left")
            keys = [k for k in event.metrics if isinstance(event.metrics[k], (int, float))]
            shown = [k for k in keys if "_" not in k or k.startswith("val_")][:12]
            for k in shown:
                t.add_column(escape(k), justify="right")
            t.add_row(*(f"{event.metrics[k]:.3f}" for k in shown))
            c.print(t)
            b = event.best
            c.print(escape(f"best {b['metric']} {b['value']:.4f} at epoch {b['epoch']} ({b['weights']} weights)")
                    + ("  [green]new best[/green]" if event.is_best else ""), highlight=False)
        elif isinstance(event, EpochEnd):
            r = event.row
            c.print(f"epoch {event.epoch}: train loss {r['train_loss']:.4g}, {r['images_per_second']:.1f} img/s, "
                    f"data wait {r['data_wait']:.0%}, {r['epoch_time_s']:.0f} s", highlight=False, style="dim")
        elif isinstance(event, RunEnd):
            b = event.best
            best = f"best {b['metric']} {b['value']:.4f} (epoch {b['epoch']}, {b.get('boxes', '')})" \
                if b.get("value") is not None else "no validation yet"
            c.print(f"[bold]{escape(event.status)}[/bold]: "
                    + escape(f"{event.steps} steps in {event.wall_s:.0f} s; {best}; run folder {event.run_dir}"),
                    highlight=False)


def train_command(
    config: str | None = typer.Argument(None, help="A YAML config or a shipped config name (synthetic, "
                                        "coco/hrnet_w32_256x192_dm, ...). Optional with --resume-from."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=5 (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: OUT_ROOT/NAME, auto-incremented)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out, or the latest run of the "
                                "config's name."),
    resume_from: Path | None = typer.Option(None, "--resume-from", help="Continue this run folder or state file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build everything, run one training and one validation "
                                 "step, print the plan, write nothing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --out (a new training refuses a "
                                   "folder that holds one)."),
) -> None:
    """Train a pose model; the run folder holds the config, metrics, curves, checkpoints and resume state."""
    console = Console()
    try:
        state = run_dir = None
        if resume_from is not None or resume:
            if resume_from is not None:
                run_dir = resume_from if resume_from.is_dir() else resume_from.parent
                state = resume_from
            elif out is not None:
                run_dir = state = out
            else:
                if config is None:
                    raise ConfigError("--resume needs CONFIG (to find its latest run), --out or --resume-from")
                base = load_config(config, set_)
                run_dir = state = latest_run_dir(base.out_root, base.name)
                if run_dir is None:
                    raise ConfigError(f"--resume: no run of '{base.name}' with a resume state in {base.out_root}")
            if not (Path(run_dir) / "config.yaml").is_file():
                raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
            # the run's own resolved config, plus --set (e.g. train.epochs=N to extend a finished run)
            cfg = load_config(Path(run_dir) / "config.yaml", set_)
            if config is not None and (resume_from is not None or out is not None):
                console.print(f"[yellow]note:[/yellow] resuming with {escape(str(run_dir))}/config.yaml, the run's "
                              f"own; {escape(str(config))} is not read (change keys with --set)", highlight=False)
        else:
            if config is None:
                raise ConfigError("give a CONFIG (a YAML file or a shipped name such as 'synthetic')")
            cfg = load_config(config, set_)
            run_dir = out if out is not None else (None if dry_run else new_run_dir(cfg.out_root, cfg.name))
        with Live(Text("starting..."), console=console, transient=True, refresh_per_second=4) as live:
            display = _Display(console, live)
            result = train(cfg, run_dir=run_dir, resume=state, callbacks=[display], dry_run=dry_run,
                           overwrite=overwrite)
    except (ConfigError, TrainingError, ValueError, OSError) as err:
        fail(err, console)
    if result.status == "dry-run":
        table = Table(title="plan", show_header=False, title_justify="left")
        for k, v in result.plan.items():
            table.add_row(escape(k), escape(str(v)))
        console.print(table)
    elif result.status == "interrupted":
        raise typer.Exit(130)


__all__ = ["train_command"]
