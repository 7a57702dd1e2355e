"""``mttag write``: write the tags of a results file into the audio files (and ``--undo`` it)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..runs.common import RunEvents
from ..util.display import printable
from ._common import app, console, fail, run


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
    from ..inference.output import safe_text

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


@app.command()
def write(
    results: Optional[Path] = typer.Argument(None, help="A results file of 'mttag tag -o FILE' (.jsonl, .json or .csv)."),
    top: Optional[int] = typer.Option(None, "--top", "-k", min=1, help="Write only the K best tags of each track (default: all in the results)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", min=0.0, max=1.0, help="Write only tags with probability >= P (instead of the confidence rule, unless --min-confidence is given too)."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", min=0.0, max=1.0, help="Write only tags of calibrated confidence >= C (default 0.9, unless --threshold is given; 0: any)."),
    max_genres: int = typer.Option(3, "--max-genres", min=0, help="At most N genres into the genre field (the most confident)."),
    max_moods: int = typer.Option(2, "--max-moods", min=0, help="At most N moods into the mood field."),
    fields: str = typer.Option("genre,mood,mttag", "--fields", help="Fields to write: genre, mood, comment, mttag (comma-separated)."),
    mode: Mode = typer.Option(Mode.add, "--mode", help="add: keep what is there and add mttag's values; replace: the fields hold only mttag's values."),
    case: Case = typer.Option(Case.title, "--case", help="Spelling of genre and mood values: title (Alternative Rock), as-is, lower."),
    join: Optional[str] = typer.Option(None, "--join", help="Write several genres (moods) as ONE value joined by this, e.g. '; ' (for DJ software)."),
    kinds: Optional[Path] = typer.Option(None, "--kinds", help="CSV of tag,kind (genre, mood, instrument, voice, era, other) overriding the built-in table."),
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
    from ..runs.write import WriteRequest, run_undo, run_write

    events = _WriteEvents(as_json, quiet)
    if undo is not None:
        if results is not None:
            fail("--undo LOG takes no RESULTS file")
        summary = run(run_undo, undo, dry_run, events)
        order = ["would-restore", "restored", "unchanged", "error"]
    else:
        if results is None:
            fail("missing RESULTS file (or --undo LOG)")
        request = WriteRequest(results, top=top, threshold=threshold, min_confidence=min_confidence,
                               max_genres=max_genres, max_moods=max_moods, fields=fields, mode=mode.value, case=case.value,
                               join=join, kinds=kinds, dry_run=dry_run, undo_log=undo_log, keep_mtime=keep_mtime,
                               verify_audio=verify_audio)
        summary = run(run_write, request, events)
        order = ["would-write", "written", "unchanged", "skipped", "error"]
    for problem in summary.problems:
        console.print(f"[red]error:[/] {escape(printable(problem))}", highlight=False, soft_wrap=True)
    if not quiet:
        counts = summary.counts
        text = ", ".join(f"{counts[k]} {_WORDS.get(k, k)}" for k in order if counts.get(k))
        if summary.undo_log is not None:
            text += f"; undo with: mttag write --undo {printable(summary.undo_log)}"
        console.print(("[yellow]interrupted:[/] " if summary.interrupted else "") + escape(text or "nothing to do"),
                      highlight=False, soft_wrap=True)
    raise typer.Exit(summary.exit_code)


class _WriteEvents(RunEvents):
    """Each file's outcome on stdout as it happens: a line (and its changes), or a JSON record."""

    def __init__(self, as_json: bool, quiet: bool):
        self.as_json, self.quiet = as_json, quiet

    def result(self, result) -> None:
        _print(result, self.as_json)

    def warning(self, path, message: str) -> None:
        # stderr: --json's stdout stays one record per line
        if self.quiet:
            return
        where = f"{printable(path)}: " if path else ""
        console.print(f"[yellow]note:[/] {escape(where + printable(message))}", highlight=False, soft_wrap=True)
