"""The one map from generic field names (``genre``, ``mood``, ``comment`` ...) to where each tag
format keeps them, for the reader and the writer alike (documented in docs/librarians.md and
docs/prepare.md).

The reader looks in every place a table lists; the writer writes the first one its tag
version allows (ID3v2.3 has no mood frame, so its moods go into ``TXXX:MOOD``). A name no
table lists is a custom field: ID3 ``TXXX:NAME``, MP4 ``----:com.apple.iTunes:NAME``, a
Vorbis/APE/ASF key of that name.
"""

from __future__ import annotations

# the fields mttag writes (``--fields``)
FIELDS = ("genre", "mood", "comment", "mttag")

# ID3 frame ids, or "TXXX:DESC" for a user text frame (its description compared case-insensitively)
ID3: dict[str, tuple[str, ...]] = {
    "genre": ("TCON",), "mood": ("TMOO", "TXXX:MOOD"), "grouping": ("TIT1", "GRP1", "TXXX:GROUPING"),
    "style": ("TXXX:STYLE",), "comment": ("COMM",), "artist": ("TPE1",), "albumartist": ("TPE2", "TXXX:ALBUMARTIST"),
    "album": ("TALB",), "composer": ("TCOM",), "mttag": ("TXXX:MTTAG",),
}
_ID3_V24_ONLY = frozenset({"TMOO"})

# MP4 atom names; "----:MEAN:NAME" is a freeform atom, read under any MEAN by its NAME
MP4: dict[str, tuple[str, ...]] = {
    "genre": ("\xa9gen",), "mood": ("----:com.apple.iTunes:MOOD",), "grouping": ("\xa9grp",),
    "comment": ("\xa9cmt",), "artist": ("\xa9ART",), "albumartist": ("aART",), "album": ("\xa9alb",),
    "composer": ("\xa9wrt",), "mttag": ("----:com.apple.iTunes:MTTAG",),
}

# Vorbis comment (and APEv2) keys, case-insensitive; any other field is its own name
VORBIS: dict[str, tuple[str, ...]] = {
    "genre": ("GENRE",), "mood": ("MOOD",), "comment": ("COMMENT", "DESCRIPTION"),
    "albumartist": ("ALBUMARTIST", "ALBUM ARTIST", "ALBUM_ARTIST"), "mttag": ("MTTAG",),
}

# ASF (WMA) attribute names, looked up besides the Vorbis-style names (read only: mttag does not write ASF)
ASF: dict[str, tuple[str, ...]] = {
    "genre": ("WM/Genre",), "mood": ("WM/Mood",), "grouping": ("WM/ContentGroupDescription",),
    "comment": ("Description",), "artist": ("Author",), "albumartist": ("WM/AlbumArtist",),
    "album": ("WM/AlbumTitle",), "composer": ("WM/Composer",),
}


def id3_keys(field: str) -> tuple[str, ...]:
    return ID3.get(field, (f"TXXX:{field.upper()}",))


def id3_write_key(field: str, version: int) -> str:
    """The frame the writer uses for ``field`` in an ID3v2.``version`` tag."""
    keys = id3_keys(field)
    return next((k for k in keys if version >= 4 or k not in _ID3_V24_ONLY), keys[-1])


def mp4_keys(field: str) -> tuple[str, ...]:
    return MP4.get(field, (f"----:com.apple.iTunes:{field.upper()}",))


def vorbis_keys(field: str) -> tuple[str, ...]:
    return VORBIS.get(field, (field.upper(),))
