"""A whole catalogue on a Ray cluster with Ray Data: tracks in, a Parquet dataset out.

The pipeline (each stage a Ray Data operator, streamed, so decoding never runs far ahead
of the model: Ray Data's backpressure holds each operator's output queue within its
share of the object store)::

    list (driver) -> decode (CPU tasks) -> model (pool of actors) -> write parts (tasks)

* **list**: :func:`mttag.engines.sources.list_tracks` on the driver; the track names
  become blocks of a dataset, which Ray spreads over the cluster.
* **decode**: each task reads a track's bytes (a local or shared path as it is, an
  object-store file copied to a temporary file) and decodes only the windows the model
  will see, with the single-machine decoder (:func:`mttag.audio.windows.iter_windows`), so an
  hour-long track costs its windows, not its samples. A track that cannot be decoded
  becomes a row with its error, exactly as on one machine.
* **model**: stateful actors, each holding the model once (``map_batches`` with a
  callable class), batched across tracks; one GPU each when the cluster has GPUs, else
  ``threads`` CPU cores each. The per-track arithmetic is :class:`mttag.inference.tagging.Tagger`'s
  own (its batching and sums, ``_Batches``, and its ``_result``), so both engines give the same
  numbers.
* **write**: rows grouped into parts of ``rows_per_part`` tracks, each written whole
  (:func:`mttag.inference.parquet.write_part`: a temporary name and a rename on a local
  disk) under a name derived from the tracks it holds.

Nothing lost, nothing twice: a killed task or actor is retried by Ray (Ray Data's
defaults: a task up to 3 times for a lost worker or node, an actor restarted and its
calls retried without limit; a decoding error is not a failure but a row); a retry of a write holds the same tracks and so
rewrites the same part name; the driver keeps the names of the parts the run reported
and, at the end, removes any part of this run that no task reported (written by an
attempt that died before saying so, whose tracks a retry wrote again). A run holds a lock
on a local or shared output folder, so a second run into it cannot remove the first one's
parts as its own unreported ones.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..constants import DEFAULT_WINDOWS
from . import sources

# Tracks per block of the listing: small enough that a lost block costs little work
# to redo, large enough that a 10-million-track catalogue is not millions of blocks.
MIN_TRACKS_PER_BLOCK = 4
MAX_BLOCKS = 20000
ROWS_PER_PART = 1000
TRACKS_PER_MODEL_CALL = 8
# Environment variables that say where storage is and who may read it
STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_", "CLOUDSDK_")
_TIMING = ("_read_s", "_decode_s", "_model_s")  # per track, carried from stage to stage
STAGES = ("read", "decode", "model", "write")  # summed per part; with "list", the run's stage_seconds
# In a local (or shared) output folder while a run writes it; hidden, so readers skip it
LOCK_NAME = ".mttag.lock"


class RayUnavailable(Exception):
    """ray (or pyarrow) is not installed."""


class EngineError(Exception):
    """The run cannot start; the message says why, in one line."""


def _ray():
    import sys

    if "usearch.compiled" in sys.modules and "ray._raylet" not in sys.modules:
        # usearch's native library loaded first makes Ray's start abort the process (std::regex
        # in the two wheels' libstdc++ symbols): a clear line instead of a crash
        raise EngineError("this process loaded usearch (mttag's ANN index) before Ray, and Ray would abort in it; "
                          "run the Ray engine in a process of its own (as `mttag tag --engine ray` does), or "
                          "import ray first")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable('--engine ray needs Ray: pip install "mttag[ray]"') from None
    return ray


@dataclass
class RunSummary:
    output: str
    listed: int = 0  # tracks found (before --resume skipped any)
    skipped: int = 0  # already in the output (--resume)
    tagged: int = 0
    failed: int = 0
    parts: list[str] = field(default_factory=list)  # written by this run
    removed_orphans: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (track, reason)
    actors: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # list, read, decode, model, write (summed over workers)
    model_name: str | None = None


# -- stage 2: decode ---------------------------------------------------------------------------


def decode_track(track: str, sample_rate: int, crop_seconds: float, windows: int | None,
                 filesystems: dict[str, Any] | None = None) -> dict[str, Any]:
    """One track's model windows, decoded exactly as :class:`mttag.inference.tagging.Tagger` does,
    as a row: ``path``, ``duration``, ``n`` windows, ``audio`` (``n × samples`` float32
    bytes), ``silent``, ``error`` and the read and decode seconds."""
    import numpy as np

    from ..audio.decode import AudioError
    from ..audio.windows import is_silent, iter_windows

    row: dict[str, Any] = {"path": track, "duration": None, "n": 0, "audio": b"", "silent": True, "error": None,
                           "_read_s": 0.0, "_decode_s": 0.0}
    out: list[np.ndarray] = []
    try:
        start = time.perf_counter()
        with sources.LocalCopy(track, filesystems) as local:
            row["_read_s"] = time.perf_counter() - start
            start = time.perf_counter()
            info, gen = iter_windows(local, sample_rate, crop_seconds, windows)
            row["duration"] = info.duration
            for w in gen:
                out.append(np.asarray(w, dtype=np.float32))
                if row["silent"] and not is_silent(w):
                    row["silent"] = False
            row["_decode_s"] = time.perf_counter() - start
    except AudioError as exc:
        row["error"] = exc.reason
    except (MemoryError, OSError, ValueError, RuntimeError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    if row["error"] is None and out:
        row["n"] = len(out)
        row["audio"] = np.stack(out).tobytes()
    return row


def _decode_batch(batch, *, sample_rate, crop_seconds, windows, filesystems) -> Iterator[Any]:
    """Ray task body: one output table per track, so a block of long tracks never sits in
    memory at once (Ray packs the small tables into blocks)."""
    import pyarrow as pa

    for track in batch.column("path").to_pylist():
        yield pa.Table.from_pylist([decode_track(track, sample_rate, crop_seconds, windows, filesystems)],
                                   schema=_DECODED_SCHEMA())


def _DECODED_SCHEMA():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("duration", pa.float64()), ("n", pa.int32()),
                      ("audio", pa.large_binary()), ("silent", pa.bool_()), ("error", pa.string()),
                      ("_read_s", pa.float64()), ("_decode_s", pa.float64())])


# -- stage 3: the model ------------------------------------------------------------------------


class ModelActor:
    """Holds one copy of the model; tags the decoded tracks of a batch together (their
    windows share forward passes) and returns one result row per track. ``embeddings``: what
    makes them (:func:`_embedding_description`), None for tags only."""

    def __init__(self, model_ref, *, device: str, precision: str, batch_size: int | None, windows: int | None,
                 model_name: str, top: int | None, threshold: float | None, embeddings: dict[str, Any] | None,
                 threads: int,
                 fault_marker: str | None = None):
        import ray
        import torch

        from ..inference.tagging import Tagger

        torch.set_num_threads(max(1, threads))
        net = ray.get(model_ref[0])
        if device == "auto":
            device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.tagger = Tagger(net, device, batch_size=batch_size, windows=windows, model_name=model_name,
                             embeddings=embeddings is not None, model_threads=1, precision=precision)
        self.top, self.threshold, self.embeddings = top, threshold, embeddings
        self.fault_marker = fault_marker

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        from ..inference.embedder import pool
        from ..inference.parquet import row_from_result, schema
        from ..inference.tagging import _Batches, _Track

        if self.fault_marker and not os.path.exists(self.fault_marker):
            # tests: this process dies mid-run, once, as a preempted node would
            open(self.fault_marker, "w").close()
            os._exit(1)
        tagger = self.tagger
        config = tagger.config
        rows = batch.to_pylist()
        tracks: list[_Track] = []
        batches = _Batches(tagger)  # the single-machine engine's batching and sums: the same numbers
        for i, r in enumerate(rows):
            t = _Track(i, r["path"], duration=r["duration"], error=r["error"], complete=True,
                       peak_silent=bool(r["silent"]), decode_seconds=r["_decode_s"] or 0.0)
            if t.error is None and r["n"]:
                for w in np.frombuffer(r["audio"], dtype=np.float32).reshape(r["n"], config.crop_samples):
                    batches.add(t, w)
            tracks.append(t)
        batches.flush()
        out = []
        for t, r in zip(tracks, rows):
            result = tagger._result(t, config.tags, (self.top, self.threshold, None))
            vector = None
            if self.embeddings is not None and result.ok:
                try:
                    vector = pool(result.window_embeddings)
                except ValueError as exc:
                    result.error = str(exc)
            row = row_from_result(result, vector)
            row["path"] = t.path  # the track's own name (a URI stays a URI)
            row.update(_read_s=r["_read_s"] or 0.0, _decode_s=r["_decode_s"] or 0.0, _model_s=t.model_seconds)
            out.append(row)
        base = schema(config.tags, tagger.model_name, self.embeddings)
        timing = [pa.field(c, pa.float64()) for c in _TIMING]
        return pa.Table.from_pylist(out, schema=pa.schema(list(base) + timing))


# -- stage 4: write ----------------------------------------------------------------------------


def _write_batch(batch, *, fs, folder: str, tags: list[str], model: str, embedding: dict[str, Any] | None = None,
                 fault_marker: str | None = None):
    """Ray task body: the batch's rows as one part; returns what the driver counts."""
    import pyarrow as pa

    from ..inference.parquet import COLUMNS, write_part

    start = time.perf_counter()
    rows = batch.select(COLUMNS).to_pylist()
    name = write_part(fs, folder, rows, tags, model, embedding)
    if fault_marker and not os.path.exists(fault_marker):
        # tests: the part is on disk but the task dies before reporting it; Ray's retry
        # writes the same tracks under the same name
        open(fault_marker, "w").close()
        os._exit(1)
    seconds = {stage: float(sum(v or 0.0 for v in batch.column(f"_{stage}_s").to_pylist()))
               for stage in ("read", "decode", "model")}
    seconds["write"] = time.perf_counter() - start
    return pa.Table.from_pylist([_report(name, rows, seconds)])


