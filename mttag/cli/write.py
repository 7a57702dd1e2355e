"""``mttag write``: write the tags of a results file into the audio files (and ``--undo`` it)."""

from __future__ import annotations

import json
import os
import stat
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..display import printable
from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, app, console, fail, sigterm_as_interrupt


class Mode(str, Enum):
    add = "add"
    replace = "replace"


class Case(str, Enum):
    title = "title"
    as_is = "as-is"
    lower = "lower"


_LABEL = {"written": "[green]written[/]", "would-write": "[cyan]would write[/]", "unchanged": "[dim]unchanged[/]",
          "skipped": "[yellow]skipped[/]", "error": "[red]error[/]", "restored": "[green]restored[/]",
          "would-restore": "[cyan]would restore[/]"}


_WORDS = {"would-write": "would be written", "would-restore": "would be restored", "error": "failed"}


def _show(value: list[str]) -> str:
    return " | ".join(printable(v) for v in value) if value else "(none)"


def _print(outcome, as_json: bool) -> None:
    from ..output import safe_text

    if as_json:
        record = {k: safe_text(v) if isinstance(v, str) else v for k, v in outcome.to_dict().items()}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    out = _stdout()
    line = f"{_LABEL.get(outcome.status, outcome.status)} {escape(printable(outcome.path))}"
    if outcome.error:
        line += f": {escape(printable(outcome.error))}"
    elif outcome.note:
        line += f" [dim]({escape(printable(outcome.note))})[/]"
    out.print(line)
    for change in outcome.changes:
        out.print(f"  {change.field}: {escape(_show(change.before))} → {escape(_show(change.after))}")


_OUT = []


def _stdout():
    if not _OUT or _OUT[0].file is not sys.stdout:  # CliRunner swaps sys.stdout per invocation
        from rich.console import Console

        _OUT[:] = [Console(file=sys.stdout, highlight=False, soft_wrap=True)]
    return _OUT[0]


def _fields(value: str) -> list[str]:
    from ..filetags import FIELDS

    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in FIELDS]
    if bad or not names:
        fail(f"--fields {value}: expected a comma-separated list of {', '.join(FIELDS)}")
    return list(dict.fromkeys(names))


