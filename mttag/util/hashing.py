"""File hashes: sha256, and the git blob SHA-1 that GitHub and the Hub list for a file.

Our own streaming loop, once, rather than a library's: ``hashlib.file_digest`` is Python 3.11+
and cannot prefix the git blob header, and ``huggingface_hub.utils.sha.git_hash`` takes the whole
file as bytes (a checkpoint in memory) while importing huggingface_hub would slow ``mttag write``."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20


def _digest(path: str | os.PathLike, digest) -> str:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    return _digest(path, hashlib.sha256())


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git blob id of a file: ``sha1(b"blob <size>\\0" + data)`` (what GitHub lists)."""
    return _digest(path, hashlib.sha1(b"blob %d\0" % os.stat(path).st_size))


def file_hash(path: str | os.PathLike, kind: str) -> str:
    """``sha1`` (git blob SHA-1, as pinned in registries), ``sha256`` or ``plain-sha1`` of a file."""
    if kind == "sha1":
        return git_blob_sha1(path)
    return _digest(path, hashlib.new("sha1" if kind == "plain-sha1" else kind))
