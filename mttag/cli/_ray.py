"""``mttag tag --engine ray`` and ``mttag embed --engine ray``: the command-line side."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape

from ..errors import ModelLoadError
from ..util.display import printable
from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, console, fail, sigterm_as_interrupt, warn

# typer hands PATHS over as Path objects, which fold "s3://bucket" into "s3:/bucket"
_FOLDED_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):/(?!/)")


def as_source(path: Path | str) -> str:
    text = str(path)
    return _FOLDED_URI.sub(r"\1://", text) if not Path(text).exists() else text


def run_cli(paths, output, *, command: str, quiet: bool, refused: dict[str, Any], **kwargs) -> NoReturn:
    from ..engines.ray_engine import EngineError, RayUnavailable, run
    from ..inference.parquet import ParquetUnavailable

    for option, value in refused.items():
        if value:
            fail(f"{option} is not available with --engine ray (its output is a Parquet dataset)")
    if output is None:
        fail("--engine ray needs --output: a folder or URI for the Parquet dataset (e.g. tags.parquet or s3://bucket/tags)")
    done = 0

    def progress(summary) -> None:
        nonlocal done
        if not quiet:
            for path, reason in summary.errors[done:]:
                warn(f"{path}: {reason}")
        done = len(summary.errors)

    try:
        with sigterm_as_interrupt():  # a job scheduler's SIGTERM ends the run like Ctrl+C
            summary = run([as_source(p) for p in paths], as_source(output), quiet=quiet, on_part=progress, **kwargs)
    except (EngineError, RayUnavailable, ParquetUnavailable, ModelLoadError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        if not quiet:
            console.print("[yellow]interrupted:[/] every part written is complete; --resume goes on",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.listed == 0:
        fail(f"no audio files found in {', '.join(printable(as_source(p)) for p in paths)}", EXIT_SOME_FAILED)
    if not quiet:
        verb = "embedded" if command == "embed" else "tagged"
        skipped = f", {summary.skipped} already in the output" if summary.skipped else ""
        msg = (f"{summary.tagged} {verb}, {summary.failed} failed{skipped} in {summary.seconds:.1f} s on Ray "
               f"({summary.actors} model actor{'s' if summary.actors != 1 else ''} on {summary.device}) with "
               f"{summary.model_name}; {len(summary.parts)} parts in {printable(summary.output)}")
        console.print(escape(msg), highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_SOME_FAILED if summary.failed else EXIT_OK)


def run_tag(paths, **kwargs) -> NoReturn:
    run_cli(paths, command="tag", **kwargs)


def run_embed(paths, **kwargs) -> NoReturn:
    run_cli(paths, command="embed", embeddings=True, **kwargs)
