"""Tag audio files: files → windows → batched model → averaged probabilities.

Decoding runs in a thread pool ahead of the model (libsndfile, soxr and ffmpeg
all release the GIL), windows from several tracks share a batch so the
accelerator stays busy, and results come out in input order as soon as each
track is complete.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..audio.decode import AudioError
from ..audio.windows import is_silent, iter_windows, window_starts
from ..constants import DEFAULT_WINDOWS  # noqa: E402  (re-exported: mttag.inference.tagging.DEFAULT_WINDOWS)
from ..device import resolve_precision, select_device  # noqa: F401 (resolve_precision: re-exported)
from ..models import place
from . import calibration as calibration_module
from . import vocab

# A track whose windows hold at most this much audio (a 5-minute song with
# --windows all) is decoded whole in a worker thread, ahead of the model (~28 MB
# per track at 22,050 Hz); longer ones are streamed a window at a time, so memory
# stays bounded for hour-long tracks.
_MAX_PREFETCHED_SECONDS = 320.0
# Windows per forward pass when none is given. On a CPU, small batches on several
# cores at once beat one big batch spread over all of them (measured on 2 cores, end to
# end: msd-musicnn 1.3-1.5x, the teacher 1.1-1.25x faster), and batch 2 stays in cache where batch 1
# falls onto a slow convolution path for musicnn's 38-bin filters. The teacher's
# activations take ~120 MB per 10 s window. Accelerators want larger batches.
CPU_BATCH_SIZE = 2
ACCELERATOR_BATCH_SIZE = 16
# Batches in flight at once on a CPU, each computed by one core: at most this many.
MAX_CPU_MODEL_THREADS = 8


# A model may ask for fewer windows than DEFAULT_WINDOWS when nothing is given (its config's
# provenance.default_windows): the bundled musicnn runs two networks per window, and at 12 windows
# it costs what msd-musicnn alone costs at 20 (docs/tagging.md, "Tags, kinds and confidence").
AUTO_WINDOWS = "auto"


def default_windows(model: nn.Module) -> int:
    """The windows per track ``model`` is tagged with when none are asked for: its config's
    ``provenance.default_windows`` (a positive integer) if it has one, else ``DEFAULT_WINDOWS``."""
    prov = getattr(getattr(model, "config", None), "provenance", None)
    value = prov.get("default_windows") if isinstance(prov, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000:
        return value
    return DEFAULT_WINDOWS


def default_batch_size(device: torch.device) -> int:
    return CPU_BATCH_SIZE if device.type == "cpu" else ACCELERATOR_BATCH_SIZE


def default_model_threads(device: torch.device) -> int:
    """Batches computed at once: on a CPU one per core torch would use (each on one
    thread), on an accelerator one (it runs them one after another anyway)."""
    return min(MAX_CPU_MODEL_THREADS, torch.get_num_threads()) if device.type == "cpu" else 1


@contextlib.contextmanager
def _one_torch_thread(enabled: bool):
    """torch's intra-op threads set to 1 while several batches run side by side (each
    on its own core), restored afterwards."""
    if not enabled:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class TagScore:
    """One tag of a result. ``tag``: its one spelling (:func:`mttag.inference.vocab.display`), the same in
    every output; ``kind``: genre, mood, instrument, voice, era or other; ``name``: the model's
    own output it comes from (``msd:female vocalists``; of merged near-duplicates, the most
    confident); ``probability``: that output's raw probability; ``confidence``: calibrated
    (:mod:`mttag.inference.calibration`; None for a model without a calibration table)."""

    tag: str
    kind: str
    name: str
    probability: float
    confidence: float | None


def score_tags(probabilities: np.ndarray, names: list[str],
               table: "calibration_module.Table | None" = None) -> list[TagScore]:
    """Every tag of a model's output, near-duplicates merged, best first: by calibrated
    confidence when the model has a table, else by raw probability (ties keep the model's order)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    conf = table.confidences(names, probabilities) if table is not None else None
    scores = []
    for display, idx in vocab.merge_groups(names).items():
        if conf is not None:
            best = max(idx, key=lambda i: (-np.inf if np.isnan(conf[i]) else conf[i], probabilities[i]))
            c = None if np.isnan(conf[best]) else float(conf[best])
        else:
            best, c = max(idx, key=lambda i: probabilities[i]), None
        scores.append(TagScore(display, vocab.kind(display), names[best], float(probabilities[best]), c))
    if conf is not None:
        order = sorted(range(len(scores)), key=lambda i: (-(scores[i].confidence if scores[i].confidence is not None
                                                             else -1.0), i))
    else:
        order = sorted(range(len(scores)), key=lambda i: (-scores[i].probability, i))
    return [scores[i] for i in order]


def select_scores(scores: list[TagScore], top: int | None, threshold: float | None,
                  min_confidence: float | None = None) -> list[TagScore]:
    """``scores`` (best first) with a raw probability of at least ``threshold`` and a confidence
    of at least ``min_confidence``, at most ``top`` of them."""
    if threshold is not None:
        scores = [s for s in scores if s.probability >= threshold]
    if min_confidence is not None:
        scores = [s for s in scores if s.confidence is not None and s.confidence >= min_confidence]
    return scores[:top] if top is not None else scores


@dataclass
class TagResult:
    """One track's outcome: ``tags`` (best first) or ``error``."""

    path: str
    duration: float | None = None
    tags: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    probabilities: np.ndarray | None = field(default=None, repr=False)
    model: str | None = None  # the model's name, as the user gave it
    # where the time went: seconds decoding (+ resampling) this track's windows, and its
    # share of the model's batches (a batch's time split evenly over its windows)
    decode_seconds: float | None = field(default=None, repr=False)
    model_seconds: float | None = field(default=None, repr=False)
    n_windows: int = field(default=0, repr=False)  # windows through the model
    # with Tagger(keep_windows=True): each window's start and end (s) and probabilities
    window_times: list[tuple[float, float]] | None = field(default=None, repr=False)
    window_probabilities: np.ndarray | None = field(default=None, repr=False)  # n_windows × n_tags
    # with Tagger(embeddings=True): the plain mean of the window embeddings (an index stores
    # mttag.inference.embedder.pool(window_embeddings): the unit mean of unit windows), and each window's
    embedding: np.ndarray | None = field(default=None, repr=False)
    window_embeddings: np.ndarray | None = field(default=None, repr=False)  # n_windows × dim
    # with keep_windows: each window's (start, end, tags chosen like ``tags``)
    timeline: list[tuple[float, float, list[tuple[str, float]]]] | None = field(default=None, repr=False)
    tag_names: list[str] | None = field(default=None, repr=False)  # the model's vocabulary, for probabilities
    # what identifies the audio tagged (mttag.filetags.fingerprint.audio_fingerprint): `mttag write` refuses
    # a file whose recording changed since; None where it could not be read
    fingerprint: str | None = field(default=None, repr=False)
    # the chosen tags in full, parallel to ``tags`` (whose names are their ``tag``, scores their
    # ``probability``): kind, the model's own name, calibrated confidence
    scores: list[TagScore] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def _tag_records(self) -> list[dict[str, Any]]:
        # the fields' order is documented (docs/tagging.md, Outputs): readers may rely on it
        if self.scores is not None and len(self.scores) == len(self.tags):
            return [{"tag": s.tag, "score": round(s.probability, 4), "kind": s.kind,
                     "confidence": None if s.confidence is None else round(s.confidence, 4), "name": s.name}
                    for s in self.scores]
        return [{"tag": vocab.display(t), "score": round(s, 4), "kind": vocab.kind(t), "confidence": None, "name": t}
                for t, s in self.tags]

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"path": self.path}
        if self.model is not None:
            head["model"] = self.model
        if self.error is not None:
            return {**head, "error": self.error}
        out = {
            **head,
            "duration": round(self.duration, 3) if self.duration is not None else None,
            "tags": self._tag_records(),
        }
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        if self.timeline is not None:
            out["timeline"] = [
                {"start": round(a, 3), "end": round(b, 3), "tags": [{"tag": t, "score": round(s, 4)} for t, s in tags]}
                for a, b, tags in self.timeline
            ]
        return out


