"""``mttag embed``: one embedding per track into a searchable index (see docs/similarity.md)."""

from __future__ import annotations

import os
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..display import printable
from ..errors import DEFAULT_WINDOWS, ModelLoadError
from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, app, console, fail, parse_windows, ran_on, sigterm_as_interrupt, warn


def model_reference(name: str | None, net) -> str:
    """The model's name as an index records it, so that ``mttag similar`` can load it again
    from any folder: a local model directory as an absolute path, anything else as given."""
    if name is None:
        from ..tagging import model_label

        return model_label(net)
    if Path(name).expanduser().is_dir():
        return os.path.abspath(Path(name).expanduser())
    return name


class Ann(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


def _build_ann(output: Path, ann: Ann, quiet: bool, only: bool = False) -> int:
    """Build or update the index's ANN file (mttag.ann) after embedding; the exit code it adds.
    ``only``: nothing was embedded (no PATHS), so a failure is the run's error."""
    from .. import ann as ann_mod
    from ..embedding import EmbeddingIndex, EmbeddingIndexError

    if ann is Ann.off:
        return EXIT_OK
    if ann is Ann.auto:
        try:  # only a large index, or one that has an ANN file to keep up to date
            n = len(EmbeddingIndex(output, ann="off"))
        except EmbeddingIndexError:
            return EXIT_OK
        has_file = ann_mod.read_meta(Path(output)) is not None
        if n < ann_mod.AUTO_MIN_TRACKS and not has_file:
            return EXIT_OK
        if not ann_mod.available():
            if not quiet:
                warn(f"{printable(output)} holds {n} tracks: mttag similar would be faster with an ANN file, "
                     f"but {ann_mod.MISSING}" if not has_file else
                     f"{printable(output)}: its ANN file is not updated: {ann_mod.MISSING}")
            return EXIT_OK
    start = time.perf_counter()
    progress = Progress(TextColumn("ANN file"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet or not console.is_terminal, transient=True)
    task = progress.add_task("ann", total=None)
    try:
        with sigterm_as_interrupt(), progress:
            result = ann_mod.build(output, progress=lambda done, total: progress.update(task, completed=done, total=total))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] the ANN file was not written; the index is complete "
                      "(mttag similar searches it exactly)", highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    except ann_mod.AnnError as exc:
        if only:
            fail(f"--output {exc}")
        warn(f"ANN file not built: {exc}")
        return EXIT_SOME_FAILED if ann is Ann.on else EXIT_OK
    if not quiet:
        if result is None:
            console.print("ANN file: up to date", highlight=False)
        else:
            console.print(f"ANN file: {'built over' if result.rebuilt else f'{result.added} added,'} "
                          f"{result.count} tracks in {time.perf_counter() - start:.1f} s "
                          f"({result.bytes / 1e6:.1f} MB)", highlight=False, soft_wrap=True)
    return EXIT_OK


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
    ann: Ann = typer.Option(Ann.auto, "--ann", help="Build or update the index's ANN file for fast mttag similar at scale (pip install 'mttag[ann]'): auto (from 200,000 tracks, or if the index has one), on, or off."),
) -> None:
    """Embed tracks into a similarity index for mttag similar.

    Exit codes: 0 every file embedded; 1 some files failed (each gets a warning) or none found; 2 usage error (also: another model than the index's); 130 interrupted (every finished track is kept, --resume goes on).
    """
    # torch and the audio stack load here, not when the command line starts (`mttag --help`)
    from ..audio import DecoderMessages, UnlistableFolder, iter_audio_files
    from ..device import select_device
    from ..embedding import Embedder, EmbeddingIndexError, IndexWriter, read_manifest
    from ..output import path_key

    if ann is Ann.on:
        from ..ann import MISSING, available

        if not available():
            fail(f"--ann on: {MISSING}")
    if not paths:
        if ann is not Ann.on:
            fail("missing argument 'PATHS...' (or --ann on, to build the ANN file of an existing index); "
                 "see 'mttag embed --help'")
        raise typer.Exit(_build_ann(output, ann, quiet, only=True))
    n_windows = parse_windows(windows) if windows is not None else DEFAULT_WINDOWS
    if resume and force:
        fail("--resume adds to an index, --force starts it over: choose one")
    try:
        dev = select_device(device)
    except ValueError as exc:
        fail(str(exc))
    if resume and (model is None or windows is None):
        # what is not given is the index's: its model, and its windows (so an index made
        # with another default keeps pooling its tracks alike)
        try:
            manifest = read_manifest(output)
        except EmbeddingIndexError as exc:
            fail(str(exc))
        if manifest is not None and model is None:
            model = manifest["model"].get("name")
        if manifest is not None and windows is None and "windows" in manifest:
            n_windows = manifest["windows"]

    unlistable: list[UnlistableFolder] = []
    files = list(iter_audio_files(paths, on_error=unlistable.append))
    from ..pretrained import load_model

    try:
        net = load_model(model, device=str(dev), progress=False if quiet else None)
    except ModelLoadError as exc:
        fail(str(exc))
    model_name = model_reference(model, net)
    try:
        embedder = Embedder(net, dev, windows=n_windows, batch_size=batch_size, model_name=model_name)
    except ValueError as exc:
        fail(f"--model {model_name}: {exc}")
    if not files and not unlistable:
        fail(f"no audio files found in {', '.join(printable(p) for p in paths)}", EXIT_SOME_FAILED)

    writer = IndexWriter(output, embedder.identity, embedder.tags, n_windows, resume=resume, force=force)
    try:
        writer.open()
    except EmbeddingIndexError as exc:
        fail(f"--output {exc}")
    except OSError as exc:
        fail(f"--output {printable(output)}: cannot write it ({exc.strerror or exc})")
    if writer.existing:
        before = len(files)
        files = [f for f in files if path_key(str(f)) not in writer.done]
        if not quiet:
            console.print(f"resuming: {writer.existing} tracks already in {escape(printable(output))}, "
                          f"{before - len(files)} of them asked for again are skipped, {len(files)} to go",
                          highlight=False, soft_wrap=True)

    progress = Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
        console=console, disable=quiet or not console.is_terminal, transient=True,
    )
    decoder = DecoderMessages()
    failed = added = 0
    interrupted = False
    write_error: OSError | None = None
    start = time.perf_counter()
    try:
        with sigterm_as_interrupt(), decoder, progress:
            for problem in unlistable:
                failed += 1
                if not quiet:
                    warn(f"{problem.path}: cannot list this folder ({problem.reason})")
            task = progress.add_task("embedding", total=len(files), rate="")
            for i, result in enumerate(embedder.embed_files(files), 1):
                decoder.pop(result.path)
                if result.ok:
                    writer.add(result)
                    added += 1
                else:
                    failed += 1
                    if not quiet:
                        warn(f"{result.path}: {result.error}")
                progress.update(task, advance=1, rate=f"{i / (time.perf_counter() - start):.2f} tracks/s")
    except KeyboardInterrupt:
        interrupted = True
    except OSError as exc:  # the index's files: disk full, file too large, I/O error
        write_error = exc
    finally:
        try:
            writer.close()
        except OSError as exc:
            write_error = write_error or exc
    if write_error is not None:
        fail(f"writing {printable(output)} failed ({write_error.strerror or write_error}); the tracks "
             f"written before are kept, --resume goes on from them", EXIT_SOME_FAILED)
    if not quiet:
        msg = (f"{added} embedded, {failed} failed in {time.perf_counter() - start:.1f} s on "
               f"{ran_on(dev.type, embedder.tagger.precision)} with {model_name}; {printable(output)} holds "
               f"{writer.count} tracks")
        console.print(("[yellow]interrupted:[/] " if interrupted else "") + escape(msg), highlight=False, soft_wrap=True)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    code = _build_ann(output, ann, quiet)
    raise typer.Exit(code if code != EXIT_OK else EXIT_SOME_FAILED if failed else EXIT_OK)
