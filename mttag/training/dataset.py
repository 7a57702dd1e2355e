"""Prepared datasets: audio decoded once into int16 memory-mapped shards, plus labels and splits.

Training reads random 10 s crops of hundreds of thousands of tracks, many times over.
:func:`prepare_dataset` decodes every track once (22,050 Hz mono, all cores) into a few
large append-only int16 shard files and builds the tag vocabulary and leak-free splits;
:class:`PreparedDataset` then reads any crop of any track with one memory-mapped slice.

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

Building: ``prepare_dataset(tracks, out_dir, top_tags=50, min_count=10, ratios=(0.8, 0.1, 0.1),
seed=0, workers=os.cpu_count(), tags_vocab=None, ...) -> PreparedDataset`` takes any iterable
of :class:`TrackSpec` (``path``, ``tags`` or ``None`` for unlabelled, ``group`` (artist or
stand-in), ``split`` or ``None``, ``root``). Source readers produce them lazily:
:func:`tracks_from_annotations` (CSV/TSV), :func:`tracks_from_cals` (the authors' CALS split
files), :func:`tracks_from_metadata` (tags embedded in the files, see :mod:`mttag.filetags.reader`),
:func:`tracks_from_folder` (untagged audio for the unlabelled set).

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

import codecs
import contextlib
import csv
import hashlib
import json
import os
import shutil
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.decode import AudioError, check_decoded, check_duration, even_starts, iter_audio_files, probe, read_segment
from ..filetags.reader import clean_tags
from ..util.display import printable
from ..util.fileio import ExclusiveLock, atomic_write

FORMAT = "mttag-prepared"
FORMAT_VERSION = 1
SAMPLE_RATE = 22050
INT16_SCALE = 32768.0
DEFAULT_SHARD_BYTES = 1 << 30
SEGMENT_SECONDS = 300.0  # longer tracks are decoded in segments and spilled to a temp file

SPLITS = ("train", "valid", "test", "unlabeled")
TRAIN, VALID, TEST, UNLABELED, EXCLUDED, FAILED = 0, 1, 2, 3, 4, 5
_SPLIT_NAMES = ("train", "valid", "test", "unlabeled", "excluded", "failed")
_SPLIT_ALIASES = {
    "train": TRAIN, "training": TRAIN, "valid": VALID, "val": VALID, "validation": VALID, "dev": VALID,
    "test": TEST, "testing": TEST, "eval": TEST, "unlabeled": UNLABELED, "unlabelled": UNLABELED,
    "student": UNLABELED,
}

_OK, _FAILED_REC = 1, 2
_JREC = np.dtype([("key", "<u8"), ("status", "<i4"), ("shard", "<i4"), ("offset", "<i8"),
                  ("length", "<i8"), ("clipped", "<i8")])
_INDEX = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("length", "<i8"), ("split", "i1"),
                   ("group", "<i4"), ("root", "<i2"), ("path_start", "<i8"), ("path_len", "<i4"),
                   ("row", "<i8")])


def parse_split(name: str | None) -> int | None:
    """Split name (with aliases such as ``val``, ``student``) → code; ``None``/empty → ``None``."""
    if name is None:
        return None
    key = str(name).strip().lower()
    if not key:
        return None
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"unknown split {name!r} (expected train, valid, test or unlabeled)")
    return _SPLIT_ALIASES[key]


@dataclass
class TrackSpec:
    """One source track.

    ``path``: the file, as the source names it (relative to ``root`` when ``root`` is set);
    ``tags``: list of tag names, or ``None`` for an unlabelled track (an empty list is a
    labelled track with no tags); ``group``: artist or its stand-in (album/folder); ``None``
    makes the track its own group; ``split``: a given split (train/valid/test/unlabeled) or
    ``None`` to let :func:`prepare_dataset` assign one.
    """

    path: str
    tags: list[str] | None = None
    group: str | None = None
    split: str | None = None
    root: str | None = None

    @property
    def file(self) -> str:
        return os.path.join(self.root, self.path) if self.root else str(self.path)


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


@dataclass
class PrepareProgress:
    """Passed to ``on_progress``: ``stage`` is ``"scan"`` (reading the source; ``total`` None),
    ``"decode"`` or ``"finalize"``."""

    stage: str
    done: int
    total: int | None
    failed: int = 0
    seconds: float = 0.0  # audio decoded so far in this run


class PrepareInterrupted(Exception):
    """The run stopped before every track was decoded (Ctrl-C or ``stop_after``); what was
    written is consistent, and calling :func:`prepare_dataset` again resumes."""

    def __init__(self, done: int, remaining: int):
        self.done, self.remaining = done, remaining
        super().__init__(f"interrupted after {done} tracks, {remaining} left; run again to resume")


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
# Source readers
# ---------------------------------------------------------------------------------------------


def _folder_group(path: str) -> str | None:
    parent = os.path.dirname(os.path.normpath(path))
    return f"folder:{parent}" if parent and parent not in (".", os.sep) else None


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _first_bad_line(path: Path, encoding: str) -> tuple[int, str] | None:
    """(line number, reason) of the first line of ``path`` that is not valid ``encoding``
    text, or None when the whole file decodes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if any(head.startswith(bom) for bom, _ in _BOMS[1:]) or "16" in encoding or "32" in encoding:
        # UTF-16/32: lines are not byte lines; decode the whole file and count the newlines before the error
        data = path.read_bytes()
        try:
            data.decode(encoding)
            return None
        except UnicodeDecodeError as exc:
            text = data[: exc.start].decode(encoding, errors="replace")
            return text.count("\n") + 1, exc.reason
    decoder = codecs.getincrementaldecoder(encoding)()
    line_no = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as exc:
                start = max(0, min(exc.start, len(line) - 1))
                return line_no, f"byte 0x{line[start:start + 1].hex()} at column {start + 1}"
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            return max(line_no, 1), f"{exc.reason} at the end of the file"
    return None