def model_label(model: nn.Module) -> str:
    """A name for a loaded model: the one in its provenance, else its architecture and preset."""
    config = getattr(model, "config", None)
    if config is None:
        return type(model).__name__
    name = config.provenance.get("name") if isinstance(config.provenance, dict) else None
    return str(name) if name else f"{config.arch}-{config.preset or 'custom'}"


def _fingerprint(path: str) -> str | None:
    """The audio fingerprint of a file being tagged (one more read of it; the decoder
    reports a file that cannot be read)."""
    from ..filetags.fingerprint import audio_fingerprint

    try:
        return audio_fingerprint(path)
    except OSError:
        return None


@dataclass
class _Track:
    index: int
    path: str
    duration: float | None = None
    error: str | None = None
    prob_sum: np.ndarray | None = None
    done: int = 0  # windows through the model
    submitted: int = 0  # windows handed to the batcher
    complete: bool = False  # no more windows will come
    peak_silent: bool = True
    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    starts: list[float] = field(default_factory=list)  # planned window starts (s)
    fingerprint: str | None = None
    window_probs: list[np.ndarray] = field(default_factory=list)  # kept only when asked for
    window_embs: list[np.ndarray] = field(default_factory=list)


class _Batches:
    """Windows of several tracks gathered into batches of the tagger's ``batch_size``; each
    batch's outputs are added to its tracks' sums (float64, in window order).

    With a ``pool``, several batches are in flight at once, each on one core: on a CPU this
    keeps every core busy while decoding takes turns, where one batch spread over all cores
    waits at each layer for the slowest thread. Batches are collected in submission order, so
    the sums (and results) are the same as one batch at a time."""

    def __init__(self, tagger: "Tagger", pool: ThreadPoolExecutor | None = None):
        self.tagger = tagger
        self.pool = pool
        self.pending: list[tuple[_Track, np.ndarray]] = []
        self.inflight: deque[tuple[list[tuple[_Track, np.ndarray]], Future]] = deque()

    def add(self, track: _Track, window: np.ndarray) -> None:
        self.pending.append((track, window))
        track.submitted += 1
        if len(self.pending) >= self.tagger.batch_size:
            self._run()

    def drop(self, track: _Track) -> None:
        """Forget ``track``'s windows not yet batched (it failed)."""
        self.pending[:] = [(t, w) for t, w in self.pending if t is not track]

    def flush(self) -> None:
        """Run what is pending and wait for every batch in flight: every track is summed."""
        self._run()
        while self.inflight:
            items, fut = self.inflight.popleft()
            self._collect(items, fut.result())

    def _run(self) -> None:
        if not self.pending:
            return
        items, self.pending = self.pending, []
        batch = [w for _, w in items]
        if self.pool is None:
            self._collect(items, self.tagger._predict_timed(batch))
            return
        self.inflight.append((items, self.pool.submit(self.tagger._predict_timed, batch)))
        while len(self.inflight) > self.tagger.model_threads:
            done, fut = self.inflight.popleft()
            self._collect(done, fut.result())

    def _collect(self, items: list[tuple[_Track, np.ndarray]], result) -> None:
        probs, embs, seconds = result
        share = seconds / len(items)
        for (track, _), p, e in zip(items, probs, embs):
            if track.error is not None:
                continue  # failed after its windows were queued: they are ignored
            track.model_seconds += share
            track.prob_sum = p.astype(np.float64) if track.prob_sum is None else track.prob_sum + p
            track.done += 1
            if self.tagger.keep_windows:
                track.window_probs.append(p)
            if e is not None:
                track.window_embs.append(e)


