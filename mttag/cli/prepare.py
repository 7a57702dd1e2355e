"""``mttag prepare``: decode a tagged collection once into a training-ready dataset."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..util.fileio import LockedError

if TYPE_CHECKING:
    from ..training.prepare import PrepareProgress
    from ..training.sources import TrackSpec
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    app,
    console,
    fail,
    one_line,
    sigterm_as_interrupt,
    warn,
)


def _parse_ratios(value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 for p in parts) or parts[0] <= 0:
        fail(f"--ratios {value}: expected three non-negative numbers train,valid,test (e.g. 0.8,0.1,0.1)")
    return parts  # type: ignore[return-value]


def _sources(annotations, audio_root, path_column, tags_column, separator, artist_column, split_column,
             keep_case, split, splits_dir, fields, libraries, unlabeled, encoding,
             on_error) -> tuple[Iterator[TrackSpec], list[str] | None]:
    from ..training.sources import (
        annotation_encoding,
        tracks_from_annotations,
        tracks_from_cals,
        tracks_from_folder,
        tracks_from_metadata,
    )

    labelled = [name for name, given in (("--annotations", annotations), ("--split cals", split),
                                         ("--tags-from-metadata", fields)) if given]
    if len(labelled) > 1:
        fail(f"give one labelled source, not {' and '.join(labelled)}")
    if not labelled:
        fail("no labelled source: give --annotations FILE, --split cals --splits-dir DIR, "
             "or --tags-from-metadata FIELDS with library folders")
    if libraries and not fields:
        fail("library folders are read only with --tags-from-metadata FIELDS (use --unlabeled DIR for untagged audio)")
    if encoding is not None and not annotations:
        fail("--encoding is the text encoding of --annotations FILE; give that too, or leave --encoding out")
    for folder in [*libraries, *unlabeled]:
        if not folder.exists():
            fail(f"{folder}: no such file or directory")
    vocab = None
    if annotations:
        if not annotations.is_file():
            fail(f"--annotations {annotations}: no such file")
        if audio_root is not None and not audio_root.is_dir():
            fail(f"--audio-root {audio_root}: not a directory")
        if encoding is None:
            try:
                encoding, note = annotation_encoding(annotations)
            except OSError as exc:
                fail(f"--annotations {annotations}: {exc.strerror or exc}")
            if note:
                warn(note)
        else:
            import codecs

            try:
                codecs.lookup(encoding)
            except LookupError:
                fail(f"--encoding {encoding}: unknown encoding (examples: utf-8, cp1252, latin-1, utf-16)")
        source = tracks_from_annotations(annotations, audio_root, path_col=path_column, tags_col=tags_column,
                                         sep=separator, artist_col=artist_column, split_col=split_column,
                                         normalize=not keep_case, encoding=encoding)
    elif split:
        if split.lower() != "cals":
            fail(f"--split {split}: only 'cals' (the authors' CALS split files) is known")
        if splits_dir is None or audio_root is None:
            fail("--split cals needs --splits-dir DIR (the *_ids.npy / *_binaries.npy files) and --audio-root DIR")
        if not splits_dir.is_dir() or not audio_root.is_dir():
            fail(f"{splits_dir if not splits_dir.is_dir() else audio_root}: not a directory")
        from ..inference.vocab import CALS_TAGS

        source = tracks_from_cals(splits_dir, audio_root)
        vocab = list(CALS_TAGS)
    else:
        field_list = [f.strip() for f in fields.split(",") if f.strip()]
        if not field_list:
            fail(f"--tags-from-metadata {fields!r}: expected comma-separated field names such as genre,mood,grouping")
        if not libraries:
            fail("--tags-from-metadata needs library folders (positional FOLDER... or --library DIR)")
        source = itertools.chain.from_iterable(tracks_from_metadata(d, field_list, on_error=on_error)
                                               for d in libraries)
    extra = itertools.chain.from_iterable(tracks_from_folder(d, on_error=on_error) for d in unlabeled)
    return itertools.chain(source, extra), vocab


@app.command()
def prepare(
    out_dir: Path = typer.Argument(..., help="Dataset directory to create; an interrupted run in it is resumed."),
    folders: Optional[List[Path]] = typer.Argument(None, help="Library folders (with --tags-from-metadata).", show_default=False),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="CSV/TSV with a path column (relative to --audio-root) and a tags column; optional artist and split columns.", rich_help_panel="Sources"),
    audio_root: Optional[Path] = typer.Option(None, "--audio-root", help="Folder the annotation paths (or the CALS layout) are relative to. Default for --annotations: the file's folder.", rich_help_panel="Sources"),
    path_column: str = typer.Option("path", "--path-column", rich_help_panel="Sources"),
    tags_column: str = typer.Option("tags", "--tags-column", rich_help_panel="Sources"),
    separator: str = typer.Option(",", "--separator", help="Separator between tags in the tags column.", rich_help_panel="Sources"),
    artist_column: str = typer.Option("artist", "--artist-column", help="Used when present; else the track's folder is its group.", rich_help_panel="Sources"),
    split_column: str = typer.Option("split", "--split-column", help="Used when present (train/valid/test/unlabeled; empty: assign).", rich_help_panel="Sources"),
    keep_case: bool = typer.Option(False, "--keep-case", help="Keep annotation tags' case (default: lower-case).", rich_help_panel="Sources"),
    encoding: Optional[str] = typer.Option(None, "--encoding", help="Text encoding of --annotations (default: detected; UTF-8 or a byte-order mark, else cp1252 with a warning).", rich_help_panel="Sources"),
    split: Optional[str] = typer.Option(None, "--split", help="cals: the authors' CALS split (with --splits-dir and --audio-root).", rich_help_panel="Sources"),
    splits_dir: Optional[Path] = typer.Option(None, "--splits-dir", help="Folder with {train,valid,test,student}_ids.npy and {train,valid,test}_binaries.npy.", rich_help_panel="Sources"),
    tags_from_metadata: Optional[str] = typer.Option(None, "--tags-from-metadata", help="Comma-separated file-tag fields to use as labels, e.g. genre,mood,grouping.", rich_help_panel="Sources"),
    library: Optional[List[Path]] = typer.Option(None, "--library", help="Library folder for --tags-from-metadata (repeatable; same as positional folders).", rich_help_panel="Sources"),
    unlabeled: Optional[List[Path]] = typer.Option(None, "--unlabeled", help="Extra untagged audio folder for the unlabelled set (repeatable).", rich_help_panel="Sources"),
    vocab: Optional[str] = typer.Option(None, "--vocab", "--vocabulary", help="Fixed vocabulary instead of the most frequent tags: cals, msd, or a file with one tag per line.", rich_help_panel="Vocabulary and splits"),
    top_tags: int = typer.Option(50, "--top-tags", min=1, help="Keep the N most frequent tags.", rich_help_panel="Vocabulary and splits"),
    min_count: int = typer.Option(10, "--min-count", min=1, help="Drop tags on fewer labelled tracks.", rich_help_panel="Vocabulary and splits"),
    ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,valid,test shares for tracks without a given split.", rich_help_panel="Vocabulary and splits"),
    seed: int = typer.Option(0, "--seed", help="Seed of the stratified split.", rich_help_panel="Vocabulary and splits"),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", "-j", min=1, help="Decoding processes."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", min=1.0, help="Store at most this many seconds from the middle of each track (long mixes)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="On resume, try files that failed before again."),
    shard_gb: float = typer.Option(1.0, "--shard-gb", min=0.001, help="Size of the audio shard files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Decode a tagged collection once into a dataset for `mttag train`: int16 audio shards
    with fast random crops, a tag vocabulary and artist-level splits.

    Exit codes: 0 all files stored; 1 some files failed (listed in OUT_DIR/failures.csv) or
    a folder could not be listed (named in a warning); 2 usage error; 130 interrupted (Ctrl+C
    or SIGTERM; run the same command again to resume).
    """
    ratio_values = _parse_ratios(ratios)
    unlisted: list = []  # folders under the sources that could not be listed

    def on_unlistable(problem) -> None:
        unlisted.append(problem)
        warn(f"{problem.path}: cannot list this folder ({problem.reason}); the audio in it is left out")

    source, fixed_vocab = _sources(annotations, audio_root, path_column, tags_column, separator, artist_column,
                                   split_column, keep_case, split, splits_dir, tags_from_metadata,
                                   [*(folders or []), *(library or [])], list(unlabeled or []), encoding,
                                   on_unlistable)
    if vocab is not None:
        from ..inference.vocab import resolve_tags

        try:
            fixed_vocab = resolve_tags(vocab)
        except ValueError as exc:
            fail(str(exc))
    started = time.perf_counter()
    ds = _prepare(source, out_dir, quiet, started, top_tags=top_tags, min_count=min_count, ratios=ratio_values,
                  seed=seed, workers=workers, tags_vocab=fixed_vocab, max_seconds=max_seconds,
                  retry_failed=retry_failed, shard_bytes=int(shard_gb * (1 << 30)))
    _print_summary(ds.summary, out_dir, time.perf_counter() - started)
    if unlisted:
        names = ", ".join(p.path for p in unlisted[:3]) + (f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else "")
        warn(f"{len(unlisted)} folder{'s' if len(unlisted) > 1 else ''} could not be listed and "
             f"{'are' if len(unlisted) > 1 else 'is'} not in the dataset: {names}; fix the permissions and run "
             "the same command again to add their audio")
    raise typer.Exit(EXIT_SOME_FAILED if ds.summary["failed"] or unlisted else EXIT_OK)


