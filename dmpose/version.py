"""The dmpose version: the one definition (the package metadata reads it: pyproject.toml)."""

__version__ = "0.1.0"
