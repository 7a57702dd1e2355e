"""``mttag embed``: one embedding per track into a searchable index (see docs/similarity.md)."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..constants import DEFAULT_WINDOWS
from ..util.display import printable
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    ProgressEvents,
    app,
    console,
    fail,
    parse_windows,
    ran_on,
    run,
    sigterm_as_interrupt,
    warn,
)


# What the ANN file costs in recall past ann.AUTO_MAX_TRACKS (benchmarks/ann_recall.py, docs/similarity.md).
_RECALL_PAST_AUTO = ("which then miss some of the closest tracks (recall@10 0.93 at 3 M tracks; past that it falls "
                     "with size: a graph built with half the effort fell from 0.80 at 3 M to 0.44 at 10 M; "
                     "docs/similarity.md)")


class Ann(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


def _build_ann(output: Path, ann: Ann, quiet: bool, stored: int | None = None) -> int:
    """Build or update the index's ANN file (mttag.inference.ann) after embedding; the exit code it adds.
    ``stored``: the tracks the index holds after the run; None: nothing was embedded (no PATHS,
    ``--ann on``), so a failure is the run's error."""
    from ..inference import ann as ann_mod

    if ann is Ann.off:
        return EXIT_OK
    if ann is Ann.auto:  # only a large index, or one that has an ANN file to keep up to date
        n = stored or 0
        plan = ann_mod.auto_plan(output, n)
        if plan == "small":
            return EXIT_OK
        if plan == "large":
            if not quiet:
                console.print(f"{printable(output)} holds {n} tracks: mttag similar searches it exactly (always right; "
                              f"~0.1 s a query at 3 M tracks, 0.4 s at 10 M). --ann on builds an ANN file for ~4 ms "
                              f"queries, {_RECALL_PAST_AUTO}", highlight=False, soft_wrap=True)
            return EXIT_OK
        if not ann_mod.available():
            if not quiet:
                warn(f"{printable(output)} holds {n} tracks: mttag similar would be faster with an ANN file, "
                     f"but {ann_mod.MISSING}" if ann_mod.read_meta(Path(output)) is None else
                     f"{printable(output)}: its ANN file is not updated: {ann_mod.MISSING}")
            return EXIT_OK
    start = time.perf_counter()
    progress = Progress(TextColumn("ANN file"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet or not console.is_terminal, transient=True)
    task = progress.add_task("ann", total=None)
    try:
        with sigterm_as_interrupt(), progress:
            result = ann_mod.build(output, progress=lambda done, total: progress.update(task, completed=done, total=total),
                                   requested=ann is Ann.on)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] the ANN file was not written; the index is complete "
                      "(mttag similar searches it exactly)", highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    except ann_mod.AnnError as exc:
        if stored is None:
            fail(f"--output {exc}")
        warn(f"ANN file not built: {exc}")
        return EXIT_SOME_FAILED if ann is Ann.on else EXIT_OK
    if not quiet:
        if result is not None and result.count > ann_mod.AUTO_MAX_TRACKS:
            console.print(f"note: {printable(output)} holds {result.count} tracks; its ANN file's queries take ~4 ms, "
                          f"{_RECALL_PAST_AUTO}; --ann off (mttag similar) searches exactly",
                          highlight=False, soft_wrap=True)
        if result is None:
            console.print("ANN file: up to date", highlight=False)
        else:
            console.print(f"ANN file: {'built over' if result.rebuilt else f'{result.added} added,'} "
                          f"{result.count} tracks in {time.perf_counter() - start:.1f} s "
                          f"({result.bytes / 1e6:.1f} MB)", highlight=False, soft_wrap=True)
    return EXIT_OK


def _import(source: str, output: Path, paths, engine: str, resume: bool, force: bool, quiet: bool, ann: Ann,
            refused: dict[str, object]) -> None:
    """``--from DATASET``: the index made from a dataset's embeddings, then its ANN file."""
    from ._ray import run_import

    if paths:
        fail("--from imports a dataset's embeddings: give no PATHS (embed them into a dataset, or into the index, first)")
    if engine != "local":
        fail("--from runs on this machine (the index is a folder here): leave out --engine")
    for option, value in refused.items():
        if value is not None:
            fail(f"{option} is not available with --from: the dataset's embeddings are made already "
                 f"(its model and windows are the index's)")
    if ann is Ann.on:
        from ..inference.ann import MISSING, available

        if not available():
            fail(f"--ann on: {MISSING}")
    code, stored = run_import(source, output, resume=resume, force=force, quiet=quiet)
    if stored is None:  # interrupted: no ANN file over a partial import
        raise typer.Exit(code)
    ann_code = _build_ann(output, ann, quiet, stored)
    raise typer.Exit(ann_code if ann_code != EXIT_OK else code)


