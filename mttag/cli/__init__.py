"""The ``mttag`` command line: a thin Typer shell over the library.

Each command lives in its own module in this package and registers itself on
``app``; importing the modules below is what makes them appear in ``--help``.
"""

from __future__ import annotations

import importlib

import typer

from .. import __version__
from ._common import app, console  # noqa: F401

COMMAND_MODULES = ["tag", "models", "convert", "prepare", "train", "evaluate", "distill", "push", "write", "embed", "similar",
                   "demo"]
for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mttag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Automatic music tagging with the Music Tagging Transformer."""


def main() -> None:
    app()