def annotation_encoding(path: str | os.PathLike) -> tuple[str, str | None]:
    """The text encoding of an annotations file, and a warning when it had to be guessed.

    A byte-order mark decides (UTF-8, UTF-16 or UTF-32, as Excel's "Unicode text" writes);
    else UTF-8 when the whole file is valid UTF-8; else Windows-1252 (cp1252, what Excel
    on Windows writes as "CSV"), or Latin-1 for the few bytes cp1252 leaves undefined,
    with a warning naming the first line that is not UTF-8."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, None
    bad = _first_bad_line(path, "utf-8")
    if bad is None:
        return "utf-8", None
    fallback = "cp1252" if _first_bad_line(path, "cp1252") is None else "latin-1"
    name = {"cp1252": "Windows-1252 (cp1252)", "latin-1": "Latin-1"}[fallback]
    return fallback, (f"{path}:{bad[0]}: not UTF-8 ({bad[1]}); reading the file as {name}. "
                      "If names come out wrong, give its encoding with --encoding")


def tracks_from_annotations(csv_path: str | os.PathLike, audio_root: str | os.PathLike | None = None,
                            path_col: str = "path", tags_col: str = "tags", sep: str = ",",
                            artist_col: str = "artist", split_col: str = "split",
                            delimiter: str | None = None, normalize: bool = True,
                            encoding: str | None = None) -> Iterator[TrackSpec]:
    """Tracks from a CSV/TSV file.

    ``path_col`` holds paths relative to ``audio_root`` (default: the file's folder),
    ``tags_col`` tags separated by ``sep`` (an empty cell: unlabelled). Optional columns
    ``artist_col`` (grouping for the split; without it, the track's folder is the group) and
    ``split_col`` (train/valid/test/unlabeled, empty: assign). The delimiter is a tab for
    ``.tsv``/``.tab`` files or when the header has tabs and no commas, else a comma.
    ``normalize``: lower-case tags and collapse whitespace.

    ``encoding``: the file's text encoding; ``None`` detects it (:func:`annotation_encoding`:
    byte-order mark, UTF-8, else cp1252 with a :class:`UserWarning`). A file that is not
    valid text in its encoding raises ``ValueError`` naming the file and the line.
    """
    from ..filetags.reader import normalize_artist

    csv_path = Path(csv_path)
    root = str(audio_root) if audio_root is not None else str(csv_path.parent)
    if os.path.exists(csv_path) and not csv_path.is_file():
        # a FIFO would block the reader forever; a folder or a device is no annotations file
        raise ValueError(f"{printable(csv_path)}: not a regular file; annotations are a CSV or TSV file")
    shown = encoding
    if encoding is None:
        encoding, note = annotation_encoding(csv_path)
        shown = encoding
        if note:
            import warnings

            warnings.warn(note, UserWarning, stacklevel=2)
    else:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"--encoding {encoding}: unknown encoding (examples: utf-8, cp1252, latin-1, utf-16)") from None
        if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
            encoding = "utf-8-sig"  # a byte-order mark is not part of the header
    try:
        yield from _read_annotations(csv_path, root, encoding, path_col, tags_col, sep, artist_col, split_col,
                                     delimiter, normalize, normalize_artist)
    except UnicodeDecodeError:
        bad = _first_bad_line(csv_path, encoding)
        where = f"{csv_path}:{bad[0]}" if bad else str(csv_path)
        why = f" ({bad[1]})" if bad else ""
        raise ValueError(f"{where}: not valid {shown} text{why}; give the file's encoding with --encoding "
                         "(e.g. cp1252, latin-1, utf-16)") from None


class _bounded_rows:
    """A ``csv.reader`` whose "field larger than field limit (131072)" is a one-line
    ``ValueError`` naming the file and line. Such a field is almost always a quote left
    open, which swallows the lines after it: the rows read past it cannot be trusted, so
    the file is refused rather than read on. (The limit is process-wide: not raised here.)"""

    def __init__(self, reader, path: Path):
        self._reader = reader
        self._path = path

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def __iter__(self):
        return self

    def __next__(self) -> list[str]:
        try:
            return next(self._reader)
        except csv.Error as exc:
            raise ValueError(f"{printable(self._path)}:{self._reader.line_num}: {exc} "
                             f"(a quote left open?); not a usable annotations file") from None


def _read_annotations(csv_path, root, encoding, path_col, tags_col, sep, artist_col, split_col, delimiter,
                      normalize, normalize_artist) -> Iterator[TrackSpec]:
    with open(csv_path, newline="", encoding=encoding) as f:
        header_line = f.readline()
        if delimiter is None:
            tabbed = csv_path.suffix.lower() in (".tsv", ".tab") or ("\t" in header_line and "," not in header_line)
            delimiter = "\t" if tabbed else ","
        f.seek(0)
        if header_line.startswith("\ufeff"):
            f.read(1)
        reader = _bounded_rows(csv.reader(f, delimiter=delimiter), csv_path)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{csv_path}: empty annotations file") from None
        lower = {h.lower(): i for i, h in enumerate(header)}

        def column(name: str, required: bool) -> int | None:
            if name in header:
                return header.index(name)
            if name.lower() in lower:
                return lower[name.lower()]
            if required:
                raise ValueError(f"{csv_path}: no column {name!r} (columns: {', '.join(header)})")
            return None

        ip, it = column(path_col, True), column(tags_col, True)
        ia, isplit = column(artist_col, False), column(split_col, False)
        for row in reader:
            line_no = reader.line_num
            if not row or ip >= len(row) or not row[ip].strip():
                continue
            path = row[ip].strip()
            cell = row[it] if it < len(row) else ""
            tags = clean_tags(cell.split(sep) if sep else [cell], normalize) if cell.strip() else []
            artist = row[ia].strip() if ia is not None and ia < len(row) else ""
            group = normalize_artist(artist) if artist else None
            split = row[isplit].strip() if isplit is not None and isplit < len(row) else ""
            try:
                code = parse_split(split)
            except ValueError as exc:
                raise ValueError(f"{csv_path}:{line_no}: {exc}") from None
            yield TrackSpec(path=path, tags=tags or None, group=group or _folder_group(path),
                            split=_SPLIT_NAMES[code] if code is not None else None, root=root)


CALS_AUDIO_EXTENSIONS = (".wav", ".mp3", ".clip.mp3", ".flac", ".ogg", ".m4a")


def _cals_rel(track_id: str, ext: str) -> str:
    return f"{track_id[2]}/{track_id[3]}/{track_id[4]}/{track_id}{ext}"


def tracks_from_cals(splits_dir: str | os.PathLike, audio_root: str | os.PathLike,
                     ext: str | None = None) -> Iterator[TrackSpec]:
    """The authors' CALS split (docs/prepare.md): ``{train,valid,test}_ids.npy`` with
    ``{train,valid,test}_binaries.npy`` (N×50, :data:`mttag.inference.vocab.CALS_TAGS` order) and
    ``student_ids.npy`` (unlabelled, optional); audio at
    ``{id[2]}/{id[3]}/{id[4]}/{id}{ext}`` under ``audio_root``. ``ext=None`` looks at the
    first training ids for ``.wav``, ``.mp3``, ``.clip.mp3`` ... (default ``.wav``).
    Prepare with ``tags_vocab=CALS_TAGS``. CALS has no artist column and already keeps
    artists apart, so every track is its own group here.
    """
    from ..inference.vocab import CALS_TAGS

    splits_dir, root = Path(splits_dir), str(audio_root)

    def load(name: str, required: bool) -> np.ndarray | None:
        path = splits_dir / name
        if not path.is_file():
            if required:
                raise ValueError(f"{splits_dir}: missing {name} (expected the CALS split files: train_ids.npy, valid_ids.npy, test_ids.npy; see docs/prepare.md)")
            return None
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path}: cannot read ({exc})") from None

    train_ids = load("train_ids.npy", True)
    if ext is None:
        ext = ".wav"
        probe_ids = [str(t) for t in train_ids[:20]]
        for candidate in CALS_AUDIO_EXTENSIONS:
            if any(os.path.exists(os.path.join(root, _cals_rel(t, candidate))) for t in probe_ids):
                ext = candidate
                break
    for name, split in (("train", "train"), ("valid", "valid"), ("test", "test"), ("student", "unlabeled")):
        ids = train_ids if name == "train" else load(f"{name}_ids.npy", name != "student")
        if ids is None:
            continue
        ids = np.asarray(ids).reshape(-1)
        binaries = None
        if split != "unlabeled":
            binaries = load(f"{name}_binaries.npy", True)
            if binaries.ndim != 2 or binaries.shape != (len(ids), len(CALS_TAGS)):
                raise ValueError(f"{splits_dir}/{name}_binaries.npy: shape {binaries.shape}, expected "
                                 f"({len(ids)}, {len(CALS_TAGS)})")
        for j, track_id in enumerate(ids):
            track_id = str(track_id).strip()
            if len(track_id) < 5:
                raise ValueError(f"{splits_dir}/{name}_ids.npy: {track_id!r} is not an MSD track id")
            tags = None if binaries is None else [CALS_TAGS[k] for k in np.flatnonzero(binaries[j])]
            yield TrackSpec(path=_cals_rel(track_id, ext), tags=tags, group=None, split=split, root=root)


def tracks_from_metadata(folder: str | os.PathLike, fields: Sequence[str] = ("genre",),
                         separators: Sequence[str] | None = None,
                         artist_fields: Sequence[str] = ("artist", "albumartist"),
                         on_error: Callable | None = None) -> Iterator[TrackSpec]:
    """Audio files under ``folder`` labelled with the tags embedded in them (``fields``, e.g.
    genre, mood, grouping; see :mod:`mttag.filetags.reader`). Files without any value in those
    fields are unlabelled. The group is the artist tag, else the file's folder.

    A subfolder that cannot be listed is passed to ``on_error`` (a
    :class:`mttag.audio.decode.UnlistableFolder`), or without it raised once the readable files
    have been yielded: it is never skipped in silence."""
    from ..filetags.reader import DEFAULT_SEPARATORS, read_file_tags

    folder = str(folder)
    seps = DEFAULT_SEPARATORS if separators is None else separators
    for file in iter_audio_files([folder], on_error=on_error):
        rel = os.path.relpath(file, folder) if os.path.isdir(folder) else str(file)
        tags, artist = read_file_tags(file, fields, seps, artist_fields)
        yield TrackSpec(path=rel, tags=tags or None, group=artist or _folder_group(rel),
                        root=folder if os.path.isdir(folder) else None)


def tracks_from_folder(folder: str | os.PathLike, read_artist: bool = True,
                       on_error: Callable | None = None) -> Iterator[TrackSpec]:
    """Untagged audio under ``folder`` for the unlabelled set; the group (for the rule that
    excludes unlabelled tracks by valid/test artists) is the artist tag if any, else the folder.
    Unlistable subfolders: as in :func:`tracks_from_metadata`."""
    from ..filetags.reader import read_file_tags

    folder = str(folder)
    is_dir = os.path.isdir(folder)
    for file in iter_audio_files([folder], on_error=on_error):
        rel = os.path.relpath(file, folder) if is_dir else str(file)
        artist = read_file_tags(file, (), artist_fields=("artist", "albumartist"))[1] if read_artist else None
        yield TrackSpec(path=rel, tags=None, group=artist or _folder_group(rel), split="unlabeled",
                        root=folder if is_dir else None)


# ---------------------------------------------------------------------------------------------
# Catalog: the source tracks, columnar (no per-track Python objects)
# ---------------------------------------------------------------------------------------------


def _file_key(file: str) -> int:
    data = os.path.abspath(file).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class _Catalog:
    def __init__(self) -> None:
        self.paths = bytearray()
        self.path_end = array("q")
        self.roots: dict[str, int] = {}
        self.root_ids = array("h")
        self.groups: dict[str, int] = {}
        self.group_ids = array("i")
        self.given = array("b")
        self.has_tags = array("b")
        self.tag_names: dict[str, int] = {}
        self.tag_ids = array("i")
        self.tag_end = array("q")
        self.keys = array("Q")

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, spec: TrackSpec) -> None:
        path = os.fspath(spec.path)
        root = os.fspath(spec.root) if spec.root else ""
        self.paths += path.encode("utf-8", "surrogateescape")
        self.path_end.append(len(self.paths))
        rid = self.roots.setdefault(root, len(self.roots))
        if rid > 32767:
            raise ValueError("more than 32768 distinct audio roots")
        self.root_ids.append(rid)
        self.keys.append(_file_key(os.path.join(root, path) if root else path))
        group = spec.group.strip() if isinstance(spec.group, str) else None
        self.group_ids.append(self.groups.setdefault(group, len(self.groups)) if group else -1)
        code = parse_split(spec.split)
        self.given.append(-1 if code is None else code)
        if spec.tags is None:
            self.has_tags.append(0)
        else:
            self.has_tags.append(1)
            for tag in clean_tags(spec.tags, normalize=False):  # sources may hand over raw lists
                self.tag_ids.append(self.tag_names.setdefault(tag, len(self.tag_names)))
        self.tag_end.append(len(self.tag_ids))

    def path(self, i: int) -> str:
        start = self.path_end[i - 1] if i else 0
        return bytes(self.paths[start : self.path_end[i]]).decode("utf-8", "surrogateescape")

    def root_names(self) -> list[str]:
        return list(self.roots)

    def group_names(self) -> list[str]:
        return list(self.groups)


# ---------------------------------------------------------------------------------------------
# Vocabulary and splits
# ---------------------------------------------------------------------------------------------


def choose_vocabulary(counts: dict[str, int], top_tags: int, min_count: int) -> list[str]:
    """The ``top_tags`` most frequent tags with at least ``min_count`` tracks (ties by name)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [tag for tag, n in ranked if n >= min_count][:top_tags]


def stratified_group_split(counts: np.ndarray, sizes: np.ndarray, ratios: Sequence[float], seed: int = 0,
                           preassigned: np.ndarray | None = None) -> np.ndarray:
    """Iterative stratification (Sechidis et al., 2011) over groups.

    ``counts``: G×T, how many of the group's tracks carry each tag; ``sizes``: tracks per
    group; ``ratios``: target share of each subset; ``preassigned``: subset per group or -1
    (pre-assigned groups count towards the targets). Returns the subset of every group.
    The rarest remaining tag is handled first; its groups (largest first, ties in a
    seed-determined order) go to the subset that still most wants that tag, then the one
    most short of tracks overall. Deterministic for a given seed.
    """
    counts = np.asarray(counts, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    ratios = np.asarray(ratios, dtype=np.float64)
    ratios = ratios / ratios.sum()
    n_groups, n_tags = counts.shape
    rng = np.random.default_rng(seed)
    out = np.full(n_groups, -1, dtype=np.int64) if preassigned is None else np.asarray(preassigned, np.int64).copy()
    desired = ratios[:, None] * counts.sum(0)[None, :]
    desired_n = ratios * sizes.sum()
    fixed = out >= 0
    for k in range(len(ratios)):
        desired[k] -= counts[out == k].sum(0)
        desired_n[k] -= sizes[out == k].sum()
    allowed = ratios > 0
    has = counts > 0
    free = ~fixed
    remaining = has[free].sum(0).astype(np.int64)
    # a fixed random order breaks ties between equal groups reproducibly
    tiebreak = rng.permutation(n_groups)

    def assign(g: int, want: np.ndarray) -> None:
        best = np.flatnonzero(allowed & (want == want[allowed].max()))
        if len(best) > 1:
            sub = desired_n[best]
            best = best[sub == sub.max()]
        k = int(best[0] if len(best) == 1 else rng.choice(best))
        out[g] = k
        desired[k] -= counts[g]
        desired_n[k] -= sizes[g]

    while True:
        live = np.flatnonzero(remaining > 0)
        if len(live) == 0:
            break
        t = int(live[np.argmin(remaining[live])])
        members = np.flatnonzero(free & has[:, t])
        order = np.lexsort((tiebreak[members], -sizes[members]))
        for g in members[order]:
            assign(int(g), desired[:, t])
            free[g] = False
            remaining -= has[g]
    for g in np.flatnonzero(free):  # groups without any tag: balance track counts
        assign(int(g), desired_n)
        free[g] = False
    return out


# ---------------------------------------------------------------------------------------------
# Decoding (worker side)
# ---------------------------------------------------------------------------------------------


def _to_int16(x: np.ndarray) -> tuple[np.ndarray, int]:
    clipped = int(np.count_nonzero(np.abs(x) > 1.0))
    y = np.rint(x * np.float32(INT16_SCALE))
    np.clip(y, -32768, 32767, out=y)
    return y.astype("<i2"), clipped


def _decode_track(key: int, file: str, sample_rate: int, max_seconds: float | None, spill_dir: str):
    info = probe(file)
    check_duration(info)
    start, total, limited = 0.0, info.duration, False
    if max_seconds and info.duration > max_seconds:
        start, total, limited = (info.duration - max_seconds) / 2, float(max_seconds), True
    if total <= SEGMENT_SECONDS + 1:
        x = read_segment(info, start, total if limited else None, sample_rate)
        check_decoded(info, x.size, sample_rate)
        y, clipped = _to_int16(x)
        return y, len(y), clipped
    spill = os.path.join(spill_dir, f"{key:016x}.i16")
    n = clipped = 0
    try:
        with open(spill, "wb") as f:
            t, end = start, start + total
            while True:
                last = end - t <= SEGMENT_SECONDS + 1
                x = read_segment(info, t, (end - t if limited else None) if last else SEGMENT_SECONDS, sample_rate)
                if x.size == 0:
                    break
                y, c = _to_int16(x)
                f.write(y.tobytes())
                n, clipped = n + len(y), clipped + c
                if last:
                    break
                t += SEGMENT_SECONDS
        check_decoded(info, n, sample_rate)
    except BaseException:
        if os.path.exists(spill):
            os.remove(spill)
        raise
    return spill, n, clipped


def _decode_job(job: tuple) -> tuple:
    """Worker entry point: ``(row, key, file, sample_rate, max_seconds, spill_dir)`` →
    ``(row, key, ok, payload, samples, clipped, reason)``; never raises for a bad file."""
    row, key, file, sample_rate, max_seconds, spill_dir = job
    try:
        payload, n, clipped = _decode_track(key, file, sample_rate, max_seconds, spill_dir)
        return row, key, True, payload, n, clipped, ""
    except AudioError as exc:
        return row, key, False, None, 0, 0, exc.reason
    except MemoryError:
        return row, key, False, None, 0, 0, "out of memory while decoding"
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
        return row, key, False, None, 0, 0, f"unexpected error ({type(exc).__name__}: {str(exc)[:200]})"


def _worker_init() -> None:
    import signal
    import sys
    import threading

    # the parent handles Ctrl-C and SIGTERM (as an interruption) and drains the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # If the parent is killed (SIGKILL, OOM killer) the workers must not linger forever
    # waiting for work: the kernel kills them on Linux, a watchdog elsewhere.
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="mttag-parent-watch", daemon=True).start()


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


# ---------------------------------------------------------------------------------------------
# prepare_dataset
# ---------------------------------------------------------------------------------------------


def _check_state(out_dir: Path, state: dict, create: bool) -> None:
    """Refuse an ``out_dir`` holding something else, or a dataset made with settings that
    change the stored audio; with ``create``, make the directory and record the settings."""
    path = out_dir / "state.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a directory")
    if path.exists():
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        for key in ("format", "version", "sample_rate", "max_seconds"):
            if old.get(key) != state.get(key):
                raise ValueError(f"{out_dir} holds a dataset prepared with {key}={old.get(key)!r}, not "
                                 f"{state.get(key)!r}; use the same settings to resume, or another directory")
        return
    if out_dir.exists() and any(p.name not in (".DS_Store", ".lock") for p in out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and holds no mttag dataset; choose a new or empty directory")
    if not create:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(state, indent=1), encoding="utf-8"))


