"""``mttag convert``: the authors' released checkpoints → mttag model directories."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import app, console, fail


@app.command()
def convert(
    checkpoint: Path = typer.Argument(..., help="teacher.ckpt or compact_student.ckpt from the authors' release."),
    out_dir: Path = typer.Argument(..., help="Model directory to write."),
    tags: str = typer.Option(..., "--tags", help="Tag vocabulary of the checkpoint: cals, msd, or a file with one tag per line."),
    heads: int = typer.Option(8, "--heads", min=1, help="Attention heads (not recoverable from tensor shapes)."),
    force: bool = typer.Option(False, "--force", help="Replace a config.json, README.md or model.safetensors in OUT_DIR that mttag did not write."),
) -> None:
    """Convert an authors' Music Tagging Transformer checkpoint into a model directory.

    OUT_DIR may be new, or a model directory mttag wrote (it is replaced); other files of
    those names are kept unless --force.

    The authors' two published checkpoints need no manual conversion: [bold]--model won2021-teacher[/] and [bold]--model won2021-student[/] download, verify and convert them once (see `mttag models`).
    """
    from ..inference.vocab import resolve_tags
    from ..weights.convert import ConversionError, convert_checkpoint  # torch: only when converting

    try:
        tag_list = resolve_tags(tags)
        out = convert_checkpoint(checkpoint, out_dir, tag_list, heads=heads, force=force)
    except (ConversionError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {out} ({len(tag_list)} tags); use it with: mttag tag ./music --model {out}")
