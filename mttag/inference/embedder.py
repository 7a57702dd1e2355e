"""Track embeddings: every model gives one embedding per window through
``forward_with_embedding`` (musicnn's 200-d penultimate layer, the Transformer's normalised
[CLS] token, the ResNet's penultimate dense layer); :class:`Embedder` pools them into one unit
vector per track (:func:`pool`), and :func:`model_revision` names what decides them, so an
index never mixes two models' vectors. The index they go into is :mod:`mttag.inference.index`."""


from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..constants import DEFAULT_WINDOWS

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .tagging import TagResult

# -- the model's identity --------------------------------------------------------------------


def model_revision(model: "nn.Module") -> str:
    """``sha256:<hex>`` of what decides a model's embeddings: its config (less the provenance,
    which names but does not change it) and every tensor of its state dict (names, dtypes,
    shapes, bytes). The same weights give the same revision however they were loaded (a
    directory, the Hub, a module built in Python) and on whichever device; the spectrogram
    front ends are computed buffers outside the state dict, so float rounding across
    machines cannot change it."""
    import torch

    h = hashlib.sha256()
    config = model.config.to_dict()
    config.pop("provenance", None)
    h.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"\n{name}:{t.dtype}:{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def model_identity(model: "nn.Module", name: str) -> dict[str, Any]:
    """What an index (or a Parquet dataset of embeddings) records about the model that made
    its vectors, and refuses to mix: name, revision, dim, ..."""
    config = model.config
    return {"name": name, "revision": model_revision(model), "arch": config.arch, "preset": config.preset,
            "sample_rate": config.sample_rate, "crop_seconds": config.crop_seconds, "dim": _probe_dim(model)}


def short_revision(revision: str) -> str:
    return revision.split(":", 1)[-1][:12]


def _probe_dim(model: "nn.Module") -> int:
    """The embedding size, from one window of zeros (cheaper than knowing every architecture)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        _, emb = model.forward_with_embedding(torch.zeros(1, model.config.crop_samples, device=device))
    return int(emb.shape[-1])


# -- pooling -----------------------------------------------------------------------------------


def pool(window_embeddings: np.ndarray) -> np.ndarray:
    """One unit vector for a track: the mean of its L2-normalised window embeddings, normalised.

    Normalising each window first makes every window count the same in the track's
    direction (cosine search compares directions only): otherwise a window whose activations
    happen to be large (a loud chorus, musicnn's unbounded penultimate layer) pulls the track
    towards itself. Raises ``ValueError`` for non-finite or all-zero embeddings."""
    w = np.asarray(window_embeddings, dtype=np.float64)
    if w.ndim != 2 or len(w) == 0:
        raise ValueError("no window embeddings")
    if not np.isfinite(w).all():
        raise ValueError("the model gave non-finite embeddings (NaN/inf); its weights may be broken")
    norms = np.linalg.norm(w, axis=1)
    live = norms > 0
    if not live.any():
        raise ValueError("the model gave an all-zero embedding for every window")
    mean = (w[live] / norms[live, None]).mean(axis=0)
    n = np.linalg.norm(mean)
    if not n > 1e-12:
        raise ValueError("the window embeddings cancel out (their mean is zero)")
    return (mean / n).astype(np.float32)


def normalise_rows(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    n = np.linalg.norm(w, axis=-1, keepdims=True)
    return w / np.where(n > 0, n, 1)


# -- embedding files -------------------------------------------------------------------------


@dataclass
class EmbeddingResult:
    """One track: ``vector`` (unit length, float32) and its tag ``probabilities``, or ``error``."""

    path: str
    duration: float | None = None
    vector: np.ndarray | None = field(default=None, repr=False)
    probabilities: np.ndarray | None = field(default=None, repr=False)  # vocabulary order
    tags: list[tuple[str, float]] = field(default_factory=list)  # the top 5, best first
    error: str | None = None
    model: str | None = None
    windows: int = 0  # windows pooled
    # with per_window=True: each window's unit embedding (n x dim) and its start and end (s)
    window_vectors: np.ndarray | None = field(default=None, repr=False)
    window_times: list[tuple[float, float]] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


class Embedder:
    """Embeds files with one model: a :class:`mttag.inference.tagging.Tagger` (batched, prefetched
    decoding, bounded memory) asked for embeddings, plus pooling. Works with every model
    that has ``forward_with_embedding`` (musicnn, Transformer, ResNet) — no per-model code."""

    def __init__(self, model: "nn.Module", device: "str | torch.device" = "auto", windows: int | None = DEFAULT_WINDOWS,
                 batch_size: int | None = None, model_name: str | None = None, per_window: bool = False):
        from .tagging import Tagger

        if not hasattr(model, "forward_with_embedding"):
            raise ValueError(f"{type(model).__name__} models give no embeddings (no forward_with_embedding)")
        self.tagger = Tagger(model, device, batch_size=batch_size, windows=windows, model_name=model_name,
                             keep_windows=per_window, embeddings=True)
        self.model = self.tagger.model
        self.model_name = self.tagger.model_name
        self.windows = windows
        self.per_window = per_window
        self._identity: dict[str, Any] | None = None

    @property
    def identity(self) -> dict[str, Any]:
        """What an index records about the model, and refuses to mix: name, revision, dim, ..."""
        if self._identity is None:
            self._identity = model_identity(self.model, self.model_name)
        return self._identity

    @property
    def tags(self) -> list[str]:
        return list(self.model.config.tags)

    def embed_files(self, paths: Iterable[str | os.PathLike]) -> Iterator[EmbeddingResult]:
        """One :class:`EmbeddingResult` per file, in order, as each completes."""
        for r in self.tagger.tag_files(paths, top=5):
            yield self._result(r)

    def _result(self, r: "TagResult") -> EmbeddingResult:
        if not r.ok:
            return EmbeddingResult(r.path, r.duration, error=r.error, model=r.model)
        try:
            vector = pool(r.window_embeddings)
        except ValueError as exc:
            return EmbeddingResult(r.path, r.duration, error=str(exc), model=r.model)
        out = EmbeddingResult(r.path, r.duration, vector, r.probabilities, r.tags, model=r.model,
                              windows=len(r.window_embeddings))
        if self.per_window:
            out.window_vectors = normalise_rows(r.window_embeddings)
            out.window_times = r.window_times
        return out