def _lock(out_dir: Path) -> ExclusiveLock:
    """An exclusive lock on ``out_dir`` so that two runs never write one store; a second run
    is refused with :class:`mttag.util.fileio.LockedError` naming the first (pid, command)."""
    return ExclusiveLock(out_dir / ".lock", f"another mttag prepare into {out_dir}")


def _save_npy(path: Path, array_: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array_)


def prepare_dataset(
    tracks: Iterable[TrackSpec],
    out_dir: str | os.PathLike,
    top_tags: int = 50,
    min_count: int = 10,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    workers: int | None = None,
    tags_vocab: Sequence[str] | None = None,
    *,
    max_seconds: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    retry_failed: bool = False,
    exclude_unlabeled_from: Sequence[str] = ("valid", "test"),
    on_progress: Callable[[PrepareProgress], None] | None = None,
    stop_after: int | None = None,
) -> PreparedDataset:
    """Decode ``tracks`` into ``out_dir`` and build vocabulary and splits; return the dataset.

    Vocabulary: ``tags_vocab`` if given (kept whole, in order; source tags are matched to it
    case-insensitively), else the ``top_tags`` most frequent tags with at least ``min_count``
    labelled tracks; other tags are dropped and counted. A track is labelled when its
    source gives tags (``tags`` not None) and, after dropping, at least one tag remains or
    its given split is train/valid/test; otherwise it joins the unlabelled pool.

    Splits: given splits are kept; labelled tracks without one are split at the group level
    by iterative stratification with ``ratios`` (train, valid, test) and ``seed``; a group
    that has given-split tracks goes where those are. Unlabelled tracks whose group is in
    one of ``exclude_unlabeled_from`` are excluded (not decoded), as CALS did.

    Decoding runs in ``workers`` processes (default: all cores; 1: in this process), at most
    a few tracks in flight, tracks longer than 5 minutes decoded in segments.
    ``max_seconds`` keeps only that many seconds from the middle of longer tracks.
    A bad file is recorded (``failures.csv``) and never stops the run. Re-running on the
    same ``out_dir`` resumes: tracks already journaled are not decoded again (failed ones
    neither, unless ``retry_failed``); vocabulary and splits are recomputed, so they may be
    changed on a re-run without decoding again. ``stop_after``: stop (raising
    :class:`PrepareInterrupted`) after that many tracks were decoded in this call.
    """
    started = time.time()
    out_dir = Path(out_dir)
    settings = _Settings.check(top_tags, min_count, ratios, seed, workers, tags_vocab, max_seconds, sample_rate,
                               shard_bytes, retry_failed, exclude_unlabeled_from, on_progress, stop_after, started)
    _check_state(out_dir, settings.state, create=False)  # fail before a long scan of the sources
    with contextlib.ExitStack() as lock:
        locked = out_dir.is_dir()
        if locked:  # a run into it may be going on: refuse before a long scan, too
            lock.enter_context(_lock(out_dir))
        # out_dir is created only after planning, so a bad source leaves no empty dataset behind
        plan = _make_plan(_scan(tracks, settings.notify), out_dir, settings)
        store, journal = _open_store(plan, lock, locked)
        decoder = _Decoder(plan, store, _rows_to_decode(plan, journal))
        decoder.run()
        settings.notify(PrepareProgress("finalize", decoder.done, decoder.total, decoder.failed, decoder.seconds))
        _finalize(plan, _collect(plan, decoder))
        return PreparedDataset(out_dir)