def _prepare(source, out_dir: Path, quiet: bool, started: float, **settings):
    """:func:`mttag.training.prepare.prepare_dataset` under a progress bar; an interruption,
    a refusal or a failure ends the command with its line and exit code."""
    from ..training.prepare import PrepareInterrupted, prepare_dataset  # numpy and friends: only when preparing

    progress, on_progress = _progress(quiet, started)
    try:
        with sigterm_as_interrupt(), progress:
            return prepare_dataset(source, out_dir, on_progress=on_progress, **settings)
    except (PrepareInterrupted, KeyboardInterrupt) as exc:
        # KeyboardInterrupt: Ctrl+C or SIGTERM while reading the sources or writing the index;
        # the journal is intact either way and the next run resumes
        done = f"{exc.done} tracks processed this run, {exc.remaining} left; " if isinstance(exc, PrepareInterrupted) else ""
        console.print(f"[yellow]interrupted:[/] {done}run the same command again to resume", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    except LockedError as exc:
        fail(str(exc))
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or out_dir}: {exc.strerror or exc}", EXIT_SOME_FAILED)


def _progress(quiet: bool, started: float) -> tuple[Progress, Callable[[PrepareProgress], None]]:
    """The progress bar (a task per stage as it begins) and the callback that moves it."""
    progress = Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=quiet or not console.is_terminal, transient=True,
    )
    tasks: dict[str, int] = {}

    def on_progress(p: PrepareProgress) -> None:
        if p.stage not in tasks:
            label = {"scan": "reading sources", "decode": "decoding", "finalize": "writing index"}[p.stage]
            tasks[p.stage] = progress.add_task(label, total=p.total, info="")
        info = ""
        if p.stage == "scan":
            info = f"{p.done} tracks"
        elif p.stage == "decode":
            elapsed = max(time.perf_counter() - started, 1e-6)
            info = f"{p.seconds / 3600:.2f} h audio, {p.failed} failed, {p.done / elapsed:.1f} tracks/s"
        progress.update(tasks[p.stage], completed=p.done, total=p.total, info=info)

    return progress, on_progress


