"""Parquet results: one row per track, the same for ``mttag tag -o tags.parquet`` (one file)
and ``--engine ray`` (a dataset folder of ``part-*.parquet`` files).

Columns::

    path       string            the track (an absolute path or an object-store URI on the Ray engine)
    model      string            the model's name
    duration   double            seconds (null on error)
    windows    int32             windows averaged (0 on error)
    tags       list<struct<tag: string, score: float, kind: string, confidence: float>>
                                 the chosen tags, best first: the one spelling, the raw
                                 probability, genre/mood/instrument/voice/era/other, the
                                 calibrated confidence (null for a model without a table)
    scores     list<float>       every tag's probability, in the vocabulary's order (null on error)
    embedding  list<float>       the track's unit embedding (mttag embed --engine ray; else null)
    error      string            why the track has no tags (null when it has)

The vocabulary (``scores``' order), the model and the format version are in the schema's
key-value metadata under ``mttag`` (JSON), so a file describes itself; a dataset of
``mttag embed --engine ray`` also names what made its embeddings there (``embedding``: the
model's identity as an index records it, the pooling and the windows per track), so that
``mttag embed --from DATASET -o INDEX`` can turn it into an index for ``mttag similar``.

pyarrow is imported inside the functions: ``mttag --help`` and every other output format
must not need it (it comes with ``pip install "mttag[parquet]"`` or ``"mttag[ray]"``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from .tagging import TagResult

FORMAT = "mttag-results"
FORMAT_VERSION = 1
METADATA_KEY = b"mttag"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
# Rows buffered before a row group is written: bounded memory for a million-track file,
# and groups large enough for readers to skip through quickly.
ROW_GROUP_ROWS = 2048
COLUMNS = ["path", "model", "duration", "windows", "tags", "scores", "embedding", "error"]


class ParquetUnavailable(Exception):
    """pyarrow is not installed."""


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401  (pa.parquet below)
    except ImportError:
        raise ParquetUnavailable('Parquet output needs pyarrow: pip install "mttag[parquet]"') from None
    return pa


def schema(tags: list[str] | None = None, model: str | None = None,
           embedding: dict[str, Any] | None = None) -> "pa.Schema":
    pa = _pa()
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("duration", pa.float64()),
        pa.field("windows", pa.int32()),
        pa.field("tags", pa.list_(pa.struct([("tag", pa.string()), ("score", pa.float32()),
                                             ("kind", pa.string()), ("confidence", pa.float32())]))),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("error", pa.string()),
    ]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "tags": list(tags or [])}
    if embedding is not None:
        meta["embedding"] = embedding
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta).encode()})


def describe(sch: "pa.Schema") -> dict[str, Any] | None:
    """The ``mttag`` metadata of a results schema, or None when mttag did not write it."""
    raw = (sch.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def row_from_result(result: "TagResult", embedding=None) -> dict[str, Any]:
    """A :class:`mttag.inference.tagging.TagResult` as a row (``embedding``: a pooled vector to store)."""
    from .output import path_text

    if result.error is not None:
        return {"path": path_text(result.path), "model": result.model, "duration": _finite(result.duration),
                "windows": 0, "tags": [], "scores": None, "embedding": None, "error": result.error}
    return {
        "path": path_text(result.path), "model": result.model, "duration": _finite(result.duration),
        "windows": int(result.n_windows),
        "tags": [_tag_struct(t) for t in result.to_dict()["tags"]],
        "scores": None if result.probabilities is None else [float(p) for p in result.probabilities],
        "embedding": None if embedding is None else [float(v) for v in embedding],
        "error": None,
    }


def _tag_struct(entry: dict[str, Any]) -> dict[str, Any]:
    """A record's tag as the struct; a row of an older file (no kind, no confidence) gets the
    kind from the vocabulary table and a null confidence."""
    from . import vocab

    confidence = entry.get("confidence")
    return {"tag": entry["tag"], "score": float(entry["score"]), "kind": entry.get("kind") or vocab.kind(entry["tag"]),
            "confidence": None if confidence is None else float(confidence)}


def row_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record (``TagResult.to_dict()``'s form, or a row read back) as a full row."""
    row = {c: record.get(c) for c in COLUMNS}
    row["tags"] = [_tag_struct(t) for t in record.get("tags") or []]
    row["windows"] = int(record.get("windows") or 0)
    return row


def table(rows: list[dict[str, Any]], tags: list[str] | None = None, model: str | None = None,
          embedding: dict[str, Any] | None = None) -> "pa.Table":
    pa = _pa()
    sch = schema(tags, model, embedding)
    return pa.Table.from_pylist(rows, schema=sch)


