"""Safe file operations: atomic writes, and exclusive locks that say who holds them."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .fs import fsync_dir, fsync_file


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The new content is flushed to disk before the rename and the folder after it: without
    that, a power cut shortly after a rename can leave an empty file where the previous
    good one (a checkpoint, an index) used to be."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        # mkstemp (and some writers) make files owner-only; ours should be as readable as any file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            fsync_file(tmp)
        except OSError:
            pass  # a file system that cannot sync (some network mounts) still gets the rename
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class LockedError(Exception):
    """Another process holds the lock; the message names it."""


class ExclusiveLock:
    """An exclusive, non-blocking lock on ``path`` (created if missing), released on exit
    or when the process dies (``flock`` on POSIX, ``msvcrt.locking`` on Windows).

    The holder writes its pid and command line into the file, so a refused run can say
    which run it collided with. The file is never truncated before the lock is held.

    Not ``filelock.FileLock`` (installed with huggingface_hub): it records a holder only for its
    soft-lock markers (pid and host, never the command line), so a refusal of a native lock could
    not say "another run (pid N: command) is already running".
    """

    def __init__(self, path: str | os.PathLike, what: str, remove: bool = False):
        self.path = Path(path)
        self.what = what  # "mttag train into runs/x", for the refusal message
        self.remove = remove  # delete the lock file on release (for locks beside a user's file)
        self.fd: int | None = None

    def __enter__(self) -> "ExclusiveLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def acquire(self) -> "ExclusiveLock":
        """Take the lock, or raise :class:`LockedError` naming the process that holds it.

        For a lock held beyond one ``with`` block; :meth:`release` gives it back."""
        while True:
            fd = self._open_locked()
            # A holder that removes the file on release may have done so between our open
            # and our lock: then we hold a lock on a file nobody else will ever see. Retry.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode("utf-8", "replace"))
        except OSError:
            pass  # the lock matters, the note is a courtesy
        return self

    def _open_locked(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            try:
                holder = os.read(fd, 300).decode("utf-8", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            detail = f" ({holder.splitlines()[0]})" if holder else ""
            raise LockedError(f"{self.what} is already running{detail}; wait for it to finish or stop it") from None
        return fd

    def release(self) -> None:
        """Give the lock back (a no-op when it is not held, so safe to call twice)."""
        if self.fd is not None:
            try:
                if self.remove:
                    self.path.unlink(missing_ok=True)  # while still held: see acquire()
                else:
                    os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