@dataclass(frozen=True)
class _Settings:
    """The arguments of :func:`prepare_dataset`, checked before any source is read, so that a
    mistake is reported at once and not after a long scan."""

    top_tags: int
    min_count: int
    ratios: tuple[float, ...]  # normalised to sum 1
    seed: int
    workers: int
    tags_vocab: Sequence[str] | None
    max_seconds: float | None
    sample_rate: int
    shard_bytes: int
    retry_failed: bool
    exclude_unlabeled_from: Sequence[str]
    exclude_codes: frozenset
    notify: Callable[[PrepareProgress], None]
    stop_after: int | None
    started: float
    state: dict  # what must match to resume (state.json)

    @classmethod
    def check(cls, top_tags, min_count, ratios, seed, workers, tags_vocab, max_seconds, sample_rate, shard_bytes,
              retry_failed, exclude_unlabeled_from, on_progress, stop_after, started) -> _Settings:
        workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
        if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0 or ratios[0] <= 0:
            raise ValueError("ratios must be three non-negative numbers (train, valid, test) with train > 0, "
                             f"got {tuple(ratios)}")
        ratios = tuple(float(r) / sum(ratios) for r in ratios)
        exclude_codes = frozenset(parse_split(s) for s in exclude_unlabeled_from)
        state = {"format": FORMAT, "version": FORMAT_VERSION, "sample_rate": int(sample_rate),
                 "max_seconds": float(max_seconds) if max_seconds else None}
        return cls(top_tags, min_count, ratios, seed, workers, tags_vocab, max_seconds, sample_rate, shard_bytes,
                   retry_failed, exclude_unlabeled_from, exclude_codes, on_progress or (lambda p: None), stop_after,
                   started, state)

    def params(self) -> dict:  # recorded in dataset.json
        return dict(top_tags=self.top_tags, min_count=self.min_count, ratios=list(self.ratios), seed=self.seed,
                    max_seconds=self.max_seconds, tags_vocab=self.tags_vocab is not None,
                    exclude_unlabeled_from=list(self.exclude_unlabeled_from), sample_rate=self.sample_rate,
                    shard_bytes=self.shard_bytes)


