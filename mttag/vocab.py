"""Published tag vocabularies (SPEC §7), in the order the authors' label arrays use."""

from __future__ import annotations

from pathlib import Path

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
