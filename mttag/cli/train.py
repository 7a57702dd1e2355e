"""``mttag train``: supervised training, or knowledge expansion with ``--teacher``."""

from __future__ import annotations

import contextlib
import os
import time
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from ..models.params import preset_names
from ._common import (
    EXIT_INTERRUPTED,
    app,
    augment_probabilities,
    console,
    fail,
    model_param_overrides,
    one_line,
    sigterm_as_interrupt,
    warn_if_bf16_is_emulated,
)


class Arch(str, Enum):
    transformer = "transformer"
    resnet = "resnet"


# From the presets themselves (torch-free), so the help lists every preset --preset accepts.
PRESET_HELP = "; ".join(f"--arch {a.value}: {', '.join(preset_names(a.value))}" for a in Arch) + \
    " (tiny: a few 100 k parameters, for CPU; the sizes: docs/training.md)."


class RunClock:
    """Time left in the whole run, were it to go to ``--max-epochs`` (early stopping can
    only end it sooner, hence the "≤" shown with it). Measured, not guessed: the pace of
    this epoch's steps until one epoch has finished, then the mean length of the
    finished epochs, validation included."""

    def __init__(self, now=time.monotonic) -> None:
        self.now = now
        self.epoch_seconds: list[float] = []
        self.mark: tuple[float, int] | None = None  # (time, step) of the first step seen this epoch

    def step(self, s: dict) -> float | None:
        t = self.now()
        if self.mark is None or s["step"] <= self.mark[1]:
            self.mark = (t, s["step"])  # a new epoch (or the first step of this process)
        steps_timed = s["step"] - self.mark[1]
        per_step = (t - self.mark[0]) / steps_timed if steps_timed else None
        if self.epoch_seconds:
            epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
            this_epoch = per_step * (s["steps"] - s["step"]) if per_step else epoch * (1 - s["step"] / s["steps"])
        elif per_step:
            epoch = per_step * s["steps"]
            this_epoch = per_step * (s["steps"] - s["step"])
        else:
            return None
        return this_epoch + (s["epochs"] - s["epoch"]) * epoch

    def epoch_done(self, seconds: float, epoch: int, epochs: int) -> float:
        self.epoch_seconds.append(seconds)
        self.mark = None
        return (epochs - epoch) * sum(self.epoch_seconds) / len(self.epoch_seconds)


def clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_training(dataset, out_dir, cfg, resume, unlabeled_paths, quiet, force=False):
    """Shared by ``train`` and ``distill``: open data, run, print progress and a summary."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

    from ..errors import TrainingError
    from ..training.loop import train
    from ..training.prepare import PrepareInterrupted
    from ..training.store import PreparedDataset
    from ..weights.modelfile import ModelLoadError

    try:
        data = PreparedDataset(dataset) if dataset is not None else None
        unlabeled = _open_unlabeled(unlabeled_paths, out_dir, cfg.workers, quiet) if unlabeled_paths else None
    except (KeyboardInterrupt, PrepareInterrupted):
        console.print("[yellow]interrupted[/] while decoding the unlabelled audio: run the same command again "
                      "to go on", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    # On a terminal: a bar for this epoch (steps, loss, speed, time left in it) under
    # "epoch k/N" and the time left in the whole run. Redirected or --quiet: no bar,
    # only the one-line epoch summaries, never wrapped, so logs grep cleanly.
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[status]}"),
                        TimeRemainingColumn(), TextColumn("run ≤ {task.fields[run_left]}"),
                        console=console, transient=True, disable=quiet or not console.is_terminal)
    clock = RunClock()
    task = None

    def on_step(s):
        status = f"loss {s['loss']:.4f}  {s['samples_per_s']:.1f} samples/s"
        progress.update(task, description=f"epoch {s['epoch']}/{s['epochs']}", completed=s["step"],
                        total=s["steps"], status=status, run_left=clock_text(clock.step(s)))

    def on_epoch(r):
        left = clock.epoch_done(r.seconds, r.epoch, cfg.max_epochs)
        if quiet:
            return
        auc = f"  ROC-AUC {r.roc_auc:.4f}  PR-AUC {r.pr_auc:.4f}" if r.roc_auc is not None else ""
        pseudo = f"  pseudo {r.train_pseudo_loss:.4f}" if r.train_pseudo_loss is not None else ""
        sup = f"  train {r.train_loss:.4f}" if r.train_loss is not None else ""
        rest = f"  run ≤ {clock_text(left)} left" if r.epoch < cfg.max_epochs else ""
        console.print(f"epoch {r.epoch}/{cfg.max_epochs}:{sup}{pseudo}  valid {r.valid_loss:.4f}{auc}  "
                      f"{r.samples_per_s:.1f} samples/s  {r.seconds:.0f} s" + ("  [green]best[/]" if r.best else "")
                      + rest, highlight=False, soft_wrap=True)

    try:
        with progress:
            # shown at once: loading a teacher, building the model and starting the data
            # workers take a while before the first step
            task = progress.add_task("starting: loading the data and the model", total=None, status="",
                                     run_left=clock_text(None))
            best = train(data, out_dir, cfg, resume=resume, unlabeled=unlabeled, on_step=on_step, on_epoch=on_epoch,
                         force=force)
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


def run_rounds(dataset, out_dir: Path, cfg, rounds: int, resume: bool, unlabeled, quiet: bool,
               force: bool = False) -> None:
    """Each round's student becomes the next round's teacher; every round keeps its own
    run directory (``OUT/round1``, ...) so all of them are exported and resumable.

    OUT_DIR is locked for the whole run (one writer per directory; under torchrun, rank 0
    holds it), and SIGTERM stops the run like Ctrl+C: exit 130, resumable. A file in a run
    directory that mttag did not write is refused before anything is created, unless ``force``."""
    from ..errors import TrainingError
    from ..training.rundir import check_run_dir, run_lock
    from ..training.store import PreparedDataset
    from ..util.fileio import LockedError

    if dataset is not None:  # before OUT_DIR is created
        try:
            PreparedDataset(dataset)
        except (OSError, ValueError) as exc:
            fail(str(exc))
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out_dir}: exists and is not a directory")
    try:
        for run_dir in [out_dir] if rounds == 1 else [out_dir / f"round{k}" for k in range(1, rounds + 1)]:
            check_run_dir(run_dir, force)
    except TrainingError as exc:
        fail(str(exc))
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
            run_training(dataset, run_dir, cfg, resume and (run_dir / "checkpoint.pt").exists(), unlabeled, quiet, force)
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
    from ..training.prepare import prepare_dataset
    from ..training.sources import tracks_from_folder
    from ..training.store import PreparedDataset

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


# The options `train` and `distill` share, each defined once (flags, default, limits, help).
# Typer reads an option from a parameter's default value, so each command calls `option(name)`.
_SHARED_OPTIONS: dict[str, tuple[Any, tuple[str, ...], dict[str, Any]]] = {
    "unlabeled": (None, ("--unlabeled",), dict(metavar="DIR", help="Extra unlabelled audio (repeatable): a folder of audio or a prepared dataset; needs --teacher.")),
    "rounds": (1, ("--rounds",), dict(min=1, help="Iterate: each round's student is the next round's teacher (OUT_DIR/round1, ...); needs --teacher.")),
    "augment": (True, ("--augment/--no-augment",), dict(help="The paper's data augmentation, on the training device.")),
    "augment_p": (None, ("--augment-p",), dict(metavar="NAME=P", help="Change one augmentation's probability (repeatable): polarity, noise, gain, filter, delay, pitch_shift, reverb; e.g. --augment-p reverb=0 when reverb is one of your tags.")),
    "crop_seconds": (None, ("--crop-seconds",), dict(help="Training crop length (default: 10 for the Transformer, 3.69 for the ResNet).")),
    "batch_size": (32, ("--batch-size",), dict(min=2, help="Crops per step (labelled and unlabelled together).")),
    "lr": (1e-4, ("--lr",), dict(help="Adam learning rate.")),
    "max_epochs": (200, ("--max-epochs",), dict(min=1, help="Stop after this many epochs at the latest.")),
    "patience": (20, ("--patience",), dict(min=1, help="Stop after this many epochs without a better validation loss.")),
    "steps_per_epoch": (None, ("--steps-per-epoch",), dict(min=1, help="Default: one pass over the training tracks.")),
    "eval_chunks": (8, ("--eval-chunks",), dict(min=1, help="Evenly spaced crops per validation track, predictions averaged.")),
    "epoch_over": ("unlabeled", ("--epoch-over",), dict(help="With a teacher: one epoch is a pass over the 'unlabeled' tracks (the authors' definition; the labelled ones cycle) or over the 'labeled' ones.")),
    "unlabeled_fraction": (0.5, ("--unlabeled-fraction",), dict(min=0.05, max=0.95, help="Share of each batch taken from the unlabelled tracks (with a teacher).")),
    "pseudo_weight": (1.0, ("--pseudo-weight",), dict(min=0.0, help="Weight of the loss on the teacher's labels.")),
    "device": ("auto", ("--device",), dict(help="auto, cpu, cuda, cuda:N or mps.")),
    "precision": ("auto", ("--precision",), dict(help="auto (bf16 autocast on CUDA, float32 elsewhere), fp32, or bf16 on any device: on CPUs with native bf16 (AVX-512 BF16, AMX) training steps are about 1.7x faster.")),
    "workers": (2, ("--workers",), dict(min=0, help="Data loading processes.")),
    "seed": (0, ("--seed",), dict(help="Seed of model initialisation, crops and augmentation.")),
    "resume": (False, ("--resume",), dict(help="Continue the run in OUT_DIR from its last checkpoint.")),
    "quiet": (False, ("--quiet", "-q"), dict(help="Print nothing but errors: no progress, no epoch lines.")),
    "force": (False, ("--force",), dict(help="Replace files in OUT_DIR that mttag did not write (train_config.json, metrics.jsonl, finished.json, model/config.json, model/README.md, model/model.safetensors); without it such a file stops the run before it starts.")),
}


def _epoch_over(value: str) -> str:
    if value not in ("unlabeled", "labeled"):
        fail(f"--epoch-over {value}: expected 'unlabeled' or 'labeled'")
    return value


def check_precision(precision: str, device: str, quiet: bool) -> str:
    """``--precision`` is auto, fp32 or bf16 (one line, exit 2, otherwise); bf16 on a CPU
    without native bf16 is allowed with a warning (PyTorch emulates it, slower than float32)."""
    from ..device import PRECISIONS, select_device

    if precision not in PRECISIONS:
        fail(f"--precision {precision}: expected auto, fp32 or bf16")
    warn_if_bf16_is_emulated(precision, select_device(device).type, quiet)
    return precision


def option(name: str) -> Any:
    default, flags, settings = _SHARED_OPTIONS[name]
    return typer.Option(default, *flags, **settings)


def make_config(teacher: str | None, augment_p: list[str] | None, **settings: Any):
    """The run's TrainConfig from the shared options (and --arch/--preset/student config)."""
    from ..training.loop import TrainConfig

    return TrainConfig(teacher=teacher, augment_probabilities=augment_probabilities(augment_p), **settings)


