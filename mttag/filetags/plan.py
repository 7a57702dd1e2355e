"""Which of a result's tags go into which field, and the field's new values: the kinds of tags
(genre, mood, instrument, voice, era), :class:`WriteOptions`, :func:`choose_tags`,
:func:`planned_values` and :func:`merge_values`. Pure data and rules: no file is opened here
but a ``--kinds`` CSV."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..util.display import printable
from ..util.fs import regular_or_missing
from .fields import FIELDS

DEFAULT_FIELDS = ("genre", "mood", "mttag")
MODES = ("add", "replace")
CASES = ("title", "as-is", "lower")

# At most this many genres (moods) go into GENRE (MOOD): a player shows a long genre list as
# noise, and past the third genre the reference set's tracks rarely have any (docs/tagging.md).
MAX_GENRES = 3
MAX_MOODS = 2

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
    if not regular_or_missing(path):
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

