"""``mttag demo``: a few synthetic tracks to try the tagger on."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import app, fail, one_line


@app.command()
def demo(
    out_dir: Path = typer.Argument(Path("demo_music"), metavar="DIR", help="Folder to write the tracks into (created)."),
) -> None:
    """Write four short synthetic tracks (flac, mp3, ogg, wav) to try mttag on: mttag tag DIR --top 5."""
    from ..audio.demo import write_demo  # numpy and soundfile: only when the command runs

    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out_dir}: exists and is not a directory")
    try:
        paths = write_demo(out_dir)
    except OSError as exc:
        fail(f"{out_dir}: {exc.strerror or exc}", 1)
    for path in paths:
        typer.echo(one_line(path))
