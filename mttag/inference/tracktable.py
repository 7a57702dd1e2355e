"""The track table of an index (``tracks.idx``): where each row's line starts in
``tracks.jsonl``, each row's duration, and the rows ordered by a 64-bit hash of their paths.

Without it, opening an index parses every line of ``tracks.jsonl``: at ten million tracks that
took a minute and 1.8 GB before the first query could run (benchmarks/ann_recall.py's index),
and finding a track by its path needed a dict of every path. With it, opening maps the arrays
and reads no line; a path is read when it is shown (its one line), and a track is found by
path by a binary search over the hashes, its line read to confirm it.

The index's writer writes the table when it closes (under the index's lock, to a temporary
name, then renamed), for the rows committed then. It is a cache: ``tracks.jsonl`` stays the
record. Rows committed after it (a run killed before it closed) are read from the tail of
``tracks.jsonl``. A table that does not describe this ``tracks.jsonl`` is ignored, and the
next writer replaces it: the index was started over, the table is damaged, or it is of a
newer format.

Layout: a 4 KiB header (:data:`MAGIC`, then JSON: the format version, the rows, the byte
length of their lines, the index's ``created`` time, a SHA-256 of the last row's line), then
little-endian ``int64 offsets[rows + 1]``, ``float64 durations[rows]``, ``uint64
hashes[rows]`` (sorted) and ``int64 rows_by_hash[rows]``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..util.fileio import atomic_write

TABLE = "tracks.idx"
MAGIC = b"MTTAG-TRACK-TABLE\n"
VERSION = 1
HEADER_BYTES = 4096


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """64 bits of BLAKE2b of each path key (its UTF-8 bytes, undecodable ones as they were)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(k.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                                       "little") for k in keys), dtype=np.uint64, count=len(keys))


def _line_check(line: bytes) -> str:
    return "sha256:" + hashlib.sha256(line).hexdigest()


@dataclass
class TrackTable:
    """A table read from disk: views into its memory map (nothing is read until used)."""

    count: int  # rows described: 0 .. count-1
    end: int  # the byte length of their lines in tracks.jsonl
    offsets: np.ndarray  # int64, count + 1: row i's line is tracks.jsonl[offsets[i]:offsets[i + 1]]
    durations: np.ndarray  # float64, count
    hashes: np.ndarray  # uint64, count, sorted
    rows: np.ndarray  # int64, count: the row of each hash

    def candidates(self, key: str) -> np.ndarray:
        """The rows whose path may be ``key`` (its hash's); the caller confirms each by its line."""
        h = key_hashes([key])[0]
        return np.asarray(self.rows[np.searchsorted(self.hashes, h, "left"):np.searchsorted(self.hashes, h, "right")])


def read(index: Path, created: Any, tracks: mmap.mmap | bytes, limit: int) -> TrackTable | None:
    """The index's table when it describes ``tracks`` (``tracks.jsonl`` as mapped) and at most
    ``limit`` rows (those whose vector and scores are on disk), else None."""
    from .index import EmbeddingIndexError, _open_regular

    if not os.path.lexists(index / TABLE):
        return None
    try:
        with _open_regular(index, TABLE) as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEADER_BYTES:
                return None
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (EmbeddingIndexError, OSError, ValueError):
        return None
    head = bytes(data[:HEADER_BYTES])
    if not head.startswith(MAGIC):
        return None
    try:
        meta = json.loads(head[len(MAGIC):].split(b"\0", 1)[0])
        count, end = meta["rows"], meta["end"]
        ok = (meta["version"] == VERSION and meta["created"] == created and isinstance(count, int)
              and isinstance(end, int) and 0 < count <= limit and 0 < end <= len(tracks)
              and size == HEADER_BYTES + 8 * (4 * count + 1))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return None
    if not ok:
        return None
    at = HEADER_BYTES
    arrays = []
    for dtype, n in (("<i8", count + 1), ("<f8", count), ("<u8", count), ("<i8", count)):
        arrays.append(np.frombuffer(data, dtype=dtype, count=n, offset=at))
        at += 8 * n
    offsets, durations, hashes, rows = arrays
    last = int(offsets[count - 1])
    if int(offsets[0]) != 0 or int(offsets[count]) != end or not 0 <= last < end:
        return None
    # every array as the writer leaves it (one pass each, ~0.1 s at ten million rows): a table
    # damaged inside, behind a good header and last line, is ignored rather than misread
    if (np.any(np.diff(offsets) <= 0) or not np.all(np.isfinite(durations)) or np.any(durations < 0)
            or np.any(hashes[1:] < hashes[:-1]) or np.any(rows < 0) or np.any(rows >= count)):
        return None
    if _line_check(bytes(tracks[last:end])) != meta.get("last_line"):
        return None  # another tracks.jsonl than the one it was written for
    return TrackTable(count, end, *arrays)


def write(index: Path, created: Any, offsets: np.ndarray, durations: np.ndarray, hashes: np.ndarray,
          last_line: bytes) -> None:
    """Write the table of rows ``0 .. len(durations) - 1`` (``hashes`` in row order; sorted
    here), replacing any there. Raises OSError."""
    count = len(durations)
    order = np.argsort(hashes, kind="stable")
    meta = {"version": VERSION, "rows": count, "end": int(offsets[count]), "created": created,
            "last_line": _line_check(last_line)}
    header = MAGIC + json.dumps(meta).encode()
    if len(header) >= HEADER_BYTES:
        raise OSError(f"the track table's header does not fit in {HEADER_BYTES} bytes")

    def write_to(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header.ljust(HEADER_BYTES, b"\0"))
            for values, dtype in ((offsets[:count + 1], "<i8"), (durations, "<f8"), (hashes[order], "<u8"),
                                  (order, "<i8")):
                f.write(np.ascontiguousarray(values, dtype=dtype).tobytes())
            f.flush()
            os.fsync(f.fileno())

    atomic_write(index / TABLE, write_to)


def sorted_to_row_order(table: TrackTable) -> np.ndarray:
    """The table's hashes in row order (to extend it with new rows)."""
    out = np.empty(table.count, dtype=np.uint64)
    out[np.asarray(table.rows)] = table.hashes
    return out
