"""Similar tracks: the tracks of an index most like a query (a track in the index or an audio
file, embedded with the index's model), and their playlist. ``mttag similar``'s run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.display import printable
from .common import EXIT_SOME_FAILED, RunError, RunEvents, open_model, parse_windows, resolve_device


@dataclass
class SimilarRequest:
    """The options of ``mttag similar``, by the same names (``tags``: ``--tag``, repeatable)."""

    query: Path | str  # a file, or a track of the index by its path or URI
    index: Path
    top: int = 20
    tags: list[str] | None = None
    min_score: float = 0.3
    min_duration: float | None = None
    max_duration: float | None = None
    include_query: bool = False
    model: str | None = None
    device: str = "auto"
    windows: int | str | None = None
    ann: str = "auto"  # the index's ANN file: auto (from 200,000 tracks), on, off (exact search)


@dataclass
class Similar:
    """What a query found: ``hits`` best first (mttag.inference.index.Hit), and about the query."""

    hits: list[Any]
    index: Any  # the mttag.inference.index.EmbeddingIndex searched
    query_duration: float
    filtered: bool  # tag or duration filters applied
    query_in_index: bool = False
    filters: list[tuple[int, float]] = field(default_factory=list)


def find_similar(request: SimilarRequest, events: RunEvents | None = None) -> Similar:
    """The index's tracks most like ``request.query``; RunError for a refusal, or (exit code 1)
    for a query file that cannot be embedded."""
    from ..inference.index import EmbeddingIndex, EmbeddingIndexError
    from ..inference.output import display_tag

    req = request
    try:
        idx = EmbeddingIndex(req.index, ann=req.ann)
    except EmbeddingIndexError as exc:
        raise RunError(f"--index {exc}") from None
    if idx.ann_note:  # an ANN file that is stale, damaged or cannot be used: searched exactly
        (events or RunEvents()).warning(None, idx.ann_note)
    if req.min_duration is not None and req.max_duration is not None and req.min_duration > req.max_duration:
        raise RunError(f"--min-duration {req.min_duration:g} is longer than --max-duration {req.max_duration:g}")
    filters = []
    for name in req.tags or []:
        try:
            filters.append((idx.tag_index(name), req.min_score))
        except KeyError:
            known = ", ".join(display_tag(t) for t in idx.tags[:12])
            raise RunError(f"--tag {name!r}: not a tag of the index's model ({known}{', ...' if len(idx.tags) > 12 else ''})") from None

    try:  # a tracks.jsonl line read through the track table can turn out damaged
        row = idx.row_of(req.query)
    except EmbeddingIndexError as exc:
        raise RunError(f"--index {exc}", EXIT_SOME_FAILED) from None
    exclude: list[int] = []
    if row is not None:
        try:
            vector, duration = idx.vector(row), float(idx.durations[row])
        except EmbeddingIndexError as exc:
            raise RunError(f"--index {exc}", EXIT_SOME_FAILED) from None
        if not req.include_query:
            exclude.append(row)
    elif os.path.lexists(req.query):
        vector, duration = embed_query(req.query, idx, req.model, req.device, req.windows)
    else:
        raise RunError(f"{printable(req.query)}: no such file, and not a track of {printable(req.index)}")
    try:
        hits = idx.search(vector, req.top, exclude=exclude, tags=filters, min_duration=req.min_duration,
                          max_duration=req.max_duration)
    except ValueError as exc:  # a query of another size than the index's (its dim does not match the model)
        raise RunError(f"{printable(req.query)}: {exc}", EXIT_SOME_FAILED) from None
    except EmbeddingIndexError as exc:  # a hit's tracks.jsonl line, read when it is shown
        raise RunError(f"--index {exc}", EXIT_SOME_FAILED) from None
    return Similar(hits, idx, duration, bool(filters or req.min_duration or req.max_duration), row is not None, filters)


def embed_query(query: Path, index, model: str | None, device: str, windows: int | str | None):
    """The query file's vector and duration, made with the index's model (refusing any other)."""
    from ..errors import ModelLoadError
    from ..inference.embedder import Embedder, short_revision

    dev = resolve_device(device)
    name = model or index.model.get("name")
    try:
        net = open_model(name, dev)
    except ModelLoadError as exc:
        hint = "" if model else "; pass --model with the model the index was made with"
        raise RunError(f"the index's model {printable(name)} cannot be loaded ({exc}){hint}") from None
    n_windows = parse_windows(windows) if windows is not None else index.manifest.get("windows")
    embedder = Embedder(net, dev, windows=n_windows, model_name=name)
    if embedder.identity["revision"] != index.model["revision"]:
        raise RunError(
            f"--model {printable(name)} (revision {short_revision(embedder.identity['revision'])}) is not the model "
            f"{printable(index.path)} was made with ({printable(index.model.get('name'))}, revision "
            f"{short_revision(index.model['revision'])}); embeddings of different models cannot be compared")
    result = next(embedder.embed_files([query]))
    if not result.ok:
        raise RunError(f"{printable(query)}: {result.error}", EXIT_SOME_FAILED)
    return result.vector, result.duration


def write_similar_playlist(found: Similar, query: Path, playlist: Path, force: bool = False,
                           events: RunEvents | None = None) -> int:
    """An .m3u8 playlist: the query (when it is a file), then the tracks found, in order; the
    number of entries. What the playlist cannot hold as it should comes as warnings."""
    from ..inference.index import EmbeddingIndexError, write_playlist

    events = events or RunEvents()
    entries = [(os.path.abspath(query), found.query_duration)] if os.path.lexists(query) else []
    entries += [(h.file, h.duration) for h in found.hits]
    try:
        for message in write_playlist(playlist, entries, force=force):
            events.warning(None, message)
    except EmbeddingIndexError as exc:
        raise RunError(str(exc)) from None
    return len(entries)