class _InOrder:
    """The tracks whose results are due, in input order: a track is due once it is decoded
    to the end and all its windows are through the model."""

    def __init__(self, tracks: list[_Track]):
        self.tracks = tracks
        self.next = 0

    def pop(self) -> Iterator[_Track]:
        while self.next < len(self.tracks):
            t = self.tracks[self.next]
            if not (t.complete and t.done == t.submitted):
                return
            self.next += 1
            yield t


class Tagger:
    """Runs a model over many files. Construct once, then call :meth:`tag_files`.

    ``model_threads``: batches computed at once (default: one per CPU core torch uses, at
    most 8, each on one thread; 1 on an accelerator). While :meth:`tag_files` runs with
    more than one on a CPU, torch's intra-op thread count is 1; it is restored when the
    generator finishes or is closed. Results do not depend on it.

    ``precision``: ``auto``, ``fp32`` or ``bf16`` (autocast); see :func:`resolve_precision`.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        windows: int | str | None = AUTO_WINDOWS,
        workers: int | None = None,
        model_name: str | None = None,
        keep_windows: bool = False,
        embeddings: bool = False,
        model_threads: int | None = None,
        precision: str = "auto",
        fingerprints: bool = False,
    ):
        self.device = select_device(device) if isinstance(device, str) else device
        self.precision = resolve_precision(precision, self.device, model)
        self.model_name = model_name or model_label(model)
        self.model = place(model, self.device).eval()
        self.config = model.config
        self.batch_size = max(1, batch_size or default_batch_size(self.device))
        # "auto": the model's own default (see default_windows); None: every window
        self.windows = default_windows(model) if windows == AUTO_WINDOWS else windows
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.model_threads = max(1, model_threads or default_model_threads(self.device))
        self.keep_windows = keep_windows
        self.embeddings = embeddings
        # each result's audio fingerprint (one more read of the file): for results that
        # `mttag write` may use, not for embeddings, a table or a Parquet dataset
        self.fingerprints = fingerprints
        # calibrated confidence for models that have a table (mttag.inference.calibration); None otherwise
        self.calibration = calibration_module.table_for(model)
        if embeddings and not hasattr(model, "forward_with_embedding"):
            raise ValueError(f"{type(model).__name__} has no forward_with_embedding(): it gives no embeddings")

    # -- decoding -------------------------------------------------------
    def _load(self, path: str):
        """``(info, windows, decode seconds)``: the windows as a list when the track is
        short enough to decode ahead, else a generator (decoded as the model takes them)."""
        start = time.perf_counter()
        window = self.config.crop_seconds
        info, gen = iter_windows(path, self.config.sample_rate, window, self.windows)
        fingerprint = _fingerprint(path) if self.fingerprints else None
        if len(window_starts(info.duration, window, self.windows)) * window <= _MAX_PREFETCHED_SECONDS:
            windows = list(gen)
            return info, windows, time.perf_counter() - start, fingerprint
        return info, gen, time.perf_counter() - start, fingerprint

    @torch.inference_mode()
    def _predict_with_embeddings(self, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.stack(batch)).to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits, embedding = self.model.forward_with_embedding(x)
        return torch.sigmoid(logits.float()).cpu().numpy(), embedding.float().cpu().numpy()

    # -- model ----------------------------------------------------------
    @torch.inference_mode()
    def _predict(self, batch: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack(batch)).to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(x)
        return torch.sigmoid(logits.float()).cpu().numpy()

    def tag_files(self, paths: Iterable[str | os.PathLike], top: int | None = 5,
                  threshold: float | None = None, min_confidence: float | None = None) -> Iterator[TagResult]:
        """Yield a :class:`TagResult` per file, in order, as each completes. Tags are merged
        by their one spelling and ordered by calibrated confidence (by raw probability for a
        model without a calibration table); ``threshold`` keeps those of at least that raw
        probability, ``min_confidence`` those of at least that confidence (see
        :data:`mttag.inference.calibration.DEFAULT_THRESHOLD`)."""
        if min_confidence is not None and self.calibration is None:
            raise ValueError(f"{self.model_name} has no calibration table, so no confidence: "
                             "choose tags by raw probability (threshold) instead")
        select = (top, threshold, min_confidence)
        tracks = [_Track(i, str(p)) for i, p in enumerate(paths)]
        ready = _InOrder(tracks)
        model_pool = ThreadPoolExecutor(self.model_threads, thread_name_prefix="mttag-model") \
            if self.model_threads > 1 else None
        batches = _Batches(self, model_pool)
        decode_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mttag-decode")
        with _one_torch_thread(model_pool is not None and self.device.type == "cpu"):
            try:
                for track, decoding in self._prefetch(tracks, decode_pool):
                    self._feed(track, decoding, batches)
                    yield from (self._result(t, self.config.tags, select) for t in ready.pop())
                batches.flush()
                yield from (self._result(t, self.config.tags, select) for t in ready.pop())
            finally:
                if model_pool is not None:
                    model_pool.shutdown(wait=True, cancel_futures=True)
                # On an interruption (Ctrl+C, or the caller closing this generator) don't
                # decode the tracks still queued: only wait for the ones being decoded.
                decode_pool.shutdown(wait=True, cancel_futures=True)

    def _prefetch(self, tracks: list[_Track], pool: ThreadPoolExecutor) -> Iterator[tuple[_Track, Future]]:
        """Each track with its decoding (:meth:`_load`) in a worker thread, ``2 × workers``
        tracks ahead of the one handed out, so the model never waits for a decoder."""
        lookahead = max(2, 2 * self.workers)
        queue = iter(tracks)
        futures = deque((t, pool.submit(self._load, t.path)) for t in itertools.islice(queue, lookahead))
        while futures:
            track, fut = futures.popleft()
            for t in itertools.islice(queue, 1):
                futures.append((t, pool.submit(self._load, t.path)))
            yield track, fut

    def _feed(self, track: _Track, decoding: Future, batches: "_Batches") -> None:
        """``track``'s windows into ``batches`` as they are decoded; a track that fails
        becomes its error, and its windows still queued are dropped."""
        try:
            info, windows, track.decode_seconds, track.fingerprint = decoding.result()
            track.duration = info.duration
            track.starts = window_starts(info.duration, self.config.crop_seconds, self.windows)
            windows = iter(windows)
            while True:  # a generator for streamed tracks: decoding (and its errors) happens here
                start = time.perf_counter()
                window = next(windows, None)
                track.decode_seconds += time.perf_counter() - start
                if window is None:
                    break
                if track.peak_silent and not is_silent(window):
                    track.peak_silent = False
                batches.add(track, window)
        except AudioError as exc:
            track.error = exc.reason
        except (MemoryError, OSError, ValueError, RuntimeError) as exc:
            track.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        track.complete = True
        if track.error is not None:
            # windows already queued for a failed track are computed but ignored
            track.done = track.submitted = 0
            batches.drop(track)

    def _predict_timed(self, batch: list[np.ndarray]) -> tuple[np.ndarray, Any, float]:
        """``(probabilities, embeddings or Nones, seconds)`` of one batch."""
        start = time.perf_counter()
        if self.embeddings:
            probs, embs = self._predict_with_embeddings(batch)
        else:
            probs, embs = self._predict(batch), [None] * len(batch)
        return probs, embs, time.perf_counter() - start

    def _chosen(self, probabilities: np.ndarray, names: list[str], select) -> list[TagScore]:
        return select_scores(score_tags(probabilities, names, self.calibration), *select)

    def _result(self, t: _Track, names, select) -> TagResult:
        if t.error is None and t.submitted == 0:
            t.error = "no audio could be decoded"
        if t.error is None and t.peak_silent:
            t.error = "silent (no signal above -90 dBFS)"
        if t.error is not None:
            return TagResult(t.path, t.duration, error=t.error, model=self.model_name,
                             decode_seconds=t.decode_seconds)
        probs = (t.prob_sum / t.done).astype(np.float32)
        if not np.isfinite(probs).all():
            # broken weights (or an overflow in reduced precision): no score is better than NaN
            return TagResult(t.path, t.duration, error="the model gave non-finite scores (NaN/inf); its weights may be broken",
                             model=self.model_name)
        chosen = self._chosen(probs, names, select)
        result = TagResult(t.path, t.duration, [(s.tag, s.probability) for s in chosen], probabilities=probs,
                           model=self.model_name, tag_names=list(names), decode_seconds=t.decode_seconds,
                           model_seconds=t.model_seconds, n_windows=t.done, fingerprint=t.fingerprint,
                           scores=chosen)
        if self.keep_windows:
            window = self.config.crop_seconds
            # a truncated file yields fewer windows than planned: the first ones, in order
            result.window_times = [(s, min(s + window, t.duration)) for s in t.starts[: t.done]]
            result.window_probabilities = np.stack(t.window_probs)
            result.timeline = [(a, b, [(s.tag, s.probability) for s in self._chosen(p, names, select)])
                               for (a, b), p in zip(result.window_times, result.window_probabilities)]
        if self.embeddings:
            result.window_embeddings = np.stack(t.window_embs).astype(np.float32)
            # the mean over windows, like the probabilities: a track's overall character
            result.embedding = result.window_embeddings.mean(axis=0)
        return result