@app.command()
def embed(
    paths: Optional[List[Path]] = typer.Argument(None, help="Audio files and/or folders (searched recursively). None with --ann on: only build the ANN file of the --output index."),
    output: Path = typer.Option(..., "--output", "-o", help="The index folder to write (created; e.g. library.mttag)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory, registered name or Hub id. Default: with --resume the index's model, else as mttag tag."),
    resume: bool = typer.Option(False, "--resume", help="Add to an existing index, skipping the tracks already in it."),
    force: bool = typer.Option(False, "--force", help="Start an existing index over (its tracks are dropped)."),
    device: str = typer.Option("auto", "--device", "-d", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Windows per forward pass. Default: 2 on CPU (several batches at once, one per core), 16 on GPU/MPS."),
    windows: Optional[str] = typer.Option(None, "--windows", "-w", help=f"Windows pooled per track, spread evenly over the track's consecutive windows, or 'all'. Default: with --resume as the index was made, else {DEFAULT_WINDOWS}."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    engine: str = typer.Option("local", "--engine", help="local (an index folder on this machine) or ray (a Ray cluster; --output is a Parquet dataset of embeddings and scores, a folder or s3:// gs:// URI). See docs/scale.md."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the cluster (auto, HOST:PORT or ray://HOST:PORT). Default: $RAY_ADDRESS, else a Ray started on this machine."),
    ann: Ann = typer.Option(Ann.auto, "--ann", help="Build or update the index's ANN file for fast mttag similar at scale (pip install 'mttag[ann]'): auto (200,000 to 3,000,000 tracks, or if the index has one), on, or off."),
    from_: Optional[str] = typer.Option(None, "--from", help="Make the --output index from the embeddings of a Parquet dataset written by mttag embed --engine ray (its folder, one part, or an s3:// gs:// URI) instead of from audio: no model runs. With --resume, adds the tracks the index lacks."),
) -> None:
    """Embed tracks into a similarity index for mttag similar.

    Exit codes: 0 every file embedded; 1 some files failed (each gets a warning) or none found; 2 usage error (also: another model than the index's); 130 interrupted (every finished track is kept, --resume goes on).
    """
    from ..runs.embed import EmbedRequest, run_embed

    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, not {engine!r}")
    if from_ is not None:
        _import(from_, output, paths, engine, resume, force, quiet, ann,
                {"--model": model, "--windows": windows, "--batch-size": batch_size, "--address": address})
    if not paths and (engine == "ray" or ann is not Ann.on):
        fail("missing argument 'PATHS...' (or --ann on, to build the ANN file of an existing index); "
             "see 'mttag embed --help'")
    if engine == "ray":
        from ._ray import run_embed as run_on_ray

        # the Ray engine writes a Parquet dataset, not an index folder: no ANN file to build
        run_on_ray(paths, output=output, model=model, windows=parse_windows(windows) if windows is not None else DEFAULT_WINDOWS,
                   batch_size=batch_size, device=device, resume=resume, address=address, quiet=quiet,
                   refused={"--force": force, "--ann on": ann is Ann.on})
    if address is not None:
        fail("--address names a Ray cluster; it needs --engine ray")
    if ann is Ann.on:
        from ..inference.ann import MISSING, available

        if not available():
            fail(f"--ann on: {MISSING}")
    if not paths:  # --ann on alone: build the existing index's ANN file
        raise typer.Exit(_build_ann(output, ann, quiet))
    events = _EmbedEvents(quiet, output)
    request = EmbedRequest(paths, output, model=model, resume=resume, force=force, device=device,
                           batch_size=batch_size, windows=windows, download_progress=False if quiet else None)
    summary = run(run_embed, request, events)
    if not quiet:
        msg = (f"{summary.done} embedded, {summary.failed} failed in {summary.elapsed:.1f} s on "
               f"{ran_on(summary.device, summary.precision)} with {summary.model}; {printable(output)} holds "
               f"{summary.stored} tracks")
        console.print(("[yellow]interrupted:[/] " if summary.interrupted else "") + escape(msg), highlight=False, soft_wrap=True)
    if summary.interrupted:
        raise typer.Exit(summary.exit_code)
    code = _build_ann(output, ann, quiet, summary.stored)
    raise typer.Exit(code if code != EXIT_OK else summary.exit_code)


class _EmbedEvents(ProgressEvents):
    def __init__(self, quiet: bool, output: Path):
        super().__init__("embedding", quiet)
        self.output = output

    def resuming(self, already: int, to_go: int, skipped: Optional[int] = None) -> None:
        if not self.quiet:
            console.print(f"resuming: {already} tracks already in {escape(printable(self.output))}, "
                          f"{skipped} of them asked for again are skipped, {to_go} to go",
                          highlight=False, soft_wrap=True)
