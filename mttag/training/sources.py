"""Source readers: what ``mttag prepare`` reads tracks and labels from, as lazy iterables of
:class:`TrackSpec` (``path``, ``tags`` or ``None`` for unlabelled, ``group`` (artist or
stand-in), ``split`` or ``None``, ``root``): :func:`tracks_from_annotations` (CSV/TSV),
:func:`tracks_from_cals` (the authors' CALS split files), :func:`tracks_from_metadata` (tags
embedded in the files, see :mod:`mttag.filetags.reader`), :func:`tracks_from_folder` (untagged
audio for the unlabelled set)."""

from __future__ import annotations

import codecs
import csv
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.files import iter_audio_files
from ..filetags.reader import clean_tags
from ..util.display import printable
from .splits import _SPLIT_NAMES, parse_split


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
    :class:`mttag.audio.files.UnlistableFolder`), or without it raised once the readable files
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