@app.command()
def write(
    results: Optional[Path] = typer.Argument(None, help="A results file of 'mttag tag -o FILE' (.jsonl, .json or .csv)."),
    top: Optional[int] = typer.Option(None, "--top", "-k", min=1, help="Write only the K best tags of each track (default: all in the results)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", min=0.0, max=1.0, help="Write only tags with probability >= P."),
    fields: str = typer.Option("genre,mood,mttag", "--fields", help="Fields to write: genre, mood, comment, mttag (comma-separated)."),
    mode: Mode = typer.Option(Mode.add, "--mode", help="add: keep what is there and add mttag's values; replace: the fields hold only mttag's values."),
    case: Case = typer.Option(Case.title, "--case", help="Spelling of genre and mood values: title (Alternative Rock), as-is, lower."),
    join: Optional[str] = typer.Option(None, "--join", help="Write several genres (moods) as ONE value joined by this, e.g. '; ' (for DJ software)."),
    kinds: Optional[Path] = typer.Option(None, "--kinds", help="CSV of tag,kind (genre, mood, instrument, era, other) overriding the built-in table."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show per file what would change; change nothing."),
    undo_log: Optional[Path] = typer.Option(None, "--undo-log", help="Where to record the previous values (default: RESULTS.undo-TIME.jsonl beside RESULTS; an existing log is appended to)."),
    undo: Optional[Path] = typer.Option(None, "--undo", help="Restore the files an undo log recorded, and exit."),
    keep_mtime: bool = typer.Option(False, "--keep-mtime", help="Keep each file's modification time (default: updated, so library tools re-read the tags)."),
    verify_audio: bool = typer.Option(False, "--verify-audio", help="Also decode every file before and after and compare the samples (slower)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per file on stdout instead of text."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary."),
) -> None:
    """Write tags from a results file into the audio files (genre, mood, comment, MTTAG).

    Every file is written to a copy, checked (tags read back, other tags and audio unchanged) and then swapped in atomically; the previous values go to an undo log first, and --undo LOG puts them back.

    Exit codes: 0 every file written (or unchanged); 1 some files failed (each gets an error line); 2 usage error; 130 interrupted (files already written stay written and are in the undo log).
    """
    from .. import filetags

    if undo is not None:
        if results is not None:
            fail("--undo LOG takes no RESULTS file")
        _run_undo(undo, dry_run, as_json, quiet)
        return
    if results is None:
        fail("missing RESULTS file (or --undo LOG)")

    kind_map = None
    if kinds is not None:
        try:
            kind_map = filetags.load_kinds(kinds)
        except (OSError, ValueError) as exc:
            fail(f"--kinds: {getattr(exc, 'strerror', None) or exc}")
    try:
        options = filetags.WriteOptions(fields=_fields(fields), mode=mode.value, top=top, threshold=threshold,
                                        case=case.value, join=join or None, kinds=kind_map, dry_run=dry_run,
                                        keep_mtime=keep_mtime, verify_audio=verify_audio)
    except ValueError as exc:
        fail(str(exc))

    records = _read_results(results)
    if not records:
        fail(f"{printable(results)} holds no results", EXIT_SOME_FAILED)

    log = None
    lock = None
    if not dry_run:
        log_path = undo_log or filetags.default_undo_log(results)
        if log_path.suffix.lower() in _AUDIO_SUFFIXES():
            fail(f"--undo-log {printable(log_path)}: names an audio file")
        if not _regular_or_missing(log_path):
            fail(f"--undo-log {printable(log_path)}: not a regular file")
        from ..fileio import ExclusiveLock, LockedError

        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            lock = ExclusiveLock(log_path.parent / f".{log_path.name}.lock", f"another mttag write using {printable(log_path)}", remove=True)
            lock.acquire()
            log = filetags.UndoLog(log_path, {"results": str(results.resolve()), "fields": list(options.fields),
                                              "mode": options.mode})
        except LockedError as exc:
            fail(str(exc))
        except filetags.WriteError as exc:
            _release(lock)
            fail(f"--undo-log: {exc}")
        except OSError as exc:
            _release(lock)
            fail(f"--undo-log {printable(log_path)}: cannot write it ({exc.strerror or exc})")

    counts: dict[str, int] = {}
    interrupted = False
    seen: set[str] = set()
    try:
        with sigterm_as_interrupt():
            for n, (path, record) in enumerate(records, 1):
                if "invalid" in record:
                    outcome = filetags.WriteOutcome(path or f"{results} record {n}", "error",
                                                    error=f"{printable(results)} record {n}: {record['invalid']}")
                elif "error" in record:
                    outcome = filetags.WriteOutcome(path, "skipped", note=f"not tagged: {record['error']}")
                else:
                    real = os.path.realpath(path)
                    if real in seen:  # the same file under two names: once is enough
                        continue
                    seen.add(real)
                    outcome = filetags.write_tags(path, record.get("tags") or [], options, log,
                                                  fingerprint=record.get("fingerprint"))
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
                _print(outcome, as_json)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        close_error = None
        if log is not None:
            try:
                log.close()
            except filetags.WriteError as exc:
                close_error = f"--undo-log: {exc}"
        _release(lock)

    failed = counts.get("error", 0)
    if close_error is not None:
        console.print(f"[red]error:[/] {escape(printable(close_error))}", highlight=False, soft_wrap=True)
        failed += 1
    if log is not None and log.count == 0:
        try:  # nothing was written: a log of headers only is noise
            if _only_headers(log.path):
                log.path.unlink()
        except OSError:
            pass
    if not quiet:
        order = ["would-write", "written", "unchanged", "skipped", "error"]
        summary = ", ".join(f"{counts[k]} {_WORDS.get(k, k)}" for k in order if counts.get(k))
        if log is not None and log.count:
            summary += f"; undo with: mttag write --undo {printable(log.path)}"
        console.print(("[yellow]interrupted:[/] " if interrupted else "") + escape(summary or "nothing to do"),
                      highlight=False, soft_wrap=True)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _only_headers(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return all(line.startswith('{"mttag_undo":') for line in f if line.strip())


def _AUDIO_SUFFIXES() -> set[str]:
    from ..audio import AUDIO_EXTENSIONS

    return set(AUDIO_EXTENSIONS)


def _release(lock) -> None:
    if lock is not None:
        lock.release()


def _regular_or_missing(path: Path) -> bool:
    """False for a FIFO, device or folder, where a regular file is expected (reading or
    appending to a FIFO waits for another process, forever)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return True  # the open that follows says why


def _read_results(results: Path) -> list[tuple[str, dict]]:
    from ..output import read_records, path_from_text, sniff_format

    if results.is_dir():
        fail(f"{printable(results)}: is a directory")
    if not _regular_or_missing(results):
        fail(f"{printable(results)}: not a regular file")
    try:
        fmt = sniff_format(results)
    except FileNotFoundError:
        fail(f"{printable(results)}: no such file")
    except IsADirectoryError:
        fail(f"{printable(results)}: is a directory")
    except OSError as exc:
        fail(f"{printable(results)}: cannot read it ({exc.strerror or exc})")
    if fmt in (None, "", "table"):
        what = "is empty" if fmt == "" else "is a table" if fmt == "table" else "is not an mttag results file"
        fail(f"{printable(results)} {what}; write results with 'mttag tag ... -o tags.jsonl' (or .json, .csv)")
    try:
        records = read_records(results, fmt)
    except OSError as exc:
        fail(f"{printable(results)}: cannot read it ({exc.strerror or exc})")
    return [(path_from_text(r["path"]) if r.get("path") else "", r) for r in records]


def _run_undo(log: Path, dry_run: bool, as_json: bool, quiet: bool) -> None:
    from .. import filetags

    if not log.exists():
        fail(f"--undo {printable(log)}: no such file")
    if not log.is_file():
        fail(f"--undo {printable(log)}: not a regular file")
    try:
        filetags.read_undo_log(log)
    except filetags.WriteError as exc:
        fail(f"--undo: {exc}")
    counts: dict[str, int] = {}
    interrupted = False
    try:
        with sigterm_as_interrupt():
            for outcome in filetags.undo(log, dry_run=dry_run):
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
                _print(outcome, as_json)
    except KeyboardInterrupt:
        interrupted = True
    except filetags.WriteError as exc:  # the undo key cannot be read
        fail(f"--undo: {exc}")
    if not quiet:
        order = ["would-restore", "restored", "unchanged", "error"]
        summary = ", ".join(f"{counts[k]} {_WORDS.get(k, k)}" for k in order if counts.get(k))
        console.print(("[yellow]interrupted:[/] " if interrupted else "") + escape(summary or "nothing to do"),
                      highlight=False, soft_wrap=True)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_SOME_FAILED if counts.get("error") else EXIT_OK)
