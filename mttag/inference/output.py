"""Result writers for ``mttag tag``: table, CSV, JSON and JSONL, written one track at a time.

Every format flushes after each record so an interrupted run keeps what it did,
and every file format can be read back (:func:`read_done`) to resume.
:class:`OutputFile` guards the file itself: it never overwrites an input, an audio
file, a file mttag did not write or (without ``--force`` or ``--resume``) an earlier
results file, takes a lock so two runs cannot share it, and
replaces it on ``--resume`` atomically, through a symbolic link, keeping its mode.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..audio.files import AUDIO_EXTENSIONS
from ..util.display import json_printable, printable, reaches_terminal
from ..util.fileio import ExclusiveLock, LockedError
from . import vocab

if TYPE_CHECKING:  # the writers need no torch: `mttag --help` must not import it
    from .tagging import TagResult

FORMATS = ("table", "csv", "tsv", "json", "jsonl")
# Spreadsheet layouts of csv/tsv: one row per track (tags and scores as ;-lists), one row per
# track and tag ("long", tidy: sort and filter by tag), one column per vocabulary tag ("wide"),
# one row per window and tag ("timeline": where in the track each tag is).
LAYOUTS = ("track", "long", "wide", "timeline")
# kinds/confidences (kind/confidence) come last, so that a reader of the older columns by
# position still finds them where they were
CSV_FIELDS = ["path", "model", "duration", "tags", "scores", "error", "fingerprint", "kinds", "confidences"]
LONG_FIELDS = ["path", "model", "duration", "rank", "tag", "score", "error", "fingerprint", "kind", "confidence"]
# before the kind and confidence columns, and before the audio fingerprint column (mttag
# write checks it): still read and resumed (a resumed file gets today's columns)
_V2_CSV_FIELDS, _V2_LONG_FIELDS = CSV_FIELDS[:-2], LONG_FIELDS[:-2]
_V1_CSV_FIELDS, _V1_LONG_FIELDS = CSV_FIELDS[:-3], LONG_FIELDS[:-3]
WIDE_FIELDS = ["path", "model", "duration", "error"]  # then one column per tag
TIMELINE_FIELDS = ["path", "model", "start", "end", "tag", "score", "error"]  # one row per window and tag
_OLD_CSV_FIELDS = ["path", "duration", "tags", "scores", "error"]  # mttag 0.1.0, still resumable
# First line of a table written to a file, so a later run knows the file is mttag's own.
TABLE_HEADER = "# mttag tag results"
# Format a results file's name implies (``-o tags.json``); anything else is a table.
FORMAT_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl",
                    ".ndjson": "jsonl", ".txt": "table", ".parquet": "parquet"}
# The first bytes of audio (and other binary) files: such a file is never replaced by results.
_BINARY_MAGIC = (b"RIFF", b"fLaC", b"OggS", b"ID3", b"FORM", b"\x1aE\xdf\xa3", b"wvpk", b"MAC ", b"MThd",
                 b"\x30\x26\xb2\x75", b"\x89PNG", b"\xff\xd8\xff", b"PK\x03\x04", b"%PDF")


class OutputError(Exception):
    """The results file cannot be used; the message says why in one line."""


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8. A file name whose bytes are not UTF-8 (say Latin-1,
    on Linux) reaches Python with surrogate escapes, which no UTF-8 file can hold:
    those bytes are written as ``\\xNN`` instead of crashing the writer."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def path_text(text: str) -> str:
    """A file path as UTF-8 text that maps back to exactly one file.

    A path with undecodable bytes is written with ``\\xNN`` escapes; so that such a
    name can never read the same as another file's real name (``caf\\xe9.wav``), its
    backslashes are doubled too (on POSIX, where a backslash is an ordinary character).
    Paths that are plain UTF-8 without a backslash, nearly all of them, are unchanged.
    """
    if os.sep == "/" and ("\\" in text or _has_surrogates(text)):
        text = text.replace("\\", "\\\\")
    return safe_text(text)


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def path_from_text(text: str) -> str:
    """The inverse of :func:`path_text`: the path (with surrogate escapes) a record names."""
    if os.sep != "/" or "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)


def display_tag(name: str) -> str:
    """A tag as every output spells it (:func:`mttag.inference.vocab.display`): the MSD vocabulary
    mixes ``House``, ``Hip-Hop`` and ``rock``, a combined model says ``msd:rock``; tables,
    spreadsheets, JSON and Parquet all write ``house``, ``hip-hop``, ``rock``."""
    return vocab.display(name)


def wide_tag_columns(vocabulary: list[str]) -> list[str]:
    """The tag columns of the wide layout: one per tag once spelled, in the vocabulary's order
    (a combined model's ``msd:rock`` and ``mtt:rock`` are one ``rock`` column, which holds the
    score of the result's tag, the one its model is most confident of)."""
    return list(dict.fromkeys(display_tag(t) for t in vocabulary))


_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(text: str) -> bool:
    """An object-store (or other remote) URI such as ``s3://bucket/a.mp3``; ``file://`` is local."""
    return bool(_URI.match(text)) and not text.startswith("file://")


def path_key(path: str) -> str:
    """What identifies a track across runs for ``--resume`` (and in an index): its absolute
    path, as written; a URI (a track of the Ray engine on object storage) as it is."""
    text = os.fspath(path)
    return text if is_uri(text) else path_text(os.path.abspath(text))


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def read_records(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Records already in an output file, tolerating a last line cut off mid-write. A
    record that fails :func:`record_problem` comes back as ``{"path", "invalid": why}``."""
    if fmt == "parquet":  # written whole (renamed into place complete): every row counts
        from .parquet import read_rows, record_from_row

        return [_checked(record_from_row(row)) for row in read_rows(path)]
    # errors="replace": a run killed mid-write can cut a non-ASCII path in half
    text = path.read_text(encoding="utf-8", errors="replace").lstrip("\ufeff")
    if fmt in ("csv", "tsv"):
        return _load_rows(text, _delimiter(fmt))
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the record being written when the run was interrupted
        if isinstance(record, dict) and "path" in record:
            records.append(_checked(record))
    return records


def _checked(record: dict[str, Any]) -> dict[str, Any]:
    problem = record_problem(record)
    if problem is None:
        return record
    # kept, so that a reader can say which record is bad and why
    return {"path": record["path"] if isinstance(record.get("path"), str) else "", "invalid": problem}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a results record read back cannot be used (a field of the wrong type or out of
    range), or ``None``. Files are input from anywhere: nothing past this check may assume
    a record's types."""
    path = record.get("path")
    if not isinstance(path, str) or not path or "\x00" in path:
        return "'path' is not a file path"
    if "invalid" in record:
        return str(record["invalid"])
    if "error" in record:
        return None if isinstance(record["error"], str) else "'error' is not text"
    duration = record.get("duration")
    if duration is not None and (not _is_number(duration) or duration < 0):
        return "'duration' is not a number of seconds"
    tags = record.get("tags")
    if not isinstance(tags, list):
        return "'tags' is not a list of {tag, score}"
    for t in tags:
        if not isinstance(t, dict) or not isinstance(t.get("tag"), str) or not t["tag"].strip():
            return "'tags' holds an entry without a tag name"
        if not _is_number(t.get("score")) or not 0.0 <= t["score"] <= 1.0:
            return f"tag {t['tag'][:50]!r} has no score between 0 and 1"
        confidence = t.get("confidence")
        if confidence is not None and (not _is_number(confidence) or not 0.0 <= confidence <= 1.0):
            return f"tag {t['tag'][:50]!r} has a confidence that is not a number between 0 and 1"
        for key in ("kind", "name"):
            if t.get(key) is not None and not isinstance(t[key], str):
                return f"tag {t['tag'][:50]!r}: {key!r} is not text"
    if "fingerprint" in record and not isinstance(record["fingerprint"], str):
        return "'fingerprint' is not text"
    return None


def csv_layout(header: list[str]) -> str | None:
    """The layout a csv/tsv header belongs to, or None if mttag did not write it."""
    if header in (CSV_FIELDS, _V2_CSV_FIELDS, _V1_CSV_FIELDS, _OLD_CSV_FIELDS):
        return "track"
    if header in (LONG_FIELDS, _V2_LONG_FIELDS, _V1_LONG_FIELDS):
        return "long"
    if header == TIMELINE_FIELDS:
        return "timeline"
    if header[: len(WIDE_FIELDS)] == WIDE_FIELDS and len(header) > len(WIDE_FIELDS):
        return "wide"
    return None


def wide_columns(path: Path, fmt: str) -> list[str]:
    """The tag columns of a wide csv/tsv results file."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader(f, delimiter=_delimiter(fmt)), [])
    header = [h.lstrip("\ufeff") for h in header]
    return header[len(WIDE_FIELDS):]


def _load_rows(text: str, delimiter: str) -> list[dict[str, Any]]:
    # a hand-edited file can hold a field over csv's default limit (131,072 characters):
    # read it, and let the record's check refuse what is absurd
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        reader = csv.reader(io.StringIO(text), delimiter=delimiter)
        header = next(reader, None) or []
        layout = csv_layout(header)
        # A row cut off mid-write has fewer fields than the header: it is dropped, and its
        # track tagged again. (A complete row always has every field, if only empty.)
        rows = [dict(zip(header, r)) for r in reader if len(r) == len(header)]
    finally:
        csv.field_size_limit(limit)
    records = _rows_to_records(rows, layout, header)
    out = []
    for record in records:
        problem = record_problem(record)
        out.append(record if problem is None else {"path": record.get("path", ""), "invalid": problem})
    return out


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} {text[:30]!r} is not a number") from None


def _optional_number(text: str, what: str) -> float | None:
    return None if text == "" else _number(text, what)


def _tag_entry(tag: str, score: str, kind: str | None = None, confidence: str | None = None) -> dict[str, Any]:
    """A tag of a csv/tsv row as the JSON records hold it (kind and confidence only when the
    file has those columns: an older file's records stay as they were)."""
    entry: dict[str, Any] = {"tag": tag, "score": _number(score, "score")}
    if kind is not None:
        entry["kind"] = kind or vocab.kind(tag)
    if confidence is not None:
        entry["confidence"] = _optional_number(confidence, "confidence")
    return entry


def _rows_to_records(rows: list[dict[str, str]], layout: str | None, header: list[str]) -> list[dict[str, Any]]:
    if layout == "wide":
        return _wide_records(rows, header[len(WIDE_FIELDS):])
    read = {"track": _track_records, "long": _long_records, "timeline": _timeline_records}.get(layout)
    return read(rows) if read is not None else []


def _base(row: dict[str, str]) -> dict[str, Any]:
    """The fields of a csv/tsv row that every layout has, as a record (no tags yet)."""
    out: dict[str, Any] = {"path": row["path"]}
    if row.get("model"):
        out["model"] = row["model"]
    if row.get("error"):
        out["error"] = row["error"]
    elif row.get("duration"):
        out["duration"] = _number(row["duration"], "duration")
    if row.get("fingerprint") and not row.get("error"):
        out["fingerprint"] = row["fingerprint"]
    return out


def _bad(row: dict[str, str], exc: ValueError) -> dict[str, Any]:
    return {"path": row["path"], "invalid": str(exc)}


def _track_records(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    records = []
    for row in rows:
        try:
            record = _base(row)
            if "error" not in record:
                tags = [t for t in row["tags"].split(";") if t]
                scores = [s for s in row["scores"].split(";") if s]
                if len(tags) != len(scores) or "duration" not in record:
                    continue
                # kinds and confidences: one entry per tag, a confidence empty when unknown
                kinds = row["kinds"].split(";") if row.get("kinds") else None
                confs = row["confidences"].split(";") if "confidences" in row and tags else None
                if kinds is not None and len(kinds) != len(tags) or confs is not None and len(confs) != len(tags):
                    raise ValueError("the kinds or confidences do not match the tags")
                record["tags"] = [_tag_entry(t, s, kinds[i] if kinds else (None if confs is None else ""),
                                             None if confs is None else confs[i])
                                  for i, (t, s) in enumerate(zip(tags, scores))]
        except ValueError as exc:
            record = _bad(row, exc)
        records.append(record)
    return records


def _long_records(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for row in rows:
        try:
            entry = (_tag_entry(row["tag"], row["score"], row.get("kind"), row.get("confidence"))
                     if row["tag"] else None)
            if records and records[-1]["path"] == row["path"]:
                if entry is not None and "tags" in records[-1]:
                    records[-1]["tags"].append(entry)
                continue
            record = _base(row)
            if "error" not in record:
                record["tags"] = [entry] if entry is not None else []
        except ValueError as exc:
            if records and records[-1]["path"] == row["path"]:
                records[-1] = _bad(row, exc)
                continue
            record = _bad(row, exc)
        records.append(record)
    # A track's rows are written together, but a kill can fall between two of them:
    # the last track may be incomplete, so it is tagged again.
    if records and "error" not in records[-1]:
        records.pop()
    return records


def _timeline_records(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    # only which tracks are done matters for --resume: a timeline file is not read back as tags
    records: list[dict[str, Any]] = []
    for row in rows:
        if records and records[-1]["path"] == row["path"]:
            continue
        record = _base(row)
        if "error" not in record:
            record["tags"] = []
        records.append(record)
    if records and "error" not in records[-1]:
        records.pop()  # the last track's windows may be cut short: tagged again
    return records


def _wide_records(rows: list[dict[str, str]], names: list[str]) -> list[dict[str, Any]]:
    records = []
    for row in rows:
        try:
            record = _base(row)
            if "error" not in record:
                scores = [(n, _number(row[n], "score")) for n in names if row[n] != ""]
                record["tags"] = [{"tag": n, "score": v} for n, v in sorted(scores, key=lambda x: -x[1])]
        except ValueError as exc:
            record = _bad(row, exc)
        records.append(record)
    return records


def read_done(path: Path, fmt: str) -> tuple[list[dict[str, Any]], set[str]]:
    """Successful records of an earlier run and the absolute paths they cover.
    Failed tracks are not counted as done: a resumed run tries them again."""
    if fmt == "table":
        raise ValueError("--resume needs --format csv, tsv, json or jsonl")
    if not path.exists():
        return [], set()
    ok = [r for r in read_records(path, fmt) if "error" not in r and "invalid" not in r]
    return ok, {path_key(path_from_text(r["path"])) for r in ok}


class ResultWriter:
    """Writes records to ``stream`` in ``fmt`` (and, for csv/tsv, ``layout``; ``wide`` needs
    the model's ``vocabulary``); call :meth:`close` to finish the file."""

    def __init__(self, stream: IO[str], fmt: str, console=None, table_header: bool = False,
                 layout: str = "track", vocabulary: list[str] | None = None, escape: bool | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
        self.stream = stream
        self.fmt = fmt
        self.layout = layout
        self.console = console
        self.count = 0
        # csv/tsv cells with control characters escaped (file names can hold any byte): for
        # a stream that can reach a terminal (``None``: anything but a regular file). A
        # results file keeps each path's exact text, which --resume reads back.
        self.escape = reaches_terminal(stream) if escape is None else escape
        if fmt in ("csv", "tsv"):
            if layout == "wide":
                if not vocabulary:
                    raise ValueError("the wide layout needs the model's vocabulary")
                self.columns = wide_tag_columns(vocabulary)
                fields = WIDE_FIELDS + self.columns
            else:
                fields = {"long": LONG_FIELDS, "timeline": TIMELINE_FIELDS}.get(layout, CSV_FIELDS)
            self._csv = csv.writer(stream, delimiter=_delimiter(fmt), lineterminator="\n")
            self._csv.writerow([printable(f) for f in fields] if self.escape else fields)
        elif fmt == "json":
            stream.write("[\n")
        elif fmt == "table":
            # every tag cell as wide as the vocabulary's longest name (capped), so that scores
            # line up from track to track; as many cells per line as the width allows
            # (wrapped at the console's width; a file has none: one line per track)
            names = [len(printable(display_tag(t))) for t in vocabulary or []]
            self.tag_width = min(max(names, default=12), 24)
            self.width = getattr(console, "width", None)
            self.cwd = os.getcwd()
            if table_header:
                stream.write(TABLE_HEADER + "\n")
        self._flush()

    def _flush(self) -> None:
        self.stream.flush()

    def write_record(self, record: dict[str, Any]) -> None:
        record = {k: safe_text(v) if isinstance(v, str) else v for k, v in record.items()}
        if self.fmt == "jsonl":
            self.stream.write(json_printable(json.dumps(record, ensure_ascii=False, allow_nan=False)) + "\n")
        elif self.fmt == "json":
            # one record per line so a cut-off file can still be read back for --resume
            line = json_printable(json.dumps(record, ensure_ascii=False, allow_nan=False))
            self.stream.write(("" if self.count == 0 else ",\n") + line)
        elif self.fmt in ("csv", "tsv"):
            rows = self._rows(record)
            if self.escape:
                rows = [[printable(c) if isinstance(c, str) else c for c in row] for row in rows]
            self._csv.writerows(rows)
        else:
            self._write_table_row(record)
        self.count += 1
        self._flush()

    def _rows(self, record: dict[str, Any]) -> list[list[Any]]:
        path, model, error = record["path"], record.get("model") or "", record.get("error", "")
        duration = "" if error else record.get("duration")
        entries = record.get("tags", [])
        tags = [(display_tag(t["tag"]), t["score"]) for t in entries]
        # a record of an older file (resumed) has no kind: the table gives it; no confidence: empty
        kinds = [t.get("kind") or vocab.kind(t["tag"]) for t in entries]
        confs = ["" if t.get("confidence") is None else f"{t['confidence']:.4f}" for t in entries]
        if self.layout == "long":
            fingerprint = record.get("fingerprint") or ""
            if error or not tags:
                return [[path, model, duration, "", "", "", error, fingerprint, "", ""]]
            return [[path, model, duration, rank, t, f"{s:.4f}", "", fingerprint, kinds[rank - 1], confs[rank - 1]]
                    for rank, (t, s) in enumerate(tags, 1)]
        if self.layout == "timeline":
            if error or not record.get("timeline"):
                return [[path, model, "", "", "", "", error or "no timeline (run with --timeline)"]]
            return [[path, model, w["start"], w["end"], display_tag(t["tag"]), f"{t['score']:.4f}", ""]
                    for w in record["timeline"] for t in w["tags"]]
        if self.layout == "wide":
            scores = dict(tags)
            return [[path, model, duration, error] + [f"{scores[c]:.4f}" if c in scores else "" for c in self.columns]]
        return [[path, model, duration, ";".join(t for t, _ in tags), ";".join(f"{s:.4f}" for _, s in tags), error,
                 record.get("fingerprint") or "", ";".join(kinds), ";".join(confs)]]

    def write(self, result: TagResult) -> None:
        record = result.to_dict()
        record["path"] = path_text(record["path"])
        self.write_record(record)

    def _table_path(self, path: str) -> str:
        """A path under the current folder relative to it (what a person typed, and shorter),
        any other path as it was given."""
        if os.path.isabs(path):
            try:
                if os.path.commonpath([path, self.cwd]) == self.cwd:
                    return os.path.relpath(path, self.cwd)
            except ValueError:  # another drive (Windows)
                pass
        return path

    def _tag_cells(self, tags: list[dict[str, Any]], indent: str) -> str:
        # a calibrated model's tags come best-confidence first: the table shows that confidence
        # (as a percentage: 98% = higher than on 98 % of reference music), else the probability
        cells = [f"{printable(display_tag(t['tag'])):<{self.tag_width}} "
                 + (f"{int(t['confidence'] * 100):3d}%" if isinstance(t.get("confidence"), (int, float)) else f"{t['score']:.2f}")
                 for t in tags]
        per_line = len(cells) or 1
        if self.width:  # n cells take n * (width + 5) + (n - 1) * 2 columns after the indent
            per_line = max(1, (self.width - len(indent) + 2) // (self.tag_width + 7))
        lines = ["  ".join(cells[i:i + per_line]) for i in range(0, len(cells), per_line)]
        return ("\n" + indent).join(lines)

    def _write_table_row(self, record: dict[str, Any]) -> None:
        record = dict(record, path=self._table_path(record["path"]))
        record = {k: printable(v) if isinstance(v, str) else v for k, v in record.items()}
        if "error" in record:
            line = f"{record['path']}\n  error: {record['error']}\n"
        else:
            minutes, seconds = divmod(int(round(record.get("duration") or 0)), 60)
            tags = self._tag_cells(record["tags"], "  ")
            line = f"{record['path']}  [{minutes}:{seconds:02d}]\n  {tags or '(no tag above threshold)'}\n"
            for w in record.get("timeline") or []:
                clock = f"{_clock(w['start'])}-{_clock(w['end'])}"
                line += f"    {clock:>11}  {self._tag_cells(w['tags'], ' ' * 17)}\n"
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


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def format_for(path: Path) -> str | None:
    """The format an output file's name implies, or None."""
    return FORMAT_BY_SUFFIX.get(path.suffix.lower())


def sniff_format(path: Path) -> str | None:
    """What an existing results file holds: ``""`` (empty), ``table``, ``csv``, ``tsv``,
    ``json``, ``jsonl``, or None for a file mttag did not write."""
    found = sniff(path)
    return None if found is None else found[0]


def sniff(path: Path) -> tuple[str, str | None] | None:
    """``(format, csv layout or None)`` of an existing results file; None if mttag did not write it."""
    with open(path, "rb") as f:
        head = f.read(65536)
    if head.startswith(b"PAR1"):
        from .parquet import is_results_file

        return ("parquet", None) if is_results_file(path) else None
    if _looks_binary(head):
        return None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if not text.strip():
        return "", None
    lines = text.splitlines()
    first = lines[0].strip()
    if first == TABLE_HEADER:
        return "table", None
    for fmt in ("tsv", "csv"):
        header = next(csv.reader([lines[0]], delimiter=_delimiter(fmt)))
        layout = csv_layout(header)
        if layout is not None and (fmt == "tsv") == ("\t" in lines[0]):
            return fmt, layout
    if first == "[" and (len(lines) < 2 or lines[1].lstrip().startswith(("{", "]"))):
        return "json", None
    if first.startswith('{"path":'):
        return "jsonl", None
    return None


def _looks_binary(head: bytes) -> bool:
    return (head.startswith(_BINARY_MAGIC) or b"\0" in head or head[4:8] == b"ftyp"
            or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xf1", b"\xff\xf9"))


class OutputFile:
    """The results file of one ``mttag tag`` run.

    :meth:`check` refuses (with :class:`OutputError`) a target that is an input, looks
    like audio, or is an existing non-empty file (unless ``force``; an earlier results
    file also with ``resume``), and on
    ``resume`` learns the file's real format. :meth:`lock` takes the file for this run,
    :meth:`open` returns the stream to write to, :meth:`commit` puts a resumed file in
    place, and :meth:`close` ends (releasing the lock, removing any temporary file).
    """

    def __init__(self, path: Path, fmt: str | None, *, resume: bool = False, force: bool = False,
                 layout: str | None = None):
        self.path = Path(path)
        self.fmt = fmt  # None: from the file's name, or on resume from its content
        self.layout = layout  # csv/tsv layout; None: "track", or on resume the file's
        self.resume = resume
        self.force = force
        self.target = self.path  # the file written: a symbolic link's target
        self.regular = True
        self.stream: IO[str] | None = None
        self._lock: ExclusiveLock | None = None
        self._tmp: Path | None = None

    def _error(self, reason: str) -> OutputError:
        return OutputError(f"--output {printable(self.path)}: {reason}")

    def check(self, inputs: list[Path]) -> str:
        """Validate the target against ``inputs`` (the audio files to tag); return the format."""
        path = self.path
        implied = format_for(path)
        if path.suffix.lower() in AUDIO_EXTENSIONS:
            raise self._error("names an audio file; results go to a .csv, .tsv, .json, .jsonl, .txt or .parquet file")
        self.target = Path(os.path.realpath(path))
        real_inputs = {os.path.realpath(p) for p in inputs}
        if str(self.target) in real_inputs:
            raise self._error("is one of the files to tag; choose another output file")
        if self.target.is_dir():
            raise self._error("is a directory")
        exists = os.path.lexists(self.target)
        self.regular = not exists or self.target.is_file()
        found = layout = None
        if exists and self.regular:
            try:
                sniffed = sniff(self.target)
                found, layout = sniffed if sniffed is not None else (None, None)
            except OSError as exc:
                raise self._error(f"cannot read it ({exc.strerror or exc})") from None
            if found is None and (not self.force or self._binary()):
                raise self._error(
                    "exists and is not an mttag results file; refusing to overwrite it"
                    + ("" if self._binary() else " (add --force to replace it)"))
            if found and not self.resume and not self.force:
                # an earlier run's results can be thousands of tracks: re-running the same
                # command without --resume must not throw them away in silence
                how = ("add --force to replace it (a table cannot be resumed)" if found == "table"
                       else "add --resume to go on from it, or --force to replace it")
                raise self._error(f"already holds mttag {found} results; {how}")
        if self.resume:
            if not self.regular:
                raise self._error("--resume needs a regular file")
            if found:  # the file's content decides, whatever its name says
                if self.fmt is not None and self.fmt != found:
                    raise self._error(f"holds {found} results, not {self.fmt}; resume with -f {found} (or no -f)")
                if layout and self.layout is not None and self.layout != layout:
                    raise self._error(f"holds the {layout} layout, not {self.layout}; "
                                      f"resume with --layout {layout} (or no --layout)")
                self.fmt = found
                self.layout = layout or self.layout
        if self.fmt is None:
            self.fmt = implied or "table"
        if self.fmt == "table" and implied not in (None, "table"):
            raise self._error(f"a {implied} file would hold a table; use -f {implied} (or no -f)")
        if self.resume and self.fmt == "table":
            raise OutputError("--resume needs --format csv, tsv, json or jsonl")
        return self.fmt  # self.layout: the file's or the one asked for; None: the caller's default

    def _binary(self) -> bool:
        try:
            with open(self.target, "rb") as f:
                return _looks_binary(f.read(4096))
        except OSError:
            return False

    def lock(self) -> None:
        """Take the target's lock (before reading it for ``--resume``): one run per results file."""
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise self._error(f"{printable(parent)} is not a folder") from None
        except OSError as exc:
            raise self._error(f"cannot create its folder ({exc.strerror or exc})") from None
        if self.regular:
            lock_path = parent / f".{self.target.name}.lock"
            try:  # self._lock is set only once the lock is held
                self._lock = ExclusiveLock(lock_path, f"another mttag tag writing {printable(self.path)}",
                                           remove=True).acquire()
            except LockedError as exc:
                raise OutputError(str(exc)) from None
            except OSError as exc:
                raise self._error(f"cannot write there ({exc.strerror or exc})") from None

    def open(self) -> IO[str]:
        """Open the locked target for writing (a temporary file beside it on resume)."""
        if self._lock is None and self.regular:
            self.lock()
        parent = self.target.parent
        try:
            if self.fmt == "parquet":
                # a Parquet file is readable only once its footer is written: it is made
                # under a temporary name and renamed into place when complete (close())
                fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{self.target.name}.", suffix=".tmp")
                self._tmp = Path(tmp)
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(fd, stat.S_IMODE(self.target.stat().st_mode) if self.target.exists() else 0o666 & ~umask)
                self.stream = os.fdopen(fd, "wb")
            elif self.resume and self.target.exists():
                fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{self.target.name}.", suffix=".tmp")
                self._tmp = Path(tmp)
                # the results file keeps its permissions (mkstemp makes files owner-only)
                os.chmod(fd, stat.S_IMODE(self.target.stat().st_mode))
                self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="")
            else:
                self.stream = open(self.target, "w", encoding="utf-8", newline="")
        except OSError as exc:
            self._cleanup()
            raise self._error(f"cannot write it ({exc.strerror or exc})") from None
        return self.stream

    def commit(self) -> None:
        """On resume: the earlier results are in the new file; it replaces the old one."""
        if self._tmp is not None and self.fmt != "parquet":
            self.stream.flush()
            os.fsync(self.stream.fileno())
            os.replace(self._tmp, self.target)
            self._tmp = None

    def _commit_parquet(self) -> None:
        from .parquet import is_results_file

        # a writer that failed before its footer leaves an unreadable file: the old one stays
        if is_results_file(self._tmp):
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.target)
            self._tmp = None

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self, discard: bool = False) -> None:
        """Close the stream and release the lock; ``discard``: after a failure, whose
        write errors were already reported, ignore the ones the final flush repeats."""
        try:
            if self.stream is not None:
                try:
                    self.stream.close()
                except OSError:
                    if not discard:
                        raise
                if self.fmt == "parquet" and self._tmp is not None and not discard:
                    self._commit_parquet()
        finally:
            self.stream = None
            self._cleanup()
