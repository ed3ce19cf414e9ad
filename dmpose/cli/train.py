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
from dmpose.cli.parsing import parse_device
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
    """Renders the trainer's events: a live status line in a terminal (a plain progress line every `every_s`
    seconds when the output is a pipe or a file: tee, nohup, Slurm), the validation table, the final summary."""

    def __init__(self, console: Console, live: Live | None, every_s: float = 30.0):
        self.console, self.live, self.every_s = console, live, every_s
        self.last_draw = 0.0
        self.last_line: float | None = None

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
            line = (f"epoch {event.epoch}  step {event.step}/{event.total_steps}  loss {event.smoothed_loss:.4g}  "
                    f"lr {event.lr:.3g}  {event.images_per_second:.1f} img/s  data wait {event.data_wait:.0%}  "
                    f"ETA {_fmt_eta(event.eta_s)}" + (f"  skipped {event.skipped}" if event.skipped else ""))
            if self.live is None:  # not a terminal: a plain line now and then, at a steady rhythm
                if self.last_line is None or now - self.last_line >= self.every_s or event.step == event.total_steps:
                    self.last_line = now
                    c.print(line, highlight=False, soft_wrap=True)
                return
            if now - self.last_draw < 0.25 and event.step != event.total_steps:
                return
            self.last_draw = now
            self.live.update(Text(line))
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
            self._summary(event)

    def _summary(self, event: RunEnd) -> None:
        """The end of a run: best metric and its epoch, the last validation's breakdown, wall time, the files."""
        c, b = self.console, event.best
        t = Table(title=escape(f"{event.status}: {event.steps} steps in {_fmt_eta(event.wall_s)}"),
                  title_justify="left", show_header=False)
        t.add_column("", style="bold")
        t.add_column("")
        if b.get("value") is not None:
            where = f"({b.get('weights', 'raw')} weights, {b.get('boxes', '')})"
            t.add_row(escape(f"best {b['metric']}"), escape(f"{b['value']:.4f} at epoch {b['epoch']} {where}"))
        else:
            t.add_row("best", "no validation yet")
        last = {k: v for k, v in event.last_metrics.items() if isinstance(v, (int, float))}
        for keys in (("AP", "AP50", "AP75", "APM", "APL"), ("AR", "AR50", "AR75", "ARM", "ARL"), ("PCKh@0.5",)):
            if any(k in last for k in keys):
                t.add_row(escape(" / ".join(k for k in keys if k in last)) + " (last validation)",
                          " / ".join(f"{last[k]:.3f}" for k in keys if k in last))
        if "val_median_loc_error_hm" in last:
            t.add_row("median error (heatmap px, GT boxes)", f"{last['val_median_loc_error_hm']:.3f}")
        if event.run_dir is not None:
            t.add_row("run folder", escape(str(event.run_dir)))
            t.add_row("files", "best.safetensors, last.safetensors, last.state.pt, metrics.csv, curves.png")
        c.print(t)


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
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (train.device); default: cuda "
                                      "when available."),
    progress_every: float = typer.Option(30.0, "--progress-every", min=0.0, help="Seconds between plain progress "
                                         "lines when the output is not a terminal (a pipe, nohup, Slurm)."),
) -> None:
    """Train a pose model; the run folder holds the config, metrics, curves, checkpoints and resume state."""
    console = Console()
    if device is not None:
        set_ = [*set_, f"train.device={parse_device(device)}"]
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
        if console.is_terminal:
            with Live(Text("starting..."), console=console, transient=True, refresh_per_second=4) as live:
                result = train(cfg, run_dir=run_dir, resume=state, callbacks=[_Display(console, live)],
                               dry_run=dry_run, overwrite=overwrite)
        else:
            result = train(cfg, run_dir=run_dir, resume=state, callbacks=[_Display(console, None, progress_every)],
                           dry_run=dry_run, overwrite=overwrite)
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
