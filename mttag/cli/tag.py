"""``mttag tag``: tag audio files and folders."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..constants import DEFAULT_WINDOWS
from ..util.display import printable
from ._common import ProgressEvents, app, console, fail, parse_windows, ran_on, run


class Format(str, Enum):
    table = "table"
    csv = "csv"
    tsv = "tsv"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class Layout(str, Enum):
    track = "track"
    long = "long"
    wide = "wide"
    timeline = "timeline"


@app.command()
def tag(
    paths: List[Path] = typer.Argument(..., help="Audio files and/or folders (searched recursively)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory, registered name (mttag models) or Hub id owner/name\\[@revision]. Default: $MTTAG_MODEL, else the bundled default model."),
    top: Optional[int] = typer.Option(5, "--top", "-k", min=1, help="Keep the K most probable tags."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", min=0.0, max=1.0, help="Keep only tags with probability >= P."),
    fmt: Optional[Format] = typer.Option(None, "--format", "-f", help="Output format. Default: from the --output file's name (.csv, .tsv, .json, .jsonl, .parquet), else a table."),
    layout: Optional[Layout] = typer.Option(None, "--layout", help="csv/tsv rows: track (one per track, default), long (one per track and tag), wide (one column per tag of the model) or timeline (one per window and tag, as --timeline gives)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to this file instead of stdout (never over an input or audio file)."),
    resume: bool = typer.Option(False, "--resume", help="Skip tracks already tagged in --output (csv, tsv, json, jsonl or parquet; the file says which; with --engine ray: the tracks already in the dataset)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --output file (an earlier results file: else refused, --resume continues it; or one mttag did not write; never audio or an input), or a --plot PNG mttag did not draw."),
    device: str = typer.Option("auto", "--device", "-d", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Windows per forward pass. Default: 2 on CPU (several batches at once, one per core), 16 on GPU/MPS."),
    precision: Precision = typer.Option(Precision.auto, "--precision", help="auto (bf16 on a CPU with native bf16 (AVX-512 BF16, AMX), where it is about 1.8x faster for the Transformers and 1.5-1.7x for musicnn, probabilities moving by up to ~0.01; bf16 on CUDA except for musicnn; float32 elsewhere), fp32 (the original musicnn's numbers on any machine), or bf16."),
    windows: Optional[str] = typer.Option(None, "--windows", "-w", help=f"Windows averaged per track, spread evenly over the track's consecutive model-length windows, or 'all' (every one). Default: {DEFAULT_WINDOWS} (12 for the two-network musicnn, the default model); all with --timeline or --plot."),
    all_tags: bool = typer.Option(False, "--all-tags", help="Keep every tag (same as --top with the vocabulary size)."),
    write: bool = typer.Option(False, "--write", help="Also write the tags into the audio files (genre, mood and an MTTAG field; added to what is there), verified and atomic, with an undo log. Full control: mttag write RESULTS."),
    undo_log: Optional[Path] = typer.Option(None, "--undo-log", help="With --write: where to record the previous values (default: mttag-undo-TIME.jsonl beside --output, else here)."),
    timeline: bool = typer.Option(False, "--timeline", help="Also give each window's tags with its start and end time (csv/tsv: one row per window and tag)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw each track's taggram as a PNG: FILE.png for one track, else a folder (needs: pip install \"mttag\\[plot]\"). An existing PNG is replaced only if mttag drew it (else --force)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, warnings or summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Per track: windows, decoding time and model time (on stderr)."),
    engine: Engine = typer.Option(Engine.local, "--engine", help="local (this machine) or ray (a Ray cluster: PATHS may be folders, manifests (.txt/.csv/.parquet lists of paths) or s3:// gs:// URIs; --output is a Parquet dataset folder or URI). See docs/scale.md."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the cluster (auto, HOST:PORT or ray://HOST:PORT). Default: $RAY_ADDRESS, else a Ray started on this machine."),
) -> None:
    """Tag audio files with genre, mood, instrument and era tags.

    Exit codes: 0 every file tagged; 1 some files failed (each gets an error record) or none found; 2 usage error;
    130 interrupted (Ctrl+C or SIGTERM; the results so far are kept, --resume goes on).
    """
    from ..runs.tag import TagRequest, run_tag

    if engine is Engine.ray:
        from ._ray import run_tag as run_on_ray
        run_on_ray(paths, output=output, model=model, top=None if all_tags else top, threshold=threshold,
                   windows=parse_windows("all" if timeline or plot is not None else windows) if windows else "auto",
                   batch_size=batch_size, device=device, precision=precision.value, resume=resume, address=address,
                   quiet=quiet, refused={"--format": fmt not in (None, Format.parquet), "--layout": layout,
                                         "--write": write, "--timeline": timeline, "--plot": plot, "--force": force})
    elif address is not None:
        fail("--address names a Ray cluster; it needs --engine ray")
    to_console = output is None and fmt in (None, Format.table)
    results_console = Console(highlight=False) if to_console else None
    # A table on the terminal goes through the progress bar's own console, so each result
    # is printed above the bar instead of on top of it; otherwise the bar is on stderr.
    bar_console = results_console if results_console is not None and results_console.is_terminal else console
    events = _TagEvents(quiet, verbose, to_console, output, bar_console)
    request = TagRequest(
        paths, model=model, top=top, threshold=threshold, format=fmt.value if fmt else None,
        layout=layout.value if layout else None, output=output, resume=resume, force=force, device=device,
        batch_size=batch_size, precision=precision.value, windows=windows, all_tags=all_tags, write=write,
        undo_log=undo_log, timeline=timeline, plot=plot, table_console=results_console,
        download_progress=False if quiet else None,
    )
    summary = run(run_tag, request, events)
    for problem in summary.problems:
        console.print(f"[red]error:[/] {escape(printable(problem))}", highlight=False, soft_wrap=True)
    if not quiet:
        msg = (f"{summary.done} tagged, {summary.failed} failed in {summary.elapsed:.1f} s on "
               f"{ran_on(summary.device, summary.precision)} with {summary.model}")
        if output is not None:
            msg += f"; results in {printable(output)}"
        if plot is not None:
            plots = summary.plots
            msg += (f"; taggram in {printable(plots[0])}" if len(plots) == 1 and plot.suffix.lower() == ".png"
                    else f"; {len(plots)} taggram{'s' if len(plots) != 1 else ''} in {printable(plot)}")
        if summary.interrupted:
            msg += "; " + continue_hint(paths, output)
        console.print(("[yellow]interrupted:[/] " if summary.interrupted else "") + escape(msg), highlight=False, soft_wrap=True)
        if write:
            parts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nothing written"
            undo = f"; undo with: mttag write --undo {printable(summary.undo_log)}" if summary.undo_log else ""
            console.print(escape(f"tags in files: {parts}{undo}"), highlight=False, soft_wrap=True)
    raise typer.Exit(summary.exit_code)


def continue_hint(paths: List[Path], output: Optional[Path]) -> str:
    """After an interruption: the command that goes on where the run stopped, in its shape
    (the same paths and options, the results file, --resume); without a results file the
    results went to the screen, and the next run needs -o FILE to be resumable."""
    import shlex

    shown = " ".join(shlex.quote(printable(p)) for p in paths) if len(paths) <= 3 else "…"
    if output is None:
        return f"to be able to continue next time, give -o FILE: mttag tag {shown} -o FILE, then the same with --resume"
    return f"to continue, run it again with --resume: mttag tag {shown} … -o {shlex.quote(printable(output))} --resume"


class _TagEvents(ProgressEvents):
    """The progress bar, and per track: --verbose's timings and a warning for a failed track
    (a table on the terminal shows the error itself)."""

    def __init__(self, quiet: bool, verbose: bool, to_console: bool, output: Optional[Path], bar_console: Console):
        super().__init__("tagging", quiet, bar_console)
        self.verbose, self.to_console, self.output = verbose, to_console, output

    def resuming(self, already: int, to_go: int, skipped: Optional[int] = None) -> None:
        if not self.quiet:
            console.print(f"resuming: {already} tracks already tagged in {escape(printable(self.output))}, "
                          f"{to_go} to go", highlight=False, soft_wrap=True)

    def result(self, result) -> None:
        if self.verbose and not self.quiet:
            timing = f"decode {result.decode_seconds or 0:.2f} s"
            if result.ok:
                timing = f"{result.n_windows} windows, {timing}, model {result.model_seconds or 0:.2f} s"
            console.print(f"[dim]{escape(printable(result.path))}: {timing}[/]", highlight=False, soft_wrap=True)
        if not result.ok and not self.to_console:
            self.warning(result.path, result.error)
        super().result(result)
