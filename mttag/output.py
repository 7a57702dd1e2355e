"""Result writers for ``mttag tag``: table, CSV, JSON and JSONL, written one track at a time.

Every format flushes after each record so an interrupted run keeps what it did,
and every file format can be read back (:func:`read_done`) to resume.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import IO, Any

from .tagging import TagResult

FORMATS = ("table", "csv", "json", "jsonl")
CSV_FIELDS = ["path", "duration", "tags", "scores", "error"]


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8. A file name whose bytes are not UTF-8 (say Latin-1,
    on Linux) reaches Python with surrogate escapes, which no UTF-8 file can hold:
    those bytes are written as ``\\xNN`` instead of crashing the writer."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def path_key(path: str) -> str:
    """What identifies a track across runs for ``--resume``: the absolute path as written."""
    return safe_text(os.path.abspath(path))


def _load_records(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Records already in an output file, tolerating a last line cut off mid-write."""
    records: list[dict[str, Any]] = []
    # errors="replace": a run killed mid-write can cut a non-ASCII path in half
    text = path.read_text(encoding="utf-8", errors="replace")
    if fmt == "csv":
        for row in csv.DictReader(io.StringIO(text)):
            # A row cut off mid-write lacks its last column ("error", None here; a
            # complete row has it, if only empty): its scores may be cut short too.
            if row.get("error") is None:
                continue
            if row.get("path"):  # "tags" precedes "error", so a row with "error" has it too
                if row.get("error"):
                    records.append({"path": row["path"], "error": row["error"]})
                elif row.get("duration"):
                    tags = [t for t in (row.get("tags") or "").split(";") if t]
                    scores = [float(s) for s in (row.get("scores") or "").split(";") if s]
                    if len(tags) == len(scores):
                        records.append({"path": row["path"], "duration": float(row["duration"]),
                                        "tags": [{"tag": t, "score": s} for t, s in zip(tags, scores)]})
        return records
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the record being written when the run was interrupted
        if isinstance(record, dict) and "path" in record:
            records.append(record)
    return records


def read_done(path: Path, fmt: str) -> tuple[list[dict[str, Any]], set[str]]:
    """Successful records of an earlier run and the absolute paths they cover.
    Failed tracks are not counted as done: a resumed run tries them again."""
    if fmt == "table":
        raise ValueError("--resume needs --format csv, json or jsonl")
    if not path.exists():
        return [], set()
    ok = [r for r in _load_records(path, fmt) if "error" not in r]
    return ok, {path_key(r["path"]) for r in ok}


class ResultWriter:
    """Writes records to ``stream`` in ``fmt``; call :meth:`close` to finish the file."""

    def __init__(self, stream: IO[str], fmt: str, console=None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.stream = stream
        self.fmt = fmt
        self.console = console
        self.count = 0
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, CSV_FIELDS, lineterminator="\n")
            self._csv.writeheader()
        elif fmt == "json":
            stream.write("[\n")
        self._flush()

    def _flush(self) -> None:
        self.stream.flush()

    def write_record(self, record: dict[str, Any]) -> None:
        record = {k: safe_text(v) if isinstance(v, str) else v for k, v in record.items()}
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.fmt == "json":
            # one record per line so a cut-off file can still be read back for --resume
            self.stream.write(("" if self.count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
        elif self.fmt == "csv":
            tags = record.get("tags", [])
            self._csv.writerow({
                "path": record["path"],
                "duration": "" if "error" in record else record.get("duration"),
                "tags": ";".join(t["tag"] for t in tags),
                "scores": ";".join(f"{t['score']:.4f}" for t in tags),
                "error": record.get("error", ""),
            })
        else:
            self._write_table_row(record)
        self.count += 1
        self._flush()

    def write(self, result: TagResult) -> None:
        self.write_record(result.to_dict())

    def _write_table_row(self, record: dict[str, Any]) -> None:
        if "error" in record:
            line = f"{record['path']}\n  error: {record['error']}\n"
        else:
            minutes, seconds = divmod(int(round(record.get("duration") or 0)), 60)
            tags = "  ".join(f"{t['tag']} {t['score']:.2f}" for t in record["tags"])
            line = f"{record['path']}  [{minutes}:{seconds:02d}]\n  {tags or '(no tag above threshold)'}\n"
        if self.console is not None:
            from rich.markup import escape

            first, _, rest = line.partition("\n")
            style = "red" if "error" in record else "green"
            self.console.print(f"[bold]{escape(first)}[/]\n[{style}]{escape(rest.rstrip())}[/]", highlight=False, soft_wrap=True)
        else:
            self.stream.write(line)

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n")
        self._flush()