def record_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the record the other formats hold (``path``, ``model``, ``duration``, ``tags``
    or ``error``), keeping the Parquet-only columns for a rewrite on --resume."""
    out = dict(row)
    if out.get("error") is None:
        out.pop("error", None)
    return out


def read_rows(path: str | os.PathLike, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Every row of an mttag Parquet file (ValueError when it is not one)."""
    pa = _pa()
    try:
        pf = pa.parquet.ParquetFile(os.fspath(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"not a readable Parquet file ({str(exc).splitlines()[0][:160]})") from None
    if describe(pf.schema_arrow) is None:
        raise ValueError("a Parquet file mttag did not write")
    try:
        return pf.read(columns=columns).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"its rows cannot be read ({str(exc).splitlines()[0][:160]})") from None


def is_results_file(path: str | os.PathLike) -> bool:
    """An existing Parquet file holding mttag results (its schema says so)."""
    try:
        pa = _pa()
        return describe(pa.parquet.read_schema(os.fspath(path))) is not None
    except Exception:  # noqa: BLE001  (anything unreadable is not ours, whatever the reason)
        return False


class ParquetResultWriter:
    """``mttag tag -o tags.parquet``: rows buffered into row groups on a binary ``stream``;
    :meth:`close` writes the footer. The file only becomes readable then, so
    :class:`mttag.inference.output.OutputFile` writes it under a temporary name and renames it into
    place when it is complete (Ctrl+C and SIGTERM close it, keeping the results so far)."""

    def __init__(self, stream: IO[bytes], vocabulary: list[str], model: str | None = None):
        pa = _pa()
        self.stream = stream
        self.schema = schema(vocabulary, model)
        self._writer = pa.parquet.ParquetWriter(stream, self.schema)
        self._rows: list[dict[str, Any]] = []
        self.count = 0
        self.console = None  # ResultWriter's attribute, which tag's progress bar may set

    def write(self, result: "TagResult") -> None:
        self._add(row_from_result(result))

    def write_record(self, record: dict[str, Any]) -> None:
        self._add(row_from_record(record))

    def _add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.count += 1
        if len(self._rows) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            pa = _pa()
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self) -> None:
        if self._writer is None:
            return
        try:
            self._flush()
        finally:
            writer, self._writer = self._writer, None
            writer.close()
        self.stream.flush()


# -- datasets of parts (the Ray engine) ---------------------------------------------------------


def part_name(keys: Iterable[str]) -> str:
    """A part's file name from the tracks it holds: a task retried with the same tracks writes
    the same name (it replaces the first attempt's file instead of adding a copy)."""
    h = hashlib.sha256()
    for key in sorted(keys):
        h.update(key.encode("utf-8", "surrogateescape") + b"\0")
    return f"{PART_PREFIX}{h.hexdigest()[:24]}{PART_SUFFIX}"


def is_part(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def is_local(fs) -> bool:
    """``fs`` is pyarrow's local filesystem (a local or mounted disk), not an object store."""
    return type(fs).__name__ == "LocalFileSystem"


def write_part(fs, folder: str, rows: list[dict[str, Any]], tags: list[str], model: str | None,
               embedding: dict[str, Any] | None = None) -> str:
    """Write ``rows`` as one complete part in ``folder`` on the pyarrow filesystem ``fs``;
    return its name. On a local disk it is written under a hidden temporary name and
    renamed, so a reader (or a --resume) never sees half a file; an object store makes an
    upload visible only once it is complete, so it is written in place there."""
    pa = _pa()
    name = part_name(r["path"] for r in rows)
    final = f"{folder.rstrip('/')}/{name}"
    data = table(rows, tags, model, embedding)
    local = is_local(fs)
    target = f"{folder.rstrip('/')}/.{name}.{uuid.uuid4().hex[:8]}.tmp" if local else final
    try:
        with fs.open_output_stream(target) as out:
            pa.parquet.write_table(data, out)
        if local:
            fs.move(target, final)
    except BaseException:
        if local:
            try:
                fs.delete_file(target)
            except OSError:
                pass
        raise
    return name


def list_folder(fs, folder: str) -> tuple[list[str], list[str]]:
    """``(complete parts, other files)`` of a dataset folder, from one listing; neither holds
    the hidden files (temporary files of unfinished writes, a run's lock)."""
    from pyarrow.fs import FileSelector, FileType

    try:
        infos = fs.get_file_info(FileSelector(folder, allow_not_found=True, recursive=False))
    except FileNotFoundError:
        return [], []
    parts = sorted(i.base_name for i in infos if i.type == FileType.File and is_part(i.base_name))
    others = sorted(i.base_name for i in infos if not is_part(i.base_name) and not i.base_name.startswith("."))
    return parts, others


def list_parts(fs, folder: str) -> list[str]:
    """Names of the complete parts in ``folder``."""
    return list_folder(fs, folder)[0]


def read_part_paths(fs, path: str) -> tuple[dict[str, Any] | None, list[str]]:
    """A part's ``mttag`` metadata and its ``path`` column, from one opening of the file;
    ``(None, [])`` for a Parquet file mttag did not write."""
    pa = _pa()
    with fs.open_input_file(path) as f:
        part = pa.parquet.ParquetFile(f)
        meta = describe(part.schema_arrow)
        if meta is None:
            return None, []
        return meta, part.read(columns=["path"]).column("path").to_pylist()
