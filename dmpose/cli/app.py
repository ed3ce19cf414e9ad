"""The root Typer app. Command modules define plain functions (and `data` its own sub-app) and know
nothing of this app; it registers them here, in the order `dmpose --help` lists them."""

import typer

from dmpose.cli.data import data_app
from dmpose.cli.demo import demo_command
from dmpose.cli.eval import eval_command
from dmpose.cli.models import configs_app, convert_command, export_command, info_command, models_app
from dmpose.cli.predict import predict_command
from dmpose.cli.train import train_command
from dmpose.cli.version import version_command
from dmpose.cli.weights import weights_app

__all__ = ["app"]

app = typer.Typer(
    name="dmpose",
    help="2D human pose estimation with heatmap distribution matching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command("version")(version_command)
app.command("demo")(demo_command)
app.command("eval")(eval_command)
app.command("convert")(convert_command)
app.command("info")(info_command)
app.command("export")(export_command)
app.command("predict")(predict_command)
app.command("train")(train_command)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(configs_app, name="configs")
app.add_typer(weights_app, name="weights")
