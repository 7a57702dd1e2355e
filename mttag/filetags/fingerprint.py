"""What identifies the recording in a file whatever its tags: :func:`audio_fingerprint`, made
when a file is tagged and checked before its tags are written (a results record must describe
the audio it is written into)."""

from __future__ import annotations

import os
from typing import Any

from ..util.hashing import file_sha256
from .containers import AudioPayload
from .formats import detect
from .outcome import WriteError

FINGERPRINT_VERSION = "a1"
_KINDS = ("mp3", "flac", "ogg", "opus", "m4a", "wav", "aiff", "file")


def audio_fingerprint(path: str | os.PathLike) -> str:
    """What identifies the recording in a file, whatever its tags:
    ``a1:SIZE:MTIME_NS:KIND:SHA256`` where the SHA-256 covers the audio bytes only (see
    :func:`mttag.filetags.containers.audio_ranges`; Ogg: packets and granule positions), so it
    stays the same after ``mttag write`` or another tagger changes the tags. Formats mttag does
    not write, and files whose layout is not understood, are hashed whole (``KIND`` ``file``).
    Costs one read of the file. Raises ``OSError`` for a file that cannot be read."""
    path = os.fspath(path)
    st = os.stat(path)
    kind = None
    try:
        kind = detect(path)[1]
    except WriteError:
        pass
    digest = None
    if kind is not None:
        try:
            digest = AudioPayload(kind, path).digest
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
    if parts[3] not in _KINDS:
        return None
    if len(parts[4]) != 64 or any(c not in "0123456789abcdef" for c in parts[4]):
        return None
    return parts[3], parts[4]


def check_fingerprint(audio: AudioPayload, fingerprint: str) -> None:
    """Refuse unless ``audio`` (a file mttag can write, parsed) is the recording ``fingerprint`` names."""
    want = parse_fingerprint(fingerprint)
    if want is None:
        raise WriteError("its results record has a damaged fingerprint; tag the file again")
    if want != (audio.kind, audio.digest):
        raise WriteError("its audio changed since it was tagged (the results describe another recording); "
                         "tag it again")
