"""The user's file on disk, handled so that it is always either the old file or the new one:
the per-file lock of mttag runs, the checks before a write, the hidden copy beside the file
that a write fills, and the atomic replace that ends it (only if nobody else changed the file
meanwhile)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator

from ..util.fs import fsync_dir
from ..util.hashing import file_sha256
from .outcome import WriteError, reason

TMP_SUFFIX = ".mttag-tmp"
LOCK_WAIT = 30.0  # seconds a run waits for another mttag run to finish with a file


@contextlib.contextmanager
def file_lock(real: str, wait: float | None = None) -> Iterator[None]:
    """Hold the per-file lock of mttag runs on ``real``: a hidden ``.NAME.mttag-lock`` beside
    it (the audio file itself is never touched), waited for up to ``wait`` seconds
    (``None``: :data:`LOCK_WAIT`, read at the call so a test or host can shorten it)."""
    from ..util.fileio import ExclusiveLock, LockedError

    folder, name = os.path.split(real)
    lock = ExclusiveLock(os.path.join(folder, f".{name}.mttag-lock"), "another mttag run writing this file",
                         remove=True)
    deadline = time.monotonic() + (LOCK_WAIT if wait is None else wait)
    while True:
        try:
            lock.acquire()
            break
        except LockedError as exc:
            if time.monotonic() >= deadline:
                raise WriteError(f"{exc}; left as it is") from None
            time.sleep(0.05)
        except OSError as exc:
            raise WriteError(f"cannot make its lock file beside it ({reason(exc)})") from None
    try:
        yield
    finally:
        lock.release()


def check_writable(real: str) -> os.stat_result:
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise WriteError("no such file") from None
    except OSError as exc:
        raise WriteError(f"cannot read it ({reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise WriteError("not a regular file")
    if not st.st_mode & 0o222 or not os.access(real, os.W_OK):
        raise WriteError("read-only file (permission denied); mttag does not change read-only files")
    if st.st_nlink > 1:
        raise WriteError(f"has {st.st_nlink} hard links; replacing it would split them (write one link's target by hand)")
    folder = os.path.dirname(real) or "."
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError("its folder is read-only (permission denied)")
    return st


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def temp_beside(real: str) -> tuple[int, str]:
    """A hidden temporary file beside ``real`` that keeps its extension
    (``.x.mp3.XXXX.mttag-tmp.mp3``): mutagen uses it to tell some formats apart."""
    folder, name = os.path.split(real)
    return tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.", suffix=TMP_SUFFIX + os.path.splitext(name)[1])


def make_copy(real: str, st: os.stat_result) -> tuple[str, str]:
    """``(copy, SHA-256 of the bytes copied)``; the file must not change while it is copied."""
    fd, tmp = temp_beside(real)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, open(real, "rb") as src:
            if not os.path.samestat(os.fstat(src.fileno()), st):
                raise WriteError("another program changed the file while mttag was writing it; left as it is now")
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        if _identity(os.stat(real)) != _identity(st):
            raise WriteError("another program changed the file while mttag was writing it; left as it is now")
        shutil.copystat(real, tmp)  # mode, times, flags, extended attributes
        if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.stat(tmp).st_uid, os.stat(tmp).st_gid):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError:
                raise WriteError("cannot keep the file's owner and group (run as its owner)") from None
    except BaseException:
        _unlink(tmp)
        raise
    return tmp, h.hexdigest()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _still_as_read(real: str, st: os.stat_result, sha: str) -> None:
    """The file is the one mttag read: same inode, size, mtime and content. Another
    program's save since then (or a replaced file) stops the write, so its edit survives."""
    try:
        same = _identity(os.stat(real)) == _identity(st) and file_sha256(real) == sha \
            and _identity(os.stat(real)) == _identity(st)
    except OSError:
        same = False
    if not same:
        raise WriteError("another program changed the file while mttag was writing it; "
                         "its version is kept and mttag's tags are not written")


@contextlib.contextmanager
def replacing(tmp: str, real: str, st: os.stat_result | None = None, sha: str | None = None) -> Iterator[None]:
    """Fill the temporary copy ``tmp`` inside the block; then, if ``real`` is still what was
    read (``st``, ``sha``), it is atomically replaced by the copy and the folder synced.
    On any failure or interruption the copy is removed and ``real`` is left as it is."""
    try:
        yield
        if st is not None and sha is not None:
            _still_as_read(real, st, sha)  # last, so the window for a lost edit is a few system calls
        os.replace(tmp, real)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(os.path.dirname(real))


def finish_times(tmp: str, st: os.stat_result, keep_mtime: bool) -> None:
    if keep_mtime:
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(tmp, None)