def _report(part: str, rows: list[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    """What the driver learns of a part written: its name, its tracks' counts and errors, and
    the seconds each stage spent on them."""
    errors = [(r["path"], r["error"]) for r in rows if r["error"] is not None]
    return {"part": part, "rows": len(rows), "failed": len(errors),
            "error_paths": [p for p, _ in errors], "error_reasons": [e for _, e in errors],
            **{f"{stage}_s": seconds.get(stage, 0.0) for stage in STAGES}}


# -- the driver --------------------------------------------------------------------------------


def connect(address: str | None = None, quiet: bool = True, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``;
    ``None``: ``$RAY_ADDRESS``, else a Ray started on this machine), unless already joined."""
    ray = _ray()
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING if quiet else logging.INFO,
                              "log_to_driver": not quiet}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(f"--address {address or os.environ.get('RAY_ADDRESS') or 'local'}: "
                          f"cannot join the Ray cluster ({str(exc).splitlines()[0][:200]})") from None


class _Plan(NamedTuple):
    actors: int
    gpus: float  # per actor
    cpus: float  # per actor
    threads: int  # torch threads per actor
    decode_cpus: float  # per decode task


def _cluster_plan(ray, device: str, actors: int | None, threads: int | None) -> _Plan:
    """One actor per GPU when the cluster has GPUs (and the device allows them); on CPUs,
    actors of ``threads`` cores each, leaving at least one core (by default about half of
    them) for decoding."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus and device in ("auto", "cuda") or device.startswith("cuda"):
        if not gpus:
            raise EngineError(f"--device {device}: the Ray cluster has no GPU")
        return _Plan(actors or gpus, 1.0, 1.0, threads or 1, 1.0)
    if cpus == 1:  # one core: the actor and decoding share it, or neither could start
        return _Plan(1, 0.0, 0.5, 1, 0.5)
    # with every core an actor's, no decode task could be scheduled and the run would stall
    threads = min(threads or 1, cpus - 1)
    default = max(1, (cpus // 2) // threads)
    n = actors or default
    if n * threads >= cpus:
        n = max(1, (cpus - 1) // threads)
    return _Plan(n, 0.0, float(min(threads, cpus)), threads, 1.0)


@dataclass
class _Output:
    """The dataset a run writes: its filesystem and folder, the parts there before the run
    and the tracks they hold."""

    fs: Any
    folder: str
    before: set[str]
    done: set[str]


@contextlib.contextmanager
def _output(text: str, resume: bool, tags: list[str], command: str,
            embedding: dict[str, Any] | None = None) -> Iterator[_Output]:
    """The output folder, created, locked for the run where it is on a local or shared
    disk, and checked (:func:`_existing`)."""
    from ..inference.parquet import is_local
    from ..util.display import printable
    from ..util.fileio import ExclusiveLock, LockedError

    shown = printable(text)
    with contextlib.ExitStack() as held:
        try:
            fs, folder = sources.filesystem(text)
            fs.create_dir(folder, recursive=True)
            if is_local(fs):
                # the run removes the parts no task of its own reported: a second run into the
                # folder would remove the first one's. An object store has no lock (docs/scale.md).
                held.enter_context(ExclusiveLock(os.path.join(folder, LOCK_NAME),
                                                 f"another mttag {command} writing {shown}", remove=True))
            before, done = _existing(fs, folder, resume, tags, shown, embedding)
        except LockedError as exc:
            raise EngineError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise EngineError(f"--output {shown}: cannot use it ({str(exc).splitlines()[0][:200]})") from None
        yield _Output(fs, folder, before, done)


def _existing(fs, folder: str, resume: bool, tags: list[str], output: str,
              embedding: dict[str, Any] | None = None) -> tuple[set[str], set[str]]:
    """``(parts there, tracks they hold)``, from one listing of ``folder`` and one read of
    each part; refuses a folder that is not a results dataset, one holding results without
    ``resume``, and one made with another vocabulary (or embeddings of another model)."""
    from ..inference.parquet import list_folder, read_part_paths

    parts, others = list_folder(fs, folder)
    if others:
        raise EngineError(f"--output {output}: holds {others[0]}, which is not an mttag results part; "
                          f"refusing to write into it (choose an empty or new folder)")
    if parts and not resume:
        raise EngineError(f"--output {output}: holds {len(parts)} parts of earlier results; add --resume "
                          f"to go on from them, or choose another folder")
    done: set[str] = set()
    for name in parts:
        meta, paths = read_part_paths(fs, f"{folder}/{name}")
        if meta is None:
            raise EngineError(f"--output {output}: {name} is not an mttag results part")
        if meta.get("tags") != list(tags):
            raise EngineError(f"--output {output}: its results are another model's tags "
                              f"({meta.get('model')}); resume with the same model")
        theirs = meta.get("embedding")
        if embedding is not None and isinstance(theirs, dict) and theirs != embedding:
            raise EngineError(f"--output {output}: its embeddings were made by another model or with other "
                              f"windows ({meta.get('model')}); resume with the same model and --windows")
        done.update(paths)
    return set(parts), done


def _open_model(model, model_name: str | None, windows, embeddings: bool, quiet: bool):
    """``(model, its name in the results, windows per track)``."""
    from torch import nn

    from ..inference.tagging import default_windows, model_label
    from ..weights.pretrained import load_model

    given = isinstance(model, nn.Module)
    net = model if given else load_model(model, device="cpu", progress=False if quiet else None)
    if windows == "auto":  # the model's own default, as the single-machine engine takes it
        windows = default_windows(net)
    name = model_name or (os.fspath(model) if model is not None and not given else model_label(net))
    if embeddings and not hasattr(net, "forward_with_embedding"):
        raise EngineError(f"{type(net).__name__} models give no embeddings (no forward_with_embedding)")
    return net, name, windows


def _embedding_description(net, model, model_name: str | None, windows: int | None) -> dict[str, Any]:
    """What made the dataset's embeddings, as an index records it (parts carry it, so that
    ``mttag embed --from`` can make an index of them that ``mttag similar`` can query with
    audio): the model's identity under a name it can be loaded by again, the pooling, the
    windows per track."""
    from ..inference.embedder import model_identity
    from ..inference.index import POOLING
    from ..runs.embed import model_reference

    name = model_name or model_reference(model, net)  # a local model folder as an absolute path
    return {"model": model_identity(net, name), "pooling": POOLING, "windows": windows}


def _to_do(inputs, done: set[str], summary: RunSummary) -> tuple[list[str], list[tuple[str, str]]]:
    """The tracks to tag and the sources that could not be listed, less those ``done``."""
    start = time.perf_counter()
    listing = sources.list_tracks(inputs)
    summary.stage_seconds["list"] = time.perf_counter() - start
    summary.listed = len(listing.tracks) + len(listing.problems)
    todo = [t for t in listing.tracks if t not in done]
    problems = [(p, reason) for p, reason in listing.problems if p not in done]
    summary.skipped = summary.listed - len(todo) - len(problems)
    return todo, problems


def _start(ray, address: str | None, quiet: bool, device: str, actors: int | None, threads: int | None) -> _Plan:
    connect(address, quiet=quiet)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = not quiet
    # Ray Data's per-operator INFO lines every few seconds would bury mttag's own output
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return _cluster_plan(ray, device, actors, threads)


def _problems_part(out: _Output, problems: list[tuple[str, str]], tags: list[str], name: str,
                   embedding: dict[str, Any] | None) -> dict[str, Any]:
    """Sources that could not be listed as a part of rows with their errors, like tracks that
    fail; its report."""
    from ..inference.parquet import write_part

    rows = [{"path": p, "model": name, "duration": None, "windows": 0, "tags": [], "scores": None,
             "embedding": None, "error": reason} for p, reason in problems]
    return _report(write_part(out.fs, out.folder, rows, tags, name, embedding), rows, {})


def _track_filesystems(todo: list[str]) -> dict[str, Any]:
    """A filesystem per bucket the tracks are in, resolved here with the driver's environment
    (credentials, endpoint) and shipped to the workers, whose environment may lack them."""
    found: dict[str, Any] = {}
    for t in todo:
        if sources.is_uri(t) and sources.bucket_root(t) not in found:
            found[sources.bucket_root(t)] = sources.filesystem(sources.bucket_root(t) + "/")[0]
    return found


def _storage_options() -> dict[str, Any]:
    """Ray options for the tasks that touch storage: they see the driver's credentials and
    endpoints, which the worker processes of a cluster started earlier (or elsewhere) lack."""
    env = {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _tally(summary: RunSummary, reports: Iterable[dict[str, Any]], on_part) -> None:
    for r in reports:
        summary.parts.append(r["part"])
        summary.tagged += r["rows"] - r["failed"]
        summary.failed += r["failed"]
        summary.errors.extend(zip(r["error_paths"], r["error_reasons"]))
        for stage in STAGES:
            summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + r[f"{stage}_s"]
        if on_part is not None:
            on_part(summary)


def _remove_orphans(out: _Output, summary: RunSummary) -> None:
    """A part on disk that no task reported was written by an attempt that died before
    reporting it; a retry wrote its tracks again (under the same name, unless Ray grouped the
    retry's rows differently): an unreported one would be a duplicate."""
    from ..inference.parquet import list_parts

    for part in sorted(set(list_parts(out.fs, out.folder)) - out.before - set(summary.parts)):
        out.fs.delete_file(f"{out.folder}/{part}")
        summary.removed_orphans.append(part)


def run(
    inputs: Iterable[str | os.PathLike],
    output: str | os.PathLike,
    *,
    model: str | os.PathLike | Any | None = None,
    model_name: str | None = None,
    windows: int | None = DEFAULT_WINDOWS,
    batch_size: int | None = None,
    top: int | None = 5,
    threshold: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    embeddings: bool = False,
    resume: bool = False,
    address: str | None = None,
    actors: int | None = None,
    threads: int | None = None,
    rows_per_part: int = ROWS_PER_PART,
    tracks_per_call: int = TRACKS_PER_MODEL_CALL,
    quiet: bool = True,
    on_part: Callable[[RunSummary], None] | None = None,
    _faults: dict[str, str] | None = None,
) -> RunSummary:
    """Tag (``embeddings=True``: also embed) every track under ``inputs`` on a Ray cluster
    into the Parquet dataset ``output`` (a folder or an object-store URI); see the module's
    docstring for the pipeline and docs/scale.md for the schema. ``model``: a loaded model,
    or anything :func:`mttag.load_model` takes. ``on_part`` is called after each part."""
    ray = _ray()
    began = time.perf_counter()
    summary = RunSummary(output=os.fspath(output), precision=precision)
    net, name, windows = _open_model(model, model_name, windows, embeddings, quiet)
    summary.model_name = name
    tags = list(net.config.tags)
    faults = _faults or {}
    embedding = _embedding_description(net, model, model_name, windows) if embeddings else None
    with _output(summary.output, resume, tags, "embed" if embeddings else "tag", embedding) as out:
        todo, problems = _to_do(inputs, out.done, summary)
        if todo:  # a resumed run with nothing left to do starts no cluster
            plan = _start(ray, address, quiet, device, actors, threads)
            summary.actors, summary.device = plan.actors, "cuda" if plan.gpus else "cpu"
        if problems:
            _tally(summary, [_problems_part(out, problems, tags, name, embedding)], on_part)
        if todo:
            storage = _storage_options()
            blocks = max(1, min(MAX_BLOCKS, math.ceil(len(todo) / MIN_TRACKS_PER_BLOCK)))
            ds = ray.data.from_items([{"path": t} for t in todo], override_num_blocks=blocks)
            ds = ds.map_batches(
                _decode_batch, batch_format="pyarrow", batch_size=None, num_cpus=plan.decode_cpus, **storage,
                fn_kwargs={"sample_rate": net.config.sample_rate, "crop_seconds": net.config.crop_seconds,
                           "windows": windows, "filesystems": _track_filesystems(todo)})
            # the actors place their copy themselves; a caller's model on a GPU stays where it is
            on_cpu = all(t.device.type == "cpu" for t in net.parameters())
            ds = ds.map_batches(
                ModelActor, batch_format="pyarrow", batch_size=tracks_per_call,
                compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus, num_gpus=plan.gpus,
                fn_constructor_kwargs={"model_ref": [ray.put(net if on_cpu else copy.deepcopy(net).cpu())],
                                       "device": device if not plan.gpus else "auto", "precision": precision,
                                       "batch_size": batch_size, "windows": windows, "model_name": name,
                                       "top": top, "threshold": threshold, "embeddings": embedding,
                                       "threads": plan.threads, "fault_marker": faults.get("model")})
            # Writing is I/O and takes no core of its own: with any, it would wait for a free one
            # while decode tasks hold every core the actors leave, and parts (so --resume's
            # progress) would come only once decoding is done.
            ds = ds.map_batches(
                _write_batch, batch_format="pyarrow", batch_size=rows_per_part, num_cpus=0, **storage,
                fn_kwargs={"fs": out.fs, "folder": out.folder, "tags": tags, "model": name, "embedding": embedding,
                           "fault_marker": faults.get("write")})
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                _tally(summary, table.to_pylist(), on_part)
            _remove_orphans(out, summary)
    summary.seconds = time.perf_counter() - began
    return summary
