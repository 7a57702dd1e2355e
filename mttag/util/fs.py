"""Small file-system answers shared by the package: syncing a folder after a rename (a file
renamed into place survives a crash only once its folder is synced), and whether a path may be
opened as a plain file."""

from __future__ import annotations

import os
import stat


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


def regular_or_missing(path: str | os.PathLike) -> bool:
    """False for a FIFO, device, socket or folder, where a regular file is expected (reading or
    appending to a FIFO waits for another process, forever)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # missing (created later) or unreadable: the open that follows says why
