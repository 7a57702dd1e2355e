"""Durability of renames: a file renamed into place survives a crash only once its folder is synced."""

from __future__ import annotations

import os


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush ``folder``'s entries to disk; a no-op where folders cannot be opened (Windows) or synced."""
    try:
        fd = os.open(os.fspath(folder) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
