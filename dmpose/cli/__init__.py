"""The `dmpose` command line: a Typer app. Commands parse arguments and call the library; no logic here."""

from dmpose.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
