"""The tagging run: files → results in an output, optionally into the audio files and taggram
PNGs, resumable, interruptible. ``mttag tag`` and :func:`mttag.tag` both go through here."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..util.display import printable
from .common import (
    EXIT_SOME_FAILED,
    RunError,
    RunEvents,
    RunSummary,
    bf16_emulation_warning,
    close_undo_log,
    find_audio,
    finish,
    interruptible,
    load,
    missing_paths_error,
    no_files_error,
    open_undo_log,
    parse_windows,
    resolve_device,
)


@dataclass
class TagRequest:
    """What to tag and where the results go; the options of ``mttag tag``, by the same names.

    ``windows``: None for the model's default (mttag.inference.tagging.default_windows; every window with ``timeline`` or
    ``plot``), a number, or ``"all"``. ``model``: a name as ``--model`` takes it, or a loaded
    model. ``stream``: where the results go without an ``output`` file (None: ``sys.stdout``;
    a plugin that only wants the ``result`` events passes ``io.StringIO()``).
    ``table_console``: the rich console a table on stdout is printed through (the command
    line's; without one a table goes to ``stream``). ``download_progress``: as
    :func:`mttag.load_model`'s ``progress``."""

    paths: list[Path]
    model: Any = None
    top: int | None = 5
    threshold: float | None = None
    format: str | None = None
    layout: str | None = None
    output: Path | None = None
    resume: bool = False
    force: bool = False
    device: str = "auto"
    batch_size: int | None = None
    precision: str = "auto"
    windows: int | str | None = None
    all_tags: bool = False
    write: bool = False
    undo_log: Path | None = None
    timeline: bool = False
    plot: Path | None = None
    stream: Any = None
    table_console: Any = None
    download_progress: bool | None = None


def tag_results(tagger, files: Iterable[str | os.PathLike], unlistable, top: int | None,
                threshold: float | None, min_confidence: float | None = None) -> Iterator[Any]:
    """One TagResult per folder that could not be listed (an error record), then one per file."""
    from ..inference.tagging import TagResult

    for problem in unlistable:
        yield TagResult(problem.path, error=f"cannot list this folder ({problem.reason})", model=tagger.model_name)
    yield from tagger.tag_files(files, top=top, threshold=threshold, min_confidence=min_confidence)


def run_tag(request: TagRequest, events: RunEvents | None = None) -> RunSummary:
    """Tag ``request.paths`` into ``request.output`` (stdout when None); raises RunError for a
    refusal (nothing written then) or a failed write (what was written before is kept)."""
    run = _TagRun(request, events or RunEvents())
    try:
        run.prepare()
        return run.loop()
    finally:
        run.release()


class _TagRun:
    def __init__(self, req: TagRequest, events: RunEvents):
        self.req, self.events = req, events
        self.fmt, self.layout, self.timeline = req.format, req.layout, req.timeline
        self.target = self.tag_writer = self.writer = self.plot_path = None
        self.kept: list[dict] = []
        self.plots: list[Path] = []  # the taggrams written, for the summary

    def prepare(self) -> None:
        req = self.req
        self._check_options()
        missing = missing_paths_error(req.paths)
        if missing is not None:
            raise missing
        self.dev = resolve_device(req.device)
        warning = bf16_emulation_warning(req.precision, self.dev.type)
        if warning:
            self.events.warning(None, warning)
        self.files, self.unlistable = find_audio(req.paths)
        # Every way out (a refusal, an error, the end of the run) releases the output's lock and
        # temporary file and --write's undo log: see release().
        self._check_output()
        self._plan_layout()
        self.net = load(req.model, self.dev, req.download_progress)
        if isinstance(req.model, (str, os.PathLike)):
            self.model_name = os.fspath(req.model)
        else:
            from ..inference.tagging import model_label

            self.model_name = model_label(self.net)
        self._plan_plot()
        if not self.files and not self.unlistable:
            raise no_files_error(req.paths)
        if req.write:  # last: its undo log is created only for a run that goes ahead
            self.tag_writer = _FileTagWriter(req.undo_log, req.output, top=None if req.all_tags else req.top,
                                             threshold=req.threshold)
            try:
                self.tag_writer.open()
            except ValueError as exc:
                raise RunError(str(exc)) from None
        if req.resume:
            self._read_resumed()
        self._open_results()

    def _check_options(self) -> None:
        req = self.req
        if req.windows is None:  # a timeline follows the whole track, window after window
            # otherwise the model's own default (mttag.inference.tagging.default_windows: 20, 12 for musicnn)
            req.windows = "all" if req.timeline or req.plot is not None else "auto"
        self.n_windows = "auto" if req.windows == "auto" else parse_windows(req.windows)
        if req.resume and req.output is None:
            raise RunError("--resume needs --output FILE")
        if req.force and req.output is None and req.plot is None:
            raise RunError("--force is about replacing an --output FILE or --plot images; there are none")
        if req.undo_log is not None and not req.write:
            raise RunError("--undo-log needs --write")
        if req.precision not in ("auto", "fp32", "bf16"):
            raise RunError(f"--precision {req.precision}: expected auto, fp32 or bf16")
        if req.output is None and self.fmt is None:
            self.fmt = "table"
        if req.output is None and self.fmt == "parquet":
            raise RunError("--format parquet writes a file: give --output FILE.parquet")

    def _check_output(self) -> None:
        from ..inference.output import OutputError, OutputFile

        req = self.req
        if req.output is None:
            return
        self.target = OutputFile(req.output, self.fmt, resume=req.resume, force=req.force, layout=self.layout)
        try:
            self.fmt = self.target.check(self.files)
            self.layout = self.target.layout or None
            self.target.lock()  # before reading it for --resume: nobody else may change it now
        except OutputError as exc:
            raise RunError(str(exc)) from None

    def _plan_layout(self) -> None:
        if self.timeline and self.fmt in ("csv", "tsv"):
            if self.layout not in (None, "timeline"):
                raise RunError(f"--timeline writes csv/tsv in the timeline layout, but --layout (or the --resume file) "
                               f"says {self.layout}")
            self.layout = "timeline"
        self.layout = self.layout or "track"
        if self.layout == "timeline":
            self.timeline = True  # resuming a timeline file
        if self.fmt == "parquet" and (self.timeline or self.req.plot is not None):
            raise RunError("--timeline and --plot are not stored in Parquet; use json, jsonl, csv or tsv")
        if self.layout != "track" and self.fmt not in ("csv", "tsv"):
            raise RunError(f"--layout {self.layout} is for csv and tsv output, not {self.fmt}")

    def _plan_plot(self) -> None:
        if self.req.plot is None:
            return
        from ..inference.plot import PlotUnavailable, _pyplot

        try:
            _pyplot()
            self.plot_path = _plot_target(self.req.plot, self.files, self.req.force)
        except (PlotUnavailable, ValueError) as exc:
            raise RunError(str(exc)) from None

    def _read_resumed(self) -> None:
        from ..inference.output import path_key, read_done, wide_columns, wide_tag_columns

        output = self.req.output
        try:
            self.kept, done = read_done(output, self.fmt)
        except (ValueError, OSError) as exc:
            raise RunError(f"--resume {printable(output)}: {exc}") from None
        if (self.layout == "wide" and output.exists()
                and wide_columns(output, self.fmt) != wide_tag_columns(self.net.config.tags)):
            raise RunError(f"--resume {printable(output)}: its columns are another model's tags; resume with the same model")
        self.files = [f for f in self.files if path_key(str(f)) not in done]
        self.events.resuming(len(done), len(self.files))

    def _open_results(self) -> None:
        from ..inference.output import OutputError, ResultWriter

        target, output = self.target, self.req.output
        try:
            if target is not None:
                stream = target.open()
            else:  # looked up now: a test runner swaps sys.stdout per invocation
                stream = self.req.stream if self.req.stream is not None else sys.stdout
            if self.fmt == "parquet":
                from ..inference.parquet import ParquetResultWriter, ParquetUnavailable

                try:
                    self.writer = ParquetResultWriter(stream, self.net.config.tags, self.model_name)
                except ParquetUnavailable as exc:
                    raise RunError(str(exc)) from None
            else:
                self.writer = ResultWriter(stream, self.fmt, console=self.req.table_console,
                                           table_header=target is not None, layout=self.layout,
                                           vocabulary=self.net.config.tags)
            for record in self.kept:
                self.writer.write_record(record)
            if target is not None:
                target.commit()
        except OutputError as exc:
            raise RunError(str(exc)) from None
        except OSError as exc:
            raise RunError(f"--output {printable(output)}: cannot write it ({exc.strerror or exc})") from None

    def loop(self) -> RunSummary:
        from ..audio.decode import DecoderMessages
        from ..inference.tagging import Tagger

        req = self.req
        start = time.perf_counter()
        tagger = Tagger(self.net, self.dev, batch_size=req.batch_size, windows=self.n_windows, model_name=self.model_name,
                        keep_windows=self.timeline or req.plot is not None, precision=req.precision,
                        fingerprints=req.write or self.fmt not in ("table", "parquet"))
        top_k = None if req.all_tags or self.layout == "wide" else req.top  # wide: a column for every tag
        summary = RunSummary("tag", device=self.dev.type, precision=tagger.precision, model=self.model_name,
                             output=req.output, plots=self.plots)
        self.decoder = DecoderMessages()
        write_error: OSError | None = None
        try:
            # `kill`/a job scheduler's SIGTERM ends the run like Ctrl+C: the JSON array is
            # closed and the summary given, so the output stays valid and resumable.
            with interruptible(), self.decoder:
                try:
                    self.events.started(len(self.files) + len(self.unlistable))
                    for result in tag_results(tagger, self.files, self.unlistable, top_k, req.threshold):
                        summary.failed += self._save(result)
                finally:  # within the decoder's capture of fd 2, as the events began
                    self.events.finished()
        except KeyboardInterrupt:
            summary.interrupted = True
        except OSError as exc:  # the results file: disk full, file too large, I/O error
            write_error = exc
        finally:
            write_error = self._close(write_error)
        if write_error is not None:
            where = printable(req.output) if req.output is not None else "standard output"
            raise RunError(f"writing {where} failed ({write_error.strerror or write_error}); "
                           f"the results written before are kept, --resume goes on from them", EXIT_SOME_FAILED)
        summary.elapsed = time.perf_counter() - start
        summary.done = self.writer.count - len(self.kept) - summary.failed
        if self.tag_writer is not None:
            summary.counts = dict(self.tag_writer.counts)
            self.tag_writer.close(summary)  # names the undo log in the summary if it holds records
        return finish(summary)

    def _save(self, result) -> int:
        """``result`` into the output, the file's tags and the plot; 1 if it failed, else 0."""
        if not self.timeline:
            result.timeline = None  # computed for --plot only
        self.writer.write(result)
        if self.tag_writer is not None and result.ok:
            outcome = self.tag_writer.write(result)
            if outcome.status == "error":
                self.events.warning(result.path, f"tags not written into the file ({printable(outcome.error)})")
        if self.plot_path is not None and result.ok:
            from ..inference.plot import plot_taggram

            png = self.plot_path(result.path)
            try:
                plot_taggram(result, png)
                self.plots.append(png)
            except (OSError, ValueError) as exc:
                self.events.warning(str(png), f"cannot write the plot ({printable(exc)})")
        chatter = self.decoder.pop(result.path)
        self.events.result(result)
        if result.ok and Path(result.path).suffix.lower() in (".ogg", ".oga", ".opus"):
            from ..audio.decode import OGG_HEADER_AUDIO_WARNING, ffmpeg_available, ogg_header_page_carries_audio

            # with ffmpeg such a file was decoded exactly (audio.probe); without, say so
            if not ffmpeg_available() and ogg_header_page_carries_audio(result.path):
                self.events.warning(result.path, OGG_HEADER_AUDIO_WARNING)
        if result.ok and chatter:
            # libmpg123's own lines, as one warning: the file decoded, but around damage
            more = f" (+{len(chatter) - 1} more)" if len(chatter) > 1 else ""
            self.events.warning(result.path, f"damaged mp3 data, tagged from what decodes "
                                             f"(decoder: {printable(chatter[0])}{more})")
        return 0 if result.ok else 1

    def _close(self, write_error: OSError | None) -> OSError | None:
        for closeable in (self.writer, self.target):
            try:
                if closeable is not None:
                    closeable.close()
            except OSError as exc:
                write_error = write_error or exc
        return write_error

    def release(self) -> None:
        """The output's lock and temporary file, and --write's undo log, go (both idempotent);
        write errors were reported where they happened, so a repeated one is not raised again."""
        if self.target is not None:
            self.target.close(discard=True)
        if self.tag_writer is not None:
            self.tag_writer.close(RunSummary("tag"))  # a refusal or an error: closed, nothing to report


class _FileTagWriter:
    """``--write``: each tagged track's tags go into its file through mttag.filetags.writer
    (copy, verify, atomic rename), the previous values into an undo log first."""

    def __init__(self, undo_log: Path | None, output: Path | None, top: int | None, threshold: float | None):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = output.parent if output is not None else Path(".")
        self.log_path = undo_log or base / f"mttag-undo-{stamp}.jsonl"
        self.top, self.threshold = top, threshold
        self.counts: dict[str, int] = {}
        self._lock = self._log = None

    def open(self) -> None:
        from ..filetags import writer as filetags
        from ..util.fileio import LockedError

        self.options = filetags.WriteOptions(top=self.top, threshold=self.threshold)
        try:
            self._lock, self._log = open_undo_log(self.log_path, {"fields": list(self.options.fields),
                                                                  "mode": self.options.mode},
                                                  f"another mttag run using {printable(self.log_path)}")
        except (LockedError, filetags.WriteError, OSError) as exc:
            raise ValueError(f"--undo-log {printable(self.log_path)}: {exc}") from None

    def write(self, result):
        from ..filetags.writer import write_tags

        # the scores carry the confidence that decides what is written (filetags.choose_tags)
        tags = result.scores if result.scores is not None else result.tags
        outcome = write_tags(result.path, tags, self.options, self._log, fingerprint=result.fingerprint)
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        return outcome

    def close(self, summary: RunSummary) -> None:
        lock, log, self._lock, self._log = self._lock, self._log, None, None
        close_undo_log(lock, log, summary)


def _plot_target(plot: Path, files: list[Path], force: bool = False):
    """Where each track's taggram goes: ``--plot x.png`` for a single track, else one
    ``NAME.png`` per track in the folder ``--plot`` names (tracks with the same name in
    different folders get the folder's name too). Like ``-o``, an existing file there is
    replaced only if it is a taggram mttag drew, or with ``force``: checked for every track
    before the run, so that a refusal comes before any tagging."""
    from ..inference.plot import is_taggram

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