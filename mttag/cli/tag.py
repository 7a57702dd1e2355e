"""``mttag tag``: tag audio files and folders."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..display import printable
from ..errors import DEFAULT_WINDOWS, ModelLoadError
from ._common import EXIT_OK, EXIT_SOME_FAILED, app, console, fail, parse_windows, ran_on, warn_if_bf16_is_emulated


class Format(str, Enum):
    table = "table"
    csv = "csv"
    tsv = "tsv"
    json = "json"
    jsonl = "jsonl"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


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
    fmt: Optional[Format] = typer.Option(None, "--format", "-f", help="Output format. Default: from the --output file's name (.csv, .tsv, .json, .jsonl), else a table."),
    layout: Optional[Layout] = typer.Option(None, "--layout", help="csv/tsv rows: track (one per track, default), long (one per track and tag), wide (one column per tag of the model) or timeline (one per window and tag, as --timeline gives)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to this file instead of stdout (never over an input or audio file)."),
    resume: bool = typer.Option(False, "--resume", help="Skip tracks already tagged in --output (csv, tsv, json or jsonl; the file says which)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --output file, or --plot PNG, that mttag did not write."),
    device: str = typer.Option("auto", "--device", "-d", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Windows per forward pass. Default: 2 on CPU (several batches at once, one per core), 16 on GPU/MPS."),
    precision: Precision = typer.Option(Precision.auto, "--precision", help="auto (bf16 on a CPU with native bf16 (AVX-512 BF16, AMX), where it is about 1.8x faster for the Transformers and 1.5-1.7x for musicnn, probabilities moving by up to ~0.01; bf16 on CUDA except for musicnn; float32 elsewhere), fp32 (the original musicnn's numbers on any machine), or bf16."),
    windows: Optional[str] = typer.Option(None, "--windows", "-w", help=f"Windows averaged per track, spread evenly over the track's consecutive model-length windows, or 'all' (every one). Default: {DEFAULT_WINDOWS}; all with --timeline or --plot."),
    all_tags: bool = typer.Option(False, "--all-tags", help="Keep every tag (same as --top with the vocabulary size)."),
    write: bool = typer.Option(False, "--write", help="Also write the tags into the audio files (genre, mood and an MTTAG field; added to what is there), verified and atomic, with an undo log. Full control: mttag write RESULTS."),
    undo_log: Optional[Path] = typer.Option(None, "--undo-log", help="With --write: where to record the previous values (default: mttag-undo-TIME.jsonl beside --output, else here)."),
    timeline: bool = typer.Option(False, "--timeline", help="Also give each window's tags with its start and end time (csv/tsv: one row per window and tag)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw each track's taggram as a PNG: FILE.png for one track, else a folder (needs: pip install \"mttag\\[plot]\"). An existing PNG is replaced only if mttag drew it (else --force)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, warnings or summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Per track: windows, decoding time and model time (on stderr)."),
) -> None:
    """Tag audio files with genre, mood, instrument and era tags.

    Exit codes: 0 every file tagged; 1 some files failed (each gets an error record) or none found; 2 usage error;
    130 interrupted (Ctrl+C or SIGTERM; the results so far are kept, --resume goes on).
    """
    # heavy modules (numpy, torch) load here, not when `mttag --help` imports this file
    from ..audio import DecoderMessages, UnlistableFolder, iter_audio_files
    from ..device import select_device
    from ..output import OutputError, OutputFile, ResultWriter, display_tag, path_key, read_done, wide_columns
    from ..tagging import Tagger, TagResult, model_label

    if windows is None:  # a timeline follows the whole track, window after window
        windows = "all" if timeline or plot is not None else str(DEFAULT_WINDOWS)
    n_windows = parse_windows(windows)
    if resume and output is None:
        fail("--resume needs --output FILE")
    if force and output is None and plot is None:
        fail("--force is about replacing an --output FILE or --plot images; there are none")
    if undo_log is not None and not write:
        fail("--undo-log needs --write")
    if output is None and fmt is None:
        fmt = Format.table
    try:
        dev = select_device(device)
    except ValueError as exc:
        fail(str(exc))
    warn_if_bf16_is_emulated(precision.value, dev.type, quiet)

    unlistable: list[UnlistableFolder] = []
    files = list(iter_audio_files(paths, on_error=unlistable.append))
    # Every way out (a refusal, an error, the end of the run) releases the output's lock and
    # temporary file and --write's undo log: refusals below just call fail().
    target = tag_writer = None
    try:
        if output is not None:
            target = OutputFile(output, fmt.value if fmt else None, resume=resume, force=force,
                                layout=layout.value if layout else None)
            try:
                fmt = Format(target.check(files))
                layout = Layout(target.layout) if target.layout else None
                target.lock()  # before reading it for --resume: nobody else may change it now
            except OutputError as exc:
                fail(str(exc))

        from ..pretrained import load_model

        if timeline and fmt in (Format.csv, Format.tsv):
            if layout not in (None, Layout.timeline):
                fail(f"--timeline writes csv/tsv in the timeline layout, but --layout (or the --resume file) says {layout.value}")
            layout = Layout.timeline
        layout = layout or Layout.track
        if layout is Layout.timeline:
            timeline = True  # resuming a timeline file
        if layout is not Layout.track and fmt not in (Format.csv, Format.tsv):
            fail(f"--layout {layout.value} is for csv and tsv output, not {fmt.value}")
        try:
            net = load_model(model, device=str(dev), progress=False if quiet else None)
        except ModelLoadError as exc:
            fail(str(exc))
        model_name = model or model_label(net)
        plot_path = None
        if plot is not None:
            from ..plot import PlotUnavailable, _pyplot

            try:
                _pyplot()
                plot_path = _plot_target(plot, files, force)
            except (PlotUnavailable, ValueError) as exc:
                fail(str(exc))

        if not files and not unlistable:
            fail(f"no audio files found in {', '.join(printable(p) for p in paths)}", EXIT_SOME_FAILED)
        if write:  # last: its undo log is created only for a run that goes ahead
            tag_writer = _FileTagWriter(undo_log, output, top=None if all_tags else top, threshold=threshold)
            try:
                tag_writer.open()
            except ValueError as exc:
                fail(str(exc))

        kept: list[dict] = []
        if resume:
            try:
                kept, done = read_done(output, fmt.value)
            except (ValueError, OSError) as exc:
                fail(f"--resume {printable(output)}: {exc}")
            if layout is Layout.wide and output.exists() and wide_columns(output, fmt.value) != [display_tag(t) for t in net.config.tags]:
                fail(f"--resume {printable(output)}: its columns are another model's tags; resume with the same model")
            files = [f for f in files if path_key(str(f)) not in done]
            if not quiet:
                console.print(f"resuming: {len(done)} tracks already tagged in {escape(printable(output))}, "
                              f"{len(files)} to go", highlight=False, soft_wrap=True)

        to_console = output is None and fmt is Format.table
        results_console = Console(highlight=False) if to_console else None
        try:
            stream = target.open() if target is not None else sys.stdout
            writer = ResultWriter(stream, fmt.value, console=results_console,
                                  table_header=target is not None, layout=layout.value, vocabulary=net.config.tags)
            for record in kept:
                writer.write_record(record)
            if target is not None:
                target.commit()
        except OutputError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"--output {printable(output)}: cannot write it ({exc.strerror or exc})")

        failed = 0
        start = time.perf_counter()
        tagger = Tagger(net, dev, batch_size=batch_size, windows=n_windows, model_name=model_name,
                        keep_windows=timeline or plot is not None, precision=precision.value)
        top_k = None if all_tags or layout is Layout.wide else top  # wide: a column for every tag
        # A table on the terminal goes through the progress bar's own console, so each result
        # is printed above the bar instead of on top of it; otherwise the bar is on stderr.
        bar_console = results_console if results_console is not None and results_console.is_terminal else console
        progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=bar_console,
            disable=quiet or not bar_console.is_terminal,
            transient=True,
        )
        if results_console is not None and bar_console is results_console:
            writer.console = progress.console
        decoder = DecoderMessages()

        plots: list[Path] = []  # the taggrams written, for the summary

        def report(result: TagResult) -> None:
            nonlocal failed
            if not timeline:
                result.timeline = None  # computed for --plot only
            writer.write(result)
            if tag_writer is not None and result.ok:
                outcome = tag_writer.write(result)
                if outcome.status == "error" and not quiet:
                    console.print(f"[yellow]warning:[/] {escape(printable(result.path))}: tags not written into the file "
                                  f"({escape(printable(outcome.error))})", highlight=False, soft_wrap=True)
            if plot_path is not None and result.ok:
                from ..plot import plot_taggram

                png = plot_path(result.path)
                try:
                    plot_taggram(result, png)
                    plots.append(png)
                except (OSError, ValueError) as exc:
                    console.print(f"[yellow]warning:[/] {escape(printable(png))}: cannot write the plot ({escape(printable(exc))})",
                                  highlight=False, soft_wrap=True)
            chatter = decoder.pop(result.path)
            if verbose and not quiet:
                timing = f"decode {result.decode_seconds or 0:.2f} s"
                if result.ok:
                    timing = f"{result.n_windows} windows, {timing}, model {result.model_seconds or 0:.2f} s"
                console.print(f"[dim]{escape(printable(result.path))}: {timing}[/]", highlight=False, soft_wrap=True)
            if not result.ok:
                failed += 1
                if not quiet and not to_console:
                    console.print(f"[yellow]warning:[/] {escape(printable(result.path))}: {escape(printable(result.error))}",
                                  highlight=False, soft_wrap=True)
            elif chatter and not quiet:
                # libmpg123's own lines, as one warning: the file decoded, but around damage
                first = printable(chatter[0])
                more = f" (+{len(chatter) - 1} more)" if len(chatter) > 1 else ""
                console.print(f"[yellow]warning:[/] {escape(printable(result.path))}: damaged mp3 data, tagged from "
                              f"what decodes (decoder: {escape(first)}{more})", highlight=False, soft_wrap=True)

        interrupted = False
        write_error: OSError | None = None
        # `kill`/a job scheduler's SIGTERM ends the run like Ctrl+C: the JSON array is
        # closed and the summary printed, so the output stays valid and resumable.
        previous = signal.signal(signal.SIGTERM, _terminate) if _in_main_thread() else None
        try:
            with decoder, progress:
                # a folder that cannot be listed is a failure of its own, not a silent gap
                for problem in unlistable:
                    report(TagResult(problem.path, error=f"cannot list this folder ({problem.reason})"))
                task = progress.add_task("tagging", total=len(files), rate="")
                for i, result in enumerate(tagger.tag_files(files, top=top_k, threshold=threshold), 1):
                    report(result)
                    elapsed = time.perf_counter() - start
                    progress.update(task, advance=1, rate=f"{i / elapsed:.2f} tracks/s")
        except KeyboardInterrupt:
            interrupted = True
        except OSError as exc:  # the results file: disk full, file too large, I/O error
            write_error = exc
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            try:
                writer.close()
            except OSError as exc:
                write_error = write_error or exc
            if target is not None:
                try:
                    target.close()
                except OSError as exc:
                    write_error = write_error or exc
        if write_error is not None:
            where = printable(output) if output is not None else "standard output"
            fail(f"writing {where} failed ({write_error.strerror or write_error}); "
                 f"the results written before are kept, --resume goes on from them", EXIT_SOME_FAILED)
        elapsed = time.perf_counter() - start
        done_now = writer.count - len(kept)
        if not quiet:
            msg = (f"{done_now - failed} tagged, {failed} failed in {elapsed:.1f} s on "
                   f"{ran_on(dev.type, tagger.precision)} with {model_name}")
            if output is not None:
                msg += f"; results in {printable(output)}"
            if plot is not None:
                msg += (f"; taggram in {printable(plots[0])}" if len(plots) == 1 and plot.suffix.lower() == ".png"
                        else f"; {len(plots)} taggram{'s' if len(plots) != 1 else ''} in {printable(plot)}")
            console.print(("[yellow]interrupted:[/] " if interrupted else "") + escape(msg), highlight=False, soft_wrap=True)
            if tag_writer is not None:
                console.print(escape(tag_writer.summary()), highlight=False, soft_wrap=True)
        if interrupted:
            raise typer.Exit(130)
        raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)
    finally:
        _release(target, tag_writer)


class _FileTagWriter:
    """``--write``: each tagged track's tags go into its file through mttag.filetags
    (copy, verify, atomic rename), the previous values into an undo log first."""

    def __init__(self, undo_log: Path | None, output: Path | None, top: int | None, threshold: float | None):
        import time as _time

        stamp = _time.strftime("%Y%m%d-%H%M%S")
        base = output.parent if output is not None else Path(".")
        self.log_path = undo_log or base / f"mttag-undo-{stamp}.jsonl"
        self.top, self.threshold = top, threshold
        self.counts: dict[str, int] = {}
        self._lock = self._log = None

    def open(self) -> None:
        from .. import filetags
        from ..fileio import ExclusiveLock, LockedError

        self.options = filetags.WriteOptions(top=self.top, threshold=self.threshold)
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = ExclusiveLock(self.log_path.parent / f".{self.log_path.name}.lock",
                                       f"another mttag run using {printable(self.log_path)}", remove=True)
            self._lock.acquire()
            self._log = filetags.UndoLog(self.log_path, {"fields": list(self.options.fields), "mode": self.options.mode})
        except (LockedError, filetags.WriteError, OSError) as exc:
            self.close()
            raise ValueError(f"--undo-log {printable(self.log_path)}: {exc}") from None

    def write(self, result):
        from ..filetags import write_tags

        outcome = write_tags(result.path, result.tags, self.options, self._log)
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        return outcome

    def summary(self) -> str:
        parts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items())) or "nothing written"
        return f"tags in files: {parts}; undo with: mttag write --undo {printable(self.log_path)}"

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _plot_target(plot: Path, files: list[Path], force: bool = False):
    """Where each track's taggram goes: ``--plot x.png`` for a single track, else one
    ``NAME.png`` per track in the folder ``--plot`` names (tracks with the same name in
    different folders get the folder's name too). Like ``-o``, an existing file there is
    replaced only if it is a taggram mttag drew, or with ``force``: checked for every track
    before the run, so that a refusal comes before any tagging."""
    from ..plot import is_taggram

    if plot.suffix.lower() == ".png":
        if len(files) != 1:
            raise ValueError(f"--plot {printable(plot)}: a .png file takes one track, not {len(files)}; give a folder instead")

        def target(path: str) -> Path:
            return plot
    else:
        if plot.exists() and not plot.is_dir():
            raise ValueError(f"--plot {printable(plot)}: not a folder")
        counts: dict[str, int] = {}
        for f in files:
            counts[f.name] = counts.get(f.name, 0) + 1

        def target(path: str) -> Path:
            p = Path(path)
            name = p.name if counts.get(p.name, 0) <= 1 else f"{p.parent.name} - {p.name}"
            return plot / f"{name}.png"

    existing = [t for t in (target(str(f)) for f in files) if os.path.lexists(t)]
    if any(t.is_dir() for t in existing):
        raise ValueError(f"--plot {printable(next(t for t in existing if t.is_dir()))}: is a folder, not a PNG")
    foreign = [t for t in existing if not is_taggram(t)]
    if foreign and not force:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ValueError(f"--plot {printable(foreign[0])}{more}: exists and is not a taggram mttag drew; "
                         "refusing to replace it (add --force to replace it)")
    return target


def _release(target, tag_writer) -> None:
    """The output's lock and temporary file, and --write's undo log, go (both idempotent);
    write errors were reported where they happened, so a repeated one is not raised again."""
    if target is not None:
        target.close(discard=True)
    if tag_writer is not None:
        tag_writer.close()


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    # signal handlers can only be installed from the main thread (not so under some test runners)
    return threading.current_thread() is threading.main_thread()