@app.command()
def train(
    dataset: Path = typer.Argument(..., help="A dataset made by `mttag prepare`."),
    out_dir: Path = typer.Argument(..., help="Run directory: checkpoint, metrics.jsonl and the best model in OUT_DIR/model."),
    arch: Arch = typer.Option(Arch.transformer, "--arch", help="Model architecture."),
    preset: str = typer.Option("teacher", "--preset", help=PRESET_HELP),
    param: Optional[list[str]] = typer.Option(None, "--param", metavar="KEY=VALUE", help="Change one architecture parameter of the preset (repeatable), e.g. --param depth=6 --param n_mels=96 (the parameters: docs/training.md)."),
    split: Optional[str] = typer.Option(None, "--split", help="'cals': check the dataset was prepared from the CALS split."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Knowledge expansion: a trained model that labels the unlabelled tracks."),
    unlabeled: Optional[list[Path]] = option("unlabeled"),
    rounds: int = option("rounds"),
    augment: bool = option("augment"),
    augment_p: Optional[list[str]] = option("augment_p"),
    crop_seconds: Optional[float] = option("crop_seconds"),
    batch_size: int = option("batch_size"),
    lr: float = option("lr"),
    max_epochs: int = option("max_epochs"),
    patience: int = option("patience"),
    steps_per_epoch: Optional[int] = option("steps_per_epoch"),
    eval_chunks: int = option("eval_chunks"),
    unlabeled_fraction: float = option("unlabeled_fraction"),
    epoch_over: str = option("epoch_over"),
    pseudo_weight: float = option("pseudo_weight"),
    device: str = option("device"),
    precision: str = option("precision"),
    workers: int = option("workers"),
    seed: int = option("seed"),
    resume: bool = option("resume"),
    quiet: bool = option("quiet"),
    force: bool = option("force"),
) -> None:
    """Train a tagging model on a prepared dataset (Adam, BCE, random crops, the paper's recipe).

    Example: [bold]mttag train ./cals-ds runs/teacher --preset teacher[/] trains the paper's teacher (on a GPU;
    days on a CPU); [bold]--preset tiny --crop-seconds 3 --max-epochs 20[/] gives a quick model on a CPU.
    Stopped (Ctrl+C, a crash)? The same command plus [bold]--resume[/] goes on from the last epoch.

    Knowledge expansion: [bold]mttag train ./cals-ds runs/student --teacher runs/teacher/model --unlabeled ~/Music[/].
    """
    if split is not None:
        _check_split(dataset, split)
    check_preset(arch.value, preset)
    model_params = model_param_overrides(param, arch.value, preset=preset)
    check_device(device)
    if unlabeled and not teacher:
        fail("--unlabeled needs --teacher (noisy student training)")
    cfg = make_config(teacher, augment_p, arch=arch.value, preset=preset, model_params=model_params,
                      augment=augment, crop_seconds=crop_seconds,
                      batch_size=batch_size, lr=lr, max_epochs=max_epochs, patience=patience,
                      steps_per_epoch=steps_per_epoch, eval_chunks=eval_chunks, unlabeled_fraction=unlabeled_fraction,
                      epoch_over=_epoch_over(epoch_over), pseudo_weight=pseudo_weight, device=device, workers=workers,
                      seed=seed, precision=check_precision(precision, device, quiet))
    if rounds > 1 and not teacher:
        fail("--rounds needs --teacher")
    run_rounds(dataset, out_dir, cfg, rounds, resume, unlabeled, quiet, force)


def _check_split(dataset: Path, split: str) -> None:
    if split.lower() != "cals":
        fail(f"--split {split}: only 'cals' is known")
    from ..inference.vocab import CALS_TAGS
    from ..training.store import PreparedDataset

    try:
        tags = PreparedDataset(dataset).tags
    except (OSError, ValueError, KeyError) as exc:
        fail(str(exc))
    if tags != CALS_TAGS:
        fail(f"{dataset} was not prepared from the CALS split (prepare it with: mttag prepare OUT --split cals ...)")