@dataclass
class _Plan:
    """Every source row's fate, decided before any audio is decoded: its labels and its split.

    Arrays are per catalog row (source order, duplicates included). The plan is recomputed
    on every run, also on a resume, so vocabulary and splits can change without decoding
    again; only the audio comes from the journal.
    """

    out_dir: Path
    settings: _Settings
    cat: _Catalog
    keys: np.ndarray  # file key (journal identity) per row
    group_ids: np.ndarray  # -1: no group
    roots: list[str]
    root_ids: np.ndarray
    unique: np.ndarray  # False for a later row naming an earlier row's file
    vocab: list[str]
    labels: np.ndarray  # rows × tags, uint8; all zero for unlabelled rows
    dropped: dict[str, int]  # source tags outside the vocabulary → occurrences
    lost_labels: int  # rows labelled in the source that kept no vocabulary tag
    split: np.ndarray  # split code; EXCLUDED rows are never decoded
    conflicts: int  # groups whose given splits disagree
    split_source: str
    excluded: int  # unique rows excluded by the unlabelled-group rule

    def file(self, i: int) -> str:
        root = self.roots[self.root_ids[i]]
        p = self.cat.path(i)
        return os.path.join(root, p) if root else p

    def wanted(self) -> np.ndarray:
        return self.split <= UNLABELED


def _scan(tracks: Iterable[TrackSpec], notify: Callable[[PrepareProgress], None]) -> _Catalog:
    cat = _Catalog()
    for spec in tracks:
        cat.add(spec)
        if len(cat) % 1000 == 0:
            notify(PrepareProgress("scan", len(cat), None))
    notify(PrepareProgress("scan", len(cat), len(cat)))
    if len(cat) == 0:
        raise ValueError("no tracks found in the given sources")
    return cat


def _make_plan(cat: _Catalog, out_dir: Path, settings: _Settings) -> _Plan:
    n_src = len(cat)
    keys = np.frombuffer(cat.keys, dtype=np.uint64)
    given = np.frombuffer(cat.given, dtype=np.int8).astype(np.int64)
    group_ids = np.frombuffer(cat.group_ids, dtype=np.int32).astype(np.int64)
    _, first = np.unique(keys, return_index=True)
    unique = np.zeros(n_src, dtype=bool)
    unique[first] = True
    vocab, labels, labeled, dropped, lost_labels = _label_rows(cat, given, unique, settings)
    split, conflicts, split_source = _split_rows(labels, labeled, given, group_ids, len(cat.groups), unique, settings)
    return _Plan(out_dir=out_dir, settings=settings, cat=cat, keys=keys, group_ids=group_ids,
                 roots=cat.root_names(), root_ids=np.frombuffer(cat.root_ids, dtype=np.int16), unique=unique,
                 vocab=vocab, labels=labels, dropped=dropped, lost_labels=lost_labels, split=split,
                 conflicts=conflicts, split_source=split_source, excluded=int(((split == EXCLUDED) & unique).sum()))


