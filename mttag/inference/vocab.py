"""Tag vocabularies: the published ones (docs/prepare.md), in the order the authors' label arrays use,
and the table that gives every tag one spelling and a kind.

The table (``mttag/data/vocabulary.json``) maps a model's own tag name to its display spelling
(``Progressive rock`` -> ``progressive rock``; near-duplicates such as ``female vocalist`` and
``female vocalists`` to one tag, ``female vocals``) and each display spelling to its kind:
genre, mood, instrument, voice, era or other. A model that combines several heads names its
outputs ``source:name`` (``msd:rock``); the source is not part of the spelling.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..constants import DATA_DIR

CALS_TAGS = [
    "rock", "pop", "indie", "alternative", "electronic", "hip-hop", "metal", "jazz", "punk", "folk",
    "alternative rock", "indie rock", "dance", "hard rock", "00s", "soul", "hardcore", "80s", "country",
    "classic rock", "punk rock", "blues", "chillout", "experimental", "heavy metal", "death metal", "90s",
    "reggae", "progressive rock", "ambient", "acoustic", "beautiful", "british", "rnb", "funk", "metalcore",
    "mellow", "world", "guitar", "trance", "indie pop", "christian", "house", "spanish", "latin",
    "psychedelic", "electro", "piano", "70s", "progressive metal",
]

MSD_TAGS = [
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul",
    "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies",
    "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s",
    "party", "country", "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal",
    "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy",
]

VOCABULARIES = {"cals": CALS_TAGS, "msd": MSD_TAGS}


def resolve_tags(spec: str) -> list[str]:
    """``cals``, ``msd``, or a text file with one tag per line."""
    if spec.lower() in VOCABULARIES:
        return list(VOCABULARIES[spec.lower()])
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--tags {spec}: expected cals, msd or a text file with one tag per line")
    tags = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not tags:
        raise ValueError(f"--tags {spec}: the file lists no tags")
    return tags


VOCABULARY_PATH = DATA_DIR / "vocabulary.json"
KINDS = ("genre", "mood", "instrument", "voice", "era", "other")


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, str], dict[str, str]]:
    data = json.loads(VOCABULARY_PATH.read_text(encoding="utf-8"))
    kinds = {str(k): str(v) for k, v in data["tags"].items()}
    names = {str(k): str(v) for k, v in data["names"].items()}
    return kinds, names


def split_source(name: str) -> tuple[str | None, str]:
    """``("msd", "rock")`` for a combined model's ``msd:rock``; ``(None, name)`` for a plain name."""
    source, sep, rest = name.partition(":")
    if sep and source.isidentifier() and rest and not rest[0].isspace():
        return source, rest
    return None, name


def _key(name: str) -> str:
    return " ".join(split_source(name)[1].lower().split())


def display(name: str) -> str:
    """The one spelling of a model's tag ``name`` (its own name, or an already displayed one).
    Tags the table does not know keep the model's spelling (without a ``source:`` prefix)."""
    kinds, names = _table()
    key = _key(name)
    key = names.get(key, key)
    return key if key in kinds else split_source(name)[1]


def kind(name: str) -> str:
    """genre, mood, instrument, voice, era or other (for tags the table does not know)."""
    return _table()[0].get(_key(display(name)), "other")


def known(name: str) -> bool:
    """Whether the table knows ``name`` (a model's spelling or a display spelling)."""
    kinds, names = _table()
    key = _key(name)
    return names.get(key, key) in kinds


def merge_groups(names: list[str]) -> dict[str, list[int]]:
    """Display spelling -> indices of ``names`` (a model's outputs) that carry it, in the order
    each display spelling first appears."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(display(name), []).append(i)
    return groups
