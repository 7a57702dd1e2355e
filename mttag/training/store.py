"""The prepared store: audio decoded once into int16 memory-mapped shards, plus labels and splits.

Training reads random 10 s crops of hundreds of thousands of tracks, many times over;
:class:`PreparedDataset` reads any crop of any track with one memory-mapped slice from the
store that :func:`mttag.training.prepare.prepare_dataset` writes (through :class:`_Store`).

Stable API (used by the training code)
--------------------------------------
``PreparedDataset(path)`` opens a prepared directory. It is cheap to construct, picklable
(only the path travels) and opens its memory maps lazily in each process, so it can be
handed to ``torch.utils.data.DataLoader`` workers (fork or spawn).

* ``.tags -> list[str]`` vocabulary, in label-column order; ``.sample_rate -> int``
* ``len(ds)`` number of stored tracks; track indices are ``0 .. len(ds)-1``
* ``.split(name) -> np.ndarray`` (int64 track indices, ascending) for ``"train"``,
  ``"valid"``, ``"test"``, ``"unlabeled"`` (``"unlabelled"``/``"student"`` accepted)
* ``.labels -> np.ndarray`` N×T float32 0/1 (rows of unlabelled tracks are all zero)
* ``.is_labeled -> np.ndarray`` bool (N,)
* ``.lengths -> np.ndarray`` int64 samples per track; ``.num_samples(i) -> int``
* ``.read(i, start, length) -> np.ndarray`` float32, exactly ``length`` samples from sample
  ``start``; the track is treated as a loop, so short tracks are repeated to fill and a
  read running past the end wraps to the start
* ``.random_crop(i, length, rng) -> np.ndarray`` a uniformly placed crop (``rng`` is a
  ``np.random.Generator``); tracks shorter than ``length`` are looped from a random phase
* ``.evenly_spaced_crops(i, length, n) -> np.ndarray`` n×length, starts evenly spaced from
  the first to the last possible start (one crop: the middle)
* ``.track_info(i) -> TrackInfo`` (index, path as given in the source, file, group, split,
  tags, num_samples, duration)
* ``.summary -> dict`` the content of ``dataset.json``

On-disk format (version 1)
--------------------------
``dataset.json``   summary and parameters; written last, so its presence means complete
``shards/NNNNN.i16`` raw little-endian int16 PCM, tracks back to back (≈1 GB per shard;
                   a track never spans two shards); float = int16 / 32768
``index.npy``      structured array, one row per stored track: shard, offset, length
                   (samples), split, group, root, path_start, path_len, row (manifest row)
``labels.npy``     uint8 N×T; ``paths.bin`` UTF-8 paths referenced by the index;
                   ``groups.json`` group names referenced by the index (-1: none)
``manifest.csv``   every source track: path, split (train/valid/test/unlabeled/excluded/
                   failed), group, tags (``|``-joined), index, seconds, reason
``tag_counts.csv`` per-tag counts and shares per split; ``failures.csv`` path, file, reason
``journal.bin``    append-only completion journal (resume); ``failures.jsonl`` its reasons;
``state.json``     settings that must match to resume
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.windows import even_starts
from ..util.fileio import atomic_write
from .splits import _SPLIT_NAMES, UNLABELED, parse_split

FORMAT = "mttag-prepared"
FORMAT_VERSION = 1
SAMPLE_RATE = 22050
INT16_SCALE = 32768.0
DEFAULT_SHARD_BYTES = 1 << 30
SEGMENT_SECONDS = 300.0  # longer tracks are decoded in segments and spilled to a temp file


_OK, _FAILED_REC = 1, 2
_JREC = np.dtype([("key", "<u8"), ("status", "<i4"), ("shard", "<i4"), ("offset", "<i8"),
                  ("length", "<i8"), ("clipped", "<i8")])
_INDEX = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("length", "<i8"), ("split", "i1"),
                   ("group", "<i4"), ("root", "<i2"), ("path_start", "<i8"), ("path_len", "<i4"),
                   ("row", "<i8")])


@dataclass(frozen=True)
class TrackInfo:
    index: int
    path: str  # as given in the source
    file: str  # where it was decoded from
    group: str | None
    split: str
    tags: list[str]
    num_samples: int
    duration: float


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------


class PreparedDataset:
    """A prepared dataset directory (see the module docstring for the API and format)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "dataset.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path}: not a prepared dataset (no dataset.json; "
                                    "was `mttag prepare` interrupted? run it again to finish)")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{self.path}: unsupported dataset format {meta.get('format')} v{meta.get('version')}")
        self._meta = meta
        self.tags: list[str] = list(meta["tags"])
        self.sample_rate: int = int(meta["sample_rate"])
        self._n = int(meta["num_tracks"])
        self._scale = 1.0 / float(meta.get("int16_scale", INT16_SCALE))
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._index: np.ndarray | None = None
        self._offsets = self._lengths = self._shard_ids = self._splits = None
        self._labels: np.ndarray | None = None
        self._mmaps: dict[int, np.memmap] = {}
        self._paths: bytes | None = None
        self._groups: list[str] | None = None

    # pickling: only the path travels; each process opens its own memory maps
    def __getstate__(self):
        return {"path": str(self.path)}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.path)!r}, tracks={self._n}, tags={len(self.tags)})"

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        self._reset()

    @property
    def summary(self) -> dict:
        return self._meta

    def _check_pid(self) -> None:
        # a forked child re-opens its own maps (inherited ones would work, but a fresh
        # process state is simpler to reason about and costs one open per shard)
        if self._pid != os.getpid():
            self._reset()

    def _load_index(self) -> np.ndarray:
        self._check_pid()
        if self._index is None:
            index = np.load(self.path / "index.npy")
            if len(index) != self._n:
                raise ValueError(f"{self.path}: index.npy has {len(index)} rows, dataset.json says {self._n}")
            self._offsets = np.ascontiguousarray(index["offset"])
            self._lengths = np.ascontiguousarray(index["length"])
            self._shard_ids = np.ascontiguousarray(index["shard"])
            self._splits = np.ascontiguousarray(index["split"])
            self._index = index
        return self._index

    def _shard(self, shard: int) -> np.memmap:
        mm = self._mmaps.get(shard)
        if mm is None:
            mm = np.memmap(self.path / self._meta["shards"][shard], dtype="<i2", mode="r")
            self._mmaps[shard] = mm
        return mm

    @property
    def lengths(self) -> np.ndarray:
        self._load_index()
        return self._lengths

    @property
    def labels(self) -> np.ndarray:
        self._check_pid()
        if self._labels is None:
            raw = np.load(self.path / "labels.npy")
            self._labels = raw.astype(np.float32)
        return self._labels

    @property
    def is_labeled(self) -> np.ndarray:
        self._load_index()
        return self._splits < UNLABELED

    def split(self, name: str) -> np.ndarray:
        code = parse_split(name)
        if code is None:
            raise ValueError("split name is empty")
        self._load_index()
        return np.flatnonzero(self._splits == code)

    def num_samples(self, i: int) -> int:
        self._load_index()
        return int(self._lengths[i])

    def read(self, i: int, start: int, length: int) -> np.ndarray:
        """``length`` float32 samples of track ``i`` from sample ``start`` (looping)."""
        self._load_index()
        length = int(length)
        if length < 0:
            raise ValueError("length must be >= 0")
        n = int(self._lengths[i])
        base = int(self._offsets[i])
        mm = self._shard(int(self._shard_ids[i]))
        start = int(start) % n
        if start + length <= n:
            raw = mm[base + start : base + start + length]
        else:
            raw = np.empty(length, dtype=np.int16)
            pos, cur = 0, start
            while pos < length:
                take = min(n - cur, length - pos)
                raw[pos : pos + take] = mm[base + cur : base + cur + take]
                pos += take
                cur = 0
        out = raw.astype(np.float32)
        out *= self._scale
        return out

    def random_crop(self, i: int, length: int, rng: np.random.Generator) -> np.ndarray:
        n = self.num_samples(i)
        start = int(rng.integers(0, n - length + 1)) if n >= length else int(rng.integers(0, n))
        return self.read(i, start, length)

    def evenly_spaced_crops(self, i: int, length: int, n: int) -> np.ndarray:
        starts = even_starts(self.num_samples(i), int(length), int(n))
        return np.stack([self.read(i, round(s), length) for s in starts])

    def _path_blob(self) -> bytes:
        if self._paths is None:
            self._paths = (self.path / "paths.bin").read_bytes()
        return self._paths

    def _group_names(self) -> list[str]:
        if self._groups is None:
            with open(self.path / "groups.json", encoding="utf-8") as f:
                self._groups = json.load(f)
        return self._groups

    def track_info(self, i: int) -> TrackInfo:
        row = self._load_index()[i]
        blob = self._path_blob()
        start, size = int(row["path_start"]), int(row["path_len"])
        path = blob[start : start + size].decode("utf-8", errors="surrogateescape")
        root = self._meta["roots"][int(row["root"])]
        group_id = int(row["group"])
        labels = np.load(self.path / "labels.npy", mmap_mode="r")[i] if self._labels is None else self._labels[i]
        n = int(row["length"])
        return TrackInfo(
            index=int(i), path=path, file=os.path.join(root, path) if root else path,
            group=self._group_names()[group_id] if group_id >= 0 else None,
            split=_SPLIT_NAMES[int(row["split"])], tags=[t for t, y in zip(self.tags, labels) if y],
            num_samples=n, duration=n / self.sample_rate,
        )


