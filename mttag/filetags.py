"""Write tags into audio files, safely: plan → apply to a copy → verify → replace, with undo.

This is the library behind ``mttag write``. For one file, :func:`write_tags` takes the
tags of a result (``[("rock", 0.81), ...]``) and

1. **plans** the new values of the chosen fields (genre, mood, comment, and an ``MTTAG``
   field holding the tags with their scores), in ``add`` or ``replace`` mode;
2. **applies** them with mutagen to a *copy* of the file in the same folder (the original
   is only ever read);
3. **verifies** the copy: it is re-opened, the written fields read back as planned, every
   other tag (and cover art, and FLAC's other metadata blocks) is unchanged, and the audio
   is unchanged: the audio payload bytes are compared (MP3 frames, FLAC frames and
   STREAMINFO, WAV/AIFF sample chunks, MP4 ``mdat`` plus the sample tables, whose chunk
   offsets must move exactly with the audio, Ogg packets and granule positions page by
   page); where that cannot decide, or with ``verify_audio``, both files are decoded and
   their samples compared;
4. writes an **undo record** (previous values of every touched field, the SHA-256 of the
   file before and after, and a small binary delta that rebuilds the old file byte for
   byte from the new one), flushed and fsynced, and only then
5. **replaces** the original with the copy (``os.replace``: atomic on POSIX and Windows),
   then fsyncs the folder.

An interruption at any moment leaves the original or the new file, never a mix; the undo
log (:func:`undo`) restores the file byte for byte when it is still as mttag left it, and
otherwise puts the previous values back into the fields mttag wrote.

Formats: MP3 (ID3v2.3 and 2.4; the file's version is kept), FLAC, Ogg Vorbis and Opus
(Vorbis comments), MP4/M4A (iTunes atoms and freeform atoms), WAV and AIFF (an ID3 chunk).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .display import printable
from .util.fs import fsync_dir as _fsync_dir
from .util.hashing import file_sha256  # noqa: F401 (re-exported)
from .util.text import one_line

FIELDS = ("genre", "mood", "comment", "mttag")
DEFAULT_FIELDS = ("genre", "mood", "mttag")
MODES = ("add", "replace")
CASES = ("title", "as-is", "lower")
TMP_SUFFIX = ".mttag-tmp"
UNDO_FORMAT = 1

# --------------------------------------------------------------------------------------
# Which tags are genres, moods, instruments/voices and eras: the vocabularies of the bundled
# models (MSD top-50, MagnaTagATune top-50) and of the CALS split. Data, not logic: a tag
# missing here is "other" and only goes into the comment and MTTAG fields.
TAG_KINDS: dict[str, tuple[str, ...]] = {
    "genre": (
        "rock", "pop", "alternative", "indie", "electronic", "dance", "alternative rock", "jazz", "metal",
        "chillout", "classic rock", "soul", "indie rock", "electronica", "folk", "punk", "blues", "hard rock",
        "ambient", "experimental", "hip-hop", "country", "easy listening", "funk", "electro", "heavy metal",
        "progressive rock", "rnb", "indie pop", "house", "hardcore", "punk rock", "death metal", "reggae",
        "metalcore", "world", "trance", "christian", "latin", "psychedelic", "progressive metal",
        "classical", "techno", "indian", "opera", "new age", "classic", "choral",
    ),
    "mood": (
        "beautiful", "mellow", "chill", "sexy", "catchy", "party", "sad", "happy",
        "slow", "fast", "loud", "quiet", "soft", "weird",
    ),
    "instrument": (
        "female vocalists", "male vocalists", "female vocalist", "instrumental", "guitar", "acoustic", "piano",
        "strings", "drums", "violin", "vocal", "synth", "female", "male", "singing", "vocals", "no vocals",
        "harpsichord", "flute", "woman", "male vocal", "no vocal", "sitar", "solo", "man", "choir", "voice",
        "beat", "beats", "harp", "cello", "no voice", "male voice", "female vocal", "female voice",
    ),
    "era": ("00s", "90s", "80s", "70s", "60s", "oldies"),
    "other": ("british", "spanish"),
}
_KIND_OF = {tag: kind for kind, tags in TAG_KINDS.items() for tag in tags}
# How a tag is spelled in the genre/mood fields with case "title", where str.title() would be wrong.
DISPLAY_NAMES = {"rnb": "R&B", "hip-hop": "Hip-Hop", "new age": "New Age"}

# genre/mood/comment/mttag → where each format keeps it (documented in docs/librarians.md)
_ID3_KEYS = {"genre": "TCON", "mood": ("TMOO", "TXXX:MOOD"), "comment": "COMM", "mttag": "TXXX:MTTAG"}
_VORBIS_KEYS = {"genre": "GENRE", "mood": "MOOD", "comment": "COMMENT", "mttag": "MTTAG"}
_MP4_KEYS = {"genre": "\xa9gen", "mood": "----:com.apple.iTunes:MOOD", "comment": "\xa9cmt",
             "mttag": "----:com.apple.iTunes:MTTAG"}


class WriteError(Exception):
    """A file cannot be written (or restored); the message says why in one line."""


def tag_kind(tag: str, kinds: Mapping[str, str] | None = None) -> str:
    """``genre``, ``mood``, ``instrument``, ``era`` or ``other`` (case-insensitive;
    ``kinds`` overrides the built-in table)."""
    key = " ".join(str(tag).lower().split())
    if kinds:
        lowered = {" ".join(k.lower().split()): v for k, v in kinds.items()}
        if key in lowered:
            return lowered[key]
    return _KIND_OF.get(key, "other")


def load_kinds(path: str | os.PathLike) -> dict[str, str]:
    """A ``tag,kind`` CSV (one pair a line, ``#`` comments) → ``{tag: kind}``."""
    out: dict[str, str] = {}
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{printable(path)}: not a regular file")  # a FIFO would block forever
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # a field over 131,072 characters: a quote left open
                raise ValueError(f"{printable(path)} line {reader.line_num}: {exc}") from None
            n = reader.line_num
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2 or row[1].strip().lower() not in TAG_KINDS:
                raise ValueError(f"{printable(path)} line {n}: expected 'tag,kind' with kind one of "
                                 f"{', '.join(TAG_KINDS)}")
            out[row[0].strip()] = row[1].strip().lower()
    return out


def display_name(tag: str, case: str = "title") -> str:
    """``"alternative rock"`` → ``"Alternative Rock"`` (``title``), as spelled (``as-is``) or lower case."""
    if case == "as-is":
        return tag
    if case == "lower":
        return tag.lower()
    key = tag.lower()
    if key in DISPLAY_NAMES:
        return DISPLAY_NAMES[key]
    return " ".join(w[:1].upper() + w[1:] if w[:1].isalpha() else w for w in tag.split(" "))


@dataclass
class WriteOptions:
    """What :func:`write_tags` writes and how.

    ``fields``: any of ``genre``, ``mood``, ``comment``, ``mttag``. ``mode``: ``add`` keeps what
    is there (genre/mood values are added if missing, the comment gets the tags appended)
    or ``replace`` (the field holds only mttag's values). The ``mttag`` field is always
    replaced. ``top``/``threshold`` narrow the tags given; ``case`` spells genre and mood
    values; ``join`` writes several genres (moods) as one value joined by it (ID3v2.3
    always joins with ``/``); ``kinds`` overrides :data:`TAG_KINDS`. ``keep_mtime``
    keeps the file's modification time (default: the write is a modification, so library
    tools that look at mtimes re-read the tags). ``verify_audio`` also decodes both
    files and compares samples (slower; the payload check is always done).
    """

    fields: Sequence[str] = DEFAULT_FIELDS
    mode: str = "add"
    top: int | None = None
    threshold: float | None = None
    case: str = "title"
    join: str | None = None
    kinds: Mapping[str, str] | None = None
    dry_run: bool = False
    keep_mtime: bool = False
    verify_audio: bool = False

    def __post_init__(self):
        bad = [f for f in self.fields if f not in FIELDS]
        if bad or not self.fields:
            raise ValueError(f"unknown field {', '.join(bad) or '(none)'}; choose from {', '.join(FIELDS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose add or replace")
        if self.case not in CASES:
            raise ValueError(f"unknown case {self.case!r}; choose from {', '.join(CASES)}")
        if self.top is not None and self.top < 1:
            raise ValueError("top must be at least 1")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")


@dataclass
class FieldChange:
    field: str
    before: list[str]
    after: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "before": self.before, "after": self.after}


