"""Tags embedded in audio files (ID3, Vorbis comments, MP4 atoms, APEv2, ASF), read with mutagen.

A DJ's library carries its own labels in ``genre``, ``mood``, ``grouping``, ``style``,
``comment`` ... fields. :func:`read_file_tags` turns the chosen fields of one file into a
clean tag list plus the artist used to group tracks for leak-free splits:

* generic field names (``genre``, ``mood``, ``grouping``, ``style``, ``comment``, ``artist``,
  ``albumartist``, ``album``, ``composer``) are mapped to each format's own keys
  (``TCON``/``TMOO``/``TIT1``+``GRP1``, ``©gen``/``©grp``/freeform ``MOOD``, Vorbis ``GENRE`` ...)
  by :mod:`mttag.filetags.fields`, the table the writer uses too; any other name is looked up
  as a custom field (ID3 ``TXXX:NAME``, MP4 ``----:com.apple.iTunes:NAME``, a Vorbis/APE/ASF
  key of that name);
* every value of a multi-valued field is used, and each value is further split on the
  common separators ``;`` ``/`` ``,`` ``|`` (ID3 v2.3 multi-values written with ``/``
  included);
* tags are normalised: Unicode NFC, lower case, whitespace collapsed, duplicates dropped
  (first occurrence kept).

Unreadable or tagless files give no tags; they are never an error here (the decoder
reports files that cannot be used).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Sequence

from . import fields as _fields

DEFAULT_FIELDS = ("genre",)
DEFAULT_SEPARATORS = (";", "/", ",", "|", "\x00")

_SPACE = re.compile(r"\s+")
_FEAT = re.compile(r"\s+(?:feat\.?|ft\.?|featuring)\s+.*$", re.IGNORECASE)


def normalize_tag(value: str) -> str:
    """``"  Deep   House "`` → ``"deep house"`` (NFC, lower case, single spaces)."""
    value = unicodedata.normalize("NFC", str(value))
    return _SPACE.sub(" ", value).strip().lower()


def normalize_artist(value: str) -> str:
    """Artist name as a grouping key: normalised like a tag, featured artists cut off
    (``"A feat. B"`` groups with ``"A"``)."""
    value = _FEAT.sub("", unicodedata.normalize("NFC", str(value)).strip())
    return normalize_tag(value)


def clean_tags(tags: Iterable[str], normalize: bool = True) -> list[str]:
    """Tags cleaned one by one, empties and repeats dropped, first occurrence kept in
    place. ``normalize``: :func:`normalize_tag` (NFC, lower case, single spaces);
    otherwise whitespace is only collapsed, for vocabularies where case matters."""
    out: list[str] = []
    seen: set[str] = set()
    for tag in tags:
        tag = normalize_tag(tag) if normalize else _SPACE.sub(" ", str(tag)).strip()
        if tag and tag not in seen:
            seen.add(tag)
            out.append(tag)
    return out


def split_values(values: Iterable[str], separators: Sequence[str] = DEFAULT_SEPARATORS) -> list[str]:
    """Split each value on every separator, normalise, drop empties and duplicates."""
    pattern = "|".join(re.escape(s) for s in separators if s)
    return clean_tags(part for value in values for part in (re.split(pattern, str(value)) if pattern else [str(value)]))


def _text(value) -> list[str]:
    """Values of a mutagen field as strings (frames, freeform bytes, ASF attributes, lists)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _text(v)]
    genres = getattr(value, "genres", None)  # ID3 TCON resolves "(17)" / "17" to genre names
    if genres is not None:
        return [str(g) for g in genres]
    text = getattr(value, "text", None)  # other ID3 text frames (list of str)
    if text is not None:
        return [str(t) for t in (text if isinstance(text, (list, tuple)) else [text])]
    if isinstance(value, bytes):  # MP4 freeform atoms
        return [value.decode("utf-8", errors="replace").rstrip("\x00")]
    inner = getattr(value, "value", None)  # ASF attributes
    if inner is not None and not isinstance(value, (str, int, float)):
        return _text(inner)
    return [str(value)]


