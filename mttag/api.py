"""The library's own front door: :func:`tag` and :func:`embed`, what ``import mttag`` offers
beside the model loaders (``mttag.tag``, ``mttag.embed``). Each is a few lines over the same
run layer the command line uses (:mod:`mttag.runs`), so the two cannot drift; the pieces
(:class:`~mttag.inference.tagging.Tagger`, :class:`~mttag.inference.embedder.Embedder`) are
there for finer control."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from torch import nn

from .constants import DEFAULT_WINDOWS
from .device import select_device
from .inference.embedder import Embedder, EmbeddingResult
from .inference.tagging import AUTO_WINDOWS, Tagger, TagResult
from .runs.common import find_audio, open_model
from .runs.embed import embed_results
from .runs.tag import tag_results


def prepare_run(paths, model, device: str):
    """What ``mttag.tag()`` and ``mttag.embed()`` start from: the model (loaded unless given),
    the device, the name results carry (``None``: the model's own), the audio files under
    ``paths`` (``~`` expanded) and the folders that could not be listed."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    dev = select_device(device)
    net = open_model(model, dev)
    name = None if model is None or isinstance(model, nn.Module) else os.fspath(model)
    files, unlistable = find_audio(Path(p).expanduser() for p in paths)
    return net, dev, name, files, unlistable


def tag(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    model: str | os.PathLike | nn.Module | None = None,
    top: int | None = 5,
    threshold: float | None = None,
    windows: int | str | None = AUTO_WINDOWS,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    min_confidence: float | None = None,
) -> Iterator[TagResult]:
    """Tag audio files and folders (searched recursively); yields one result per file.

    ``model`` is a loaded model, a model directory, a registered name or a Hub
    id (``None``: the default model). ``windows``: windows per track averaged
    (``None``: every window; ``"auto"``: the model's default, see :func:`mttag.inference.tagging.default_windows`: 20,
    12 for the bundled two-network ``musicnn``). ``batch_size``: windows per forward pass
    (``None``: 2 on CPU, 16 on an accelerator). ``precision``: ``auto`` (bf16 on a CPU
    with native bf16 and, except for musicnn, on CUDA; float32 elsewhere), ``fp32`` or
    ``bf16``. ``min_confidence``: keep tags of at least this calibrated confidence
    (:data:`mttag.inference.calibration.DEFAULT_THRESHOLD` is the documented choice); each result's
    ``scores`` has every chosen tag's kind, raw probability and confidence.
    """
    net, dev, name, files, unlistable = prepare_run(paths, model, device)
    tagger = Tagger(net, dev, batch_size=batch_size, windows=windows, model_name=name, precision=precision,
                    fingerprints=True)
    yield from tag_results(tagger, files, unlistable, top, threshold, min_confidence)


def embed(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    model: str | os.PathLike | nn.Module | None = None,
    windows: int | None = DEFAULT_WINDOWS,
    batch_size: int | None = None,
    device: str = "auto",
    per_window: bool = False,
) -> Iterator[EmbeddingResult]:
    """Embed audio files and folders (searched recursively): one :class:`EmbeddingResult` per file.

    ``result.vector`` is the track's unit-length embedding (see :func:`mttag.inference.embedder.pool`); with
    ``per_window=True`` also ``result.window_vectors`` (one unit row per window) and
    ``result.window_times``. ``model``, ``windows``, ``batch_size``, ``device``: as
    :func:`mttag.tag`. Cosine similarity of two tracks is ``a.vector @ b.vector``.
    """
    net, dev, name, files, unlistable = prepare_run(paths, model, device)
    embedder = Embedder(net, dev, windows=windows, batch_size=batch_size, model_name=name, per_window=per_window)
    yield from embed_results(embedder, files, unlistable)
