"""Small file-system answers shared by the package: syncing a folder after a rename (a file
renamed into place survives a crash only once its folder is synced), and whether a path may be
opened as a plain file, and where mttag keeps its per-user settings (the user registry, the
undo-log key)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s content to disk; raises OSError when it cannot be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def user_config_dir() -> Path:
    """mttag's folder in the user's configuration directory (``XDG_CONFIG_HOME`` honoured)."""
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]).expanduser() / "mttag"
    if sys.platform == "win32" and os.environ.get("APPDATA"):  # pragma: no cover - Windows only
        return Path(os.environ["APPDATA"]) / "mttag"
    return Path.home() / ".config" / "mttag"
