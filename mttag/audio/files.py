"""Finding audio files: the extensions mttag reads, and a walk over folders that reports a folder it
cannot list instead of skipping it (:class:`UnlistableFolder`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

SOUNDFILE_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64"}
FFMPEG_EXTENSIONS = {".m4a", ".mp4", ".aac", ".alac", ".wma", ".webm", ".mka", ".ac3", ".amr", ".ape", ".wv", ".mpc"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS


class UnlistableFolder(Exception):
    """A folder under one to search that could not be listed (permissions, I/O error)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def iter_audio_files(paths: Iterable[str | os.PathLike],
                     on_error: Callable[[UnlistableFolder], None] | None = None) -> Iterator[Path]:
    """Files named directly (whatever their extension), and audio files found
    recursively in folders, sorted, each real file once, safe against symlink loops.

    A folder that cannot be listed is never skipped in silence: it is passed to
    ``on_error`` (an :class:`UnlistableFolder` naming it and why), or, without
    ``on_error``, raised once the readable files have all been yielded.
    """
    seen: set[str] = set()
    problems: list[UnlistableFolder] = []

    def report(exc: OSError) -> None:
        problem = UnlistableFolder(exc.filename or "?", (exc.strerror or str(exc)).lower())
        if on_error is not None:
            on_error(problem)
        else:
            problems.append(problem)

    def first_time(path: Path) -> bool:
        key = os.path.realpath(path)
        new = key not in seen
        seen.add(key)
        return new

    for root in paths:
        root = Path(root)
        if not root.is_dir():
            # a missing or odd file is reported by the decoder, not skipped silently
            if first_time(root):
                yield root
            continue
        for dirpath, filenames in _walk(os.fspath(root), report):
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                path = Path(dirpath) / name
                if first_time(path):
                    yield path
    if problems:
        raise problems[0]


def _walk(top: str, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` top-down, sub-folders in sorted order, following symbolic
    links to folders but entering each real folder once (no loop). The order of
    ``os.walk(top, followlinks=True)`` with sorted folders, but with a stack of its own:
    ``os.walk`` recurses (before Python 3.12) and a tree 1,000 folders deep raised
    RecursionError."""
    visited: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            # a folder is known by its device and inode: os.path.realpath walks the path a
            # component at a time in Python, which made a deep tree quadratic
            st = os.stat(folder)
            real = (st.st_dev, st.st_ino)
            if real in visited:
                continue
            visited.add(real)
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = folder
            onerror(exc)
            continue
        dirs, files = [], []
        for entry in listed:
            try:
                is_dir = entry.is_dir()  # follows a link: a linked folder is searched too
            except OSError:
                is_dir = False  # as os.walk: what cannot be checked is taken for a file
            (dirs if is_dir else files).append(entry.name)
        yield folder, files
        stack.extend(os.path.join(folder, d) for d in sorted(dirs, reverse=True))
