"""The embedding run: files → one vector per track in a similarity index, resumable and
interruptible. ``mttag embed`` and :func:`mttag.embed` both go through here."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..constants import DEFAULT_WINDOWS
from ..util.display import printable
from .common import (
    EXIT_SOME_FAILED,
    RunError,
    RunEvents,
    RunSummary,
    find_audio,
    finish,
    interruptible,
    load,
    missing_paths_error,
    no_files_error,
    parse_windows,
    resolve_device,
)


@dataclass
class EmbedRequest:
    """The options of ``mttag embed``, by the same names. ``windows``: None for the default
    (with ``resume`` the index's, else DEFAULT_WINDOWS), a number or ``"all"``; ``model``: a
    name, or None (with ``resume`` the index's model, else the default model), or a loaded
    model. ``download_progress``: as :func:`mttag.load_model`'s ``progress``."""

    paths: list[Path]
    output: Path
    model: Any = None
    resume: bool = False
    force: bool = False
    device: str = "auto"
    batch_size: int | None = None
    windows: int | str | None = None
    download_progress: bool | None = None


def model_reference(name: str | os.PathLike | None, net) -> str:
    """The model's name as an index records it, so that ``mttag similar`` can load it again
    from any folder: a local model directory as an absolute path, anything else as given."""
    if name is None or not isinstance(name, (str, os.PathLike)):
        from ..inference.tagging import model_label

        return model_label(net)
    if Path(name).expanduser().is_dir():
        return os.path.abspath(Path(name).expanduser())
    return os.fspath(name)


def embed_results(embedder, files: Iterable[str | os.PathLike], unlistable) -> Iterator[Any]:
    """One EmbeddingResult per folder that could not be listed (an error), then one per file."""
    from ..inference.embedder import EmbeddingResult

    for problem in unlistable:
        yield EmbeddingResult(problem.path, error=f"cannot list this folder ({problem.reason})",
                              model=embedder.model_name)
    yield from embedder.embed_files(files)


def _index_defaults(req: EmbedRequest) -> tuple[Any, int | None]:
    """The model and windows to embed with: what is given, and with ``resume`` the index's for
    what is not (so that an index made with another default keeps pooling its tracks alike)."""
    from ..inference.index import EmbeddingIndexError, read_manifest

    model = req.model
    n_windows = parse_windows(req.windows) if req.windows is not None else DEFAULT_WINDOWS
    if req.resume and (model is None or req.windows is None):
        try:
            manifest = read_manifest(req.output)
        except EmbeddingIndexError as exc:
            raise RunError(str(exc)) from None
        if manifest is not None and model is None:
            model = manifest["model"].get("name")
        if manifest is not None and req.windows is None and "windows" in manifest:
            n_windows = manifest["windows"]
    return model, n_windows


RESUME_OR_FORCE = "--resume adds to an index, --force starts it over: choose one"


def open_writer(output: Path, identity: dict[str, Any], tags: list[str], windows: int | None, resume: bool,
                force: bool):
    """The index's writer, opened (:class:`mttag.inference.index.IndexWriter`); a refusal (not
    an index, another model, held by another run, ...) as a RunError naming ``--output``."""
    from ..inference.index import EmbeddingIndexError, IndexWriter

    if resume and force:
        raise RunError(RESUME_OR_FORCE)
    writer = IndexWriter(output, identity, tags, windows, resume=resume, force=force)
    try:
        writer.open()
    except EmbeddingIndexError as exc:
        raise RunError(f"--output {exc}") from None
    except OSError as exc:
        raise RunError(f"--output {printable(output)}: cannot write it ({exc.strerror or exc})") from None
    return writer


def run_embed(request: EmbedRequest, events: RunEvents | None = None) -> RunSummary:
    """Embed ``request.paths`` into the index ``request.output``; raises RunError for a refusal
    (nothing written then) or a failed write (the tracks written before are kept)."""
    from ..inference.embedder import Embedder

    req, events = request, events or RunEvents()
    if req.windows is not None:
        parse_windows(req.windows)  # a bad --windows before anything else
    if req.resume and req.force:
        raise RunError(RESUME_OR_FORCE)
    missing = missing_paths_error(req.paths)  # as tag: before the model loads, with a guess
    if missing is not None:
        raise missing
    dev = resolve_device(req.device)
    model, n_windows = _index_defaults(req)
    files, unlistable = find_audio(req.paths)
    net = load(model, dev, req.download_progress)
    model_name = model_reference(model, net)
    try:
        embedder = Embedder(net, dev, windows=n_windows, batch_size=req.batch_size, model_name=model_name)
    except ValueError as exc:
        raise RunError(f"--model {model_name}: {exc}") from None
    if not files and not unlistable:
        raise no_files_error(req.paths)
    writer = open_writer(req.output, embedder.identity, embedder.tags, n_windows, req.resume, req.force)
    if writer.existing:
        from ..inference.output import path_key

        before = len(files)
        files = [f for f, new in zip(files, writer.done.missing([path_key(str(f)) for f in files])) if new]
        events.resuming(writer.existing, len(files), before - len(files))
    summary = RunSummary("embed", device=dev.type, precision=embedder.tagger.precision, model=model_name,
                         output=req.output)
    _embed_loop(embedder, files, unlistable, writer, events, summary)
    summary.stored = writer.count
    return finish(summary)


def _embed_loop(embedder, files, unlistable, writer, events: RunEvents, summary: RunSummary) -> None:
    from ..audio.decode import DecoderMessages

    decoder = DecoderMessages()
    write_error: OSError | None = None
    start = time.perf_counter()
    try:
        with interruptible(), decoder:
            try:
                events.started(len(files) + len(unlistable))
                for result in embed_results(embedder, files, unlistable):
                    decoder.pop(result.path)
                    if result.ok:
                        writer.add(result)
                        summary.done += 1
                    else:
                        summary.failed += 1
                        events.warning(result.path, result.error)
                    events.result(result)
            finally:  # within the decoder's capture of fd 2, as the events began
                events.finished()
    except KeyboardInterrupt:
        summary.interrupted = True
    except OSError as exc:  # the index's files: disk full, file too large, I/O error
        write_error = exc
    finally:
        try:
            writer.close()
        except OSError as exc:
            write_error = write_error or exc
    summary.elapsed = time.perf_counter() - start
    if write_error is not None:
        raise RunError(f"writing {printable(writer.path)} failed ({write_error.strerror or write_error}); the tracks "
                       f"written before are kept, --resume goes on from them", EXIT_SOME_FAILED)