def _id3_values(tags, field: str) -> list[str]:
    out: list[str] = []
    for key in _fields.id3_keys(field):
        if key.startswith("TXXX:"):
            desc = key[5:].upper()
            frames = [f for f in tags.getall("TXXX") if str(getattr(f, "desc", "")).upper() == desc]
        else:
            frames = tags.getall(key)
            if key == "COMM":  # iTunes keeps loudness/gapless data in COMM frames (iTunNORM, iTunSMPB ...)
                frames = [f for f in frames if not str(getattr(f, "desc", "")).startswith("iTun")]
        for frame in frames:
            out.extend(_text(frame))
    return out


def _mp4_values(tags, field: str) -> list[str]:
    out: list[str] = []
    names = {field.upper()}
    for key in _fields.MP4.get(field, ()):
        if key.startswith("----:"):
            names.add(key.rsplit(":", 1)[-1].upper())
        else:
            out.extend(_text(tags.get(key)))
    for key in tags.keys():  # freeform atoms: ----:<mean>:<name>, any mean, name case-insensitive
        if key.startswith("----:") and key.rsplit(":", 1)[-1].upper() in names:
            out.extend(_text(tags[key]))
    return out


def _keyed_values(tags, field: str, asf: bool) -> list[str]:
    """Vorbis comments, APEv2 and ASF: look the names up case-insensitively."""
    wanted = {k.lower() for k in _fields.vorbis_keys(field)}
    if asf:
        wanted |= {k.lower() for k in _fields.ASF.get(field, ())}
    out: list[str] = []
    try:
        keys = list(tags.keys())
    except Exception:  # noqa: BLE001 - a broken tag block is "no tags"
        return out
    for key in keys:
        if str(key).lower() in wanted:
            out.extend(_text(tags[key]))
    return out


def _kind(tags) -> str:
    from mutagen.id3 import ID3

    if isinstance(tags, ID3):  # MP3, and the ID3 chunk of WAV/AIFF/DSF
        return "id3"
    name = type(tags).__name__
    if name == "MP4Tags":
        return "mp4"
    if name == "ASFTags":
        return "asf"
    return "keyed"  # VCommentDict (FLAC, Ogg Vorbis/Opus/FLAC), APEv2


def read_fields(path: str | os.PathLike, fields: Sequence[str]) -> dict[str, list[str]]:
    """Raw values of the generic ``fields`` in one file (``{}`` for unreadable or tagless files)."""
    try:
        import mutagen

        audio = mutagen.File(os.fspath(path))
    except Exception:  # noqa: BLE001 - mutagen raises many types on damaged files
        return {}
    tags = getattr(audio, "tags", None) if audio is not None else None
    if tags is None:
        return {}
    kind = _kind(tags)
    out: dict[str, list[str]] = {}
    for field in fields:
        field = field.strip().lower()
        if not field:
            continue
        try:
            if kind == "id3":
                values = _id3_values(tags, field)
            elif kind == "mp4":
                values = _mp4_values(tags, field)
            else:
                values = _keyed_values(tags, field, kind == "asf")
        except Exception:  # noqa: BLE001
            values = []
        out[field] = [v for v in values if v and v.strip()]
    return out


def read_file_tags(path: str | os.PathLike, fields: Sequence[str] = DEFAULT_FIELDS,
                   separators: Sequence[str] = DEFAULT_SEPARATORS,
                   artist_fields: Sequence[str] = ("artist", "albumartist")) -> tuple[list[str], str | None]:
    """``(tags, artist)`` of one file: the normalised tags found in ``fields`` (in field
    order), and the first non-empty of ``artist_fields`` as a grouping key (or ``None``)."""
    wanted = [f.strip().lower() for f in fields if f.strip()]
    values = read_fields(path, list(dict.fromkeys(wanted + [a.lower() for a in artist_fields])))
    tags = split_values([v for f in wanted for v in values.get(f, [])], separators)
    artist = None
    for field in artist_fields:
        for value in values.get(field.lower(), []):
            key = normalize_artist(value)
            if key:
                artist = key
                break
        if artist:
            break
    return tags, artist
