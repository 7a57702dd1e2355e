"""What every run shares: its errors, its events, its summary, interruption and the undo log.

Torch-free and Typer/rich-free at import, so that the command line's ``--help`` stays quick
and a beets plugin or a Ray worker can drive a run with plain Python.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.display import printable

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class RunError(Exception):
    """A run refused or stopped: ``message`` is one line naming what and why, ``exit_code`` what
    the command line exits with (2 for a usage error, 1 for a failure such as a full disk)."""

    def __init__(self, message: object, exit_code: int = EXIT_USAGE):
        # control characters (a newline in a file name or a library's message) shown as \xNN,
        # so that the message stays one line wherever it is printed or logged
        self.message = printable(message)
        super().__init__(self.message)
        self.exit_code = exit_code


class RunEvents:
    """What a run tells its caller as it goes; every method does nothing unless overridden.

    The command line draws a progress bar and console lines from these; a library caller may
    log them or ignore them. A callback that raises ``KeyboardInterrupt`` stops the run
    cleanly, like Ctrl+C."""

    def warning(self, path: str | None, message: str) -> None:
        """Something about ``path`` (or, when None, the run) that did not stop it."""

    def resuming(self, already: int, to_go: int, skipped: int | None = None) -> None:
        """``already`` items were done by an earlier run; ``skipped`` of those asked for again."""

    def started(self, total: int) -> None:
        """The model is loaded and the outputs are open: ``total`` items to go."""

    def result(self, result: Any) -> None:
        """One item's outcome (a TagResult, EmbeddingResult or WriteOutcome), after it is saved."""

    def finished(self) -> None:
        """The loop is over (done, interrupted or failed); the summary follows."""


@dataclass
class RunSummary:
    """A run's outcome as data; the command line prints it, a library caller reads it."""

    command: str
    done: int = 0  # items that succeeded in this run
    failed: int = 0
    elapsed: float = 0.0
    device: str | None = None  # torch device type: cpu, cuda, mps
    precision: str | None = None  # fp32 or bf16, as resolved
    model: str | None = None  # the model's name as given (or as the index records it)
    output: Path | None = None
    interrupted: bool = False
    exit_code: int = EXIT_OK
    counts: dict[str, int] = field(default_factory=dict)  # outcomes by status (write; tag --write)
    undo_log: Path | None = None
    stored: int | None = None  # items the output holds after the run (embed's index)
    plots: list[Path] = field(default_factory=list)  # taggrams written (tag --plot)
    problems: list[str] = field(default_factory=list)  # errors about the run itself, not an item (one line each)


def finish(summary: RunSummary) -> RunSummary:
    """``summary`` with its exit code: 130 interrupted, else 1 when anything failed."""
    if summary.interrupted:
        summary.exit_code = EXIT_INTERRUPTED
    else:
        summary.exit_code = EXIT_SOME_FAILED if summary.failed else EXIT_OK
    return summary


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a job scheduler's stop) interrupts like Ctrl+C: a
    ``KeyboardInterrupt`` that runs turn into a clean stop (outputs closed, exit code 130).
    The previous handler comes back afterwards. Outside the main thread (a worker, some test
    runners) signal handlers cannot be installed, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_windows(value: str | int | None, option: str = "--windows") -> int | None:
    """``N``, ``"N"`` or ``"all"`` → N, or None for every window (also for None)."""
    if value is None or (isinstance(value, str) and value.lower() == "all"):
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise RunError(f"{option} {value}: expected a positive number or 'all'")
    return n


def resolve_device(device: str):
    """``--device`` → a torch device, or a RunError naming what is missing."""
    from ..device import select_device

    try:
        return select_device(device)
    except ValueError as exc:
        raise RunError(str(exc)) from None


def bf16_emulation_warning(precision: str, device_type: str) -> str | None:
    """bf16 on a CPU without native bf16 works, but PyTorch emulates it, more slowly than
    float32: the warning to give, if any."""
    if precision != "bf16" or device_type != "cpu":
        return None
    from .. import device  # looked up at call time: tests stand in for the CPU check

    if device.cpu_has_native_bf16():
        return None
    return ("--precision bf16: found no native bf16 on this CPU (AVX-512 BF16, AMX); "
            "PyTorch emulates it, which is slower than fp32")


