"""``mttag similar``: the tracks of an index most like a query track (see docs/similarity.md)."""

from __future__ import annotations

import csv
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from ..display import printable
from ..errors import ModelLoadError
from ._common import EXIT_OK, EXIT_SOME_FAILED, app, console, fail, parse_windows, warn


if TYPE_CHECKING:
    from ..embedding import EmbeddingIndex, Hit

# numpy, the index code and the decoders are imported by the commands that use them, so
# that `mttag --help` (which imports every command module) stays quick.


class Ann(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _embed_query(query: Path, index: EmbeddingIndex, model: Optional[str], device: str, windows: Optional[str]):
    """The query file's vector, made with the index's model (refusing any other)."""
    from ..device import select_device
    from ..embedding import Embedder, short_revision
    from ..pretrained import load_model

    try:
        dev = select_device(device)
    except ValueError as exc:
        fail(str(exc))
    name = model or index.model.get("name")
    try:
        net = load_model(name, device=str(dev), progress=None)
    except ModelLoadError as exc:
        hint = "" if model else "; pass --model with the model the index was made with"
        fail(f"the index's model {printable(name)} cannot be loaded ({exc}){hint}")
    n_windows = parse_windows(windows) if windows is not None else index.manifest.get("windows")
    embedder = Embedder(net, dev, windows=n_windows, model_name=name)
    if embedder.identity["revision"] != index.model["revision"]:
        fail(f"--model {printable(name)} (revision {short_revision(embedder.identity['revision'])}) is not the model "
             f"{printable(index.path)} was made with ({printable(index.model.get('name'))}, revision "
             f"{short_revision(index.model['revision'])}); embeddings of different models cannot be compared")
    result = next(embedder.embed_files([query]))
    if not result.ok:
        fail(f"{printable(query)}: {result.error}", EXIT_SOME_FAILED)
    return result.vector, result.duration


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _print_table(query_label: str, hits: list[Hit]) -> None:
    from ..output import path_from_text

    out = sys.stdout
    out.write(f"# tracks like {printable(query_label)}\n")
    out.write(f"{'#':>4}  {'score':>6}  {'time':>6}  path\n")
    for h in hits:
        out.write(f"{h.rank:>4}  {h.score:>6.3f}  {_minutes(h.duration):>6}  {printable(path_from_text(h.path))}\n")


@app.command()
def similar(
    query: Path = typer.Argument(..., help="A track already in the index, or an audio file (embedded now)."),
    index: Path = typer.Option(..., "--index", "-i", help="The index folder made by mttag embed."),
    top: int = typer.Option(20, "--top", "-k", min=1, help="How many similar tracks."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, csv or json (on stdout)."),
    playlist: Optional[Path] = typer.Option(None, "--playlist", "-p", help="Also write an .m3u8 playlist: the query, then the tracks found, in similarity order."),
    tag: Optional[List[str]] = typer.Option(None, "--tag", "-t", help="Only tracks with this tag (repeatable: all of them)."),
    min_score: float = typer.Option(0.3, "--min-score", min=0.0, max=1.0, help="The probability a --tag needs."),
    min_duration: Optional[float] = typer.Option(None, "--min-duration", min=0.0, help="Only tracks at least this long (s)."),
    max_duration: Optional[float] = typer.Option(None, "--max-duration", min=0.0, help="Only tracks at most this long (s)."),
    include_query: bool = typer.Option(False, "--include-query", help="List the query track itself if it is in the index."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="For an audio QUERY: the index's model, if it cannot be loaded by the name the index records."),
    device: str = typer.Option("auto", "--device", "-d", help="For an audio QUERY: auto, cpu, cuda, cuda:N or mps."),
    windows: Optional[str] = typer.Option(None, "--windows", "-w", help="For an audio QUERY: windows pooled (default: as the index was made)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --playlist file that is not a playlist."),
    ann: Ann = typer.Option(Ann.auto, "--ann", help="Search through the index's ANN file (built by mttag embed --ann): auto (when the index holds 200,000 tracks or more), on, or off (exact)."),
) -> None:
    """List the tracks of an index that sound most like QUERY (cosine similarity of embeddings).

    Exit codes: 0 tracks found; 1 none found (filters too strict, empty index) or the query file failed; 2 usage error.
    """
    import numpy as np

    from ..embedding import EmbeddingIndex, EmbeddingIndexError, write_playlist
    from ..output import display_tag, path_text

    try:
        idx = EmbeddingIndex(index, ann=ann.value)
    except EmbeddingIndexError as exc:
        fail(f"--index {exc}")
    if idx.ann_note:
        warn(idx.ann_note)
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        fail(f"--min-duration {min_duration:g} is longer than --max-duration {max_duration:g}")
    filters = []
    for name in tag or []:
        try:
            filters.append((idx.tag_index(name), min_score))
        except KeyError:
            known = ", ".join(display_tag(t) for t in idx.tags[:12])
            fail(f"--tag {name!r}: not a tag of the index's model ({known}{', ...' if len(idx.tags) > 12 else ''})")

    row = idx.row_of(query)
    exclude: list[int] = []
    if row is not None:
        vector, duration = np.asarray(idx.vectors[row]), float(idx.durations[row])
        if not include_query:
            exclude.append(row)
    elif os.path.lexists(query):
        vector, duration = _embed_query(query, idx, model, device, windows)
    else:
        fail(f"{printable(query)}: no such file, and not a track of {printable(index)}")
    hits = idx.search(vector, top, exclude=exclude, tags=filters, min_duration=min_duration, max_duration=max_duration)

    label = path_text(os.path.abspath(query))
    if fmt is Format.table:
        _print_table(os.fspath(query), hits)
    elif fmt is Format.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["rank", "score", "duration", "path"])
        w.writerows([h.rank, f"{h.score:.4f}", h.duration, h.path] for h in hits)
    else:
        doc = {"query": label, "index": path_text(os.path.abspath(index)), "model": idx.model.get("name"),
               "results": [h.to_dict() for h in hits]}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    sys.stdout.flush()

    if playlist is not None:
        entries = [(os.path.abspath(query), duration)] if os.path.lexists(query) else []
        entries += [(h.file, h.duration) for h in hits]
        try:
            for message in write_playlist(playlist, entries, force=force):
                warn(message)
        except EmbeddingIndexError as exc:
            fail(str(exc))
        console.print(f"playlist: {printable(playlist)} ({len(entries)} tracks)", highlight=False, soft_wrap=True, markup=False)
    if not hits:
        warn(f"no track of {index} matches" + (" the filters" if filters or min_duration or max_duration else ""))
        raise typer.Exit(EXIT_SOME_FAILED)
    raise typer.Exit(EXIT_OK)

