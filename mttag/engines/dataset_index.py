"""A Parquet dataset of ``mttag embed --engine ray`` made into a similarity index:
``mttag embed --from DATASET -o INDEX``, then ``mttag similar`` (and its ANN file) on it.

A catalogue is embedded on a cluster, into a dataset on object storage; searching it needs the
index's memory-mapped vectors on the machine that answers queries. This reads the dataset's
parts in row batches (memory bounded by a batch, not by the catalogue), checks what each part
says made its embeddings (the same model revision, vocabulary and windows throughout, or
nothing is written), and appends the usable rows with the index's own writer: committed row
by row as ``mttag embed`` commits them, so an interrupted import keeps what it added and
``--resume`` goes on after it. Rows with an error (tracks the cluster could not embed) and
rows whose vectors are missing or not finite are counted, never indexed; a track the index
holds already (``--resume``, or twice in a dataset two overlapping runs wrote) is skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runs.common import RunError
from ..util.display import printable
from . import sources

BATCH_ROWS = 32768
COLUMNS = ["path", "duration", "windows", "scores", "embedding", "error"]


class DatasetError(RunError):
    """The dataset cannot be made into the index; the message says why, in one line.
    ``exit_code``: 2 for a refusal (nothing written), 1 for a failure part of the way (what
    was added is kept). Refusals of the index itself come as the run layer's RunError."""


@dataclass
class Dataset:
    """The parts of a dataset and what made their embeddings (checked alike in every part)."""

    source: str
    fs: Any
    files: list[str]
    embedding: dict[str, Any]  # {"model": identity, "pooling", "windows"}
    tags: list[str]
    rows: int

    @property
    def model(self) -> dict[str, Any]:
        return self.embedding["model"]


@dataclass
class ImportSummary:
    rows: int = 0  # rows read
    added: int = 0
    already: int = 0  # in the index before, or earlier in the dataset
    failed: list[tuple[str, str]] = field(default_factory=list)  # (track, why it has no vector)
    stored: int = 0  # tracks in the index afterwards
    interrupted: bool = False
    seconds: float = 0.0


def _describe(source: str, name: str, meta: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """What a part says made its embeddings, checked as an index's manifest is checked: the
    dataset comes from elsewhere, and this becomes the index's manifest."""
    from ..inference.index import description_problem

    embedding = (meta or {}).get("embedding")
    model = embedding.get("model") if isinstance(embedding, dict) else None
    if meta is None:
        raise DatasetError(f"{source}: {name} is not an mttag results part")
    if not isinstance(model, dict):
        raise DatasetError(f"{source}: {name} holds no embeddings (tags only: it was made by mttag tag, or by an "
                           f"mttag that did not describe its embeddings); make them with mttag embed --engine ray")
    tags = meta.get("tags")
    why = description_problem(model, model.get("dim"), tags, embedding.get("windows"))
    if why is None and not isinstance(model.get("name"), str):
        why = "the model has no name"
    if why is not None:
        raise DatasetError(f"{source}: {name} describes its embeddings wrongly ({why}); it cannot become an index")
    return embedding, tags


def open_dataset(source: str) -> Dataset:
    """The dataset at ``source`` (a folder of parts, one part, or a URI of either), every part's
    footer read and checked; raises :class:`DatasetError`."""
    from pyarrow.fs import FileType

    from ..inference.parquet import describe, list_parts

    shown = printable(source)
    try:
        fs, path = sources.filesystem(source)
        info = fs.get_file_info(path)
        if info.type == FileType.Directory:
            files = [f"{path.rstrip('/')}/{name}" for name in list_parts(fs, path)]
            if not files:
                raise DatasetError(f"{shown}: holds no part-*.parquet files (not a dataset of mttag embed --engine ray)")
        elif info.type == FileType.File:
            files = [path]
        else:
            raise DatasetError(f"{shown}: no such file or folder")
        first: tuple[dict[str, Any], list[str]] | None = None
        rows = 0
        for f in files:
            name = f.rsplit("/", 1)[-1]
            schema, count = _footer(fs, f)
            described = _describe(shown, name, describe(schema))
            if first is None:
                first = described
            elif described != first:
                raise DatasetError(f"{shown}: {name} was made by another model, vocabulary or --windows than "
                                   f"{files[0].rsplit('/', 1)[-1]}; a dataset mixing them cannot be one index")
            rows += count
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{shown}: cannot read it ({str(exc).splitlines()[0][:200]})") from None
    assert first is not None
    return Dataset(source, fs, files, first[0], first[1], rows)


def _footer(fs, path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(path) as f:
            part = pq.ParquetFile(f)
            return part.schema_arrow, part.metadata.num_rows
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path.rsplit('/', 1)[-1]} is not a readable Parquet file ({exc})") from None


def import_dataset(dataset: Dataset, output: str | os.PathLike, *, resume: bool = False, force: bool = False,
                   progress: Callable[[ImportSummary, int], None] | None = None) -> ImportSummary:
    """Append the dataset's usable rows to the index ``output`` (created; with ``resume`` added
    to, with ``force`` started over). Ctrl+C and SIGTERM stop it cleanly (``interrupted``:
    what was added is kept). ``progress(summary, total rows)`` after each batch. Raises
    :class:`DatasetError`, or the run layer's RunError for an index it cannot write (nothing
    written then); the tracks added before a failure are kept."""
    from ..runs.common import interruptible
    from ..runs.embed import open_writer

    writer = open_writer(Path(output), dataset.model, dataset.tags, dataset.embedding.get("windows"), resume, force)
    summary = ImportSummary()
    start = time.perf_counter()
    failure: str | None = None
    kept = "the tracks added before are kept, --resume goes on from them"
    try:
        with interruptible():
            for f in dataset.files:
                for batch in _batches(dataset, f):
                    _add(writer, dataset, batch, summary)
                    if progress is not None:
                        progress(summary, dataset.rows)
    except KeyboardInterrupt:
        summary.interrupted = True
    except DatasetError as exc:
        failure = f"{exc}; {kept}"
    except OSError as exc:  # the index's files: disk full, I/O error
        failure = f"writing {printable(output)} failed ({exc.strerror or exc}); {kept}"
    finally:
        try:
            writer.close()
        except OSError as exc:
            failure = failure or f"writing {printable(output)} failed ({exc.strerror or exc}); {kept}"
    summary.stored = writer.count
    summary.seconds = time.perf_counter() - start
    if failure is not None:
        raise DatasetError(failure, exit_code=1)
    return summary


def _batches(dataset: Dataset, path: str):
    """The part's rows in batches; a part that cannot be read (damaged, cut off, the store
    unreachable) as a DatasetError naming it."""
    import pyarrow.parquet as pq

    try:
        with dataset.fs.open_input_file(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=COLUMNS)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{printable(dataset.source)}: {printable(path.rsplit('/', 1)[-1])} cannot be read "
                           f"({str(exc).splitlines()[0][:200]})") from None


