"""The embedding index on disk, its exact search, and playlists: what ``mttag embed`` writes and
``mttag similar`` reads (the vectors come from :mod:`mttag.inference.embedder`).

An **index** is a folder (conventionally ``NAME.mttag``)::

    index.json     manifest: format, model (name, revision, arch, ...), dim, tags, pooling, windows
    vectors.f32    N x dim float32, C order, one unit-length (L2) row per track
    scores.f16     N x n_tags float16: each track's window-averaged tag probabilities
    tracks.jsonl   one line per row: {"row", "path", "duration", "windows"}
    tracks.idx     a cache of where each line starts, the durations and the paths' hashes
                   (:mod:`mttag.inference.tracktable`): opening reads no line
    .lock          held by the one process writing the index

Rows are appended: the vector and the scores first, then the ``tracks.jsonl`` line, which
is what commits a track. A reader counts a row only when all three are complete, so a run
killed at any point leaves a valid index holding every finished track; the next writer
cuts the unfinished tail away (:func:`_committed`). The manifest is written once, atomically.
"""


from __future__ import annotations

import json
import math
import mmap
import os
import stat
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import DEFAULT_WINDOWS
from ..util.display import printable
from ..util.fileio import ExclusiveLock, LockedError, atomic_write
from ..util.fs import fsync_dir as _fsync_dir
from .ann import ANN_FILE, ANN_META, open_ann
from .ann import search as ann_search
from .embedder import EmbeddingResult, normalise_rows, short_revision
from .output import display_tag, path_from_text, path_key
from .tracktable import TABLE, TrackTable, key_hashes, sorted_to_row_order
from .tracktable import read as read_table
from .tracktable import write as write_table

FORMAT = "mttag-embedding-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"
VECTORS = "vectors.f32"
SCORES = "scores.f16"
TRACKS = "tracks.jsonl"
LOCK = ".lock"
OWN_FILES = (MANIFEST, VECTORS, SCORES, TRACKS, LOCK, ANN_FILE, ANN_META, TABLE)
POOLING = "mean of the L2-normalised window embeddings, L2-normalised"
# Finished tracks reach the operating system at once (a killed process loses nothing);
# fsync, which protects against a power cut, at most this often: it costs milliseconds.
SYNC_SECONDS = 2.0
# Rows per matrix-vector product in a search: 65,536 x 256 float32 = 64 MB at most in flight.
SEARCH_CHUNK = 65536


class EmbeddingIndexError(Exception):
    """An index cannot be used; the message says which and why, in one line."""



# -- the index on disk -----------------------------------------------------------------------


def _error(path: Path, reason: str) -> EmbeddingIndexError:
    return EmbeddingIndexError(f"{printable(path)}: {reason}")


# Sizes past which an index file is not mttag's: a manifest is a few hundred kB even with
# a vocabulary of thousands of tags, and a tracks.jsonl line is one path (PATH_MAX 4,096
# bytes, at most 4x that escaped) and three numbers. Reading stops there, not at memory's end.
MAX_MANIFEST_BYTES = 16 << 20
MAX_TRACK_LINE_BYTES = 64 << 10
MAX_INDEX_WINDOWS = 1_000_000
# A row of vectors.f32 is unit length (float32 rounding is ~1e-7); a row that is not was
# not written as one: a dim that does not match the file, or damage.
_UNIT_TOLERANCE = 1e-3