@dataclass
class WriteOutcome:
    """What happened to one file. ``status``: ``written``, ``unchanged`` (nothing to change),
    ``would-write`` (dry run), ``restored`` / ``would-restore`` (undo), ``skipped`` (no tags
    to write) or ``error`` (``error`` says why; the file is as it was)."""

    path: str
    status: str
    changes: list[FieldChange] = field(default_factory=list)
    error: str | None = None
    format: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "error"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": _path_text(self.path), "status": self.status}
        if self.format:
            out["format"] = self.format
        if self.changes:
            out["changes"] = [c.to_dict() for c in self.changes]
        if self.note:
            out["note"] = self.note
        if self.error:
            out["error"] = self.error
        return out


def _path_text(path: str) -> str:
    from .output import path_text

    return path_text(str(path))


# --------------------------------------------------------------------------------------
# Planning: which values go into which field


def select_tags(tags: Iterable[Any], top: int | None = None, threshold: float | None = None) -> list[tuple[str, float]]:
    """Tags as ``(tag, score)`` best first, narrowed by ``threshold`` then ``top``. Accepts
    pairs or ``{"tag", "score"}`` records (as in results files)."""
    pairs = []
    for t in tags:
        tag, score = (t["tag"], t["score"]) if isinstance(t, Mapping) else t
        pairs.append((str(tag), float(score)))
    pairs.sort(key=lambda p: -p[1])
    if threshold is not None:
        pairs = [p for p in pairs if p[1] >= threshold]
    if top is not None:
        pairs = pairs[:top]
    return pairs


def planned_values(tags: Sequence[tuple[str, float]], options: WriteOptions) -> dict[str, list[str]]:
    """The values mttag would write, per field (``[]``: nothing for that field; it is left alone)."""
    out: dict[str, list[str]] = {}
    for name in options.fields:
        if name in ("genre", "mood"):
            out[name] = list(dict.fromkeys(display_name(t, options.case) for t, _ in tags
                                           if tag_kind(t, options.kinds) == name))
        elif name == "comment":
            out[name] = [", ".join(t for t, _ in tags)] if tags else []
        else:
            out[name] = ["; ".join(f"{t} {s:.2f}" for t, s in tags)] if tags else []
    return out


def _split(values: Iterable[str], seps: Sequence[str]) -> list[str]:
    out = []
    for value in values:
        parts = [value]
        for sep in seps:
            parts = [p for part in parts for p in part.split(sep)]
        out.extend(p.strip() for p in parts if p.strip())
    return out


def merge_values(name: str, before: list[str], ours: list[str], mode: str, join: str | None) -> list[str]:
    """The field's new values from its current ones and mttag's (see :class:`WriteOptions`)."""
    if not ours:
        return before
    if name == "mttag" or (mode == "replace" and name == "comment"):
        return list(ours)
    if name == "comment":  # add: append our tag list to the first comment, once
        if not before or not before[0].strip():
            return list(ours) + before[1:]
        if ours[0] in before[0]:
            return before
        return [f"{before[0]}; {ours[0]}"] + before[1:]
    seps = ["\x00"] + ([join] if join else [])
    if mode == "replace":
        values = list(ours)
    else:
        existing = _split(before, seps)
        seen = {v.casefold() for v in existing}
        new = [v for v in dict.fromkeys(ours) if v.casefold() not in seen]
        if not new:
            return before
        values = (existing if join else list(before)) + new
    if join:
        return [join.join(_split(values, seps))]
    return values


