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

from ..util.display import json_printable, printable, reaches_terminal
from ._common import EXIT_OK, EXIT_SOME_FAILED, ConsoleEvents, app, console, run, warn
from .embed import Ann  # the index's ANN file, as embed builds it: one set of choices

if TYPE_CHECKING:
    from ..inference.index import Hit

# numpy, the index code and the decoders are imported by the commands that use them, so
# that `mttag --help` (which imports every command module) stays quick.


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _print_table(query_label: str, hits: list[Hit]) -> None:
    from ..inference.output import path_from_text

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
    ann: Ann = typer.Option(Ann.auto, "--ann", help="Search through the index's ANN file (built by mttag embed --ann): auto (when the index holds 200,000 tracks or more; past 3,000,000 only a file built with --ann on), on, or off (exact)."),
) -> None:
    """List the tracks of an index that sound most like QUERY (cosine similarity of embeddings).

    Exit codes: 0 tracks found; 1 none found (filters too strict, empty index) or the query file failed; 2 usage error.
    """
    from ..inference.output import path_key, path_text
    from ..runs.similar import SimilarRequest, find_similar, write_similar_playlist
    from ._ray import as_source

    query = as_source(query)  # a track of an index made from a catalogue on object storage: its s3:// URI
    request = SimilarRequest(query, index, top=top, tags=tag, min_score=min_score, min_duration=min_duration,
                             max_duration=max_duration, include_query=include_query, model=model, device=device,
                             windows=windows, ann=ann.value)
    found = run(find_similar, request, ConsoleEvents())
    hits = found.hits
    label = path_key(query)
    if fmt is Format.table:
        _print_table(os.fspath(query), hits)
    elif fmt is Format.csv:
        # a path can hold escape sequences: shown escaped wherever the csv can reach a terminal,
        # exact (the index's path text) in a file
        cell = printable if reaches_terminal(sys.stdout) else str
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["rank", "score", "duration", "path"])
        w.writerows([h.rank, f"{h.score:.4f}", h.duration, cell(h.path)] for h in hits)
    else:
        doc = {"query": label, "index": path_text(os.path.abspath(index)), "model": found.index.model.get("name"),
               "results": [h.to_dict() for h in hits]}
        sys.stdout.write(json_printable(json.dumps(doc, ensure_ascii=False, indent=1)) + "\n")
    sys.stdout.flush()

    if playlist is not None:
        n = run(write_similar_playlist, found, query, playlist, force, ConsoleEvents())
        console.print(f"playlist: {printable(playlist)} ({n} tracks)", highlight=False, soft_wrap=True, markup=False)
    if not hits:
        warn(f"no track of {index} matches" + (" the filters" if found.filtered else ""))
        raise typer.Exit(EXIT_SOME_FAILED)
    raise typer.Exit(EXIT_OK)
