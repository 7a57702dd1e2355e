"""``mttag embed``: one embedding per track into a searchable index (see docs/similarity.md)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from ..display import printable
from ..errors import DEFAULT_WINDOWS
from ._common import ProgressEvents, app, console, fail, parse_windows, ran_on, run


@app.command()
def embed(
    paths: List[Path] = typer.Argument(..., help="Audio files and/or folders (searched recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="The index folder to write (created; e.g. library.mttag)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory, registered name or Hub id. Default: with --resume the index's model, else as mttag tag."),
    resume: bool = typer.Option(False, "--resume", help="Add to an existing index, skipping the tracks already in it."),
    force: bool = typer.Option(False, "--force", help="Start an existing index over (its tracks are dropped)."),
    device: str = typer.Option("auto", "--device", "-d", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Windows per forward pass. Default: 2 on CPU (several batches at once, one per core), 16 on GPU/MPS."),
    windows: Optional[str] = typer.Option(None, "--windows", "-w", help=f"Windows pooled per track, spread evenly over the track's consecutive windows, or 'all'. Default: with --resume as the index was made, else {DEFAULT_WINDOWS}."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    engine: str = typer.Option("local", "--engine", help="local (an index folder on this machine) or ray (a Ray cluster; --output is a Parquet dataset of embeddings and scores, a folder or s3:// gs:// URI). See docs/scale.md."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the cluster (auto, HOST:PORT or ray://HOST:PORT). Default: $RAY_ADDRESS, else a Ray started on this machine."),
) -> None:
    """Embed tracks into a similarity index for mttag similar.

    Exit codes: 0 every file embedded; 1 some files failed (each gets a warning) or none found; 2 usage error (also: another model than the index's); 130 interrupted (every finished track is kept, --resume goes on).
    """
    from ..runs.embed import EmbedRequest, run_embed

    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, not {engine!r}")
    if engine == "ray":
        from ..engines.cli import run_embed as run_on_ray

        run_on_ray(paths, output=output, model=model, windows=parse_windows(windows) if windows is not None else DEFAULT_WINDOWS,
                   batch_size=batch_size, device=device, resume=resume, address=address, quiet=quiet,
                   refused={"--force": force})
    if address is not None:
        fail("--address names a Ray cluster; it needs --engine ray")
    events = _EmbedEvents(quiet, output)
    request = EmbedRequest(paths, output, model=model, resume=resume, force=force, device=device,
                           batch_size=batch_size, windows=windows, download_progress=False if quiet else None)
    summary = run(run_embed, request, events)
    if not quiet:
        msg = (f"{summary.done} embedded, {summary.failed} failed in {summary.elapsed:.1f} s on "
               f"{ran_on(summary.device, summary.precision)} with {summary.model}; {printable(output)} holds "
               f"{summary.stored} tracks")
        console.print(("[yellow]interrupted:[/] " if summary.interrupted else "") + escape(msg), highlight=False, soft_wrap=True)
    raise typer.Exit(summary.exit_code)


class _EmbedEvents(ProgressEvents):
    def __init__(self, quiet: bool, output: Path):
        super().__init__("embedding", quiet)
        self.output = output

    def resuming(self, already: int, to_go: int, skipped: Optional[int] = None) -> None:
        if not self.quiet:
            console.print(f"resuming: {already} tracks already in {escape(printable(self.output))}, "
                          f"{skipped} of them asked for again are skipped, {to_go} to go",
                          highlight=False, soft_wrap=True)