# --------------------------------------------------------------------------------------
# Format handlers: get/set/capture/restore the four fields through mutagen


class _Handler:
    format = "?"
    id3_version: int | None = None
    join: str | None = None  # forced join separator (ID3v2.3)

    def get(self, name: str) -> list[str]:
        raise NotImplementedError

    def set(self, name: str, values: list[str]) -> None:
        raise NotImplementedError

    def capture(self, name: str) -> Any:
        raise NotImplementedError

    def restore(self, captured: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def others(self, touched: Sequence[str]) -> Any:
        """Everything but the touched fields, in a comparable form (for verification)."""
        raise NotImplementedError

    def save(self) -> None:
        raise NotImplementedError


class _ID3Handler(_Handler):
    def __init__(self, path: str, kind: str):
        from mutagen.id3 import ID3, ID3NoHeaderError

        self.path = path
        self.format = kind
        self.file = None
        if kind == "mp3":
            try:
                self.tags = ID3(path, translate=False, load_v1=False)
            except ID3NoHeaderError:
                self.tags = ID3()
                self.tags.version = (2, 4, 0)
        else:
            import mutagen.aiff
            import mutagen.wave

            cls = mutagen.wave.WAVE if kind == "wav" else mutagen.aiff.AIFF
            self.file = cls(path, translate=False, load_v1=False)
            if self.file.tags is None:
                self.file.add_tags()
                self.file.tags.version = (2, 4, 0)
            self.tags = self.file.tags
        version = self.tags.version[1] if self.tags.version[0] == 2 else 4
        if version not in (3, 4):
            raise WriteError(f"ID3v2.{version} tag: only ID3v2.3 and v2.4 can be written (convert it with a tagger first)")
        self.id3_version = version
        self.join = "/" if version == 3 else None
        self._v1 = None
        if kind == "mp3":
            with open(path, "rb") as f:
                f.seek(0, 2)
                if f.tell() >= 128:
                    f.seek(-128, 2)
                    tail = f.read(128)
                    if tail[:3] == b"TAG":
                        self._v1 = tail

    def _frames(self, name: str) -> list:
        if name == "genre":
            return self.tags.getall("TCON")
        if name == "comment":
            return [f for f in self.tags.getall("COMM") if f.desc == ""]
        if name == "mood" and self.id3_version == 4:
            return self.tags.getall("TMOO")
        desc = "MOOD" if name == "mood" else "MTTAG"
        return [f for f in self.tags.getall("TXXX") if f.desc.upper() == desc]

    def storage_keys(self, name: str) -> list[str]:
        return [f.HashKey for f in self._frames(name)]

    def get(self, name: str) -> list[str]:
        return [str(t) for f in self._frames(name) for t in f.text]

    def set(self, name: str, values: list[str]) -> None:
        from mutagen.id3 import COMM, TCON, TMOO, TXXX

        old = self._frames(name)
        for f in old:
            del self.tags[f.HashKey]
        if not values:
            return
        enc = 3 if self.id3_version == 4 else 1
        if self.id3_version == 3 and len(values) > 1 and name != "comment":
            values = ["/".join(values)]
        if name == "genre":
            frame = TCON(encoding=enc, text=values)
        elif name == "comment":
            lang = old[0].lang if old else "eng"
            frame = COMM(encoding=enc, lang=lang, desc="", text=values)
        elif name == "mood" and self.id3_version == 4:
            frame = TMOO(encoding=enc, text=values)
        else:
            desc = old[0].desc if old else ("MOOD" if name == "mood" else "MTTAG")
            frame = TXXX(encoding=enc, desc=desc, text=values)
        self.tags.add(frame)

    def capture(self, name: str) -> Any:
        out = []
        for f in self._frames(name):
            item = {"frame": type(f).__name__, "encoding": int(f.encoding), "text": [str(t) for t in f.text]}
            for attr in ("desc", "lang"):
                if hasattr(f, attr):
                    item[attr] = getattr(f, attr)
            out.append(item)
        return out

    def restore(self, captured: Mapping[str, Any]) -> None:
        import mutagen.id3

        for name, frames in captured.items():
            for f in self._frames(name):
                del self.tags[f.HashKey]
            for item in frames:
                cls = getattr(mutagen.id3, item["frame"])
                kw = {k: item[k] for k in ("desc", "lang") if k in item}
                self.tags.add(cls(encoding=item["encoding"], text=item["text"], **kw))

    def others(self, touched: Sequence[str]) -> Any:
        skip = {k for name in touched for k in self.storage_keys(name)}
        return {k: repr(v) for k, v in self.tags.items() if k not in skip}

    def save(self) -> None:
        if self.file is not None:
            self.file.save(v2_version=self.id3_version, v23_sep=None)
            return
        self.tags.save(self.path, v1=1, v2_version=self.id3_version, v23_sep=None)
        if self._v1 is not None:  # ID3v1 is left exactly as it was (mutagen would rewrite it)
            with open(self.path, "r+b") as f:
                f.seek(-128, 2)
                if f.read(3) == b"TAG":
                    f.seek(-128, 2)
                    f.write(self._v1)


class _VorbisHandler(_Handler):
    def __init__(self, path: str, audio, kind: str):
        self.path = path
        self.file = audio
        self.format = kind
        if audio.tags is None:
            audio.add_tags()
        self.tags = audio.tags

    def _match(self, name: str, key: str) -> bool:
        return key.lower() == _VORBIS_KEYS[name].lower()

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.tags if self._match(name, k)]

    def set(self, name: str, values: list[str]) -> None:
        pairs = list(self.tags)
        idx = [i for i, (k, _) in enumerate(pairs) if self._match(name, k)]
        key = pairs[idx[0]][0] if idx else _VORBIS_KEYS[name]
        at = idx[0] if idx else len(pairs)
        kept = [p for i, p in enumerate(pairs) if i not in set(idx)]
        new = kept[:at] + [(key, v) for v in values] + kept[at:]
        del self.tags[:]
        self.tags.extend(new)

    def capture(self, name: str) -> Any:
        return [[i, k, v] for i, (k, v) in enumerate(self.tags) if self._match(name, k)]

    def restore(self, captured: Mapping[str, Any]) -> None:
        names = list(captured)
        pairs = [(k, v) for k, v in self.tags if not any(self._match(n, k) for n in names)]
        for i, k, v in sorted((tuple(x) for items in captured.values() for x in items), key=lambda x: x[0]):
            pairs.insert(min(i, len(pairs)), (k, v))
        del self.tags[:]
        self.tags.extend(pairs)

    def others(self, touched: Sequence[str]) -> Any:
        pairs = [(k, v) for k, v in self.tags if not any(self._match(n, k) for n in touched)]
        blocks = []
        for block in getattr(self.file, "metadata_blocks", []):
            if block.code not in (1, 4):  # padding, Vorbis comment
                blocks.append((block.code, hashlib.sha256(block.write()).hexdigest()))
        return {"comments": pairs, "vendor": self.tags.vendor, "blocks": blocks}

    def save(self) -> None:
        self.file.save()