def _open_regular(index: Path, name: str):
    """``index/name`` opened for reading in binary, refused in one line unless it is a
    regular file: a FIFO would block the reader forever, a folder or a device is not an
    index file. Opened without blocking and checked on the descriptor, so no FIFO can be
    swapped in between a check and the open."""
    file = index / name
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise _error(index, f"{name} is missing; the index is incomplete") from None
    except IsADirectoryError:
        raise _error(index, f"{name} is a folder, not a file; the index is damaged") from None
    except OSError as exc:
        raise _error(index, f"{name} cannot be read ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise _error(index, f"{name} is {kind}, not a file; the index is damaged")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of the index at ``path``, checked; None when there is no index there yet."""
    path = Path(path)
    file = path / MANIFEST
    if not os.path.lexists(file) or (file.is_symlink() and not file.exists()):
        return None
    try:
        with _open_regular(path, MANIFEST) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise _error(path, f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MB; it is not an mttag index manifest")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(path, f"{MANIFEST} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    except RecursionError:
        raise _error(path, f"{MANIFEST} cannot be read (nested too deeply)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _error(path, f"{MANIFEST} is not an mttag embedding index manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _error(path, f"index format version {version} is newer than this mttag understands "
                           f"({FORMAT_VERSION}); upgrade with: pip install -U mttag")
    why = description_problem(data.get("model"), data.get("dim"), data.get("tags"), data.get("windows"))
    if why is not None:
        raise _error(path, f"{MANIFEST} is damaged ({why})")
    return data


def description_problem(model: Any, dim: Any, tags: Any, windows: Any) -> str | None:
    """Why an index cannot be described by these (its manifest's model, dim, tags and windows,
    or what a dataset of embeddings says made them), or None when it can."""
    if (not isinstance(model, dict) or not isinstance(model.get("revision"), str)
            or not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536
            or not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags)):
        return "model, dim or tags missing or invalid"
    name = model.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        return "the model's name is not text"
    if model.get("dim", dim) != dim:
        return f"dim {dim}, but its model's embeddings have {printable(model.get('dim'))}"
    if windows is not None and (not isinstance(windows, int) or isinstance(windows, bool)
                                or not 1 <= windows <= MAX_INDEX_WINDOWS):
        return f"windows is {printable(json.dumps(windows))[:40]}: a count of windows, or null for all"
    return None


def _parse_track(line: bytes, row: int) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    if (not isinstance(record, dict) or record.get("row") != row or not isinstance(record.get("path"), str)
            or not isinstance(record.get("duration"), (int, float)) or isinstance(record.get("duration"), bool)):
        return None
    # json reads NaN and Infinity: no track lasts that long, and they would pass every filter
    if not (math.isfinite(record["duration"]) and record["duration"] >= 0):
        return None
    return record


def _data_rows(path: Path, dim: int, n_tags: int) -> int:
    """Rows whose vector and scores are both on disk: a power cut can keep a line whose
    vector never reached the disk, and rows past the data are not committed."""
    sizes = []
    for name in (VECTORS, SCORES):
        with _open_regular(path, name) as data:
            sizes.append(os.fstat(data.fileno()).st_size)
    return min(sizes[0] // (4 * dim), sizes[1] // (2 * n_tags))


def _committed(path: Path, limit: int, start: int = 0, first_row: int = 0) -> tuple[list[str], array, int, array]:
    """The committed tracks of an index from byte ``start`` of ``tracks.jsonl`` (row
    ``first_row``; the track table covers those before): their paths, their durations, the
    byte length of all committed lines (from the file's start), and where each line starts.
    Streams the file: only the paths and durations are kept (a million tracks: ~150 MB,
    against ~650 MB as parsed records).

    Only the last line may be unfinished or damaged (the run was killed while writing it); a
    damaged line before it is refused rather than silently cutting the index short there."""
    paths: list[str] = []
    durations = array("d")
    offsets = array("q")
    end = start
    damaged: int | None = None
    with _open_regular(path, TRACKS) as f:
        f.seek(start)
        # each line read up to a bound, so a file with no line breaks is not held whole
        for number, line in enumerate(iter(lambda: f.readline(MAX_TRACK_LINE_BYTES + 1), b""), first_row + 1):
            if damaged is not None:
                raise _error(path, f"{TRACKS} line {damaged} is damaged; the index cannot be trusted past it")
            if len(line) > MAX_TRACK_LINE_BYTES:
                raise _error(path, f"{TRACKS} line {number} is longer than {MAX_TRACK_LINE_BYTES >> 10} kB; "
                                   f"the index is damaged")
            if not line.endswith(b"\n") or first_row + len(paths) >= limit:
                break  # the unfinished last line, or rows whose data is missing
            record = _parse_track(line, first_row + len(paths))
            if record is None:
                damaged = number  # fine if it is the last line: a write the run did not finish
                continue
            paths.append(record["path"])
            durations.append(float(record["duration"]))
            offsets.append(end)
            end += len(line)
    return paths, durations, end, offsets


def _map(path: Path, name: str) -> "mmap.mmap | bytes":
    """A file of the index mapped read-only (b"" when empty: an empty file cannot be mapped)."""
    with _open_regular(path, name) as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class Tracks(Sequence):
    """The paths of an index's rows, in order: those the track table covers, each read from its
    line in ``tracks.jsonl`` when asked, then the rest (read from the file's tail, or added by
    the writer since), held in memory. ``key in tracks`` and :meth:`row` find a path key by
    its hash without reading every line."""

    def __init__(self, index: Path, table: TrackTable | None, lines: Any, rest: list[str]):
        # lines: tracks.jsonl as anything sliced into bytes (a memory map, or the writer's _FileLines)
        self.index, self.table, self.lines, self.rest = index, table, lines, rest
        self.first = table.count if table is not None else 0
        self._rest_rows: dict[str, int] | None = None

    def __len__(self) -> int:
        return self.first + len(self.rest)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i >= self.first:
            return self.rest[i - self.first]
        offsets = self.table.offsets
        record = _parse_track(bytes(self.lines[int(offsets[i]):int(offsets[i + 1])]), i)
        if record is None:
            raise _error(self.index, f"{TRACKS} line {i + 1} is damaged (it changed after the index was opened, "
                                     f"or its track table is wrong); the index cannot be trusted")
        return record["path"]

    def row(self, key: str) -> int | None:
        """The row of a path key, or None."""
        if self.table is not None:
            for r in self.table.candidates(key):
                if self[int(r)] == key:
                    return int(r)
        return self._rest_index().get(key)

    def _rest_index(self) -> dict[str, int]:
        """The rows after the table by path key, built when first needed (then kept by :meth:`extend`)."""
        if self._rest_rows is None:
            self._rest_rows = {p: self.first + i for i, p in enumerate(self.rest)}
        return self._rest_rows

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and self.row(key) is not None

    def missing(self, keys: Sequence[str]) -> np.ndarray:
        """Which of ``keys`` it does not hold, a bool each: :meth:`row` for many keys at once
        (the hashes looked up together; only a key whose hash is there has its line read)."""
        out = np.ones(len(keys), dtype=bool)
        if self.table is not None and len(keys):
            hashes = key_hashes(keys)
            lo = np.searchsorted(self.table.hashes, hashes, "left")
            hi = np.searchsorted(self.table.hashes, hashes, "right")
            for i in np.flatnonzero(hi > lo):
                out[i] = not any(self[int(r)] == keys[i] for r in self.table.rows[lo[i]:hi[i]])
        if self.rest:
            rest = self._rest_index()
            out &= np.fromiter((k not in rest for k in keys), dtype=bool, count=len(keys))
        return out

    def __eq__(self, other) -> bool:  # compares as the list of paths it was before the track table
        if isinstance(other, (list, tuple, Tracks)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def extend(self, keys: Sequence[str]) -> None:
        if self._rest_rows is not None:
            self._rest_rows.update((k, len(self) + i) for i, k in enumerate(keys))
        self.rest.extend(keys)


def _write_json_synced(data: dict[str, Any]):
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    return write


class _FileLines:
    """Byte ranges of an index's ``tracks.jsonl`` read by seeking (the writer's view: a memory
    map would forbid truncating the file on some systems)."""

    def __init__(self, index: Path):
        self.file = _open_regular(index, TRACKS)

    def __len__(self) -> int:
        return os.fstat(self.file.fileno()).st_size

    def __getitem__(self, span: slice) -> bytes:
        self.file.seek(span.start)
        return self.file.read(span.stop - span.start)

    def close(self) -> None:
        self.file.close()


@dataclass
class _Held:
    """What a writer holds of the rows after its track table: their paths (in ``tracks``),
    durations and line offsets, and the byte length of every committed line."""

    tracks: Tracks
    durations: array
    end: int
    offsets: array


class IndexWriter:
    """Appends tracks to an index, creating it if needed. Use as a context manager.

    ``resume``: add to an existing index (its tracks are in :attr:`done`); the model must be
    the one the index was made with. Without it an index that holds tracks is refused, unless
    ``force``, which starts it over. A folder that is not an index (and not empty) is refused
    even with ``force``: its files are never touched.
    """

    def __init__(self, path: str | os.PathLike, model: dict[str, Any], tags: Sequence[str],
                 windows: int | None = DEFAULT_WINDOWS, *, resume: bool = False, force: bool = False):
        self.path = Path(path)
        self.model = dict(model)
        self.tags = list(tags)
        self.windows = windows
        self.resume = resume
        self.force = force
        self.dim = int(model["dim"])
        self.count = 0
        self.existing = 0  # rows the index held when opened
        self.done: Tracks | set[str] = set()  # the path keys it holds (`key in writer.done`)
        self._held_rows: _Held | None = None
        self._created: Any = None
        self._lock: ExclusiveLock | None = None
        self._files: list = []
        self._last_sync = time.monotonic()

    def __enter__(self) -> "IndexWriter":
        self.open()
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def open(self) -> "IndexWriter":
        path = self.path
        if path.exists() and not path.is_dir():
            raise _error(path, "exists and is not a folder; an index is a folder (e.g. library.mttag)")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _error(path, "a parent of it is not a folder") from None
        except OSError as exc:
            raise _error(path, f"cannot create it ({exc.strerror or exc})") from None
        if not (path / MANIFEST).exists():
            foreign = [p.name for p in path.iterdir() if p.name not in OWN_FILES]
            if foreign:
                raise _error(path, f"exists and is not an mttag index (it holds {printable(foreign[0])}, "
                                   f"no {MANIFEST}); refusing to write into it")
        try:  # self._lock is set only once the lock is held
            self._lock = ExclusiveLock(path / LOCK, f"another mttag embed writing {printable(path)}").acquire()
        except LockedError as exc:
            raise EmbeddingIndexError(str(exc)) from None
        except OSError as exc:
            raise _error(path, f"cannot write there ({exc.strerror or exc})") from None
        try:
            self._open_locked()
        except BaseException:
            self.close()
            raise
        return self

    def _open_locked(self) -> None:
        path = self.path
        manifest = read_manifest(path)  # under the lock: nobody changes it now
        held = None
        if manifest is not None:
            self._held_rows = held = self._held(manifest)  # set at once: close() closes its file
            if len(held.tracks) and not self.resume and not self.force:
                raise _error(path, f"already holds {len(held.tracks)} tracks; add --resume to add to it, "
                                   f"or --force to start it over")
            if self.resume:
                self._check_model(manifest)
            else:
                manifest = None  # --force, or an empty index: written anew below
        if manifest is None:
            if held is not None:
                held.tracks.lines.close()
                self._held_rows = None
            for name in (TABLE, ANN_META, ANN_FILE, TRACKS, VECTORS, SCORES, MANIFEST):
                (path / name).unlink(missing_ok=True)
            for name in (VECTORS, SCORES, TRACKS):
                (path / name).touch()
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model, "dim": self.dim,
                "dtype": "float32", "tags": self.tags, "pooling": POOLING, "windows": self.windows,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write(path / MANIFEST, _write_json_synced(manifest))
            _fsync_dir(path)
            self._held_rows = held = _Held(Tracks(path, None, _FileLines(path), []), array("d"), 0, array("q"))
        # cut away a tail an interrupted run left unfinished: the next row goes right after the last whole one
        n = len(held.tracks)
        for name, size in ((TRACKS, held.end), (VECTORS, n * 4 * self.dim), (SCORES, n * 2 * len(self.tags))):
            if (path / name).stat().st_size != size:
                os.truncate(path / name, size)
        self.existing = self.count = n
        self.done = held.tracks  # `key in writer.done`: by hash through the track table, no line parsed at open
        self._created = manifest.get("created")
        self._vectors = open(path / VECTORS, "ab")
        self._scores = open(path / SCORES, "ab")
        self._tracks = open(path / TRACKS, "ab")
        self._files = [self._vectors, self._scores, self._tracks]

    def _held(self, manifest: dict[str, Any]) -> "_Held":
        """The rows the index holds: through its track table and the lines after it."""
        path = self.path
        limit = _data_rows(path, manifest["dim"], len(manifest["tags"]))
        lines = _FileLines(path)
        table = read_table(path, manifest.get("created"), lines, limit)
        rest, durations, end, offsets = _committed(path, limit, *((table.end, table.count) if table else (0, 0)))
        return _Held(Tracks(path, table, lines, rest), durations, end, offsets)

    def _check_model(self, manifest: dict[str, Any]) -> None:
        theirs = manifest["model"]
        if theirs.get("revision") != self.model["revision"] or manifest["dim"] != self.dim:
            raise _error(self.path, f"holds embeddings of {printable(theirs.get('name'))} (revision "
                                    f"{short_revision(theirs.get('revision', ''))}); this model is "
                                    f"{printable(self.model['name'])} (revision {short_revision(self.model['revision'])}); "
                                    f"embeddings of different models cannot be compared: use the index's "
                                    f"model or another index")
        if manifest["tags"] != self.tags:
            raise _error(self.path, "holds another tag vocabulary than this model's")

    def add(self, result: EmbeddingResult) -> bool:
        """Append a successful result (False, nothing written, if its path is already in)."""
        if not result.ok:
            raise ValueError("only successful results go into an index")
        return self.add_track(result.path, result.duration, result.vector, result.probabilities, result.windows)

    def add_track(self, path: str, duration: float | None, vector: np.ndarray, probabilities: np.ndarray,
                  windows: int = 0) -> bool:
        key = path_key(path)
        if key in self.done:
            return False
        self.add_rows([key], [duration or 0.0], vector[None, :], probabilities[None, :], [windows], keys=True)
        return True

    def add_rows(self, paths: Sequence[str], durations: Sequence[float], vectors: np.ndarray,
                 probabilities: np.ndarray, windows: Sequence[int] | None = None, keys: bool = False) -> None:
        """Append many rows at once (vectors are normalised here). ``keys``: the paths are
        already :func:`mttag.inference.output.path_key`s."""
        vectors = normalise_rows(np.asarray(vectors, dtype=np.float32).reshape(len(paths), self.dim))
        probabilities = np.asarray(probabilities, dtype=np.float32).reshape(len(paths), len(self.tags))
        if not (np.isfinite(vectors).all() and np.isfinite(probabilities).all()):
            raise ValueError("non-finite vectors or probabilities")
        names = list(paths) if keys else [path_key(p) for p in paths]
        lines = []
        held = self._held_rows
        for i, key in enumerate(names):
            record = {"row": self.count + i, "path": key, "duration": round(float(durations[i]), 3),
                      "windows": int(windows[i]) if windows is not None else 0}
            lines.append((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        # the vector and the scores first; the line in tracks.jsonl commits the row
        self._vectors.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._scores.write(np.ascontiguousarray(probabilities, dtype="<f2").tobytes())
        self._vectors.flush()
        self._scores.flush()
        self._tracks.write(b"".join(lines))
        self._tracks.flush()
        for i, line in enumerate(lines):  # for the track table the writer leaves when it closes
            held.offsets.append(held.end)
            held.end += len(line)
            held.durations.append(round(float(durations[i]), 3))
        self.done.extend(names)
        self.count += len(paths)
        if time.monotonic() - self._last_sync >= SYNC_SECONDS:
            self.sync()

    def _write_table(self) -> None:
        held = self._held_rows
        table = held.tracks.table
        n = self.count
        offsets = np.concatenate([np.asarray(table.offsets[:-1]) if table else np.zeros(0, np.int64),
                                  np.frombuffer(held.offsets, dtype=np.int64), [held.end]])
        durations = np.concatenate([np.asarray(table.durations) if table else np.zeros(0),
                                    np.frombuffer(held.durations, dtype=np.float64)])
        hashes = np.concatenate([sorted_to_row_order(table) if table else np.zeros(0, np.uint64),
                                 key_hashes(held.tracks.rest)])
        write_table(self.path, self._created, offsets, durations, hashes,
                    held.tracks.lines[int(offsets[n - 1]):int(offsets[n])])

    def sync(self) -> None:
        """Everything written so far onto the disk (data files before the commit log)."""
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Sync and close the files, release the lock. Raises the first OSError, after cleaning up."""
        error: OSError | None = None
        try:
            if self._files:
                self.sync()
        except OSError as exc:
            error = exc
        if error is None and self._files and self.count > self._held_rows.tracks.first:
            try:
                self._write_table()
            except OSError:
                pass  # a cache: readers read the lines it would cover, and the next writer writes it
        if self._held_rows is not None:
            self._held_rows.tracks.lines.close()
            self._held_rows = None
        for f in self._files:
            try:
                f.close()
            except OSError as exc:
                error = error or exc
        self._files = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if error is not None:
            raise error


@dataclass
class Hit:
    rank: int
    row: int
    path: str  # as the index holds it: absolute, with \xNN escapes for undecodable bytes
    duration: float
    score: float  # cosine similarity, -1 to 1

    @property
    def file(self) -> str:
        """The path as a file name (undecodable bytes restored)."""
        return path_from_text(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "path": self.path, "score": round(self.score, 4), "duration": self.duration}


class EmbeddingIndex:
    """An index opened for searching: the vectors are memory-mapped (not read into memory),
    the track list is read once. Safe to open while a writer appends: it sees the tracks
    committed when it was opened.

    ``ann``: "auto" (default) searches through the index's ANN file (:mod:`mttag.inference.ann`) when
    the index is large and the file usable, "on" whenever it is usable, "off" never;
    :attr:`ann_note` says why one is not used, or covers only part of the index."""

    def __init__(self, path: str | os.PathLike, ann: str = "auto"):
        self.path = Path(path)
        if not self.path.is_dir():
            raise _error(self.path, "no such index (an index is a folder made by mttag embed)"
                         if not self.path.exists() else "is not an index folder")
        manifest = read_manifest(self.path)
        if manifest is None:
            raise _error(self.path, f"is not an mttag index (no {MANIFEST})")
        self.manifest = manifest
        self.model: dict[str, Any] = manifest["model"]
        self.tags: list[str] = manifest["tags"]
        self.dim: int = manifest["dim"]
        limit = _data_rows(self.path, self.dim, len(self.tags))
        lines = _map(self.path, TRACKS)
        table = read_table(self.path, manifest.get("created"), lines, limit)
        rest, durations, _, _ = _committed(self.path, limit, *((table.end, table.count) if table else (0, 0)))
        self.paths = Tracks(self.path, table, lines if table else b"", rest)
        tail = np.frombuffer(durations, dtype=np.float64) if len(durations) else np.zeros(0)
        self.durations = tail if table is None else np.concatenate([table.durations, tail]) if len(tail) else table.durations
        n = len(self.paths)
        if n:
            self.vectors = np.memmap(self.path / VECTORS, dtype="<f4", mode="r", shape=(n, self.dim))
            self.scores = np.memmap(self.path / SCORES, dtype="<f2", mode="r", shape=(n, len(self.tags)))
            # Rows are unit vectors; read with the wrong dim, none is (each is a piece of one row
            # and the next), and every track query would answer silently wrong. A few rows
            # spread over the file tell, at the cost of a few reads; one damaged row only is
            # left out of searches (:meth:`search`) and refused as a query (:meth:`vector`).
            sample = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(np.int64))
            if not any(self._unit(int(r)) for r in sample):
                raise _error(self.path, f"{VECTORS} does not hold unit vectors of {self.dim} values (checked "
                                        f"{len(sample)} of {n} rows): its dim does not match {MANIFEST}, or it "
                                        f"is damaged; embed the tracks again")
        else:
            self.vectors = np.zeros((0, self.dim), dtype=np.float32)
            self.scores = np.zeros((0, len(self.tags)), dtype=np.float16)
        self.ann, self.ann_note = open_ann(self, ann)

    def __len__(self) -> int:
        return len(self.paths)

    def _unit(self, row: int) -> bool:
        norm = float(np.linalg.norm(np.asarray(self.vectors[row], dtype=np.float64)))
        return math.isfinite(norm) and abs(norm - 1) <= _UNIT_TOLERANCE

    def vector(self, row: int) -> np.ndarray:
        """The vector of ``row``, refused (:class:`EmbeddingIndexError`) if it is not the unit
        vector the index stores: a damaged row would answer a query with noise."""
        if not self._unit(row):
            raise _error(self.path, f"the vector of {printable(path_from_text(self.paths[row]))} (row {row}) is "
                                    f"damaged (zero, not finite or not unit length); embed it again")
        return np.asarray(self.vectors[row], dtype=np.float32)

    def row_of(self, path: str | os.PathLike) -> int | None:
        """The row of a file (matched by absolute path, as ``mttag tag --resume`` matches), or None."""
        return self.paths.row(path_key(os.fspath(path)))

    def tag_index(self, name: str) -> int:
        """The column of a tag: the model's own name (``mtt:rock``), else as every output spells
        tags (``rock``: the first of a combined model's columns that spell it so; case and
        spacing ignored)."""
        key = " ".join(name.lower().split())
        for i, t in enumerate(self.tags):
            if " ".join(t.lower().split()) == key:
                return i
        wanted = display_tag(name)
        for i, t in enumerate(self.tags):
            if display_tag(t) == wanted:
                return i
        raise KeyError(name)

    def usable(self, rows: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Which of ``rows`` (their similarities ``s`` to a unit query) can be ranked: a
        damaged row (NaN, zero, not unit length) has no similarity to give, whether exact
        search or the ANN file proposed it."""
        keep = np.isfinite(s) & (np.abs(s) <= 1 + _UNIT_TOLERANCE)
        zero = np.flatnonzero(keep & (s == 0))
        if len(zero):
            keep[zero[~np.any(self.vectors[rows[zero]] != 0, axis=1)]] = False
        return keep

    def search(self, query: np.ndarray, top: int = 20, *, exclude: Iterable[int] = (),
               tags: Sequence[tuple[int, float]] = (), min_duration: float | None = None,
               max_duration: float | None = None, chunk: int = SEARCH_CHUNK, exact: bool = False) -> list[Hit]:
        """The ``top`` tracks most similar to ``query`` (cosine), best first; ties by row.

        ``tags``: (column, minimum probability) pairs a track must all meet; durations in
        seconds. Exact search: one matrix-vector product per ``chunk`` rows of the
        memory-mapped vectors, so memory stays bounded whatever the index size. With an ANN
        file (:attr:`ann`, unless ``exact``) the rows it covers are searched through it,
        the scores still computed exactly (:func:`mttag.inference.ann.search`)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has {q.shape[0]} dimensions, the index {self.dim}")
        norm = float(np.linalg.norm(q))
        if not math.isfinite(norm) or norm == 0:
            raise ValueError("the query vector is zero or not finite")
        q = q / norm
        excluded = np.array(sorted(set(exclude)), dtype=np.int64)
        top = max(1, int(top))
        n = len(self)
        cand_scores: list[np.ndarray] = []
        cand_rows: list[np.ndarray] = []
        start = 0
        if self.ann is not None and not exact:
            found = ann_search(self, self.ann, q, top, excluded, tags, min_duration, max_duration)
            if found is not None:  # else the filters are too strict for the graph: exact
                cand_rows.append(found[0])
                cand_scores.append(found[1])
                start = self.ann.count  # rows added since the ANN file was built: exact
        for a in range(start, n, chunk):
            b = min(n, a + chunk)
            s = self.vectors[a:b] @ q
            keep = self.usable(a + np.arange(b - a), s)
            for column, minimum in tags:
                keep &= self.scores[a:b, column].astype(np.float32) >= minimum
            if min_duration is not None:
                keep &= self.durations[a:b] >= min_duration
            if max_duration is not None:
                keep &= self.durations[a:b] <= max_duration
            ex = excluded[(excluded >= a) & (excluded < b)]
            keep[ex - a] = False
            rows = np.flatnonzero(keep)
            if not len(rows):
                continue
            s = s[rows]
            if len(rows) > top:
                best = np.argpartition(-s, top - 1)[:top]
                rows, s = rows[best], s[best]
            cand_scores.append(s.astype(np.float32))
            cand_rows.append(rows + a)
        if not cand_rows:
            return []
        scores = np.concatenate(cand_scores)
        rows = np.concatenate(cand_rows)
        order = np.lexsort((rows, -scores))[:top]
        return [Hit(rank, int(rows[i]), self.paths[rows[i]], float(self.durations[rows[i]]), float(scores[i]))
                for rank, i in enumerate(order, 1)]


# -- playlists -------------------------------------------------------------------------------

_PLAYLIST_SUFFIXES = (".m3u8", ".m3u")


def playlist_path(track: str, folder: str) -> str:
    """``track`` (absolute) as a playlist in ``folder`` names it: relative to the folder when
    they share a folder below the root (the playlist keeps working when the tree moves),
    else absolute (another drive, or nothing in common but ``/``)."""
    try:
        common = os.path.commonpath([track, folder])
    except ValueError:  # another drive on Windows
        return track
    if os.path.dirname(common) == common:  # only the root (or a drive) in common
        return track
    return os.path.relpath(track, folder)


def write_playlist(path: str | os.PathLike, entries: Sequence[tuple[str, float]], force: bool = False) -> list[str]:
    """Write an extended M3U playlist (UTF-8, ``#EXTM3U``, ``#EXTINF:<seconds>,<title>``) of
    ``entries`` (file path, duration), in order, atomically. Returns warnings (one line each).

    Refuses (``EmbeddingIndexError``) to replace a file that is not a playlist unless ``force``,
    and anything with an audio extension always."""
    from ..audio.files import AUDIO_EXTENSIONS

    path = Path(path)
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        raise EmbeddingIndexError(f"--playlist {printable(path)}: names an audio file; use a .m3u8 file")
    if path.is_dir():
        raise EmbeddingIndexError(f"--playlist {printable(path)}: is a directory")
    if path.exists() and not force:
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as exc:
            raise EmbeddingIndexError(f"--playlist {printable(path)}: cannot read it ({exc.strerror or exc})") from None
        if head and not head.lstrip(b"\xef\xbb\xbf").startswith(b"#EXTM3U"):
            raise EmbeddingIndexError(f"--playlist {printable(path)}: exists and is not an M3U playlist; "
                                      f"refusing to overwrite it (add --force to replace it)")
    folder = os.path.abspath(path.parent)
    warnings: list[str] = []
    lines = [b"#EXTM3U\n"]
    for file, duration in entries:
        if "\n" in file or "\r" in file:  # one entry per line: such a name cannot be listed
            warnings.append(f"{printable(file)}: left out of the playlist (its name holds a line break)")
            continue
        entry = playlist_path(os.path.abspath(file), folder)
        title = Path(file).stem
        try:
            text = f"#EXTINF:{int(round(duration))},{title}\n{entry}\n".encode("utf-8")
        except UnicodeEncodeError:
            # a name whose bytes are not UTF-8: its real bytes, so that players find the file
            text = f"#EXTINF:{int(round(duration))},{title}\n{entry}\n".encode("utf-8", "surrogateescape")
            warnings.append(f"{printable(file)}: its name is not UTF-8; listed with its own bytes")
        lines.append(text)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as exc:
        raise EmbeddingIndexError(f"--playlist {printable(path)}: cannot write it ({exc.strerror or exc})") from None
    return warnings

