"""The command line: help, version, demo, and errors that name the bad option."""

import io
import re
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

import dmpose
from dmpose.cli import app
from dmpose.cli.errors import fail, report
from dmpose.cli.train import _Display
from dmpose.train.events import RunEnd, RunStart, ValidationEnd

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output and "version" in result.output
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and f"dmpose {dmpose.__version__}" in result.output


def test_demo_fits_the_dot():
    result = runner.invoke(
        app, ["demo", "--size", "12x10", "--dot", "4.3,6.6", "--eps", "1", "--steps", "300"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "(4.300, 6.600)" in line)
    decoded_x, decoded_y = map(float, re.findall(r"\(([\d.]+), ([\d.]+)\)", row)[1])
    assert abs(decoded_x - 4.3) < 0.25 and abs(decoded_y - 6.6) < 0.25  # eps 1 blurs by ~0.1 px


def test_demo_rejects_bad_values_by_name():
    result = runner.invoke(app, ["demo", "--size", "12by10"])
    assert result.exit_code != 0 and "--size" in result.output
    result = runner.invoke(app, ["demo", "--size", "12x10", "--dot", "40,3"])
    assert result.exit_code != 0 and "outside" in result.output


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]
    test_cmd = next(c for c in commands if "pytest" in c)
    install_and_test = test_cmd.split("&& ", 2)[-1]  # drop the venv creation / activation
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


def test_user_strings_print_literally_not_as_rich_markup():
    out = io.StringIO()
    console = Console(file=out, width=300, color_system=None)
    report(ValueError("bad file a[red]b and x[/b].jpg"), console)
    with pytest.raises(typer.Exit) as exit_:
        fail("missing: c[/red]", console)
    assert exit_.value.exit_code == 1
    display = _Display(console, live=None)
    plan = dict(arch="hrnet[/b]", input_wh=(48, 64), loss="dm", decode="2x2", train_samples=2, epochs=1,
                steps_per_epoch=1, total_steps=1, effective_batch=2, batch_per_device=2, accum_steps=1, world_size=1,
                lr=1e-3, base_lr=1e-3, ref_batch=None, device="cpu", amp=False, val_samples=1, val_boxes="GT boxes")
    run = Path("runs/a[/b]")
    best = {"metric": "AP", "value": 0.5, "epoch": 1, "weights": "raw", "boxes": "[red]boxes"}
    display(RunStart(run, plan))
    display(ValidationEnd(1, "[bold]gt", {"AP": 0.5}, "AP", True, best))
    display(RunEnd(run, "finished", best, 1, 2.0))
    text = out.getvalue()
    assert "error: bad file a[red]b and x[/b].jpg" in text and "error: missing: c[/red]" in text
    assert "run folder: runs/a[/b]" in text and "hrnet[/b] 48x64" in text
    assert "[bold]gt" in text and "[red]boxes)" in text and "runs/a[/b]" in text  # the end-of-run table


def test_models_list_configs_list_and_the_info_card(tmp_path):
    import dmpose

    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "hrnet_w32" in result.output and "GFLOPs" in result.output
    result = runner.invoke(app, ["configs", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "synthetic" in result.output and "coco/hrnet_w32_256x192_dm" in result.output
    path = dmpose.save_checkpoint(dmpose.build_model("hrnet_tiny"), tmp_path / "tiny.safetensors",
                                  meta={"AP": 0.5, "epoch": 3, "loss": {"name": "dm", "dm_weight": 1.0, "aux_ce": 10.0,
                                                                        "eps": 1.0, "suppliers": "softplus",
                                                                        "supplier_beta": 8.0}})
    card = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    assert card.exit_code == 0, card.output
    assert "coco17 (17 joints)" in card.output and "2x2 of the softplus map" in card.output
    assert "dm x 1 + ce x 10" in card.output and "AP 0.5000 at epoch 3" in card.output
    assert len(card.output.splitlines()) < 20 and "spec" not in card.output  # a card, not the metadata dump
    full = runner.invoke(app, ["info", str(path), "--full"], env={"COLUMNS": "200"})
    assert full.exit_code == 0 and "spec" in full.output and len(full.output) > len(card.output)