class _MP4Handler(_Handler):
    format = "m4a"

    def __init__(self, path: str, audio):
        self.path = path
        self.file = audio
        if audio.tags is None:
            audio.add_tags()
        self.tags = audio.tags

    def _keys(self, name: str) -> list[str]:
        key = _MP4_KEYS[name]
        if not key.startswith("----:"):
            return [key] if key in self.tags else []
        want = key.rsplit(":", 1)[1].upper()
        return [k for k in self.tags.keys()
                if k.startswith("----:com.apple.iTunes:") and k.split(":", 2)[2].upper() == want]

    def storage_keys(self, name: str) -> list[str]:
        return self._keys(name)

    def get(self, name: str) -> list[str]:
        out = []
        for k in self._keys(name):
            for v in self.tags[k]:
                out.append(bytes(v).decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
        return out

    def set(self, name: str, values: list[str]) -> None:
        from mutagen.mp4 import AtomDataType, MP4FreeForm

        old = self._keys(name)
        for k in old:
            del self.tags[k]
        if not values:
            return
        key = old[0] if old else _MP4_KEYS[name]
        if key.startswith("----:"):
            self.tags[key] = [MP4FreeForm(v.encode("utf-8"), dataformat=AtomDataType.UTF8) for v in values]
        else:
            self.tags[key] = list(values)

    def capture(self, name: str) -> Any:
        out = {}
        for k in self._keys(name):
            if k.startswith("----:"):
                out[k] = [{"data": base64.b64encode(bytes(v)).decode("ascii"), "dataformat": int(v.dataformat),
                           "version": int(getattr(v, "version", 0))} for v in self.tags[k]]
            else:
                out[k] = [str(v) for v in self.tags[k]]
        return out

    def restore(self, captured: Mapping[str, Any]) -> None:
        from mutagen.mp4 import MP4FreeForm

        for name, items in captured.items():
            for k in self._keys(name):
                del self.tags[k]
            for k, values in items.items():
                if k.startswith("----:"):
                    self.tags[k] = [MP4FreeForm(base64.b64decode(v["data"]), dataformat=v["dataformat"],
                                                version=v.get("version", 0)) for v in values]
                else:
                    self.tags[k] = list(values)

    def others(self, touched: Sequence[str]) -> Any:
        skip = {k for name in touched for k in self._keys(name)}
        return {k: repr(v) for k, v in self.tags.items() if k not in skip}

    def save(self) -> None:
        self.file.save()


def _open(path: str) -> _Handler:
    """The handler for a file, by its content (not its name)."""
    import mutagen
    from mutagen.aiff import AIFF
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis
    from mutagen.wave import WAVE

    try:
        audio = mutagen.File(path, options=[MP3, FLAC, OggVorbis, OggOpus, MP4, WAVE, AIFF])
    except Exception as exc:  # noqa: BLE001 - mutagen raises many types on damaged files
        raise WriteError(f"damaged or unreadable tags ({_reason(exc)})") from None
    if audio is None:
        raise WriteError("unsupported format (mttag writes mp3, flac, ogg, opus, m4a, wav and aiff)")
    try:
        if isinstance(audio, MP3):
            return _ID3Handler(path, "mp3")
        if isinstance(audio, WAVE):
            return _ID3Handler(path, "wav")
        if isinstance(audio, AIFF):
            return _ID3Handler(path, "aiff")
        if isinstance(audio, FLAC):
            return _VorbisHandler(path, audio, "flac")
        if isinstance(audio, OggOpus):
            return _VorbisHandler(path, audio, "opus")
        if isinstance(audio, OggVorbis):
            return _VorbisHandler(path, audio, "ogg")
        return _MP4Handler(path, audio)
    except WriteError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise WriteError(f"damaged or unreadable tags ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return one_line(exc, 200)


# --------------------------------------------------------------------------------------
# Verification: the audio payload is unchanged


def _read_at(f, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _range_digest(path: str, start: int, end: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _id3v2_size(f) -> int:
    head = _read_at(f, 0, 10)
    if len(head) == 10 and head[:3] == b"ID3":
        size = 0
        for b in head[6:10]:
            size = (size << 7) | (b & 0x7F)
        return 10 + size + (10 if head[5] & 0x10 else 0)
    return 0


def _flac_ranges(f, size: int) -> list[tuple[int, int]]:
    pos = _id3v2_size(f)
    if _read_at(f, pos, 4) != b"fLaC":
        raise ValueError("no FLAC header")
    pos += 4
    streaminfo = None
    while True:
        head = _read_at(f, pos, 4)
        if len(head) < 4:
            raise ValueError("truncated metadata")
        length = int.from_bytes(head[1:4], "big")
        if head[0] & 0x7F == 0:
            streaminfo = (pos + 4, pos + 4 + length)
        pos += 4 + length
        if head[0] & 0x80:
            break
    if streaminfo is None:
        raise ValueError("no STREAMINFO")
    return [streaminfo, (pos, size)]


def _chunk_ranges(f, size: int, big_endian: bool, wanted: tuple[bytes, ...]) -> list[tuple[int, int]]:
    fmt = ">I" if big_endian else "<I"
    pos = 12
    found: dict[bytes, tuple[int, int]] = {}
    while pos + 8 <= size:
        head = _read_at(f, pos, 8)
        cid, length = head[:4], struct.unpack(fmt, head[4:8])[0]
        if cid in wanted and cid not in found:
            found[cid] = (pos + 8, min(pos + 8 + length, size))
        pos += 8 + length + (length & 1)
    if set(found) != set(wanted):
        raise ValueError("audio chunks not found")
    return [found[c] for c in wanted]


def _mp4_atoms(f, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(name, data start, end) of the atoms in [start, end)."""
    pos = start
    while pos + 8 <= end:
        head = _read_at(f, pos, 8)
        size, name = struct.unpack(">I4s", head)
        hsize = 8
        if size == 1:
            size = struct.unpack(">Q", _read_at(f, pos + 8, 8))[0]
            hsize = 16
        elif size == 0:
            size = end - pos
        if size < hsize:
            raise ValueError("bad atom size")
        yield name, pos + hsize, min(pos + size, end)
        pos += size


def _mp4_layout(f, size: int) -> tuple[list[tuple[int, int]], list[dict[bytes, bytes]], list[list[int]]]:
    """mdat ranges; per track the sample-table atoms (but chunk offsets); per track its chunk offsets."""
    mdats, tables, offsets = [], [], []
    moov = None
    for name, a, b in _mp4_atoms(f, 0, size):
        if name == b"mdat":
            mdats.append((a, b))
        elif name == b"moov":
            moov = (a, b)
        elif name == b"moof":
            raise ValueError("fragmented MP4")
    if moov is None or not mdats:
        raise ValueError("no moov/mdat")

    def find(a, b, path):
        for name, x, y in _mp4_atoms(f, a, b):
            if name == path[0]:
                return (x, y) if len(path) == 1 else find(x, y, path[1:])
        return None

    for name, a, b in _mp4_atoms(f, *moov):
        if name != b"trak":
            continue
        stbl = find(a, b, [b"mdia", b"minf", b"stbl"])
        if stbl is None:
            continue
        table, offs = {}, []
        for child, x, y in _mp4_atoms(f, *stbl):
            data = _read_at(f, x, y - x)
            if child in (b"stco", b"co64"):
                n = struct.unpack(">I", data[4:8])[0]
                width = 4 if child == b"stco" else 8
                offs += list(struct.unpack(f">{n}{'I' if width == 4 else 'Q'}", data[8:8 + n * width]))
            else:
                table[child] = data
        tables.append(table)
        offsets.append(offs)
    return mdats, tables, offsets


def _ogg_header_end(f, headers: int) -> int:
    from mutagen.ogg import OggPage

    f.seek(0)
    done = 0
    while done < headers:
        page = OggPage(f)
        done += len(page.packets) - (0 if page.complete else 1)
    return f.tell()


def _ogg_same(old: str, new: str, headers: int) -> bool:
    """The header packets other than the comments, and every later page's packets,
    granule positions and flags, are the same (page sequence numbers and CRCs may differ)."""
    from mutagen.ogg import OggPage

    with open(old, "rb") as fo, open(new, "rb") as fn:
        packets_old = OggPage.to_packets(_pages(fo, headers))
        packets_new = OggPage.to_packets(_pages(fn, headers))
        if len(packets_old) < headers or len(packets_new) < headers:
            return False
        if packets_old[0] != packets_new[0] or packets_old[2:headers] != packets_new[2:headers]:
            return False
        fo.seek(_ogg_header_end(fo, headers))
        fn.seek(_ogg_header_end(fn, headers))
        while True:
            try:
                po = OggPage(fo)
            except EOFError:
                po = None
            try:
                pn = OggPage(fn)
            except EOFError:
                pn = None
            if po is None or pn is None:
                return po is None and pn is None
            if (po.position, po.serial, po.packets, po.continued, po.complete, po.first, po.last) != \
                    (pn.position, pn.serial, pn.packets, pn.continued, pn.complete, pn.first, pn.last):
                return False


def _pages(f, headers: int) -> list:
    from mutagen.ogg import OggPage

    f.seek(0)
    pages, done = [], 0
    while done < headers:
        page = OggPage(f)
        pages.append(page)
        done += len(page.packets) - (0 if page.complete else 1)
    return pages


def _payload_same(kind: str, old: str, new: str) -> bool:
    """Whether the audio of ``new`` is byte for byte that of ``old`` (format-aware)."""
    so, sn = os.path.getsize(old), os.path.getsize(new)
    with open(old, "rb") as fo, open(new, "rb") as fn:
        if kind == "mp3":
            ro, rn = [(_id3v2_size(fo), so)], [(_id3v2_size(fn), sn)]
        elif kind == "flac":
            ro, rn = _flac_ranges(fo, so), _flac_ranges(fn, sn)
        elif kind in ("wav", "aiff"):
            big = kind == "aiff"
            wanted = (b"fmt ", b"data") if kind == "wav" else (b"COMM", b"SSND")
            ro, rn = _chunk_ranges(fo, so, big, wanted), _chunk_ranges(fn, sn, big, wanted)
        elif kind == "m4a":
            mo, to, oo = _mp4_layout(fo, so)
            mn, tn, on = _mp4_layout(fn, sn)
            if len(mo) != len(mn) or to != tn or [len(x) for x in oo] != [len(x) for x in on]:
                return False
            for track_old, track_new in zip(oo, on):
                for a, b in zip(track_old, track_new):
                    i = next((i for i, (x, y) in enumerate(mo) if x <= a < y), None)
                    if i is None or b != a - mo[i][0] + mn[i][0]:
                        return False
            ro, rn = mo, mn
        elif kind in ("ogg", "opus"):
            return _ogg_same(old, new, 3 if kind == "ogg" else 2)
        else:
            return False
    if len(ro) != len(rn) or any(b - a != d - c for (a, b), (c, d) in zip(ro, rn)):
        return False
    return all(_range_digest(old, a, b) == _range_digest(new, c, d) for (a, b), (c, d) in zip(ro, rn))


def decoded_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 of a file's decoded samples (with rate and channel count): libsndfile, else
    ffmpeg; ``None`` if neither can decode it."""
    path = os.fspath(path)
    h = hashlib.sha256()
    try:
        import soundfile as sf

        from .audio import libsndfile_path

        with sf.SoundFile(libsndfile_path(path)) as f:
            h.update(f"{f.samplerate}/{f.channels}/".encode())
            for block in f.blocks(blocksize=1 << 16, dtype="float32"):
                h.update(block.tobytes())
        return h.hexdigest()
    except Exception:  # noqa: BLE001 - not for libsndfile: try ffmpeg
        pass
    if shutil.which("ffmpeg") is None:
        return None
    try:
        proc = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0", "-f", "f32le", "-"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
            h.update(chunk)
        if proc.wait(timeout=600) != 0:
            return None
    except (OSError, subprocess.SubprocessError):
        return None
    return h.hexdigest()


def _verify_audio(kind: str, old: str, new: str, decode: bool) -> None:
    same = False
    try:
        same = _payload_same(kind, old, new)
    except Exception:  # noqa: BLE001 - an unexpected layout: let the decoder decide
        same = False
    if same and not decode:
        return
    a, b = decoded_digest(old), decoded_digest(new)
    if a is None or b is None:
        raise WriteError("cannot verify that the audio is unchanged (it does not decode); file left as it was")
    if a != b:
        raise WriteError("the audio would change (mttag bug or unusual file); file left as it was")


# --------------------------------------------------------------------------------------
# Byte delta for exact undo: old file = cur[:prefix] + ops + cur[-suffix:]

_DELTA_LIMIT = 16 << 20  # the differing middle of a file must fit in this, else undo restores fields
_LITERAL_LIMIT = 1 << 20  # bytes stored verbatim in the undo log, at most
_MIN_COPY = 32


def _common_prefix(fa, fb, limit: int) -> int:
    n = 0
    fa.seek(0)
    fb.seek(0)
    while n < limit:
        a, b = fa.read(min(1 << 20, limit - n)), fb.read(min(1 << 20, limit - n))
        if a == b and a:
            n += len(a)
            continue
        m = min(len(a), len(b))
        i = 0
        while i < m and a[i] == b[i]:
            i += 1
        return n + i
    return n


def _common_suffix(fa, sa: int, fb, sb: int, limit: int) -> int:
    n = 0
    while n < limit:
        k = min(1 << 20, limit - n)
        a, b = _read_at(fa, sa - n - k, k), _read_at(fb, sb - n - k, k)
        if a == b:
            n += k
            continue
        i = 0
        while i < k and a[k - 1 - i] == b[k - 1 - i]:
            i += 1
        return n + i
    return n


def _match_len(a: bytes, ai: int, b: bytes, bi: int, limit: int, forward: bool) -> int:
    """Longest k <= limit with a[ai:ai+k] == b[bi:bi+k] (forward) or a[ai-k:ai] == b[bi-k:bi]."""
    def same(k):
        return a[ai:ai + k] == b[bi:bi + k] if forward else a[ai - k:ai] == b[bi - k:bi]
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if same(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _encode_delta(old: bytes, new: bytes) -> list:
    """``old`` as copies from ``new`` (``[offset, length]``) and literals (base64 strings)."""
    ops: list = []

    def literal(a, b):
        if b > a:
            if ops and isinstance(ops[-1], bytes):
                ops[-1] += old[a:b]
            else:
                ops.append(old[a:b])

    def rec(a0, a1, depth):
        n = a1 - a0
        if n < 2 * _MIN_COPY or depth > 60:
            literal(a0, a1)
            return
        for frac in (0.5, 0.25, 0.75, 0.05, 0.95):
            m = min(a0 + int(n * frac), a1 - _MIN_COPY)
            j = new.find(old[m:m + _MIN_COPY])
            if j >= 0:
                break
        else:
            literal(a0, a1)
            return
        left = _match_len(old, m, new, j, min(m - a0, j), forward=False)
        right = _match_len(old, m, new, j, min(a1 - m, len(new) - j), forward=True)
        s, e, t = m - left, m + right, j - left
        rec(a0, s, depth + 1)
        ops.append([t, e - s])
        rec(e, a1, depth + 1)

    rec(0, len(old), 0)
    return [base64.b64encode(op).decode("ascii") if isinstance(op, bytes) else op for op in ops]


def _decode_delta(ops: list, new: bytes) -> bytes:
    out = bytearray()
    for op in ops:
        out += base64.b64decode(op) if isinstance(op, str) else new[op[0]:op[0] + op[1]]
    return bytes(out)


def make_delta(old: str, new: str) -> dict[str, Any] | None:
    """How to rebuild ``old`` from ``new`` byte for byte, or ``None`` when that would take
    too much room in the undo log (then undo restores the fields instead)."""
    so, sn = os.path.getsize(old), os.path.getsize(new)
    with open(old, "rb") as fo, open(new, "rb") as fn:
        p = _common_prefix(fo, fn, min(so, sn))
        s = _common_suffix(fo, so, fn, sn, min(so, sn) - p)
        if so - p - s > _DELTA_LIMIT or sn - p - s > _DELTA_LIMIT:
            return None
        mid_old, mid_new = _read_at(fo, p, so - p - s), _read_at(fn, p, sn - p - s)
    ops = _encode_delta(mid_old, mid_new)
    if sum(len(op) for op in ops if isinstance(op, str)) > _LITERAL_LIMIT * 4 // 3 + 4:
        return None
    if _decode_delta(ops, mid_new) != mid_old:  # never record a delta that does not rebuild the file
        return None
    return {"prefix": p, "suffix": s, "ops": ops}


def _apply_delta(delta: Mapping[str, Any], current: str, out) -> None:
    size = os.path.getsize(current)
    p, s = delta["prefix"], delta["suffix"]
    with open(current, "rb") as f:
        _copy_range(f, 0, p, out)
        out.write(_decode_delta(delta["ops"], _read_at(f, p, size - p - s)))
        _copy_range(f, size - s, size, out)


def _copy_range(f, start: int, end: int, out) -> None:
    f.seek(start)
    left = end - start
    while left > 0:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise WriteError("the file changed while it was being read")
        out.write(chunk)
        left -= len(chunk)


# --------------------------------------------------------------------------------------
# The undo log


class UndoLog:
    """An append-only JSONL journal: a header line per run, then one record per file,
    each flushed and fsynced before the file it describes is replaced."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.count = 0
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not is_undo_log(self.path):
            raise WriteError(f"{printable(self.path)} exists and is not an mttag undo log; refusing to append to it")
        self.stream = open(self.path, "a", encoding="utf-8")
        self._write({"mttag_undo": UNDO_FORMAT, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(meta or {})})

    def _write(self, record: Mapping[str, Any]) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def write(self, record: Mapping[str, Any]) -> None:
        self._write(record)
        self.count += 1

    def close(self) -> None:
        self.stream.close()


def is_undo_log(path: str | os.PathLike) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith('{"mttag_undo":')
    except OSError:
        return False


def read_undo_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The file records of an undo log, in the order written (a cut-off last line is ignored)."""
    if not is_undo_log(path):
        raise WriteError(f"{printable(path)} is not an mttag undo log")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "path" in record and "before" in record:
                out.append(record)
    return out


# --------------------------------------------------------------------------------------
# The write pipeline


def _check_writable(real: str) -> os.stat_result:
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise WriteError("no such file") from None
    except OSError as exc:
        raise WriteError(f"cannot read it ({_reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise WriteError("not a regular file")
    if not st.st_mode & 0o222 or not os.access(real, os.W_OK):
        raise WriteError("read-only file (permission denied); mttag does not change read-only files")
    if st.st_nlink > 1:
        raise WriteError(f"has {st.st_nlink} hard links; replacing it would split them (write one link's target by hand)")
    folder = os.path.dirname(real) or "."
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError("its folder is read-only (permission denied)")
    return st


def _make_copy(real: str, st: os.stat_result) -> str:
    folder = os.path.dirname(real) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(real)}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out, open(real, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        shutil.copystat(real, tmp)  # mode, times, flags, extended attributes
        if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.stat(tmp).st_uid, os.stat(tmp).st_gid):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError:
                raise WriteError("cannot keep the file's owner and group (run as its owner)") from None
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(tmp: str, real: str) -> Iterator[None]:
    """Fill the temporary copy ``tmp`` inside the block; then it atomically replaces ``real``
    and the folder is synced. On any failure or interruption in the block the copy is
    removed and ``real`` is left exactly as it was."""
    try:
        yield
        os.replace(tmp, real)
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(real))


def _finish_times(tmp: str, st: os.stat_result, keep_mtime: bool) -> None:
    if keep_mtime:
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(tmp, None)


def write_tags(path: str | os.PathLike, tags: Iterable[Any], options: WriteOptions | None = None,
               undo_log: UndoLog | None = None) -> WriteOutcome:
    """Write ``tags`` (``(tag, score)`` pairs or ``{"tag", "score"}`` records, any order)
    into the audio file ``path`` as ``options`` say; never raises for a bad file (the
    outcome says ``error``). Without ``undo_log`` nothing records the old values, so give
    one unless ``options.dry_run``. A symbolic link is written through (the link stays)."""
    options = options or WriteOptions()
    path = os.fspath(path)
    chosen = select_tags(tags, options.top, options.threshold)
    if not chosen:
        return WriteOutcome(path, "skipped", note="no tags to write")
    try:
        return _write(path, chosen, options, undo_log)
    except WriteError as exc:
        return WriteOutcome(path, "error", error=str(exc))
    except OSError as exc:
        return WriteOutcome(path, "error", error=_reason(exc))


def _write(path: str, chosen, options: WriteOptions, undo_log: UndoLog | None) -> WriteOutcome:
    real = os.path.realpath(path)
    st = _check_writable(real)  # also on a dry run: it shows what would fail
    handler = _open(real)
    ours = planned_values(chosen, options)
    join = options.join or handler.join
    plan: dict[str, list[str]] = {}
    changes: list[FieldChange] = []
    for name in options.fields:
        before = handler.get(name)
        after = merge_values(name, before, ours[name], options.mode, join)
        if after != before:
            plan[name] = after
            changes.append(FieldChange(name, before, after))
    if not plan:
        return WriteOutcome(path, "unchanged", format=handler.format)
    if options.dry_run:
        return WriteOutcome(path, "would-write", changes, format=handler.format)
    if undo_log is None:
        raise WriteError("no undo log: refusing to write without one")
    captured = {name: handler.capture(name) for name in plan}
    others_before = handler.others(list(plan))

    tmp = _make_copy(real, st)
    with _replacing(tmp, real):
        copy = _open(tmp)
        for name, values in plan.items():
            copy.set(name, values)
        copy.save()
        _verify_copy(handler.format, real, tmp, plan, others_before, options.verify_audio)
        _finish_times(tmp, st, options.keep_mtime)
        _fsync_file(tmp)
        if os.stat(real).st_mtime_ns != st.st_mtime_ns or os.path.getsize(real) != st.st_size:
            raise WriteError("the file changed while mttag was writing it; left as it is now")
        record = {
            "path": _path_text(real), "format": handler.format, "id3_version": handler.id3_version,
            "fields": list(plan), "before": captured, "after": plan,
            "sha256_before": file_sha256(real), "sha256_after": file_sha256(tmp),
            "size_before": st.st_size, "mtime_ns_before": st.st_mtime_ns, "keep_mtime": options.keep_mtime,
            "delta": make_delta(real, tmp),
        }
        undo_log.write(record)  # on disk before the original is replaced
    return WriteOutcome(path, "written", changes, format=handler.format)


def _verify_copy(kind: str, real: str, tmp: str, plan: Mapping[str, list[str]], others_before: Any,
                 decode: bool) -> None:
    try:
        check = _open(tmp)
    except WriteError as exc:
        raise WriteError(f"the written copy does not read back ({exc}); file left as it was") from None
    for name, values in plan.items():
        if check.get(name) != values:
            raise WriteError(f"the {name} field did not read back as written; file left as it was")
    if check.others(list(plan)) != others_before:
        raise WriteError("other tags would change (mttag bug or unusual file); file left as it was")
    _verify_audio(kind, real, tmp, decode)


# --------------------------------------------------------------------------------------
# Undo


def undo(log: str | os.PathLike, *, dry_run: bool = False) -> Iterator[WriteOutcome]:
    """Restore every file an undo log recorded, newest record first (so a log that several
    runs appended to goes back to the state before the first). Yields one outcome a record."""
    from .output import path_from_text

    for record in reversed(read_undo_log(log)):
        path = path_from_text(record["path"])
        try:
            yield _undo_one(path, record, dry_run)
        except WriteError as exc:
            yield WriteOutcome(path, "error", error=str(exc), format=record.get("format"))
        except OSError as exc:
            yield WriteOutcome(path, "error", error=_reason(exc), format=record.get("format"))


def _undo_one(path: str, record: Mapping[str, Any], dry_run: bool) -> WriteOutcome:
    kind = record.get("format")
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise WriteError("no such file")
    current = file_sha256(real)
    if current == record["sha256_before"]:
        return WriteOutcome(path, "unchanged", format=kind, note="already as before")
    changes = [FieldChange(name, list(record["after"].get(name, [])), _captured_text(kind, name, value))
               for name, value in record["before"].items()]
    exact = current == record["sha256_after"] and record.get("delta") is not None
    if dry_run:
        return WriteOutcome(path, "would-restore", changes, format=kind,
                            note="byte for byte" if exact else "fields only")
    st = _check_writable(real)
    if exact:
        folder = os.path.dirname(real) or "."
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(real)}.", suffix=TMP_SUFFIX)
        with _replacing(tmp, real):
            with os.fdopen(fd, "wb") as out:
                _apply_delta(record["delta"], real, out)
            if file_sha256(tmp) != record["sha256_before"]:
                raise WriteError("the rebuilt file does not match the recorded one; left as it is")
            shutil.copystat(real, tmp)
            _finish_times(tmp, st, False)
            if record.get("keep_mtime"):
                os.utime(tmp, ns=(st.st_atime_ns, record["mtime_ns_before"]))
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError:
                pass
            _fsync_file(tmp)
        return WriteOutcome(path, "restored", changes, format=kind, note="byte for byte")
    # the file changed since (another tagger, a later run): put back only the fields that
    # still hold what mttag wrote
    handler = _open(real)
    restore = {name: value for name, value in record["before"].items()
               if handler.get(name) == list(record["after"].get(name, []))}
    skipped = sorted(set(record["before"]) - set(restore))
    if not restore:
        return WriteOutcome(path, "unchanged", format=kind, note="fields changed since mttag wrote them; left as they are")
    tmp = _make_copy(real, st)
    with _replacing(tmp, real):
        copy = _open(tmp)
        copy.restore(restore)
        copy.save()
        check = _open(tmp)
        for name in restore:
            want = _captured_text(kind, name, restore[name])
            if check.get(name) != want:
                raise WriteError(f"the {name} field did not read back as restored; left as it is")
        _verify_audio(handler.format, real, tmp, False)
        _finish_times(tmp, st, bool(record.get("keep_mtime")))
        _fsync_file(tmp)
    note = "fields only (the file changed since)"
    if skipped:
        note += f"; {', '.join(skipped)} changed since and left as is"
    return WriteOutcome(path, "restored", [c for c in changes if c.field in restore], format=kind, note=note)


def _captured_text(kind: str | None, name: str, captured: Any) -> list[str]:
    """The values a captured field held, as :meth:`_Handler.get` reads them."""
    if kind in ("mp3", "wav", "aiff"):
        return [t for item in captured for t in item["text"]]
    if kind == "m4a":
        out = []
        for values in captured.values():
            for v in values:
                out.append(base64.b64decode(v["data"]).decode("utf-8", "replace") if isinstance(v, dict) else v)
        return out
    return [v for _, _, v in captured]


def default_undo_log(results: str | os.PathLike) -> Path:
    """``tags.jsonl`` → ``tags.undo-20250101-120000.jsonl`` beside it."""
    results = Path(results)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = results.with_name(f"{results.stem}.undo-{stamp}.jsonl")
    n = 1
    while base.exists():
        n += 1
        base = results.with_name(f"{results.stem}.undo-{stamp}-{n}.jsonl")
    return base


__all__ = [
    "FIELDS", "DEFAULT_FIELDS", "MODES", "TAG_KINDS", "WriteOptions", "WriteOutcome", "FieldChange", "WriteError",
    "UndoLog", "write_tags", "undo", "read_undo_log", "select_tags", "planned_values", "merge_values", "tag_kind",
    "load_kinds", "display_name", "decoded_digest", "file_sha256", "make_delta", "default_undo_log",
]