# ---------------------------------------------------------------------------------------------
# Store writer with completion journal
# ---------------------------------------------------------------------------------------------


class _Store:
    """Append-only shards + journal. Audio bytes are written (and flushed) before the
    journal record that makes them visible, so after a kill the journal never points at
    missing data; on open, each shard is cut back to its last journaled byte."""

    def __init__(self, out_dir: Path, shard_bytes: int):
        self.dir = out_dir
        self.shard_dir = out_dir / "shards"
        self.spill_dir = out_dir / "tmp"
        self.journal_path = out_dir / "journal.bin"
        self.failures_path = out_dir / "failures.jsonl"
        self.shard_bytes = int(shard_bytes)
        self._shard_f = None
        self._journal_f = None
        self._failures_f = None
        self._unsynced = 0
        self.cur = 0
        self.cur_size = 0  # samples in the current shard

    @staticmethod
    def shard_name(shard: int) -> str:
        return f"shards/{shard:05d}.i16"

    def open(self) -> np.ndarray:
        """Recover after an interruption; return the journal's valid records."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        if self.spill_dir.exists():
            shutil.rmtree(self.spill_dir)
        self.spill_dir.mkdir()
        data = self.journal_path.read_bytes() if self.journal_path.exists() else b""
        whole = len(data) // _JREC.itemsize * _JREC.itemsize
        recs = np.frombuffer(data[:whole], dtype=_JREC).copy()
        shard_files = {int(p.stem): p for p in self.shard_dir.glob("*.i16") if p.stem.isdigit()}
        top = max([*shard_files, *(recs["shard"][recs["status"] == _OK].tolist() or [0])], default=0)
        sizes = np.zeros(top + 1, dtype=np.int64)
        for sid, p in shard_files.items():
            sizes[sid] = p.stat().st_size // 2
        ok = recs["status"] == _OK
        shard = np.clip(recs["shard"], 0, top)
        end = recs["offset"] + recs["length"]
        valid = ~ok | ((recs["shard"] >= 0) & (recs["offset"] >= 0) & (recs["length"] > 0) & (end <= sizes[shard]))
        valid &= (recs["status"] == _OK) | (recs["status"] == _FAILED_REC)
        if whole != len(data) or not valid.all():
            recs = recs[valid]
            atomic_write(self.journal_path, lambda p: p.write_bytes(recs.tobytes()))
        extent = np.zeros(top + 1, dtype=np.int64)
        ok = recs["status"] == _OK
        np.maximum.at(extent, recs["shard"][ok], (recs["offset"] + recs["length"])[ok])
        for sid, p in shard_files.items():
            if p.stat().st_size != extent[sid] * 2:
                with open(p, "r+b") as f:
                    f.truncate(int(extent[sid]) * 2)
        self.cur = top
        self.cur_size = int(extent[top])
        self._journal_f = open(self.journal_path, "ab")
        self._failures_f = open(self.failures_path, "a", encoding="utf-8", errors="surrogateescape")
        return recs

    def _shard_file(self, nbytes: int):
        if self.cur_size > 0 and (self.cur_size * 2 + nbytes) > self.shard_bytes:
            self._close_shard()
            self.cur += 1
            self.cur_size = 0
        if self._shard_f is None:
            self._shard_f = open(self.dir / self.shard_name(self.cur), "ab")
        return self._shard_f

    def _close_shard(self) -> None:
        if self._shard_f is not None:
            self._shard_f.flush()
            os.fsync(self._shard_f.fileno())
            self._shard_f.close()
            self._shard_f = None

    def append_ok(self, key: int, payload, n: int, clipped: int) -> None:
        f = self._shard_file(n * 2)
        offset = self.cur_size
        if isinstance(payload, np.ndarray):
            f.write(payload.tobytes())
        else:
            with open(payload, "rb") as src:
                shutil.copyfileobj(src, f, 8 << 20)
            os.remove(payload)
        f.flush()
        rec = np.array([(key, _OK, self.cur, offset, n, clipped)], dtype=_JREC)
        self._journal_f.write(rec.tobytes())
        self._journal_f.flush()
        self.cur_size += n
        self._unsynced += n * 2
        if self._unsynced > (256 << 20):
            self.sync()

    def append_failed(self, key: int, file: str, reason: str) -> None:
        self._failures_f.write(json.dumps({"key": f"{key:016x}", "file": file, "reason": reason}) + "\n")
        self._failures_f.flush()
        rec = np.array([(key, _FAILED_REC, -1, 0, 0, 0)], dtype=_JREC)
        self._journal_f.write(rec.tobytes())
        self._journal_f.flush()

    def sync(self) -> None:
        for f in (self._shard_f, self._failures_f, self._journal_f):  # data before the journal
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
        self._unsynced = 0

    def close(self) -> None:
        self.sync()
        self._close_shard()
        for f in (self._journal_f, self._failures_f):
            if f is not None:
                f.close()
        self._journal_f = self._failures_f = None
        if self.spill_dir.exists():
            shutil.rmtree(self.spill_dir, ignore_errors=True)

    def failure_reasons(self) -> dict[int, str]:
        reasons: dict[int, str] = {}
        if self.failures_path.exists():
            with open(self.failures_path, encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                        reasons[int(item["key"], 16)] = str(item["reason"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line
        return reasons


def _latest_records(recs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and, for each, its last journal record."""
    if len(recs) == 0:
        return np.zeros(0, np.uint64), recs
    rev = recs[::-1]
    keys, first = np.unique(rev["key"], return_index=True)
    return keys, rev[first]