def _label_rows(cat: _Catalog, given: np.ndarray, unique: np.ndarray, settings: _Settings):
    """Choose the vocabulary and label every row: ``(vocab, labels, labeled, dropped, lost_labels)``.

    Only the first row of a file and rows not given as unlabelled count towards the
    vocabulary, so a duplicate or a student track cannot push a tag into it."""
    n_src = len(cat)
    has_tags = np.frombuffer(cat.has_tags, dtype=np.int8).astype(bool)
    tag_ids = np.frombuffer(cat.tag_ids, dtype=np.int32).astype(np.int64) if len(cat.tag_ids) else np.zeros(0, np.int64)
    tag_end = np.frombuffer(cat.tag_end, dtype=np.int64)
    tag_start = np.concatenate([[0], tag_end[:-1]])
    tag_owner = np.repeat(np.arange(n_src), tag_end - tag_start)
    source_labeled = has_tags & unique & (given != UNLABELED)
    counted = source_labeled[tag_owner]
    raw_names = list(cat.tag_names)
    raw_counts = np.bincount(tag_ids[counted], minlength=len(raw_names))
    if settings.tags_vocab is not None:
        from ..filetags.reader import normalize_tag

        vocab = list(settings.tags_vocab)
        lookup = {normalize_tag(t): i for i, t in enumerate(vocab)}
        raw_to_vocab = np.array([lookup.get(normalize_tag(t), -1) for t in raw_names], dtype=np.int64)
    else:
        vocab = choose_vocabulary({t: int(c) for t, c in zip(raw_names, raw_counts) if c > 0}, settings.top_tags,
                                  settings.min_count)
        position = {t: i for i, t in enumerate(vocab)}
        raw_to_vocab = np.array([position.get(t, -1) for t in raw_names], dtype=np.int64)
    mapped = raw_to_vocab[tag_ids] if len(tag_ids) else np.zeros(0, np.int64)
    keep = counted & (mapped >= 0)
    labels = np.zeros((n_src, len(vocab)), dtype=np.uint8)
    labels[tag_owner[keep], mapped[keep]] = 1
    dropped_counts = np.bincount(tag_ids[counted & (mapped < 0)], minlength=len(raw_names))
    dropped = {raw_names[i]: int(dropped_counts[i]) for i in np.flatnonzero(dropped_counts)}
    # a track given a labelled split stays labelled without tags: the split was chosen for it
    labeled = source_labeled & (labels.any(axis=1) | ((given >= 0) & (given < UNLABELED)))
    lost_labels = int((source_labeled & ~labeled).sum())
    labels[~labeled] = 0
    return vocab, labels, labeled, dropped, lost_labels


def _split_rows(labels: np.ndarray, labeled: np.ndarray, given: np.ndarray, group_ids: np.ndarray, n_named: int,
                unique: np.ndarray, settings: _Settings) -> tuple[np.ndarray, int, str]:
    """Every row's split code, the number of groups with conflicting given splits, and
    where the labelled splits came from. Splits are per group so that no artist leaks
    between train and test."""
    n_src = len(given)
    gkey = np.where(group_ids >= 0, group_ids, n_named + np.arange(n_src))  # no group: own group
    split = np.full(n_src, UNLABELED, dtype=np.int64)
    lab_idx = np.flatnonzero(labeled)
    conflicts = 0
    split_source = "none"
    if len(lab_idx):
        groups_l, inv = np.unique(gkey[lab_idx], return_inverse=True)
        split[lab_idx], conflicts, split_source = _split_labeled(inv, len(groups_l), labels[lab_idx], given[lab_idx],
                                                                 settings)
        split[_unlabeled_to_exclude(split, labeled, unique, gkey, groups_l, inv, settings.exclude_codes)] = EXCLUDED
    split[~unique] = EXCLUDED
    return split, conflicts, split_source


def _split_labeled(inv: np.ndarray, n_g: int, labels: np.ndarray, given: np.ndarray,
                   settings: _Settings) -> tuple[np.ndarray, int, str]:
    """Splits of the labelled rows, ``inv`` being each row's group (0..n_g-1). A given split
    wins for its row and pulls the rest of its group along; groups with none are stratified."""
    counts = np.zeros((n_g, labels.shape[1]), dtype=np.int64)
    np.add.at(counts, inv, labels.astype(np.int64))
    sizes = np.bincount(inv, minlength=n_g)
    bits = np.zeros(n_g, dtype=np.int64)
    has_given = (given >= 0) & (given < UNLABELED)
    np.bitwise_or.at(bits, inv[has_given], 1 << given[has_given])
    pre = np.full(n_g, -1, dtype=np.int64)
    single = (bits == 1) | (bits == 2) | (bits == 4)
    pre[single] = np.log2(bits[single]).astype(np.int64)
    multi = (bits > 0) & ~single
    conflicts = int(multi.sum())
    pre[multi] = np.where(bits[multi] & 1, TRAIN, np.where(bits[multi] & 2, VALID, TEST))
    free = pre < 0
    assigned = stratified_group_split(counts, sizes, settings.ratios, settings.seed, pre) if free.any() else pre
    split_source = "given" if not free.any() else ("stratified" if not has_given.any() else "given+stratified")
    return np.where(has_given, given, assigned[inv]), conflicts, split_source


def _unlabeled_to_exclude(split: np.ndarray, labeled: np.ndarray, unique: np.ndarray, gkey: np.ndarray,
                          groups_l: np.ndarray, inv: np.ndarray, exclude_codes: frozenset) -> np.ndarray:
    """Unlabelled rows whose group has labelled tracks in an excluded split (valid/test by
    default): as in CALS, a student track by a test artist would leak that artist."""
    n_g = len(groups_l)
    group_split_bits = np.zeros(n_g, dtype=np.int64)
    np.bitwise_or.at(group_split_bits, inv, 1 << split[labeled])
    excl_mask = sum(1 << c for c in exclude_codes if c is not None and c < UNLABELED)
    unl = np.flatnonzero(~labeled & unique)
    pos = np.searchsorted(groups_l, gkey[unl])
    pos_ok = pos < n_g
    hit = np.zeros(len(unl), dtype=bool)
    hit[pos_ok] = groups_l[pos[pos_ok]] == gkey[unl][pos_ok]
    bad = np.zeros(len(unl), dtype=bool)
    bad[hit] = (group_split_bits[pos[hit]] & excl_mask) != 0
    return unl[bad]


def _open_store(plan: _Plan, lock: contextlib.ExitStack, locked: bool) -> tuple[_Store, np.ndarray]:
    """Claim ``out_dir`` for writing and open the store; return it with the journal's records
    (empty for a new directory)."""
    out_dir = plan.out_dir
    _check_state(out_dir, plan.settings.state, create=True)
    if not locked:  # the directory is new: lock it now
        lock.enter_context(_lock(out_dir))
    for stale in ("dataset.json",):  # its presence means complete: not while the store changes
        if (out_dir / stale).exists():
            (out_dir / stale).unlink()
    store = _Store(out_dir, plan.settings.shard_bytes)
    return store, store.open()