def find_audio(paths: Iterable[str | os.PathLike]):
    """The audio files under ``paths`` (folders searched recursively), and the folders that
    could not be listed (each a failure of its own, not a silent gap)."""
    from ..audio.files import UnlistableFolder, iter_audio_files

    unlistable: list[UnlistableFolder] = []
    files = list(iter_audio_files(paths, on_error=unlistable.append))
    return files, unlistable


def missing_paths_error(paths: Iterable[str | os.PathLike]) -> RunError | None:
    """A usage error (exit 2) naming the first of ``paths`` that does not exist, with the
    nearest name beside it ("did you mean ..."), or None when they all exist. Checked before
    the model loads: a typo should cost a second, not a model load and a failed track."""
    missing = [Path(p) for p in paths if not os.path.exists(p)]
    if not missing:
        return None
    first = missing[0]
    if os.path.lexists(first):
        message = f"{printable(first)}: a broken symbolic link (its target does not exist)"
        guess = None
    else:
        message = f"{printable(first)}: no such file or folder"
        guess = nearest_existing(first)
    if guess is not None:
        message += f"; did you mean {printable(guess)}?"
    if len(missing) > 1:
        message += f" ({len(missing) - 1} more not found)"
    return RunError(message, EXIT_USAGE)


def nearest_existing(path: Path) -> Path | None:
    """``path`` with each part that does not exist replaced by its closest sibling's name
    (difflib), if that leads to something that exists; else None."""
    import difflib

    parts = path.parts
    guess = Path(parts[0]) if path.is_absolute() else Path()
    for part in parts[1:] if path.is_absolute() else parts:
        candidate = guess / part
        if not os.path.exists(candidate):
            try:
                siblings = [e.name for e in os.scandir(guess) if not e.name.startswith(".") or part.startswith(".")]
            except OSError:
                return None
            close = difflib.get_close_matches(part, siblings, n=1, cutoff=0.6)
            if not close:
                # a case slip (Music vs music) scores low for short names: compare folded too
                folded = {name.casefold(): name for name in siblings}
                match = difflib.get_close_matches(part.casefold(), list(folded), n=1, cutoff=0.6)
                close = [folded[match[0]]] if match else []
            if not close:
                return None
            candidate = guess / close[0]
        guess = candidate
    return guess if os.path.exists(guess) else None


def open_model(model, dev, progress: bool | None = None):
    """``model`` itself when it is a loaded model, else the one its name resolves to (None: the
    default) on ``dev``; raises ModelLoadError as :func:`mttag.load_model` does."""
    from ..weights.pretrained import load_model

    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model
    return load_model(model, device=str(dev), progress=progress)


def load(model, dev, progress: bool | None = None):
    """:func:`open_model`, a model that cannot be loaded being a RunError."""
    from ..errors import ModelLoadError

    try:
        return open_model(model, dev, progress)
    except ModelLoadError as exc:
        raise RunError(str(exc)) from None


def no_files_error(paths: Iterable[str | os.PathLike]) -> RunError:
    return RunError(f"no audio files found in {', '.join(printable(p) for p in paths)}", EXIT_SOME_FAILED)


def open_undo_log(path: Path, header: dict[str, Any], holder: str):
    """``(lock, log)``: ``path``'s lock taken (``holder`` names who holds it, for whoever
    finds it taken) and the undo log opened for appending. Raises the lock's, the log's or
    the file system's error as it is, each caller naming it its own way; nothing is left
    held then."""
    from ..filetags import writer as filetags
    from ..util.fileio import ExclusiveLock

    lock = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = ExclusiveLock(path.parent / f".{path.name}.lock", holder, remove=True)
        lock.acquire()
        return lock, filetags.UndoLog(path, header)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def close_undo_log(lock, log, summary: RunSummary) -> None:
    """Close what :func:`open_undo_log` opened, on every way out of a run: a log that cannot
    be closed (a full disk at its final sync) is one of the run's problems and counts as a
    failure; the lock goes in any case; a log of headers only (nothing was written) is
    removed, and ``summary.undo_log`` names the log only when it holds records."""
    from ..filetags import writer as filetags

    try:
        if log is not None:
            try:
                log.close()
            except filetags.WriteError as exc:
                summary.problems.append(f"--undo-log: {exc}")
                summary.failed += 1
    finally:
        if lock is not None:
            lock.release()
    if log is None:
        return
    if log.count:
        summary.undo_log = log.path
        return
    try:
        with open(log.path, encoding="utf-8", errors="replace") as f:
            only_headers = all(line.startswith('{"mttag_undo":') for line in f if line.strip())
        if only_headers:
            log.path.unlink()
    except OSError:
        pass
