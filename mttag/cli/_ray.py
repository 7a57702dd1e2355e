"""``mttag tag --engine ray`` and ``mttag embed --engine ray``, and ``mttag embed --from`` (the
dataset such a run wrote, made into an index): the command-line side."""

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
# Tracks without a vector listed one by one after an import (the rest counted): a catalogue's
# failures were each reported by the run that met them.
SHOWN_FAILURES = 10


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


def run_import(source: str, output: Path, *, resume: bool, force: bool, quiet: bool) -> tuple[int, int | None]:
    """``mttag embed --from DATASET -o INDEX``: ``(exit code, tracks the index holds)``; the
    ANN file is the caller's, as after embedding audio."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..engines.dataset_index import DatasetError, import_dataset, open_dataset
    from ..inference.parquet import ParquetUnavailable
    from ..runs.common import RunError

    source = as_source(source)
    try:
        dataset = open_dataset(source)
    except (DatasetError, ParquetUnavailable, ImportError) as exc:
        fail(f"--from {exc}" if isinstance(exc, DatasetError) else str(exc))
    bar = Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=quiet or not console.is_terminal, transient=True)
    task = bar.add_task("import", total=dataset.rows)
    try:
        with sigterm_as_interrupt(), bar:
            summary = import_dataset(dataset, output, resume=resume, force=force,
                                     progress=lambda s, total: bar.update(task, completed=s.rows))
    except RunError as exc:  # DatasetError, or the index's refusal
        fail(str(exc), exc.exit_code)
    if not quiet:
        for path, reason in summary.failed[:SHOWN_FAILURES]:
            warn(f"{printable(path)}: no vector ({reason})")
        if len(summary.failed) > SHOWN_FAILURES:
            warn(f"... and {len(summary.failed) - SHOWN_FAILURES} more tracks without a vector (the dataset's error column says why)")
        parts = len(dataset.files)
        counts = "".join([f", {len(summary.failed)} without a vector" if summary.failed else "",
                          f", {summary.already} already in it" if summary.already else ""])
        msg = (f"{summary.added} tracks imported from {printable(source)} ({parts} part{'s' if parts != 1 else ''}, "
               f"{printable(dataset.model['name'])}){counts} in {summary.seconds:.1f} s; "
               f"{printable(output)} holds {summary.stored} tracks")
        console.print(("[yellow]interrupted:[/] " if summary.interrupted else "") + escape(msg),
                      highlight=False, soft_wrap=True)
    if summary.interrupted:
        return EXIT_INTERRUPTED, None
    return (EXIT_SOME_FAILED if summary.failed else EXIT_OK), summary.stored