def _journal_lookup(keys: np.ndarray, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key: whether the journal has it, and its latest record (zeros where not)."""
    rkeys, rlast = _latest_records(records)
    pos = np.searchsorted(rkeys, keys)
    pos = np.minimum(pos, max(len(rkeys) - 1, 0))
    found = (rkeys[pos] == keys) if len(rkeys) else np.zeros(len(keys), dtype=bool)
    return found, (rlast[pos] if len(rlast) else np.zeros(len(keys), dtype=_JREC))


def _rows_to_decode(plan: _Plan, journal: np.ndarray) -> np.ndarray:
    """The wanted rows the journal has no record of (or only a failure, with ``retry_failed``)."""
    found, rec_of = _journal_lookup(plan.keys, journal)
    status = np.zeros(len(plan.keys), dtype=np.int64)
    status[found] = rec_of["status"][found]
    if plan.settings.retry_failed:
        return np.flatnonzero(plan.wanted() & (status != _OK))
    return np.flatnonzero(plan.wanted() & (status == 0))


class _Decoder:
    """Decodes the given rows into the store, in this process or a pool. Each result is
    journaled as it arrives, so an interruption at any point loses at most the tracks in
    flight, and the next run resumes from the journal."""

    def __init__(self, plan: _Plan, store: _Store, rows: np.ndarray):
        self.plan, self.store, self.rows = plan, store, rows
        self.total = len(rows)
        self.done = self.failed = 0
        self.seconds = 0.0  # audio decoded in this run

    def jobs(self) -> Iterator[tuple]:
        s, spill_dir = self.plan.settings, str(self.store.spill_dir)
        return ((int(i), int(self.plan.keys[i]), self.plan.file(int(i)), int(s.sample_rate), s.max_seconds, spill_dir)
                for i in self.rows)

    def handle(self, result: tuple) -> None:
        s = self.plan.settings
        row, key, ok, payload, n, clipped, reason = result
        if ok:
            self.store.append_ok(key, payload, n, clipped)
            self.seconds += n / s.sample_rate
        else:
            self.store.append_failed(key, self.plan.file(row), reason)
            self.failed += 1
        self.done += 1
        s.notify(PrepareProgress("decode", self.done, self.total, self.failed, self.seconds))
        if s.stop_after is not None and self.done >= s.stop_after and self.done < self.total:
            raise PrepareInterrupted(self.done, self.total - self.done)

    def run(self) -> None:
        jobs = self.jobs()
        self.plan.settings.notify(PrepareProgress("decode", 0, self.total))
        try:
            if self.plan.settings.workers <= 1 or self.total <= 1:
                for job in jobs:
                    self.handle(_decode_job(job))
            else:
                _run_pool(jobs, self.plan.settings.workers, self.handle)
        except KeyboardInterrupt:
            self.store.close()
            raise PrepareInterrupted(self.done, self.total - self.done) from None
        except BaseException:
            self.store.close()
            raise
        self.store.close()


def _mp_context():
    """``fork`` on Linux: workers start instantly, need no re-import of ``__main__`` and
    only run numpy/libsndfile/soxr code, which is fork-safe. ``spawn`` elsewhere (macOS and
    Windows cannot fork safely); there, call prepare from under ``if __name__ == "__main__":``."""
    import multiprocessing as mp
    import sys

    method = os.environ.get("MTTAG_MP_START") or ("fork" if sys.platform.startswith("linux") else "spawn")
    return mp.get_context(method)


def _run_pool(jobs: Iterator[tuple], workers: int, handle: Callable[[tuple], None]) -> None:
    """Decode in a process pool with a bounded number of tracks in flight. A worker that
    dies (decoder crash, out-of-memory kill) breaks the pool; the tracks that were in flight
    are then retried one by one in a fresh process, so only the culprit is marked failed."""
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    ctx = _mp_context()

    def new_pool(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init)

    max_inflight = 2 * workers + 2
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() in a process with threads (a progress bar); the
        # children only decode audio and never touch the locks those threads hold.
        warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks.*", category=DeprecationWarning)
        _pool_loop(jobs, workers, handle, new_pool, max_inflight)


def _pool_loop(jobs: Iterator[tuple], workers: int, handle: Callable[[tuple], None], new_pool, max_inflight: int) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = new_pool(workers)
    pending: dict = {}
    source = iter(jobs)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < max_inflight:
                job = next(source, None)
                if job is None:
                    exhausted = True
                    break
                pending[pool.submit(_decode_job, job)] = job
            if not pending:
                break
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            broken: list[tuple] = []
            for fut in sorted(finished, key=lambda f: pending[f][0]):
                job = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken.append(job)
                    continue
                handle(result)
            if broken:
                broken += list(pending.values())
                pending.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                _isolate(sorted(broken), new_pool, handle)
                pool = new_pool(workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate(jobs: list[tuple], new_pool, handle) -> None:
    from concurrent.futures.process import BrokenProcessPool

    pool = new_pool(1)
    crashes = successes = 0
    try:
        for job in jobs:
            try:
                result = pool.submit(_decode_job, job).result()
                successes += 1
            except BrokenProcessPool:
                crashes += 1
                if crashes >= 3 and successes == 0:
                    raise RuntimeError("decoder worker processes die on every file (not a problem of the files; "
                                       "try workers=1 / --workers 1 to see why)") from None
                row, key = job[0], job[1]
                result = (row, key, False, None, 0, 0, "the decoder crashed on this file (worker process died)")
                pool.shutdown(wait=False)
                pool = new_pool(1)
            handle(result)
    finally:
        pool.shutdown(wait=True)


@dataclass
class _Decoded:
    """What the journal holds for the plan's rows after decoding, as of the end of this run."""

    store: _Store  # closed; read for the failure reasons
    rec_of: np.ndarray  # latest journal record per row (zeros where none)
    stored: np.ndarray  # rows with audio, ascending: dataset index j is row stored[j]
    failed: np.ndarray  # bool per row: wanted but failed to decode
    split: np.ndarray  # the plan's split with FAILED for those
    run: dict  # dataset.json's last_run


def _collect(plan: _Plan, decoder: _Decoder) -> _Decoded:
    # Read back from the journal rather than from this run's results: earlier, interrupted
    # runs decoded tracks too.
    found, rec_of = _journal_lookup(plan.keys, np.fromfile(decoder.store.journal_path, dtype=_JREC))
    wanted = plan.wanted()
    ok_mask = found & (rec_of["status"] == _OK) & wanted
    fail_mask = found & (rec_of["status"] == _FAILED_REC) & wanted
    split = plan.split.copy()
    split[fail_mask] = FAILED
    s = plan.settings
    run = dict(processed=decoder.done, failed=decoder.failed, seconds=round(decoder.seconds, 2),
               wall=round(time.time() - s.started, 2), workers=s.workers)
    return _Decoded(decoder.store, rec_of, np.flatnonzero(ok_mask), fail_mask, split, run)


def _finalize(plan: _Plan, decoded: _Decoded) -> None:
    """Write the dataset's files, each atomically. ``dataset.json`` comes last: its presence
    is what marks the directory complete, so a run stopped in here is simply resumed."""
    out_dir, vocab = plan.out_dir, plan.vocab
    index, paths = _index(plan, decoded)
    labels = plan.labels[decoded.stored]
    atomic_write(out_dir / "index.npy", lambda p: _save_npy(p, index))
    atomic_write(out_dir / "labels.npy", lambda p: _save_npy(p, labels))
    atomic_write(out_dir / "paths.bin", lambda p: p.write_bytes(paths))
    group_names = plan.cat.group_names()
    atomic_write(out_dir / "groups.json", lambda p: p.write_text(json.dumps(group_names, ensure_ascii=False),
                                                                   encoding="utf-8", errors="surrogateescape"))
    reasons = decoded.store.failure_reasons()
    params = plan.settings.params()
    atomic_write(out_dir / "manifest.csv",
                 lambda p: _write_manifest(p, plan, decoded, index, group_names, reasons, params))
    atomic_write(out_dir / "failures.csv", lambda p: _write_failures(p, plan, decoded, reasons))
    tag_counts, total_tag, balance = _tag_balance(index, labels, len(vocab), plan.settings.ratios)
    atomic_write(out_dir / "tag_counts.csv", lambda p: _write_tag_counts(p, vocab, tag_counts, total_tag))
    meta = _summary(plan, decoded, index, tag_counts, balance, params)
    atomic_write(out_dir / "dataset.json", lambda p: p.write_text(json.dumps(meta, indent=1, ensure_ascii=False),
                                                                    encoding="utf-8"))


def _index(plan: _Plan, decoded: _Decoded) -> tuple[np.ndarray, bytes]:
    """The index rows of the stored tracks and the path bytes they point into."""
    cat, stored, rec_of = plan.cat, decoded.stored, decoded.rec_of
    index = np.zeros(len(stored), dtype=_INDEX)
    path_end = np.frombuffer(cat.path_end, dtype=np.int64)
    path_start_src = np.concatenate([[0], path_end[:-1]])
    blob = bytearray()
    path_start = np.zeros(len(stored), dtype=np.int64)
    for j, i in enumerate(stored):
        path_start[j] = len(blob)
        blob += cat.paths[path_start_src[i] : path_end[i]]
    index["shard"] = rec_of["shard"][stored]
    index["offset"] = rec_of["offset"][stored]
    index["length"] = rec_of["length"][stored]
    index["split"] = decoded.split[stored]
    index["group"] = plan.group_ids[stored]
    index["root"] = plan.root_ids[stored]
    index["path_start"] = path_start
    index["path_len"] = (path_end - path_start_src)[stored]
    index["row"] = stored
    return index, bytes(blob)


def _write_manifest(p: Path, plan: _Plan, decoded: _Decoded, index: np.ndarray, group_names: list[str],
                    reasons: dict[int, str], params: dict) -> None:
    """One line per source row, in source order, saying what became of it and why."""
    final_split, stored, vocab = decoded.split, decoded.stored, plan.vocab
    dataset_index = np.full(len(final_split), -1, dtype=np.int64)
    dataset_index[stored] = np.arange(len(stored))
    lengths_all = np.zeros(len(final_split), dtype=np.int64)
    lengths_all[stored] = index["length"]
    sample_rate = plan.settings.sample_rate
    with open(p, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "group", "tags", "index", "seconds", "reason"])
        excluded_reason = "unlabelled, and its artist/group is in " + "/".join(params["exclude_unlabeled_from"])
        for i in range(len(final_split)):
            code = int(final_split[i])
            g = int(plan.group_ids[i])
            reason = ""
            if code == FAILED:
                reason = reasons.get(int(plan.keys[i]), "failed")
            elif code == EXCLUDED:
                reason = excluded_reason if plan.unique[i] else "duplicate of an earlier row (same file)"
            tags = "|".join(vocab[t] for t in np.flatnonzero(plan.labels[i])) if len(vocab) else ""
            w.writerow([plan.cat.path(i), _SPLIT_NAMES[code], group_names[g] if g >= 0 else "", tags,
                        int(dataset_index[i]) if dataset_index[i] >= 0 else "",
                        f"{lengths_all[i] / sample_rate:.2f}" if dataset_index[i] >= 0 else "", reason])


