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
import hmac
import json
import os
import secrets
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

from ..util.display import printable
from ..util.fs import fsync_dir as _fsync_dir
from ..util.hashing import file_sha256  # noqa: F401 (re-exported)
from ..util.text import one_line

FIELDS = ("genre", "mood", "comment", "mttag")
DEFAULT_FIELDS = ("genre", "mood", "mttag")
MODES = ("add", "replace")
CASES = ("title", "as-is", "lower")
TMP_SUFFIX = ".mttag-tmp"
UNDO_FORMAT = 1

# At most this many genres (moods) go into GENRE (MOOD): a player shows a long genre list as
# noise, and past the third genre the reference set's tracks rarely have any (docs/tagging.md).
MAX_GENRES = 3
MAX_MOODS = 2

# --------------------------------------------------------------------------------------
# Which tags are genres, moods, instruments, voices and eras: mttag.inference.vocab's table
# (mttag/data/vocabulary.json) decides for every tag it knows; this older table only for the
# model spellings it does not (custom models trained on these vocabularies). Data, not logic:
# a tag missing in both is "other" and only goes into the comment and MTTAG fields.
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
    "voice": (),
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
    """``genre``, ``mood``, ``instrument``, ``voice``, ``era`` or ``other`` (case-insensitive;
    ``kinds`` overrides :func:`mttag.inference.vocab.kind`, which overrides :data:`TAG_KINDS`)."""
    from ..inference import vocab

    key = " ".join(str(tag).lower().split())
    if kinds:
        lowered = {" ".join(k.lower().split()): v for k, v in kinds.items()}
        for candidate in (key, vocab.display(key).lower()):
            if candidate in lowered:
                return lowered[candidate]
    if vocab.known(key):
        return vocab.kind(key)
    return _KIND_OF.get(vocab.split_source(key)[1], "other")


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
    replaced. Which tags: those of a confidence of at least ``min_confidence`` (``None``:
    :data:`mttag.inference.calibration.DEFAULT_THRESHOLD`, unless a ``threshold`` is given, which then
    decides alone), of a raw probability of at least ``threshold``, then the ``top`` most
    confident; of these at most ``max_genres`` genres go into the genre field and
    ``max_moods`` moods into the mood field (``None``: no limit). Tags without a confidence
    (results of an older mttag or of a model without a calibration table) are chosen by
    ``threshold`` and ``top`` alone, as before. ``case`` spells genre and mood values; ``join`` writes several genres (moods) as one value joined by it (ID3v2.3
    always joins with ``/``); ``kinds`` overrides :data:`TAG_KINDS`. ``keep_mtime``
    keeps the file's modification time (default: the write is a modification, so library
    tools that look at mtimes re-read the tags). ``verify_audio`` also decodes both
    files and compares samples (slower; the payload check is always done).
    """

    fields: Sequence[str] = DEFAULT_FIELDS
    mode: str = "add"
    top: int | None = None
    threshold: float | None = None
    min_confidence: float | None = None
    max_genres: int | None = MAX_GENRES
    max_moods: int | None = MAX_MOODS
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
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("min_confidence must be between 0 and 1")
        for name in ("max_genres", "max_moods"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more")

    @property
    def confidence_floor(self) -> float | None:
        """The confidence a tag needs: ``min_confidence``, else the default threshold unless
        the raw ``threshold`` was asked for instead."""
        if self.min_confidence is not None:
            return self.min_confidence
        if self.threshold is not None:
            return None
        from ..inference.calibration import DEFAULT_THRESHOLD

        return DEFAULT_THRESHOLD


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
    from ..inference.output import path_text

    return path_text(str(path))


# --------------------------------------------------------------------------------------
# Planning: which values go into which field


class Chosen(tuple):
    """A tag to write: ``(tag, score)`` like the pairs :func:`select_tags` gives (so it
    unpacks as one), with the calibrated ``confidence`` (None when unknown) alongside."""

    confidence: float | None

    def __new__(cls, tag: str, score: float, confidence: float | None = None):
        self = super().__new__(cls, (tag, score))
        self.confidence = confidence
        return self

    @property
    def tag(self) -> str:
        return self[0]

    @property
    def score(self) -> float:
        return self[1]


def _entry(t: Any) -> Chosen:
    """A tag as results hold it: a ``{"tag", "score", "confidence"?}`` record, a
    :class:`mttag.inference.tagging.TagScore`, or a ``(tag, score)`` / ``(tag, score, confidence)`` tuple."""
    if isinstance(t, Chosen):
        return t
    if isinstance(t, Mapping):
        tag, score, conf = t["tag"], t["score"], t.get("confidence")
    elif hasattr(t, "probability") and hasattr(t, "tag"):
        tag, score, conf = t.tag, t.probability, t.confidence
    else:
        tag, score, *rest = t
        conf = rest[0] if rest else None
    return Chosen(str(tag), float(score), None if conf is None else float(conf))


def choose_tags(tags: Iterable[Any], options: WriteOptions | None = None) -> list[Chosen]:
    """The tags :func:`write_tags` writes, most confident first (by score where no tag has a
    confidence): see :class:`WriteOptions` for the rule."""
    options = options or WriteOptions()
    chosen = [_entry(t) for t in tags]
    if any(c.confidence is not None for c in chosen):
        chosen.sort(key=lambda c: (-(c.confidence if c.confidence is not None else -1.0), -c.score))
        floor = options.confidence_floor
        if floor is not None:
            chosen = [c for c in chosen if c.confidence is not None and c.confidence >= floor]
    else:
        chosen.sort(key=lambda c: -c.score)
    if options.threshold is not None:
        chosen = [c for c in chosen if c.score >= options.threshold]
    return chosen[: options.top] if options.top is not None else chosen


def calibrated(tags: Iterable[Any]) -> bool:
    """Whether any of a record's tags has a confidence (else :func:`choose_tags` falls back
    to the raw scores)."""
    try:
        return any(_entry(t).confidence is not None for t in tags)
    except (TypeError, ValueError, KeyError):
        return False


def select_tags(tags: Iterable[Any], top: int | None = None, threshold: float | None = None) -> list[tuple[str, float]]:
    """Tags as ``(tag, score)`` best first by score, narrowed by ``threshold`` then ``top``.
    Accepts pairs or ``{"tag", "score"}`` records (as in results files). Confidence plays no
    part here; :func:`choose_tags` is what ``mttag write`` uses."""
    pairs = [(c.tag, c.score) for c in map(_entry, tags)]
    pairs.sort(key=lambda p: -p[1])
    if threshold is not None:
        pairs = [p for p in pairs if p[1] >= threshold]
    if top is not None:
        pairs = pairs[:top]
    return pairs


def planned_values(tags: Sequence[Any], options: WriteOptions) -> dict[str, list[str]]:
    """The values mttag would write, per field (``[]``: nothing for that field; it is left
    alone), from ``tags`` already chosen (best first). Genre and mood take at most
    ``options.max_genres``/``max_moods`` of their kind; instruments, voices and eras go only
    into comment and MTTAG, which no player reads as a genre."""
    pairs = [(c.tag, c.score) for c in map(_entry, tags)]
    limits = {"genre": options.max_genres, "mood": options.max_moods}
    out: dict[str, list[str]] = {}
    for name in options.fields:
        if name in ("genre", "mood"):
            values = list(dict.fromkeys(display_name(t, options.case) for t, _ in pairs
                                        if tag_kind(t, options.kinds) == name))
            out[name] = values if limits[name] is None else values[: limits[name]]
        elif name == "comment":
            out[name] = [", ".join(t for t, _ in pairs)] if pairs else []
        else:
            out[name] = ["; ".join(f"{t} {s:.2f}" for t, s in pairs)] if pairs else []
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
        junk: list[str] = []
        known = _watched_frames(junk)
        if kind == "mp3":
            try:
                self.tags = ID3(path, translate=False, load_v1=False, known_frames=known)
            except ID3NoHeaderError:
                self.tags = ID3()
                self.tags.version = (2, 4, 0)
        else:
            import mutagen.aiff
            import mutagen.wave

            cls = mutagen.wave.WAVE if kind == "wav" else mutagen.aiff.AIFF
            self.file = cls(path, translate=False, load_v1=False, known_frames=known)
            if self.file.tags is None:
                self.file.add_tags()
                self.file.tags.version = (2, 4, 0)
            self.tags = self.file.tags
        version = self.tags.version[1] if self.tags.version[0] == 2 else 4
        if version not in (3, 4):
            raise WriteError(f"ID3v2.{version} tag: only ID3v2.3 and v2.4 can be written (convert it with a tagger first)")
        if junk:
            # mutagen skips a frame it cannot parse and would save the tag without it
            raise WriteError(f"ID3 frame {', '.join(sorted(set(junk)))} cannot be parsed (bad text encoding or "
                             "compression); writing would drop it, so the file is left as it is")
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


class _WatchedFrame:
    """Stands in for a mutagen frame class while a tag loads, noting the frames that
    mutagen drops as junk (it says nothing and the next save would lose them)."""

    def __init__(self, cls, junk: list[str]):
        self.cls, self.junk = cls, junk

    def _fromData(self, header, tflags, data):
        from mutagen.id3 import ID3JunkFrameError

        try:
            return self.cls._fromData(header, tflags, data)
        except ID3JunkFrameError:
            self.junk.append(self.cls.__name__)
            raise


def _watched_frames(junk: list[str]) -> dict[str, Any]:
    from mutagen.id3 import Frames

    return {name: _WatchedFrame(cls, junk) for name, cls in Frames.items()}


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


def _detect(path: str) -> tuple[Any, str | None]:
    """``(mutagen file, kind)`` by the file's content; kind ``None`` when mutagen knows it
    but mttag does not write it. Raises :class:`WriteError` for what mutagen cannot read."""
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
    for cls, kind in ((MP3, "mp3"), (WAVE, "wav"), (AIFF, "aiff"), (FLAC, "flac"), (OggOpus, "opus"),
                      (OggVorbis, "ogg"), (MP4, "m4a")):
        if isinstance(audio, cls):
            return audio, kind
    return audio, None


def _open(path: str) -> _Handler:
    """The handler for a file, by its content (not its name)."""
    audio, kind = _detect(path)
    try:
        if kind in ("mp3", "wav", "aiff"):
            return _ID3Handler(path, kind)
        if kind in ("flac", "opus", "ogg"):
            return _VorbisHandler(path, audio, kind)
        if kind == "m4a":
            return _MP4Handler(path, audio)
    except WriteError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise WriteError(f"damaged or unreadable tags ({_reason(exc)})") from None
    raise WriteError("unsupported format (mttag writes mp3, flac, ogg, opus, m4a, wav and aiff)")


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


def _id3v2_size(f, at: int = 0) -> int:
    """Bytes of the ID3v2 tag at ``at`` (0: none there)."""
    head = _read_at(f, at, 10)
    if len(head) == 10 and head[:3] == b"ID3":
        size = 0
        for b in head[6:10]:
            size = (size << 7) | (b & 0x7F)
        return 10 + size + (10 if head[5] & 0x10 else 0)
    return 0


def _id3v2_end(f) -> int:
    """Where the ID3v2 tags at the start of a file end: some writers stack a second tag
    after the first, and players skip them all."""
    end = 0
    while (tag := _id3v2_size(f, end)) > 0:
        end += tag
    return end


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


def decoded_digest(path: str | os.PathLike, ffmpeg_only: bool = False) -> str | None:
    """SHA-256 of a file's decoded samples (with rate and channel count): libsndfile, else
    ffmpeg (``ffmpeg_only``: ffmpeg alone); ``None`` if neither can decode it."""
    path = os.fspath(path)
    h = hashlib.sha256()
    try:
        if ffmpeg_only:
            raise LookupError
        import soundfile as sf

        from ..audio.decode import libsndfile_path

        with sf.SoundFile(libsndfile_path(path)) as f:
            h.update(f"{f.samplerate}/{f.channels}/".encode())
            for block in f.blocks(blocksize=1 << 16, dtype="float32"):
                h.update(block.tobytes())
        return h.hexdigest()
    except Exception:  # noqa: BLE001 - not for libsndfile: try ffmpeg
        h = hashlib.sha256()
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


def _header_page_audio(path: str) -> bool:
    from ..audio.decode import ogg_header_page_carries_audio

    try:
        return ogg_header_page_carries_audio(path)
    except Exception:  # noqa: BLE001 - an unreadable layout: the usual checks decide
        return False


def _check_ogg_pages(kind: str, path: str) -> None:
    """Refuse, before any work (also in a dry run), an Ogg file whose first audio packet shares
    the header page when ffmpeg is missing: the write could not verify its audio."""
    if kind in ("ogg", "opus") and shutil.which("ffmpeg") is None and _header_page_audio(path):
        raise WriteError("this Ogg file's first audio packet shares its header page (libsndfile decodes it "
                         "shifted), so the write cannot verify the audio; install ffmpeg and run again; "
                         "file left as it was")


def _verify_audio(kind: str, old: str, new: str, decode: bool) -> None:
    same = False
    try:
        same = _payload_same(kind, old, new)
    except Exception:  # noqa: BLE001 - an unexpected layout: let the decoder decide
        same = False
    if same and not decode:
        return
    # libsndfile decodes an Ogg stream whose first audio packet shares the header page shifted,
    # and the rewritten file (mutagen re-paginates) unshifted: only ffmpeg compares them fairly
    exact = kind in ("ogg", "opus") and _header_page_audio(old)
    a, b = decoded_digest(old, ffmpeg_only=exact), decoded_digest(new, ffmpeg_only=exact)
    if a is None or b is None:
        raise WriteError("cannot verify that the audio is unchanged (it does not decode); file left as it was")
    if a != b:
        raise WriteError("the audio would change (mttag bug or unusual file); file left as it was")


# MPEG audio frame headers: bit rates (kbit/s) by (MPEG-1 or 2/2.5, layer) and sample rates by version bits
_MPEG_KBPS = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MPEG_ZEROS = 256 << 10  # zero bytes skipped after the ID3v2 tag (padding some writers leave)
# where, after them, the first frame must start: a wider search finds chained frame-like
# words deep inside programs named .mp3 (tests: test_dry_run_does_not_promise_to_write_...)
_MPEG_SLACK = 4096


def _mpeg_frame(head: bytes) -> tuple[int, tuple[int, int, int]] | None:
    """``(frame length, (version, layer, sample-rate index))`` of an MPEG audio frame header."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    ver, layer, br, sr, pad = (head[1] >> 3) & 3, 4 - ((head[1] >> 1) & 3), head[2] >> 4, (head[2] >> 2) & 3, (head[2] >> 1) & 1
    if ver == 1 or layer == 4 or br in (0, 15) or sr == 3:
        return None
    v1 = ver == 3
    kbps = _MPEG_KBPS[(1, layer) if v1 else (2, 1 if layer == 1 else 2)][br]
    rate = _MPEG_RATES[ver][sr]
    if layer == 1:
        size = (12 * kbps * 1000 // rate + pad) * 4
    else:
        size = (72 if layer == 3 and not v1 else 144) * kbps * 1000 // rate + pad
    return size, (ver, layer, sr)


def _mpeg_audio_start(f, start: int, size: int) -> int:
    """Where the MPEG audio frames start: past zero padding, within :data:`_MPEG_SLACK`,
    a frame header followed by five more of the same stream (or by the end of the file).
    Raises ``ValueError`` for a file that is not MPEG audio (say a program named .mp3,
    whose tables can hold a few header-like words far into the file)."""
    zeros = _read_at(f, start, _MPEG_ZEROS)
    start += len(zeros) - len(zeros.lstrip(b"\0"))
    window = _read_at(f, start, _MPEG_SLACK + 4)
    i = window.find(b"\xff")
    while 0 <= i < len(window) - 3:
        first = _mpeg_frame(window[i:i + 4])
        if first is not None:
            pos, ok = start + i, True
            for _ in range(6):
                frame = _mpeg_frame(_read_at(f, pos, 4))
                if frame is None or frame[1] != first[1]:
                    ok = pos >= size - 4 and pos > start + i  # a short file ends after its last frame
                    break
                pos += frame[0]
                if pos >= size:
                    break
            if ok:
                return start + i
        i = window.find(b"\xff", i + 1)
    raise ValueError("no MPEG audio frames at its start")


def _mp3_ranges(f, size: int) -> list[tuple[int, int]]:
    """The MPEG frames of an mp3: after the ID3v2 tag (and any junk before the first frame),
    before an ID3v1 tag and an APEv2 tag at the end."""
    start = _mpeg_audio_start(f, _id3v2_end(f), size)
    end = size
    if end - start >= 128 and _read_at(f, end - 128, 3) == b"TAG":
        end -= 128
    footer = _read_at(f, end - 32, 32) if end - start >= 32 else b""
    if footer[:8] == b"APETAGEX":
        tag_size, flags = struct.unpack("<II", footer[12:20])
        end -= tag_size + (32 if flags & 0x80000000 else 0)
    if end <= start:
        raise ValueError("no MPEG audio frames")
    return [(start, end)]


def _ogg_digest(path: str, headers: int) -> str:
    """SHA-256 of an Ogg stream's identification header and, page by page, its packets and
    granule positions after the header packets (comments and page numbering excluded)."""
    from mutagen.ogg import OggPage

    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(OggPage.to_packets(_pages(f, headers))[0])
        f.seek(_ogg_header_end(f, headers))
        while True:
            try:
                page = OggPage(f)
            except EOFError:
                break
            h.update(struct.pack("<qI", page.position, page.serial))
            for packet in page.packets:
                h.update(struct.pack("<I", len(packet)))
                h.update(packet)
    return h.hexdigest()


def audio_ranges(kind: str, path: str) -> list[tuple[int, int]]:
    """The byte ranges holding a file's audio (not its tags), by container: MP3 frames,
    FLAC STREAMINFO and frames, WAV/AIFF format and sample chunks, MP4 ``mdat``. Raises
    ``ValueError`` when the file is not that container (or is damaged)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if kind == "mp3":
            return _mp3_ranges(f, size)
        if kind == "flac":
            return _flac_ranges(f, size)
        if kind in ("wav", "aiff"):
            wanted = (b"fmt ", b"data") if kind == "wav" else (b"COMM", b"SSND")
            return _chunk_ranges(f, size, kind == "aiff", wanted)
        if kind == "m4a":
            return _mp4_layout(f, size)[0]
    raise ValueError(f"no audio ranges for {kind}")


def _check_audio(kind: str, path: str) -> None:
    """The file is audio of the container its tags say (a program named .mp3 is not)."""
    try:
        if kind in ("ogg", "opus"):
            _ogg_digest(path, 3 if kind == "ogg" else 2)
        else:
            audio_ranges(kind, path)
    except Exception as exc:  # noqa: BLE001 - any parse failure means: not this container
        raise WriteError(f"not a valid {kind} file ({_reason(exc)}); left as it is") from None


FINGERPRINT_VERSION = "a1"


def audio_fingerprint(path: str | os.PathLike) -> str:
    """What identifies the recording in a file, whatever its tags:
    ``a1:SIZE:MTIME_NS:KIND:SHA256`` where the SHA-256 covers the audio bytes only (see
    :func:`audio_ranges`; Ogg: packets and granule positions), so it stays the same after
    ``mttag write`` or another tagger changes the tags. Formats mttag does not write, and
    files whose layout is not understood, are hashed whole (``KIND`` ``file``). Costs one
    read of the file. Raises ``OSError`` for a file that cannot be read."""
    path = os.fspath(path)
    st = os.stat(path)
    kind = None
    try:
        kind = _detect(path)[1]
    except WriteError:
        pass
    digest = None
    if kind is not None:
        try:
            if kind in ("ogg", "opus"):
                digest = _ogg_digest(path, 3 if kind == "ogg" else 2)
            else:
                h = hashlib.sha256()
                for a, b in audio_ranges(kind, path):
                    h.update(bytes.fromhex(_range_digest(path, a, b)))
                digest = h.hexdigest()
        except Exception:  # noqa: BLE001 - an unusual layout: the whole file identifies it
            digest = None
    if digest is None:
        kind, digest = "file", file_sha256(path)
    return f"{FINGERPRINT_VERSION}:{st.st_size}:{st.st_mtime_ns}:{kind}:{digest}"


def parse_fingerprint(text: Any) -> tuple[str, str] | None:
    """``(kind, digest)`` of a fingerprint, or ``None`` if ``text`` is not one."""
    if not isinstance(text, str):
        return None
    parts = text.split(":")
    if len(parts) != 5 or parts[0] != FINGERPRINT_VERSION or not parts[1].isdigit() or not parts[2].lstrip("-").isdigit():
        return None
    if parts[3] not in ("mp3", "flac", "ogg", "opus", "m4a", "wav", "aiff", "file"):
        return None
    if len(parts[4]) != 64 or any(c not in "0123456789abcdef" for c in parts[4]):
        return None
    return parts[3], parts[4]


def _check_fingerprint(real: str, fingerprint: str) -> None:
    want = parse_fingerprint(fingerprint)
    if want is None:
        raise WriteError("its results record has a damaged fingerprint; tag the file again")
    have = parse_fingerprint(audio_fingerprint(real))
    if have != want:
        raise WriteError("its audio changed since it was tagged (the results describe another recording); "
                         "tag it again")


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

UNDO_KEY_NAME = "undo.key"
_HEX = set("0123456789abcdef")


def undo_key_path() -> Path:
    """The per-user secret that signs undo records (``~/.config/mttag/undo.key``)."""
    from ..weights.registry import user_config_dir

    return user_config_dir() / UNDO_KEY_NAME


def _undo_key(create: bool) -> bytes | None:
    """This user's undo key: 32 random bytes, made owner-only (0600) on first use. Made whole
    in a temporary file and linked into place, so a run starting at the same moment reads
    either no key or the whole one; a key that cannot be read is a WriteError, one line."""
    path = undo_key_path()
    try:
        for _ in range(2):
            try:
                with open(path, "rb") as f:
                    key = f.read(64)
                if len(key) != 32:
                    raise WriteError(f"{printable(path)} is not an mttag undo key "
                                     "(delete it; old undo logs then stop working)")
                return key
            except FileNotFoundError:
                if not create:
                    return None
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".undo.key.")  # mode 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass  # another run made it first: read theirs
            finally:
                os.unlink(tmp)
    except OSError as exc:
        raise WriteError(f"cannot read the undo key {printable(path)} ({_reason(exc)})") from None
    raise WriteError(f"cannot read the undo key {printable(path)}")


def _mac(key: bytes, record: Mapping[str, Any]) -> str:
    body = json.dumps({k: v for k, v in record.items() if k != "mac"}, sort_keys=True, ensure_ascii=True,
                      separators=(",", ":"))
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).hexdigest()


def _regular_or_missing(path: str | os.PathLike) -> bool:
    """False for a FIFO, device, socket or folder (opening one can hang or mean nothing)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


class UndoLog:
    """An append-only JSONL journal: a header line per run, then one record per file,
    each flushed and fsynced before the file it describes is replaced. Every record is
    signed (HMAC-SHA256) with this user's undo key, so :func:`undo` acts only on records
    that an mttag run of this user wrote, unchanged."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.count = 0
        if not _regular_or_missing(self.path):
            raise WriteError(f"{printable(self.path)} is not a regular file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not is_undo_log(self.path):
            raise WriteError(f"{printable(self.path)} exists and is not an mttag undo log; refusing to append to it")
        self.key = _undo_key(create=True)
        # O_NONBLOCK: a FIFO put there since the check fails at once instead of waiting for a reader
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise WriteError(f"{printable(self.path)} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        self.stream = os.fdopen(fd, "a", encoding="utf-8")
        self._write({"mttag_undo": UNDO_FORMAT, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(meta or {})})

    def _write(self, record: Mapping[str, Any]) -> None:
        end = os.fstat(self.stream.fileno()).st_size
        try:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
            os.fsync(self.stream.fileno())
        except BaseException:
            # a full disk can leave half a line: cut it off, or the next record would be glued to it
            try:
                self.stream = _reopen_truncated(self.stream, end)
            except OSError:
                pass
            raise

    def sign(self, record: dict[str, Any]) -> dict[str, Any]:
        record["mac"] = _mac(self.key, record)
        return record

    def write(self, record: Mapping[str, Any]) -> None:
        self._write(record)
        self.count += 1

    def close(self) -> None:
        """Close the log; a failure (a full disk) is a :class:`WriteError` — every record
        before it was already synced to disk."""
        try:
            self.stream.close()
        except OSError as exc:
            raise WriteError(f"cannot close {printable(self.path)} ({_reason(exc)}); "
                             "the records before are on disk") from None


def _reopen_truncated(stream, size: int):
    fd = os.dup(stream.fileno())
    try:
        stream.close()
    except OSError:
        pass  # the buffer that did not fit is dropped with the close
    os.ftruncate(fd, size)
    return os.fdopen(fd, "a", encoding="utf-8")


def is_undo_log(path: str | os.PathLike) -> bool:
    if not _regular_or_missing(path):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith('{"mttag_undo":')
    except OSError:
        return False


def read_undo_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The file records of an undo log, in the order written (a cut-off last line is ignored).
    Records are not checked here: :func:`undo` checks (and refuses) each one."""
    if not is_undo_log(path):
        raise WriteError(f"{printable(path)} is not an mttag undo log")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "mttag_undo" not in record:
                out.append(record)
    return out


def _is_hex(value: Any, n: int = 64) -> bool:
    return isinstance(value, str) and len(value) == n and set(value) <= _HEX


def _is_int(value: Any, low: int | None = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def _record_problem(record: Mapping[str, Any]) -> str | None:
    """Why an undo record cannot be used as it is (types and ranges), or ``None``."""
    if not isinstance(record.get("path"), str) or not record["path"]:
        return "no path"
    if not _is_hex(record.get("mac")):
        return "it is not signed (written by hand, or by an mttag from before undo records were signed); refused"
    kind = record.get("format")
    if kind not in ("mp3", "wav", "aiff", "flac", "ogg", "opus", "m4a"):
        return f"unknown format {kind!r}"
    for name in ("sha256_before", "sha256_after"):
        if not _is_hex(record.get(name)):
            return f"{name} is missing or not a SHA-256"
    if not isinstance(record.get("before"), dict) or not isinstance(record.get("after"), dict):
        return "before/after are not field maps"
    for name, captured in record["before"].items():
        if name not in FIELDS:
            return f"unknown field {name!r}"
        if kind == "m4a":
            ok = isinstance(captured, dict) and all(isinstance(k, str) and isinstance(v, list) for k, v in captured.items())
        elif kind in ("flac", "ogg", "opus"):
            ok = isinstance(captured, list) and all(
                isinstance(x, list) and len(x) == 3 and _is_int(x[0]) and isinstance(x[1], str) and isinstance(x[2], str)
                for x in captured)
        else:
            ok = isinstance(captured, list) and all(
                isinstance(x, dict) and isinstance(x.get("frame"), str) and isinstance(x.get("text"), list)
                and all(isinstance(t, str) for t in x["text"]) and _is_int(x.get("encoding")) and x["encoding"] <= 3
                for x in captured)
        if not ok:
            return f"the previous {name} values are damaged"
    for name, values in record["after"].items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return f"the written {name} values are damaged"
    if not _is_int(record.get("mtime_ns_before"), None) or not isinstance(record.get("keep_mtime", False), bool):
        return "mtime_ns_before/keep_mtime are damaged"
    for name in ("dev", "ino"):
        if not _is_int(record.get(name)):
            return f"no {name} (the file mttag wrote)"
    delta = record.get("delta")
    if delta is not None:
        if not isinstance(delta, dict) or not _is_int(delta.get("prefix")) or not _is_int(delta.get("suffix")) \
                or not isinstance(delta.get("ops"), list):
            return "the delta is damaged"
        for op in delta["ops"]:
            if isinstance(op, str):
                try:
                    base64.b64decode(op, validate=True)
                except ValueError:
                    return "the delta is damaged"
            elif not (isinstance(op, list) and len(op) == 2 and _is_int(op[0]) and _is_int(op[1])):
                return "the delta is damaged"
    return None


# --------------------------------------------------------------------------------------
# The write pipeline

LOCK_WAIT = 30.0  # seconds a run waits for another mttag run to finish with a file


@contextlib.contextmanager
def file_lock(real: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the per-file lock of mttag runs on ``real``: a hidden ``.NAME.mttag-lock`` beside
    it (the audio file itself is never touched), waited for up to ``wait`` seconds."""
    from ..util.fileio import ExclusiveLock, LockedError

    folder, name = os.path.split(real)
    lock = ExclusiveLock(os.path.join(folder, f".{name}.mttag-lock"), "another mttag run writing this file",
                         remove=True)
    deadline = time.monotonic() + wait
    while True:
        try:
            lock.acquire()
            break
        except LockedError as exc:
            if time.monotonic() >= deadline:
                raise WriteError(f"{exc}; left as it is") from None
            time.sleep(0.05)
        except OSError as exc:
            raise WriteError(f"cannot make its lock file beside it ({_reason(exc)})") from None
    try:
        yield
    finally:
        lock.release()


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


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _temp_beside(real: str) -> tuple[int, str]:
    """A hidden temporary file beside ``real`` that keeps its extension
    (``.x.mp3.XXXX.mttag-tmp.mp3``): mutagen uses it to tell some formats apart."""
    folder, name = os.path.split(real)
    return tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.", suffix=TMP_SUFFIX + os.path.splitext(name)[1])


def _make_copy(real: str, st: os.stat_result) -> tuple[str, str]:
    """``(copy, SHA-256 of the bytes copied)``; the file must not change while it is copied."""
    fd, tmp = _temp_beside(real)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, open(real, "rb") as src:
            if not os.path.samestat(os.fstat(src.fileno()), st):
                raise WriteError("another program changed the file while mttag was writing it; left as it is now")
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        if _identity(os.stat(real)) != _identity(st):
            raise WriteError("another program changed the file while mttag was writing it; left as it is now")
        shutil.copystat(real, tmp)  # mode, times, flags, extended attributes
        if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.stat(tmp).st_uid, os.stat(tmp).st_gid):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError:
                raise WriteError("cannot keep the file's owner and group (run as its owner)") from None
    except BaseException:
        _unlink(tmp)
        raise
    return tmp, h.hexdigest()


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


def _still_as_read(real: str, st: os.stat_result, sha: str) -> None:
    """The file is the one mttag read: same inode, size, mtime and content. Another
    program's save since then (or a replaced file) stops the write, so its edit survives."""
    try:
        same = _identity(os.stat(real)) == _identity(st) and file_sha256(real) == sha \
            and _identity(os.stat(real)) == _identity(st)
    except OSError:
        same = False
    if not same:
        raise WriteError("another program changed the file while mttag was writing it; "
                         "its version is kept and mttag's tags are not written")


@contextlib.contextmanager
def _replacing(tmp: str, real: str, st: os.stat_result | None = None, sha: str | None = None) -> Iterator[None]:
    """Fill the temporary copy ``tmp`` inside the block; then, if ``real`` is still what was
    read (``st``, ``sha``), it is atomically replaced by the copy and the folder synced.
    On any failure or interruption the copy is removed and ``real`` is left as it is."""
    try:
        yield
        if st is not None and sha is not None:
            _still_as_read(real, st, sha)  # last, so the window for a lost edit is a few system calls
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
               undo_log: UndoLog | None = None, fingerprint: str | None = None) -> WriteOutcome:
    """Write ``tags`` (``(tag, score)`` pairs or ``{"tag", "score"}`` records, any order)
    into the audio file ``path`` as ``options`` say; never raises for a bad file (the
    outcome says ``error``). Without ``undo_log`` nothing records the old values, so give
    one unless ``options.dry_run``. A symbolic link is written through (the link stays).
    ``fingerprint`` (from the results, see :func:`audio_fingerprint`): the file is refused
    when its audio is no longer what was tagged."""
    options = options or WriteOptions()
    path = os.fspath(path)
    try:
        tags = list(tags)
        chosen = choose_tags(tags, options)
    except (TypeError, ValueError, KeyError) as exc:
        return WriteOutcome(path, "error", error=f"bad tags in the results ({_reason(exc)})")
    if not chosen:
        floor = options.confidence_floor
        why = (f"no tag of confidence >= {floor:g} to write" if tags and floor is not None and calibrated(tags)
               else "no tags to write")
        return WriteOutcome(path, "skipped", note=why)
    try:
        if options.dry_run:
            return _write(path, chosen, options, None, fingerprint)
        real = os.path.realpath(path)
        _check_writable(real)
        with file_lock(real):  # one mttag run at a time reads, plans and replaces a file
            return _write(path, chosen, options, undo_log, fingerprint)
    except WriteError as exc:
        return WriteOutcome(path, "error", error=str(exc))
    except OSError as exc:
        return WriteOutcome(path, "error", error=_reason(exc))


def _write(path: str, chosen, options: WriteOptions, undo_log: UndoLog | None,
           fingerprint: str | None) -> WriteOutcome:
    # a dry run makes the same checks as a write: "would write" means it would
    real = os.path.realpath(path)
    st = _check_writable(real)
    handler = _open(real)
    _check_audio(handler.format, real)
    _check_ogg_pages(handler.format, real)
    if fingerprint is not None:
        _check_fingerprint(real, fingerprint)
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

    tmp, sha_before = _make_copy(real, st)
    with _replacing(tmp, real, st, sha_before):
        copy = _open(tmp)
        for name, values in plan.items():
            copy.set(name, values)
        copy.save()
        _verify_copy(handler.format, real, tmp, plan, others_before, options.verify_audio)
        _finish_times(tmp, st, options.keep_mtime)
        _fsync_file(tmp)
        written = os.stat(tmp)
        record = {
            "path": _path_text(real), "format": handler.format, "id3_version": handler.id3_version,
            "fields": list(plan), "before": captured, "after": plan,
            "sha256_before": sha_before, "sha256_after": file_sha256(tmp),
            "size_before": st.st_size, "mtime_ns_before": st.st_mtime_ns, "keep_mtime": options.keep_mtime,
            "dev": written.st_dev, "ino": written.st_ino,  # os.replace keeps the copy's inode
            "delta": make_delta(real, tmp),
        }
        undo_log.write(undo_log.sign(record))  # on disk before the original is replaced
    return WriteOutcome(path, "written", changes, format=handler.format)


def _verify_copy(kind: str, real: str, tmp: str, plan: Mapping[str, list[str]], others_before: Any,
                 decode: bool) -> None:
    try:
        check = _open(tmp)
    except WriteError as exc:
        raise WriteError(f"the written copy does not read back ({exc}); file left as it was") from None
    if check.format != kind:
        raise WriteError(f"the written copy reads as {check.format}, not {kind}; file left as it was")
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
    runs appended to goes back to the state before the first). Yields one outcome a record.

    Only records signed with this user's undo key are used (see :class:`UndoLog`): an undo
    log is input from anywhere, and a forged or edited record is refused with its reason.
    A byte-for-byte restore also needs the file to be the very one mttag wrote (its inode
    and SHA-256) and to open as the same audio container before and after."""
    from ..inference.output import path_from_text

    key = _undo_key(create=False)
    for n, record in reversed(list(enumerate(read_undo_log(log), 1))):
        raw = record.get("path")
        path = path_from_text(raw) if isinstance(raw, str) and raw else f"(record {n})"
        kind = record.get("format") if isinstance(record.get("format"), str) else None
        problem = _record_problem(record)
        if problem is None and (key is None or not hmac.compare_digest(_mac(key, record), record["mac"])):
            problem = ("its signature does not match this user's undo key (edited, forged, or written by another "
                       "user or machine); refused")
        if problem is not None:
            if not problem.endswith("refused"):
                problem = f"damaged undo record ({problem}); refused"
            yield WriteOutcome(path, "error", error=f"record {n}: {problem}", format=kind)
            continue
        try:
            if dry_run:
                yield _undo_one(path, record, dry_run)
            else:
                real = os.path.realpath(path)
                _check_writable(real)
                with file_lock(real):
                    yield _undo_one(path, record, dry_run)
        except WriteError as exc:
            yield WriteOutcome(path, "error", error=str(exc), format=kind)
        except OSError as exc:
            yield WriteOutcome(path, "error", error=_reason(exc), format=kind)


def _undo_one(path: str, record: Mapping[str, Any], dry_run: bool) -> WriteOutcome:
    kind = record["format"]
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise WriteError("no such file")
    st0 = os.stat(real)
    current = file_sha256(real)
    if current == record["sha256_before"]:
        return WriteOutcome(path, "unchanged", format=kind, note="already as before")
    try:
        handler = _open(real)
    except WriteError as exc:
        raise WriteError(f"not an audio file mttag wrote ({exc}); refused") from None
    if handler.format != kind:
        raise WriteError(f"it is now {handler.format}, not the {kind} file mttag wrote; refused")
    _check_audio(kind, real)
    changes = [FieldChange(name, list(record["after"].get(name, [])), _captured_text(kind, name, value))
               for name, value in record["before"].items()]
    exact = (current == record["sha256_after"] and record.get("delta") is not None
             and (st0.st_dev, st0.st_ino) == (record["dev"], record["ino"]))
    if dry_run:
        return WriteOutcome(path, "would-restore", changes, format=kind,
                            note="byte for byte" if exact else "fields only")
    st = _check_writable(real)
    if exact:
        fd, tmp = _temp_beside(real)
        with _replacing(tmp, real, st, current):
            with os.fdopen(fd, "wb") as out:
                try:
                    _apply_delta(record["delta"], real, out)
                except (ValueError, TypeError, IndexError) as exc:
                    raise WriteError(f"the record's delta does not apply ({_reason(exc)}); left as it is") from None
            if file_sha256(tmp) != record["sha256_before"]:
                raise WriteError("the rebuilt file does not match the recorded one; left as it is")
            rebuilt = _open(tmp)
            if rebuilt.format != kind:
                raise WriteError(f"the rebuilt file is not {kind}; left as it is")
            _check_audio(kind, tmp)
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
    restore = {name: value for name, value in record["before"].items()
               if handler.get(name) == list(record["after"].get(name, []))}
    skipped = sorted(set(record["before"]) - set(restore))
    if not restore:
        return WriteOutcome(path, "unchanged", format=kind, note="fields changed since mttag wrote them; left as they are")
    tmp, sha = _make_copy(real, st)
    with _replacing(tmp, real, st, sha):
        copy = _open(tmp)
        try:
            copy.restore(restore)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WriteError(f"the record's previous values do not fit the file ({_reason(exc)}); left as it is") from None
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
    "UndoLog", "write_tags", "undo", "read_undo_log", "select_tags", "choose_tags", "calibrated", "Chosen",
    "planned_values", "merge_values", "tag_kind",
    "load_kinds", "display_name", "decoded_digest", "file_sha256", "make_delta", "default_undo_log",
    "audio_fingerprint", "parse_fingerprint", "audio_ranges", "file_lock", "undo_key_path",
]
