"""``mttag train``: supervised training, or knowledge expansion with ``--teacher``."""

from __future__ import annotations

import contextlib
import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ._common import EXIT_INTERRUPTED, app, augment_probabilities, console, fail, one_line, sigterm_as_interrupt


class Arch(str, Enum):
    transformer = "transformer"
    resnet = "resnet"


def run_training(dataset, out_dir, cfg, resume, unlabeled_paths, quiet):
    """Shared by ``train`` and ``distill``: open data, run, print progress and a summary."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..dataset import PreparedDataset, PrepareInterrupted
    from ..modelfile import ModelLoadError
    from ..training import TrainingError, train

    try:
        data = PreparedDataset(dataset) if dataset is not None else None
        unlabeled = _open_unlabeled(unlabeled_paths, out_dir, cfg.workers, quiet) if unlabeled_paths else None
    except (KeyboardInterrupt, PrepareInterrupted):
        console.print("[yellow]interrupted[/] while decoding the unlabelled audio: run the same command again "
                      "to go on", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} samples/s"),
                        TimeRemainingColumn(), console=console, transient=True,
                        disable=quiet or not console.is_terminal)
    task = None

    def on_step(s):
        nonlocal task
        if task is None:
            task = progress.add_task("train", total=s["steps"], epoch=s["epoch"], loss=s["loss"], rate=0.0)
        progress.update(task, completed=s["step"], total=s["steps"], epoch=s["epoch"], loss=s["loss"], rate=s["samples_per_s"])

    def on_epoch(r):
        if quiet:
            return
        auc = f"  ROC-AUC {r.roc_auc:.4f}  PR-AUC {r.pr_auc:.4f}" if r.roc_auc is not None else ""
        pseudo = f"  pseudo {r.train_pseudo_loss:.4f}" if r.train_pseudo_loss is not None else ""
        sup = f"  train {r.train_loss:.4f}" if r.train_loss is not None else ""
        console.print(f"epoch {r.epoch}:{sup}{pseudo}  valid {r.valid_loss:.4f}{auc}  "
                      f"{r.samples_per_s:.1f} samples/s  {r.seconds:.0f} s" + ("  [green]best[/]" if r.best else ""),
                      highlight=False)

    try:
        with progress:
            best = train(data, out_dir, cfg, resume=resume, unlabeled=unlabeled, on_step=on_step, on_epoch=on_epoch)
    except (TrainingError, ModelLoadError, ValueError) as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: continue with the same command plus --resume "
                      f"(checkpoint in {one_line(out_dir)})", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not quiet and int(os.environ.get("RANK", "0")) == 0:
        if best.exists():
            console.print(f"best model: {one_line(best)}  (tag with: mttag tag ./music --model {one_line(best)})",
                          highlight=False, soft_wrap=True)
        else:
            console.print("no epoch finished; nothing exported")


def run_rounds(dataset, out_dir: Path, cfg, rounds: int, resume: bool, unlabeled, quiet: bool) -> None:
    """Each round's student becomes the next round's teacher; every round keeps its own
    run directory (``OUT/round1``, ...) so all of them are exported and resumable.

    OUT_DIR is locked for the whole run (one writer per directory; under torchrun, rank 0
    holds it), and SIGTERM stops the run like Ctrl+C: exit 130, resumable."""
    from ..dataset import PreparedDataset
    from ..fileio import LockedError
    from ..training import run_lock

    if dataset is not None:  # before OUT_DIR is created
        try:
            PreparedDataset(dataset)
        except (OSError, ValueError) as exc:
            fail(str(exc))
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out_dir}: exists and is not a directory")
    with contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            try:
                stack.enter_context(run_lock(out_dir, f"another training run in {out_dir}"))
            except LockedError as exc:
                fail(str(exc))
            except OSError as exc:
                fail(f"{out_dir}: {exc.strerror or exc}")
        stack.enter_context(sigterm_as_interrupt())
        for k in range(1, rounds + 1):
            run_dir = out_dir if rounds == 1 else out_dir / f"round{k}"
            if rounds > 1 and not quiet:
                console.print(f"[bold]round {k}/{rounds}[/]: teacher {one_line(cfg.teacher)}", highlight=False,
                              soft_wrap=True)
            # with --resume, finished rounds return at once and a round not yet begun starts fresh
            run_training(dataset, run_dir, cfg, resume and (run_dir / "checkpoint.pt").exists(), unlabeled, quiet)
            cfg.teacher = str(run_dir / "model")


def check_device(device: str) -> None:
    """``--device`` names a device this machine has (one line, exit 2, otherwise)."""
    from ..device import select_device

    try:
        select_device(device)
    except ValueError as exc:
        fail(str(exc))


def check_preset(arch: str, preset: str) -> None:
    from ..models import presets

    known = list(presets(arch))
    if preset not in known:
        fail(f"--preset {preset}: expected one of {', '.join(known)} for --arch {arch}")


def _open_unlabeled(paths, out_dir: Path, workers: int, quiet: bool):
    """A prepared store of extra unlabelled audio: a prepared dataset as is, or folders of
    audio decoded once into ``OUT_DIR/unlabeled`` (resumable, reused on --resume)."""
    from ..dataset import PreparedDataset, prepare_dataset, tracks_from_folder

    if len(paths) == 1 and (Path(paths[0]) / "dataset.json").is_file():
        return PreparedDataset(paths[0])
    unlisted = []
    tracks = [t for p in paths for t in tracks_from_folder(p, on_error=unlisted.append)]
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise ValueError(f"--unlabeled: cannot list {unlisted[0].path} ({unlisted[0].reason}){more}; "
                         "fix its permissions or leave that folder out")
    if not tracks:
        raise ValueError(f"--unlabeled: no audio files in {', '.join(map(str, paths))}")
    store = Path(out_dir) / "unlabeled"
    if not quiet:
        console.print(f"decoding {len(tracks)} unlabelled tracks into {one_line(store)} (once; reused on --resume)",
                      highlight=False, soft_wrap=True)
    prepare_dataset(tracks, store, workers=workers or 1)
    return PreparedDataset(store)


@app.command()
def train(
    dataset: Path = typer.Argument(..., help="A dataset made by `mttag prepare`."),
    out_dir: Path = typer.Argument(..., help="Run directory: checkpoint, metrics.jsonl and the best model in OUT_DIR/model."),
    arch: Arch = typer.Option(Arch.transformer, "--arch", help="Model architecture."),
    preset: str = typer.Option("teacher", "--preset", help="teacher, small or tiny (a few 100 k parameters, for CPU)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="The paper's data augmentation on the training device."),
    augment_p: Optional[list[str]] = typer.Option(None, "--augment-p", metavar="NAME=P", help="Change one augmentation's probability (repeatable): polarity, noise, gain, filter, delay, pitch_shift, reverb; e.g. --augment-p reverb=0 when reverb is one of your tags."),
    crop_seconds: Optional[float] = typer.Option(None, "--crop-seconds", help="Training crop length (default 10 for the Transformer, 3.69 for the ResNet)."),
    batch_size: int = typer.Option(32, "--batch-size", min=2),
    lr: float = typer.Option(1e-4, "--lr"),
    max_epochs: int = typer.Option(200, "--max-epochs", min=1),
    patience: int = typer.Option(20, "--patience", min=1, help="Stop after this many epochs without a better validation loss."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", min=1, help="Default: one pass over the training tracks."),
    eval_chunks: int = typer.Option(8, "--eval-chunks", min=1, help="Evenly spaced crops per validation track."),
    device: str = typer.Option("auto", "--device"),
    workers: int = typer.Option(2, "--workers", min=0, help="Data loading processes."),
    seed: int = typer.Option(0, "--seed"),
    split: Optional[str] = typer.Option(None, "--split", help="'cals': check the dataset was prepared from the CALS split."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Knowledge expansion: a trained model that labels the unlabelled tracks."),
    unlabeled: Optional[list[Path]] = typer.Option(None, "--unlabeled", help="Extra unlabelled audio: folders or a prepared dataset (with --teacher)."),
    unlabeled_fraction: float = typer.Option(0.5, "--unlabeled-fraction", min=0.05, max=0.95),
    pseudo_weight: float = typer.Option(1.0, "--pseudo-weight", min=0.0),
    rounds: int = typer.Option(1, "--rounds", min=1, help="With --teacher: iterate, each student becoming the next teacher."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT_DIR from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a tagging model on a prepared dataset (Adam, BCE, random crops, the paper's recipe)."""
    from ..training import TrainConfig

    if split is not None:
        _check_split(dataset, split)
    check_preset(arch.value, preset)
    check_device(device)
    if unlabeled and not teacher:
        fail("--unlabeled needs --teacher (noisy student training)")
    cfg = TrainConfig(arch=arch.value, preset=preset, crop_seconds=crop_seconds, batch_size=batch_size, lr=lr,
                      max_epochs=max_epochs, patience=patience, steps_per_epoch=steps_per_epoch,
                      eval_chunks=eval_chunks, augment=augment, augment_probabilities=augment_probabilities(augment_p), device=device, workers=workers, seed=seed,
                      teacher=teacher, unlabeled_fraction=unlabeled_fraction, pseudo_weight=pseudo_weight)
    if rounds > 1 and not teacher:
        fail("--rounds needs --teacher")
    run_rounds(dataset, out_dir, cfg, rounds, resume, unlabeled, quiet)


def _check_split(dataset: Path, split: str) -> None:
    if split.lower() != "cals":
        fail(f"--split {split}: only 'cals' is known")
    from ..dataset import PreparedDataset
    from ..vocab import CALS_TAGS

    try:
        tags = PreparedDataset(dataset).tags
    except (OSError, ValueError, KeyError) as exc:
        fail(str(exc))
    if tags != CALS_TAGS:
        fail(f"{dataset} was not prepared from the CALS split (prepare it with: mttag prepare OUT --split cals ...)")
