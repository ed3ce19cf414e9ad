"""The command line: help, version, demo, and errors that name the bad option."""

import re
from pathlib import Path

from typer.testing import CliRunner

import dmpose
from dmpose.cli import app

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