def _print_summary(s: dict, out_dir: Path, elapsed: float) -> None:
    """The summary on stdout; warnings about it on stderr."""
    from ..training.splits import SPLITS

    out = Console(highlight=False)
    run = s.get("last_run", {})
    out.print(f"[bold]{one_line(out_dir)}[/]: {s['num_tracks']} tracks, {s['hours']:.2f} h of audio, "
              f"{len(s['tags'])} tags; {run.get('processed', 0)} processed this run in {elapsed:.1f} s", soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("split")
    table.add_column("tracks", justify="right")
    table.add_column("hours", justify="right")
    table.add_column("tag balance (mean / max |share - target|)", justify="right")
    for name in SPLITS:
        bal = s["tag_balance"].get(name)
        table.add_row(name, str(s["splits"][name]), f"{s['hours_per_split'][name]:.2f}",
                      f"{bal['mean_abs_dev']:.3f} / {bal['max_abs_dev']:.3f}" if bal else "")
    out.print(table)
    out.print(f"split: {s['split_source']}, {s['groups']} artists/groups; excluded {s['excluded']} unlabelled tracks "
              f"of valid/test artists, {s['duplicates']} duplicate rows")
    dropped = s["dropped_tags"]
    if dropped["distinct"]:
        top = ", ".join(f"{one_line(t)} ({n})" for t, n in list(dropped["top"].items())[:8])
        out.print(f"dropped tags: {dropped['distinct']} outside the vocabulary ({dropped['occurrences']} uses): {top}"
                  + (" ..." if dropped["distinct"] > 8 else ""), soft_wrap=True)
    if s["labeled_tracks_left_without_vocabulary_tags"]:
        out.print(f"{s['labeled_tracks_left_without_vocabulary_tags']} tagged tracks had no vocabulary tag left "
                  "and joined the unlabelled set")
    if s.get("groups_spanning_given_splits"):
        warn(f"{s['groups_spanning_given_splits']} artists appear in more than one given split")
    for name in ("valid", "test"):
        if s["splits"][name] == 0 and s["params"]["ratios"][SPLITS.index(name)] > 0:
            warn(f"the {name} split is empty (too few artists/groups)")
    if s["failed"]:
        out.print(f"failed: {s['failed']} files (see {one_line(out_dir / 'failures.csv')})", soft_wrap=True)
        warn(f"{s['failed']} files failed; see {out_dir / 'failures.csv'}")
    else:
        out.print("no failures")
