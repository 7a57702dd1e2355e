"""Approximate nearest-neighbour (ANN) search for large embedding indexes (``pip install mttag[ann]``).

Exact search (:meth:`mttag.inference.index.EmbeddingIndex.search`) reads every vector: 169 ms a
query at a million musicnn tracks, ~1.7 s at ten million. An ANN file is an HNSW graph
(`usearch <https://github.com/unum-cloud/usearch>`_) over the index's vectors, kept beside
them in the index folder::

    ann.usearch   the graph and int8-quantised copies of the vectors; keys are row numbers
    ann.json      what it was built from: rows covered, the index's ``created`` time and model
                  revision, a checksum of its first and last covered vectors, the parameters

The graph only proposes candidates. Their scores are recomputed exactly from ``vectors.f32``
and the filters of ``mttag similar`` are applied to them, so a listed score is never
approximate; what the graph can do is miss a track (recall below 1, measured by
``benchmarks/ann_recall.py``). When filters leave too few candidates the search asks the
graph for more, and when that would take more than a graph search is worth (see
:data:`FETCH_SHARE`) searches exactly.

Both files are written to a temporary name and renamed (``ann.json`` last), under the
index's lock. An ANN file that covers fewer rows than the index holds (tracks added by
``mttag embed --resume`` since) is still used, the rows it lacks searched exactly; one that
does not match the index (started over with ``--force``, damaged, another library version
that cannot read it) is ignored with a note.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..util.display import printable
from ..util.fileio import ExclusiveLock, LockedError, atomic_write

if TYPE_CHECKING:
    from .index import EmbeddingIndex

ANN_FILE = "ann.usearch"
ANN_META = "ann.json"
ANN_FORMAT = "mttag-ann"
ANN_FORMAT_VERSION = 1
# Below this many tracks exact search is fast enough (35 ms at 100k, benchmarks/similar_latency.py)
# and always right: "auto" neither builds nor uses an ANN file there.
AUTO_MIN_TRACKS = 200_000
# ... nor builds, updates or searches one past this many (an ANN file built on request, `--ann on`,
# is still used and kept up to date): recall@10 falls with size at fixed build parameters. With
# these, 0.93 at three million musicnn-like tracks; a graph built with half the effort
# (expansion_add 64) fell from 0.94 at one million to 0.80 at three and 0.44 at ten million
# (benchmarks/ann_recall.py, docs/similarity.md). Exact search takes ~0.1 s at three million,
# so past what was measured "auto" keeps it exact.
AUTO_MAX_TRACKS = 3_000_000
# HNSW parameters, chosen by benchmarks/ann_recall.py (docs/similarity.md): int8 vectors halve
# the memory of float16, and exact rescoring of the candidates recovers the order int8
# distances blur; 16 links per node is usearch's default. expansion_add 128 rather than 64:
# at three million musicnn-like tracks recall@10 0.93 instead of 0.80, for a build 1.2-1.8x
# longer. expansion_search 512 finds most of the exact top 10 in 3-4 ms (1024: a little more,
# ~1.5x the time); the graph, not the int8 copies, bounds recall (rescoring 512 candidates
# instead of 64 gains nothing).
DTYPE = "i8"
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 512
# Candidates asked of the graph: at least this many, and more when filters reject them ...
MIN_FETCH = 64
# ... but not past this many, nor past 1/FETCH_SHARE of the rows: a graph search costs about
# as much per candidate as exact search does per ~150 rows (measured at 100k), so deeper than
# that exact search is faster, and always right.
MAX_FETCH = 8192
FETCH_SHARE = 128
BUILD_CHUNK = 65536
MODES = ("auto", "on", "off")


def auto_plan(path: str | os.PathLike, tracks: int) -> str:
    """What ``--ann auto`` does after a run left ``tracks`` in the index at ``path``: "build"
    (or update) its ANN file, "small" (exact search is fast enough: none built), or "large"
    (none built or updated: past :data:`AUTO_MAX_TRACKS` the graph's measured recall fell, and
    exact search stays right). A file built on request (``--ann on``) is kept up to date
    whatever the size; one built by "auto" is not, once the index has grown past the bound."""
    meta = read_meta(Path(path))
    if meta is not None and (_requested(meta) or tracks <= AUTO_MAX_TRACKS):
        return "build"
    if tracks < AUTO_MIN_TRACKS:
        return "small"
    return "large" if tracks > AUTO_MAX_TRACKS else "build"


def _requested(meta: dict[str, Any]) -> bool:
    """Whether the ANN file was built on request (``--ann on``), not by "auto"."""
    return meta.get("requested") == "on"


class AnnError(Exception):
    """The ANN file cannot be built or used; the message says why, in one line."""


def available() -> bool:
    """Whether the optional ANN library (usearch) can be imported."""
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


MISSING = "the ANN library is not installed (pip install 'mttag[ann]')"


def _meta_path(path: Path) -> Path:
    return path / ANN_META


def _check(vectors: np.ndarray, count: int) -> str:
    """A fingerprint of the rows an ANN file covers: catches an index started over
    (``--force``) with the same number of tracks within the same second."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(vectors[0], dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(vectors[count - 1], dtype="<f4").tobytes())
    return "sha256:" + h.hexdigest()