def _add(writer, dataset: Dataset, batch, summary: ImportSummary) -> None:
    """One batch of rows into the index: the usable ones whose track it does not hold yet."""
    import pyarrow.compute as pc

    from ..inference.output import path_key

    dim, n_tags = int(dataset.model["dim"]), len(dataset.tags)
    n = batch.num_rows
    summary.rows += n
    paths = batch.column("path").to_pylist()
    errors = batch.column("error").to_pylist()
    emb, scores = batch.column("embedding"), batch.column("scores")
    whole = np.asarray(pc.fill_null(pc.and_(pc.equal(pc.list_value_length(emb), dim),
                                           pc.equal(pc.list_value_length(scores), n_tags)), False))
    # the lists of the whole-shaped rows, flattened in one go (a null value inside one: NaN)
    rows = np.flatnonzero(whole & np.array([e is None for e in errors], dtype=bool))
    vectors = _values(pc.list_flatten(emb.take(rows)), dim)
    probs = _values(pc.list_flatten(scores.take(rows)), n_tags)
    finite = np.isfinite(vectors).all(1) & np.isfinite(probs).all(1) & (np.abs(vectors).sum(1) > 0)
    usable = dict(zip(rows.tolist(), range(len(rows))))
    good = [j for j in range(len(rows)) if finite[j]]
    names = {j: path_key(paths[rows[j]]) for j in good}
    new = dict(zip(good, writer.done.missing(list(names.values()))))
    take: list[int] = []
    keys: list[str] = []
    seen: set[str] = set()
    for i in range(n):
        j = usable.get(i)
        if j is None or not finite[j]:
            why = errors[i] or ("its embedding or scores are missing, of the wrong length, zero or not finite")
            summary.failed.append((paths[i], why))
            continue
        key = names[j]
        if not new[j] or key in seen:
            summary.already += 1
            continue
        take.append(j)
        keys.append(key)
        seen.add(key)
    if not take:
        return
    chosen = rows[take]
    durations = np.nan_to_num(np.asarray(pc.fill_null(batch.column("duration"), 0.0).take(chosen), dtype=np.float64))
    windows = np.asarray(pc.fill_null(batch.column("windows"), 0).take(chosen), dtype=np.int64)
    writer.add_rows(keys, durations, vectors[take], probs[take], windows.tolist(), keys=True)
    summary.added += len(take)


def _values(flat, width: int) -> np.ndarray:
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)