def _write_failures(p: Path, plan: _Plan, decoded: _Decoded, reasons: dict[int, str]) -> None:
    with open(p, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "file", "reason"])
        for i in np.flatnonzero(decoded.failed):
            w.writerow([plan.cat.path(int(i)), plan.file(int(i)), reasons.get(int(plan.keys[i]), "failed")])


def _tag_balance(index: np.ndarray, labels: np.ndarray, n_tags: int, ratios: Sequence[float]):
    """Per-split tag counts, per-tag totals, and how far each split's tag shares are from
    its target ratio (over tags with at least 10 tracks: rarer ones cannot be balanced)."""
    splits = index["split"]
    tag_counts = {name: labels[splits == code].sum(0).astype(int).tolist() for code, name in enumerate(SPLITS[:3])}
    balance: dict[str, dict] = {}
    total_tag = np.array([sum(tag_counts[s][t] for s in SPLITS[:3]) for t in range(n_tags)], dtype=np.float64)
    usable = total_tag >= 10
    for k, name in enumerate(SPLITS[:3]):
        if usable.any() and ratios[k] > 0:
            share = np.array(tag_counts[name], dtype=np.float64)[usable] / total_tag[usable]
            dev = np.abs(share - ratios[k])
            balance[name] = {"target": round(ratios[k], 4), "mean_abs_dev": round(float(dev.mean()), 4),
                             "max_abs_dev": round(float(dev.max()), 4)}
    return tag_counts, total_tag, balance


def _write_tag_counts(p: Path, vocab: list[str], tag_counts: dict[str, list[int]], total_tag: np.ndarray) -> None:
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag", "total", *SPLITS[:3], *(f"{s}_share" for s in SPLITS[:3])])
        for t, tag in enumerate(vocab):
            tot = int(total_tag[t])
            cs = [tag_counts[s][t] for s in SPLITS[:3]]
            w.writerow([tag, tot, *cs, *(f"{c / tot:.3f}" if tot else "" for c in cs)])


def _summary(plan: _Plan, decoded: _Decoded, index: np.ndarray, tag_counts: dict, balance: dict, params: dict) -> dict:
    """The content of ``dataset.json``."""
    sample_rate, stored, dropped = plan.settings.sample_rate, decoded.stored, plan.dropped
    n = len(stored)
    splits = index["split"]
    lengths = index["length"]
    per_split = {name: int((splits == code).sum()) for code, name in enumerate(SPLITS)}
    hours = {name: round(float(lengths[splits == code].sum()) / sample_rate / 3600, 4) for code, name in enumerate(SPLITS)}
    top_dropped = dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))[:50])
    group_used = np.unique(index["group"][index["group"] >= 0])
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sample_rate": int(sample_rate), "dtype": "int16", "int16_scale": INT16_SCALE,
        "tags": plan.vocab, "num_tracks": n,
        "hours": round(float(lengths.sum()) / sample_rate / 3600, 4),
        "splits": per_split, "hours_per_split": hours,
        "labeled": int((splits < UNLABELED).sum()), "unlabeled": per_split["unlabeled"],
        "source_tracks": len(plan.cat), "failed": int(decoded.failed.sum()),
        "excluded": plan.excluded, "duplicates": int((~plan.unique).sum()),
        "groups": int(len(group_used)), "split_source": plan.split_source,
        "groups_spanning_given_splits": plan.conflicts,
        "tag_counts": tag_counts, "tag_balance": balance,
        "dropped_tags": {"distinct": len(dropped), "occurrences": int(sum(dropped.values())), "top": top_dropped},
        "labeled_tracks_left_without_vocabulary_tags": plan.lost_labels,
        "clipped_tracks": int((decoded.rec_of["clipped"][stored] > 0).sum()) if n else 0,
        "shards": [_Store.shard_name(s) for s in range(int(index["shard"].max()) + 1 if n else 0)],
        "roots": plan.roots, "params": params, "last_run": decoded.run,
    }
