"""Shared CLI objects: the Typer app, consoles, and one-line error handling."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Results go to stdout; progress, warnings and errors to stderr so pipes stay clean.
console = Console(stderr=True)

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` on one line and exit."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def augment_probabilities(items: list[str] | None) -> dict[str, float]:
    """``--augment-p NAME=P`` options → ``{name: p}`` for ``paper_chain``, with one-line errors."""
    from ..augment import DEFAULT_PROBABILITIES

    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in DEFAULT_PROBABILITIES:
            fail(f"--augment-p {item!r}: expected NAME=P with NAME one of {', '.join(DEFAULT_PROBABILITIES)}")
        try:
            p = float(value)
        except ValueError:
            p = -1.0
        if not 0.0 <= p <= 1.0:
            fail(f"--augment-p {item!r}: the probability must be a number from 0 to 1")
        out[name] = p
    return out


def is_tty() -> bool:
    return sys.stderr.isatty()
