"""``mttag embed``: one embedding per track into a searchable index (see docs/similarity.md)."""

from __future__ import annotations

import os
import time
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


@app.command()
def embed(
    paths: List[Path] = typer.Argument(..., help="Audio files and/or folders (searched recursively)."),
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
) -> None:
    """Embed tracks into a similarity index for mttag similar.

    Exit codes: 0 every file embedded; 1 some files failed (each gets a warning) or none found; 2 usage error (also: another model than the index's); 130 interrupted (every finished track is kept, --resume goes on).
    """
    # torch and the audio stack load here, not when the command line starts (`mttag --help`)
    from ..audio import DecoderMessages, UnlistableFolder, iter_audio_files
    from ..device import select_device
    from ..embedding import Embedder, EmbeddingIndexError, IndexWriter, read_manifest
    from ..output import path_key

    n_windows = parse_windows(windows) if windows is not None else DEFAULT_WINDOWS
    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, not {engine!r}")
    if engine == "ray":
        from ..engines.cli import run_embed

        run_embed(paths, output=output, model=model, windows=n_windows, batch_size=batch_size, device=device,
                  resume=resume, address=address, quiet=quiet, refused={"--force": force})
    if address is not None:
        fail("--address names a Ray cluster; it needs --engine ray")
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
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)
