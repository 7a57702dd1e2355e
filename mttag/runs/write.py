"""Writing tags into audio files from a results file, and undoing it: ``mttag write``'s run.

Every file is written through mttag.filetags.writer (copy, verify, atomic rename), its previous
values into an undo log first; the log is locked for the whole run."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..util.display import printable
from ..util.fs import regular_or_missing
from .common import EXIT_SOME_FAILED, RunError, RunEvents, RunSummary, close_undo_log, finish, interruptible, open_undo_log

DEFAULT_FIELDS = "genre,mood,mttag"


@dataclass
class WriteRequest:
    """The options of ``mttag write``, by the same names; ``fields`` comma-separated or a list."""

    results: Path
    top: int | None = None
    threshold: float | None = None
    min_confidence: float | None = None  # None: calibration.DEFAULT_THRESHOLD, unless threshold is given
    max_genres: int | None = 3  # filetags.MAX_GENRES
    max_moods: int | None = 2  # filetags.MAX_MOODS
    fields: str | list[str] = DEFAULT_FIELDS
    mode: str = "add"
    case: str = "title"
    join: str | None = None
    kinds: Path | None = None
    dry_run: bool = False
    undo_log: Path | None = None
    keep_mtime: bool = False
    verify_audio: bool = False


def _fields(value: str | list[str]) -> list[str]:
    from ..filetags.fields import FIELDS

    text = value if isinstance(value, str) else ",".join(value)
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in FIELDS]
    if bad or not names:
        raise RunError(f"--fields {text}: expected a comma-separated list of {', '.join(FIELDS)}")
    return list(dict.fromkeys(names))


def _options(req: WriteRequest):
    from ..filetags import writer as filetags

    kind_map = None
    if req.kinds is not None:
        try:
            kind_map = filetags.load_kinds(req.kinds)
        except (OSError, ValueError) as exc:
            raise RunError(f"--kinds: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return filetags.WriteOptions(fields=_fields(req.fields), mode=req.mode, top=req.top, threshold=req.threshold,
                                     min_confidence=req.min_confidence, max_genres=req.max_genres,
                                     max_moods=req.max_moods, case=req.case, join=req.join or None, kinds=kind_map, dry_run=req.dry_run,
                                     keep_mtime=req.keep_mtime, verify_audio=req.verify_audio)
    except ValueError as exc:
        raise RunError(str(exc)) from None


def read_results(results: Path) -> list[tuple[str, dict]]:
    """``(path, record)`` of each track in a results file of ``mttag tag``."""
    from ..inference.output import path_from_text, read_records, sniff_format

    _check_regular(results, printable(results))
    try:
        fmt = sniff_format(results)
    except FileNotFoundError:
        raise RunError(f"{printable(results)}: no such file") from None
    except IsADirectoryError:
        raise RunError(f"{printable(results)}: is a directory") from None
    except OSError as exc:
        raise RunError(f"{printable(results)}: cannot read it ({exc.strerror or exc})") from None
    if fmt in (None, "", "table"):
        what = "is empty" if fmt == "" else "is a table" if fmt == "table" else "is not an mttag results file"
        raise RunError(f"{printable(results)} {what}; write results with 'mttag tag ... -o tags.jsonl' (or .json, .csv)")
    try:
        records = read_records(results, fmt)
    except OSError as exc:
        raise RunError(f"{printable(results)}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:  # a Parquet file that cannot be read
        raise RunError(f"{printable(results)}: {exc}") from None
    # a record that failed validation ("invalid") may have no usable path: it is reported by number
    return [(path_from_text(r["path"]) if r.get("path") else "", r) for r in records]


def _check_regular(path: Path, label: str) -> None:
    """RunError unless ``path`` is a regular file: missing, unreadable (a name too long, no
    permission), a folder, a FIFO (reading one waits forever) or a device, in one line."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise RunError(f"{label}: no such file") from None
    except OSError as exc:
        raise RunError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise RunError(f"{label}: is a directory")
    if not stat.S_ISREG(mode):
        raise RunError(f"{label}: not a regular file")