MAX_META_BYTES = 1 << 20  # ann.json is a few hundred bytes; more is not ours


def read_meta(path: Path) -> dict[str, Any] | None:
    """``ann.json`` as a dict (``{}`` when it is damaged: not a regular file, too large, not
    JSON, nested too deeply), None when there is none. Opened as the index's own files are."""
    from .index import EmbeddingIndexError, _open_regular

    if not os.path.lexists(_meta_path(path)):
        return None
    try:
        with _open_regular(Path(path), ANN_META) as f:
            raw = f.read(MAX_META_BYTES + 1)
        data = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_META_BYTES else None
    except (EmbeddingIndexError, OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _mismatch(meta: dict[str, Any] | None, index: "EmbeddingIndex") -> str | None:
    """Why the ANN file described by ``meta`` cannot serve ``index`` (None: it can)."""
    if meta is None:
        return "absent"
    count, version = meta.get("count"), meta.get("format_version", 0)
    if (meta.get("format") != ANN_FORMAT or not isinstance(count, int) or isinstance(count, bool) or count < 1
            or not isinstance(version, int)):
        return f"{ANN_META} is damaged"
    if version > ANN_FORMAT_VERSION:
        return f"{ANN_META} is of a newer mttag"
    if (meta.get("index_created") != index.manifest.get("created")
            or meta.get("model_revision") != index.model.get("revision") or meta.get("dim") != index.dim):
        return "it was built for an earlier index of that name (started over since)"
    if count > len(index):
        # a reader opened before a writer added rows sees fewer than the file covers: the
        # checksum below then cannot be checked, but rows it does see are the same rows
        return None
    if meta.get("check") != _check(index.vectors, count):
        return "it does not match the index's vectors"
    return None


@dataclass
class AnnSearcher:
    """An ANN file opened for searching (memory-mapped: nothing is read until queried)."""

    graph: Any
    count: int  # rows 0..count-1 are in the graph

    def candidates(self, q: np.ndarray, fetch: int) -> np.ndarray:
        fetch = min(fetch, self.count)
        self.graph.expansion_search = max(EXPANSION_SEARCH, fetch)
        matches = self.graph.search(q, fetch)
        # uint64 keys; a slot left unfilled (fewer matches than asked) becomes negative here
        return np.asarray(matches.keys).astype(np.int64)


def open_ann(index: "EmbeddingIndex", mode: str = "auto") -> tuple[AnnSearcher | None, str | None]:
    """The ANN file of ``index`` ready to search, or None, and a note for the user (or None).

    ``mode``: "off" never; "auto" when the index holds at least :data:`AUTO_MIN_TRACKS`
    tracks and a usable ANN file is there; "on" whenever a usable one is there (a note
    says why not otherwise). Never raises for a bad ANN file: exact search is always right."""
    if mode not in MODES:
        raise ValueError(f"ann mode {mode!r}: use one of {', '.join(MODES)}")
    n = len(index)
    if mode == "off" or n == 0 or (mode == "auto" and n < AUTO_MIN_TRACKS):
        return None, None
    meta = read_meta(index.path)
    if mode == "auto" and n > AUTO_MAX_TRACKS and meta is not None and not _requested(meta):
        return None, None  # a graph "auto" built, on an index grown past where its recall holds
    if meta is None:
        if mode == "on":
            return None, (f"{printable(index.path)} has no ANN file; searching exactly "
                          f"(build one with: mttag embed --resume --ann on -o {printable(index.path)})")
        return None, None
    if not available():
        return None, f"{printable(index.path)} has an ANN file but {MISSING}; searching exactly"
    why = _mismatch(meta, index)
    if why is None:
        try:
            from usearch.index import Index

            graph = Index.restore(os.fspath(index.path / ANN_FILE), view=True)
            if graph is None or len(graph) != meta["count"] or graph.ndim != index.dim:
                why = f"{ANN_FILE} does not match {ANN_META}"
        except Exception as exc:  # usearch raises RuntimeError/ValueError for damaged files
            why = f"{ANN_FILE} cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if why is not None:
        return None, (f"{printable(index.path)}: its ANN file is ignored ({why}); searching exactly; "
                      f"rebuild it with: mttag embed --resume --ann on -o {printable(index.path)}")
    count = meta["count"]
    note = None
    if count < n:
        note = (f"{printable(index.path)}: its ANN file covers {count} of {n} tracks; the {n - count} added since "
                f"are searched exactly (update it with: mttag embed --resume --ann on -o {printable(index.path)})")
    return AnnSearcher(graph, min(count, n)), note


def _filter(index: "EmbeddingIndex", rows: np.ndarray, excluded: np.ndarray, tags: Sequence[tuple[int, float]],
            min_duration: float | None, max_duration: float | None) -> np.ndarray:
    keep = np.ones(len(rows), dtype=bool)
    for column, minimum in tags:
        keep &= index.scores[rows, column].astype(np.float32) >= minimum
    if min_duration is not None:
        keep &= index.durations[rows] >= min_duration
    if max_duration is not None:
        keep &= index.durations[rows] <= max_duration
    if len(excluded):
        keep &= ~np.isin(rows, excluded)
    return rows[keep]


def search(index: "EmbeddingIndex", ann: AnnSearcher, q: np.ndarray, top: int, excluded: np.ndarray,
           tags: Sequence[tuple[int, float]], min_duration: float | None,
           max_duration: float | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Candidate rows and their exact scores for the rows the graph covers, at least ``top``
    of them when that many pass the filters; None when the filters are so strict that exact
    search is the better way (the caller then searches exactly)."""
    # twice the wanted count, filters or not: int8 distances misorder close neighbours, and
    # exact rescoring of a wider net puts them back in order (benchmarks/ann_recall.py)
    want = 2 * top
    fetch = max(MIN_FETCH, want + len(excluded))
    limit = min(MAX_FETCH, max(MIN_FETCH, ann.count // FETCH_SHARE))
    while True:
        rows = ann.candidates(q, fetch)
        rows = np.unique(rows[(rows >= 0) & (rows < ann.count)])
        kept = _filter(index, rows, excluded, tags, min_duration, max_duration)
        if len(kept) >= want:
            break
        # as many candidates again as the pass rate seen so far says it takes; when that is
        # past the limit, exact search is the faster way (and right: the graph may not even
        # return every row when asked for all)
        rate = max(len(kept), 1) / max(len(rows), 1)
        need = int(1.2 * want / rate) + len(excluded)
        if fetch >= limit or need > limit:
            return None
        fetch = min(limit, max(2 * fetch, need))
    scores = np.asarray(index.vectors[kept] @ q, dtype=np.float32)
    usable = index.usable(kept, scores)  # the graph may propose a damaged row: never ranked
    return kept[usable], scores[usable]


# -- building ----------------------------------------------------------------------------------


@dataclass
class BuildResult:
    count: int  # rows in the ANN file now
    added: int  # rows added by this build
    rebuilt: bool  # built anew (else an existing file was extended)
    seconds: float
    bytes: int  # size of ann.usearch


def _new_graph(dim: int):
    from usearch.index import Index

    return Index(ndim=dim, metric="cos", dtype=DTYPE, connectivity=CONNECTIVITY,
                 expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)


def build(path: str | os.PathLike, *, rebuild: bool = False, threads: int | None = None,
          progress: Callable[[int, int], None] | None = None, lock: bool = True,
          requested: bool = True) -> BuildResult | None:
    """Build or update the ANN file of the index at ``path``; None when it is up to date.

    An existing ANN file that matches the index is extended with the rows added since (the
    graph is loaded, the new rows inserted, the whole saved anew), unless ``rebuild``.
    ``threads``: default every core. ``lock``: take the index's lock (pass False when the
    caller holds it). ``progress(done,
    total)`` is called after each chunk of rows. ``requested``: built on request (``--ann
    on``), not by ``--ann auto``, which neither updates nor searches it past
    :data:`AUTO_MAX_TRACKS`; a file once requested stays so. Raises :class:`AnnError`."""
    from .index import LOCK, MANIFEST, EmbeddingIndex, EmbeddingIndexError

    path = Path(path)
    if not available():
        raise AnnError(MISSING)
    held = None
    try:
        if not (path / MANIFEST).is_file():
            EmbeddingIndex(path, ann="off")  # raises: no such folder, not an index
        if lock:
            held = ExclusiveLock(path / LOCK, f"another mttag embed writing {printable(path)}").acquire()
        index = EmbeddingIndex(path, ann="off")
        return _build_locked(index, rebuild, threads, progress, requested)
    except (LockedError, EmbeddingIndexError) as exc:
        raise AnnError(str(exc)) from None
    except OSError as exc:
        raise AnnError(f"{printable(path)}: cannot write its ANN file ({exc.strerror or exc})") from None
    finally:
        if held is not None:
            held.release()


def _build_locked(index: "EmbeddingIndex", rebuild: bool, threads: int | None,
                  progress: Callable[[int, int], None] | None, requested: bool) -> BuildResult | None:
    from usearch.index import Index

    path, n = index.path, len(index)
    if n == 0:
        raise AnnError(f"{printable(path)}: holds no tracks; nothing to build an ANN file from")
    t0 = time.perf_counter()
    meta = read_meta(path)
    graph, start = None, 0
    requested = requested or (meta is not None and _requested(meta))
    if not rebuild and meta is not None and _mismatch(meta, index) is None and meta["count"] <= n:
        if meta["count"] == n and (path / ANN_FILE).is_file():
            if _requested(meta) != requested:  # asked for now (--ann on): the graph itself is up to date
                _write_meta(path, {**meta, "requested": "on"})
            return None
        try:
            graph = Index.restore(os.fspath(path / ANN_FILE), view=False)
        except Exception:
            graph = None  # unreadable: built anew below
        if graph is not None and len(graph) == meta["count"] and graph.ndim == index.dim:
            start = meta["count"]
        else:
            graph = None
    rebuilt = graph is None
    threads = threads or os.cpu_count() or 1
    if graph is None:
        graph = _new_graph(index.dim)
    for a in range(start, n, BUILD_CHUNK):
        b = min(n, a + BUILD_CHUNK)
        graph.add(np.arange(a, b, dtype=np.uint64), np.ascontiguousarray(index.vectors[a:b], dtype=np.float32),
                  threads=threads)
        if progress is not None:
            progress(b - start, n - start)
    atomic_write(path / ANN_FILE, lambda tmp: graph.save(os.fspath(tmp)))
    size = (path / ANN_FILE).stat().st_size
    new_meta = {
        "format": ANN_FORMAT, "format_version": ANN_FORMAT_VERSION, "count": n, "dim": index.dim,
        "library": "usearch", "library_version": _usearch_version(), "metric": "cos", "dtype": DTYPE,
        "connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD, "requested": "on" if requested else "auto",
        "index_created": index.manifest.get("created"), "model_revision": index.model.get("revision"),
        "check": _check(index.vectors, n), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    # the description last: until it is renamed in, the old one (or none) refuses the new graph
    _write_meta(path, new_meta)
    return BuildResult(n, n - start, rebuilt, time.perf_counter() - t0, size)


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    atomic_write(_meta_path(path), write)


def _usearch_version() -> str:
    try:
        import usearch

        return str(usearch.__version__)
    except (ImportError, AttributeError):
        return "unknown"