def _open_log(req: WriteRequest, options):
    """``(lock, log)`` for a run that writes; ``(None, None)`` for a dry run."""
    from ..audio.files import AUDIO_EXTENSIONS
    from ..filetags import writer as filetags
    from ..util.fileio import LockedError

    if req.dry_run:
        return None, None
    log_path = req.undo_log or filetags.default_undo_log(req.results)
    if log_path.suffix.lower() in set(AUDIO_EXTENSIONS):
        raise RunError(f"--undo-log {printable(log_path)}: names an audio file")
    if not regular_or_missing(log_path):
        raise RunError(f"--undo-log {printable(log_path)}: not a regular file")
    header = {"results": str(req.results.resolve()), "fields": list(options.fields), "mode": options.mode}
    try:
        return open_undo_log(log_path, header, f"another mttag write using {printable(log_path)}")
    except LockedError as exc:
        raise RunError(str(exc)) from None
    except filetags.WriteError as exc:
        raise RunError(f"--undo-log: {exc}") from None
    except OSError as exc:
        raise RunError(f"--undo-log {printable(log_path)}: cannot write it ({exc.strerror or exc})") from None


def run_write(request: WriteRequest, events: RunEvents | None = None) -> RunSummary:
    """Write each track's tags of ``request.results`` into its file; ``events.result`` gets each
    file's WriteOutcome. Raises RunError for a refusal (no file touched then)."""
    from ..filetags import writer as filetags

    events = events or RunEvents()
    options = _options(request)
    records = read_results(request.results)
    if not records:
        raise RunError(f"{printable(request.results)} holds no results", EXIT_SOME_FAILED)
    lock, log = _open_log(request, options)
    summary = RunSummary("write", output=request.results)
    seen: set[str] = set()
    told_uncalibrated = False
    try:
        with interruptible():
            events.started(len(records))
            for n, (path, record) in enumerate(records, 1):
                if "invalid" in record:
                    outcome = filetags.WriteOutcome(path or f"{request.results} record {n}", "error",
                                                    error=f"{printable(request.results)} record {n}: {record['invalid']}")
                elif "error" in record:
                    outcome = filetags.WriteOutcome(path, "skipped", note=f"not tagged: {record['error']}")
                else:
                    real = os.path.realpath(path)
                    if real in seen:  # the same file under two names: once is enough
                        continue
                    seen.add(real)
                    tags = record.get("tags") or []
                    if tags and not told_uncalibrated and not filetags.calibrated(tags):
                        # once a run: every such record is chosen the same way
                        told_uncalibrated = True
                        events.warning(None, _UNCALIBRATED)
                    outcome = filetags.write_tags(path, record.get("tags") or [], options, log,
                                                  fingerprint=record.get("fingerprint"))
                _count(summary, outcome.status)
                events.result(outcome)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        events.finished()
        close_undo_log(lock, log, summary)
    return finish(summary)


_UNCALIBRATED = ("some results have no confidence (an older mttag, or a model without a calibration "
                 "table): their tags are chosen by probability (--threshold, --top), at most the genre and mood "
                 "limits per field")


def run_undo(log: Path, dry_run: bool = False, events: RunEvents | None = None) -> RunSummary:
    """Restore the files the undo log ``log`` recorded; ``events.result`` gets each outcome."""
    from ..filetags import writer as filetags

    events = events or RunEvents()
    _check_regular(log, f"--undo {printable(log)}")
    summary = RunSummary("undo", output=log)
    try:
        with interruptible():
            for outcome in filetags.undo(log, dry_run=dry_run):
                _count(summary, outcome.status)
                events.result(outcome)
    except KeyboardInterrupt:
        summary.interrupted = True
    except filetags.WriteError as exc:  # the undo key cannot be read
        raise RunError(f"--undo: {exc}") from None
    finally:
        events.finished()
    return finish(summary)


def _count(summary: RunSummary, status: str) -> None:
    summary.counts[status] = summary.counts.get(status, 0) + 1
    if status == "error":
        summary.failed += 1
    elif status != "skipped":
        summary.done += 1
