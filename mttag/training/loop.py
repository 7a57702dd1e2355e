"""Supervised and noisy-student training (the paper's recipe, arXiv:2111.13457; docs/training.md, docs/noisy-student.md), on one device or many.

One loop serves both: each step draws a labelled batch; with a teacher it also
draws an unlabelled batch, which the teacher labels (eval mode, no gradient,
clean audio) and the student learns from after augmentation. Run it under
``torchrun`` and it uses DistributedDataParallel: every rank trains on its own
shard, validation predictions are gathered, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..audio.windows import even_starts
from ..device import resolve_precision, select_device
from ..errors import TrainingError
from ..models import ModelConfig, build_model, crop_seconds_for, make_config, place
from ..util.display import printable
from ..util.fileio import LockedError, atomic_write
from ..weights.modelfile import ForeignFileError, save_model
from .distributed import gather, init_distributed
from .evaluation import bce, predict_tracks
from .loader import CropDataset, EpochSampler
from .metrics import tagging_metrics
from .rundir import (
    CHECKPOINT_NAME,
    FINISHED_NAME,
    LOG_NAME,
    MODEL_DIR_NAME,
    architecture_of,
    check_run_dir,
    dataset_identity,
    load_checkpoint,
    rng_state,
    run_lock,
    run_settings,
    set_rng_state,
    trim_log,
)
from .store import PreparedDataset


@dataclass
class TrainConfig:
    """Everything a run needs besides the data; stored in the checkpoint for ``--resume``."""

    arch: str = "transformer"
    preset: str = "teacher"
    model_params: dict[str, Any] = field(default_factory=dict)  # overrides of the preset
    crop_seconds: float | None = None  # None: the architecture's default (10 s / 3.69 s)
    batch_size: int = 32
    lr: float = 1e-4
    max_epochs: int = 200
    patience: int = 20
    steps_per_epoch: int | None = None  # None: one pass over the tracks `epoch_over` names
    eval_chunks: int = 8
    augment: bool = True
    augment_probabilities: dict[str, float] = field(default_factory=dict)
    # 'auto': bf16 autocast on CUDA; 'fp32'; 'bf16': on any device, e.g. CPUs with native bf16
    # (AVX-512 BF16, AMX), where it makes training steps ~1.7x faster
    precision: str = "auto"
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    # noisy student (docs/noisy-student.md)
    teacher: str | None = None
    unlabeled_fraction: float = 0.5  # share of each batch that is unlabelled
    pseudo_weight: float = 1.0
    # What one epoch passes over when a teacher labels unlabelled tracks beside labelled ones:
    # "unlabeled", as the authors' noisy student code does (the labelled loader cycles), or
    # "labeled" (mttag 0.1: the student then sees far fewer pseudo-labelled crops per epoch).
    epoch_over: str = "unlabeled"
    student_config: dict[str, Any] | None = None  # a full ModelConfig dict (--student CONFIG.json)


# ---------------------------------------------------------------- teacher
@torch.no_grad()
def teacher_probabilities(teacher: nn.Module, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Soft labels for ``wave`` (``B×N`` at ``sample_rate``) from any model directory's model:
    the crop is resampled to the teacher's rate and, when longer than the teacher's
    window, cut into evenly spaced windows whose probabilities are averaged —
    the teacher sees the same audio through its own front end."""
    cfg: ModelConfig = teacher.config
    if cfg.sample_rate != sample_rate:
        import julius

        g = math.gcd(cfg.sample_rate, sample_rate)
        wave = julius.resample_frac(wave, sample_rate // g, cfg.sample_rate // g)
    win = cfg.crop_samples
    n = wave.shape[-1]
    if n <= getattr(teacher, "max_samples", 0):  # a model that takes inputs longer than its crop whole
        return torch.sigmoid(teacher(wave).float())
    if n <= win:
        reps = math.ceil(win / n)
        return torch.sigmoid(teacher(wave.repeat(1, reps)[:, :win]).float())
    k = math.ceil(n / win)  # as few windows as cover the crop
    starts = [round(s) for s in even_starts(n, win, k)]
    chunks = torch.stack([wave[:, s : s + win] for s in starts], 1)  # B×k×win
    probs = torch.sigmoid(teacher(chunks.flatten(0, 1)).float())
    return probs.view(wave.shape[0], k, -1).mean(1)


# ---------------------------------------------------------------- the run
@dataclass
class EpochResult:
    epoch: int
    train_loss: float | None  # None when distilling without labelled data
    train_pseudo_loss: float | None
    valid_loss: float
    roc_auc: float | None
    pr_auc: float | None
    samples_per_s: float
    seconds: float
    best: bool


def train(
    dataset: str | Path | PreparedDataset | None,
    out_dir: str | Path,
    config: TrainConfig,
    resume: bool = False,
    unlabeled: PreparedDataset | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    force: bool = False,
) -> Path:
    """Train a model; returns the exported best model directory (``OUT/model``).

    ``dataset`` gives labelled train/valid tracks (and unlabelled ones for a
    teacher); ``unlabeled`` adds a second store of unlabelled tracks. Without a
    labelled set (distilling a teacher on a music library) the teacher's soft
    labels on held-out unlabelled tracks are the validation targets.

    ``OUT_DIR/.lock`` is held while the run writes (see :func:`run_lock`): a second run
    into the same directory is refused with a :class:`TrainingError`. A file in ``OUT_DIR``
    that mttag did not write (see :func:`check_run_dir`) is refused before anything is
    written, unless ``force``.
    """
    with contextlib.ExitStack() as stack:
        return _train(stack, dataset, out_dir, config, resume, unlabeled, on_step, on_epoch, force)


def _train(stack, dataset, out_dir, config, resume, unlabeled, on_step, on_epoch, force=False) -> Path:
    check_run_dir(out_dir, force)  # before the teacher and the data are loaded
    run = _setup(dataset, Path(out_dir), config, unlabeled)
    run.force = force
    progress = _open_run_dir(stack, run, resume)
    if progress is None:
        return run.out_dir / MODEL_DIR_NAME  # this run already ended (early stopping or max epochs)
    if not run.writer:  # one rank reports, as one rank writes
        on_step = on_epoch = None

    for epoch in range(progress.epochs, config.max_epochs):
        if progress.bad_epochs >= config.patience:
            break
        t0 = time.perf_counter()
        train_loss, pseudo_loss, samples_per_s = _train_epoch(run, epoch, on_step)
        valid_loss, metrics = _validate(run)
        best = progress.epoch_done(valid_loss)
        result = EpochResult(epoch + 1, train_loss, pseudo_loss, valid_loss, metrics["roc_auc"], metrics["pr_auc"],
                             samples_per_s, time.perf_counter() - t0, best)
        _save_epoch(run, result, progress)
        if on_epoch is not None:
            on_epoch(result)
    _finish(run, progress.epochs, progress.best_loss)
    return run.out_dir / MODEL_DIR_NAME


# ---------------------------------------------------------------- setting a run up
@dataclass
class _DataPlan:
    """What each step draws and what validation scores against: the one place where plain
    training, knowledge expansion and distillation (with or without labels) differ."""

    steps: int  # per epoch
    labeled: DataLoader | None  # None: distilling without labelled tracks
    unlabeled: list[DataLoader]  # the teacher labels their crops; step k draws from unlabeled[k % len]
    valid: tuple[PreparedDataset, np.ndarray]  # the tracks scored after each epoch
    valid_by_teacher: bool  # no labels to score against: the teacher's soft labels are the targets
    valid_workers: int
    teacher_targets: np.ndarray | None = None  # filled at the first validation; the teacher is frozen


@dataclass
class _Run:
    """What every stage of a run shares, built once by :func:`_setup`."""

    config: TrainConfig
    out_dir: Path
    rank: int
    world: int
    device: torch.device
    amp: bool
    model_config: ModelConfig
    model: nn.Module
    ddp_model: nn.Module  # ``model`` itself, or wrapped for DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    teacher: nn.Module | None
    augment: Callable[[torch.Tensor], torch.Tensor] | None
    plan: _DataPlan
    dataset_id: dict[str, Any] | None = None  # see dataset_identity(); stored in the checkpoint
    force: bool = False  # replace files mttag did not write (checked by check_run_dir first)

    @property
    def writer(self) -> bool:
        return self.rank == 0


def _setup(dataset, out_dir: Path, config: TrainConfig, unlabeled: PreparedDataset | None) -> _Run:
    """Device, teacher, student and data plan. Every refusal that does not need OUT_DIR
    comes from here, before OUT_DIR is created."""
    rank, world, device, amp = _place(config)
    data = PreparedDataset(dataset) if isinstance(dataset, (str, Path)) else dataset
    teacher = _load_teacher(config.teacher, device)
    tags = _vocabulary(data, teacher)
    model_config = _student_config(config, tags, dataset, data, teacher)

    # each rank draws its own crops and dropout masks; DDP copies rank 0's initial weights to all
    torch.manual_seed(config.seed + rank)
    model = place(build_model(model_config), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    plan = _plan_data(config, data, unlabeled, teacher is not None, model_config.crop_samples, len(tags),
                      rank, world, device)
    augment = None
    if config.augment:
        from .augment import paper_chain

        augment = paper_chain(model_config.sample_rate, seed=config.seed * 1000 + rank, **config.augment_probabilities)
    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return _Run(config, out_dir, rank, world, device, amp, model_config, model, ddp_model, optimizer, teacher,
                augment, plan, dataset_identity(data))


def _place(config: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, bf16 autocast); under torchrun each rank takes its local rank's GPU."""
    rank, world, local_rank = init_distributed()
    device = select_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    amp = resolve_precision(config.precision, device, training=True) == "bf16"
    return rank, world, device, amp


def _load_teacher(source: str | None, device: torch.device) -> nn.Module | None:
    from ..weights.pretrained import load_model

    if not source:
        return None
    teacher = load_model(source, device=str(device))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _vocabulary(data: PreparedDataset | None, teacher: nn.Module | None) -> list[str]:
    """The labelled data's tags, or (pure distillation) the teacher's."""
    if data is not None:
        tags = list(data.tags)
        if teacher is not None and list(teacher.config.tags) != tags:
            raise TrainingError(
                f"the teacher's {len(teacher.config.tags)} tags differ from the dataset's {len(tags)}; "
                "prepare the dataset with the teacher's vocabulary (mttag prepare --vocabulary FILE)"
            )
        return tags
    if teacher is not None:
        return list(teacher.config.tags)
    raise TrainingError("nothing to train on: give a prepared dataset, or a --teacher with --unlabeled audio")


def _student_config(config: TrainConfig, tags: list[str], dataset, data: PreparedDataset | None,
                    teacher: nn.Module | None) -> ModelConfig:
    """The model to train, from ``--arch/--preset`` or a ``--student`` CONFIG.json, with its provenance."""
    try:
        if config.student_config:
            student = {**config.student_config, "tags": tags}
            # the command line's --crop-seconds wins over the file; a file without one gets its architecture's default
            crop = config.crop_seconds if config.crop_seconds is not None else student.get("crop_seconds")
            student["crop_seconds"] = crop_seconds_for(student.get("arch", config.arch), crop)
            model_config = ModelConfig.from_dict(student)
        else:
            model_config = make_config(config.arch, tags, config.preset, config.crop_seconds, **config.model_params)
        model_config.validate()
    except ValueError as exc:  # an unknown preset, a bad student config, a crop too short ...
        raise TrainingError(str(exc)) from None
    model_config.provenance.update({
        "trained_with": "mttag train" if teacher is None else "mttag noisy student",
        "teacher": config.teacher, "augment": config.augment, "seed": config.seed,
        "dataset": str(dataset) if dataset is not None else None,
    })
    if data is not None and data.sample_rate != model_config.sample_rate:
        raise TrainingError(f"the dataset is stored at {data.sample_rate} Hz but the model takes "
                            f"{model_config.sample_rate} Hz")
    return model_config


def _plan_data(config: TrainConfig, data: PreparedDataset | None, unlabeled: PreparedDataset | None,
               with_teacher: bool, crop: int, num_tags: int, rank: int, world: int, device: torch.device) -> _DataPlan:
    """Which tracks the student learns from and which validate it, and how many steps make an epoch.

    Without a teacher a batch is labelled crops only. With one, ``unlabeled_fraction`` of
    each batch is unlabelled crops (the dataset's "unlabeled" split, then ``unlabeled``)
    that the teacher labels. With a teacher and no labelled tracks (distillation from a
    music library) the batch is all unlabelled, and a tenth of the unlabelled tracks is
    held out to validate against the teacher. Each rank gets its own shard of every epoch.
    """
    def split(name: str) -> np.ndarray:
        return data.split(name) if data is not None else np.array([], dtype=np.int64)

    train_idx, valid_idx = split("train"), split("valid")
    sources: list[tuple[PreparedDataset, np.ndarray]] = []  # unlabelled (store, tracks) for the teacher
    if with_teacher:
        if data is not None and len(split("unlabeled")):
            sources.append((data, split("unlabeled")))
        if unlabeled is not None:
            sources.append((unlabeled, np.arange(len(unlabeled))))
        if not sources:
            raise TrainingError("noisy student training needs unlabelled tracks: the dataset has none; add --unlabeled DIR")
    valid, valid_by_teacher = (data, valid_idx), False
    if len(train_idx) == 0:
        if not with_teacher:
            raise TrainingError("the dataset has no labelled training tracks")
        store, idx = sources[0]
        perm = np.random.default_rng(config.seed).permutation(idx)
        n_val = max(1, len(perm) // 10)
        valid, valid_by_teacher = (store, np.sort(perm[:n_val])), True
        sources[0] = (store, np.sort(perm[n_val:]))
    elif len(valid_idx) == 0:
        raise TrainingError("the dataset has no validation tracks")

    n_unl = int(round(config.batch_size * config.unlabeled_fraction)) if with_teacher else 0
    n_lab = config.batch_size - n_unl if len(train_idx) else 0
    if with_teacher and n_unl == 0:
        raise TrainingError("--unlabeled-fraction leaves no unlabelled examples in a batch")
    # An epoch is one pass over the labelled tracks; with a teacher (knowledge expansion,
    # or distillation with or without labels) by default one pass over the unlabelled ones.
    if config.epoch_over not in ("unlabeled", "labeled"):
        raise TrainingError(f"epoch_over must be 'unlabeled' or 'labeled', not {config.epoch_over!r}")
    over_unlabeled = n_unl > 0 and (not n_lab or config.epoch_over == "unlabeled")
    per_step = (n_unl if over_unlabeled else n_lab) * world
    epoch_tracks = sum(len(i) for _, i in sources) if over_unlabeled else len(train_idx)
    steps = config.steps_per_epoch or max(1, math.ceil(epoch_tracks / per_step))

    def loader(ds: Dataset, batch: int, n_steps: int) -> DataLoader:
        sampler = EpochSampler(len(ds), n_steps * batch, config.seed, rank, world)
        return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=config.workers, drop_last=True,
                          pin_memory=device.type == "cuda", persistent_workers=config.workers > 0)

    labeled = loader(CropDataset(data, train_idx, crop), n_lab, steps) if n_lab else None
    unlabeled_loaders = []
    for j, (store, idx) in enumerate(sources):
        placeholders = np.zeros((len(store), num_tags), np.float32)  # collated, then replaced by the teacher's
        share = len(range(j, steps, len(sources)))  # the sources take turns, step by step
        unlabeled_loaders.append(loader(CropDataset(store, idx, crop, labels=placeholders), n_unl, max(1, share)))
    return _DataPlan(steps, labeled, unlabeled_loaders, valid, valid_by_teacher,
                     valid_workers=0 if valid_by_teacher else min(config.workers, 2))


# ---------------------------------------------------------------- OUT_DIR: lock, resume, save
@dataclass
class _Progress:
    """Where a run stands between epochs; its checkpoint stores exactly this."""

    epochs: int = 0  # finished
    best_loss: float = math.inf
    bad_epochs: int = 0  # since the validation loss last improved (early stopping)

    def epoch_done(self, valid_loss: float) -> bool:
        """Count one more epoch; True when its validation loss is the best yet."""
        self.epochs += 1
        if valid_loss < self.best_loss - 1e-6:
            self.best_loss, self.bad_epochs = valid_loss, 0
            return True
        self.bad_epochs += 1
        return False


def _open_run_dir(stack: contextlib.ExitStack, run: _Run, resume: bool) -> _Progress | None:
    """Lock OUT_DIR and say where training starts: from scratch, or from its checkpoint with
    ``resume``; None when the resumed run has already finished."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if run.writer:  # one writer per directory: a second run into it is refused
        try:
            stack.enter_context(run_lock(run.out_dir))
        except LockedError as exc:
            raise TrainingError(str(exc)) from None
    if resume and (run.out_dir / FINISHED_NAME).is_file():
        return None
    if resume:
        progress = _resume(run)
    elif (run.out_dir / CHECKPOINT_NAME).exists():
        raise TrainingError(f"{run.out_dir} already holds a run; use --resume to continue it or choose another OUT_DIR")
    else:
        progress = _Progress()
        if run.writer:  # a log and end mark left by a run killed before its first checkpoint
            (run.out_dir / LOG_NAME).unlink(missing_ok=True)
            (run.out_dir / FINISHED_NAME).unlink(missing_ok=True)
    if run.writer:
        (run.out_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(run.config), indent=2) + "\n")
    return progress


def _resume(run: _Run) -> _Progress:
    """Load OUT_DIR's checkpoint into the model, the optimiser and the random generators; one
    made for another model or tag vocabulary is refused with a message that says what to use."""
    out_dir, ckpt_path = run.out_dir, run.out_dir / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise TrainingError(f"--resume: no {CHECKPOINT_NAME} in {out_dir}")
    state = load_checkpoint(ckpt_path)
    made_with = run_settings(out_dir)
    architecture = architecture_of(run.model_config)
    saved = state.get("architecture")
    if isinstance(saved, dict):
        if (saved.get("arch"), saved.get("params")) != (architecture["arch"], architecture["params"]):
            was = f"--arch {saved.get('arch')} --preset {saved.get('preset')}"
            now = f"--arch {architecture['arch']} --preset {architecture['preset']}"
            old_p, new_p = saved.get("params") or {}, architecture["params"]
            if saved.get("arch") == architecture["arch"] and isinstance(old_p, dict):
                changed = [f"{k} {old_p.get(k)} → {new_p.get(k)}" for k in new_p if old_p.get(k) != new_p.get(k)]
                now += f" (parameters differ: {', '.join(changed)}; see --param)" if changed else ""
            raise TrainingError(f"--resume: {ckpt_path} was made with {was}, a different architecture than "
                                f"{now}; resume with the run's own settings (see {out_dir / 'train_config.json'})")
        if saved.get("num_tags") != architecture["num_tags"]:
            raise TrainingError(f"--resume: {ckpt_path} was trained on {saved.get('num_tags')} tags, this dataset has "
                                f"{architecture['num_tags']}; resume with the run's own dataset")
        old_tags = saved.get("tags")  # None: a checkpoint of mttag 0.1, which kept the count only
        if old_tags is not None and list(old_tags) != architecture["tags"]:
            raise TrainingError(f"--resume: {ckpt_path} {_vocabulary_change(list(old_tags), architecture['tags'])}; "
                                "its output units belong to the checkpoint's tags: resume with the run's own dataset")
    _check_same_dataset(ckpt_path, state.get("dataset"), run.dataset_id)
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:  # a checkpoint from before "architecture" was saved
        was = f" (the run used {made_with})" if made_with else ""
        raise TrainingError(f"--resume: {ckpt_path} does not fit this model{was}: a different --arch, "
                            f"--preset/--student or dataset ({type(exc).__name__})") from None
    rngs = state["rng"]
    # a rank the checkpoint holds no state for (resumed on more ranks) takes rank 0's
    set_rng_state(rngs[run.rank] if run.rank < len(rngs) else rngs[0], run.augment)
    if run.writer:
        trim_log(out_dir / LOG_NAME, int(state["epoch"]))
    return _Progress(state["epoch"], state["best_loss"], state["bad_epochs"])


def _vocabulary_change(old: list[str], new: list[str]) -> str:
    """How the dataset's tags differ from the checkpoint's, for a one-line refusal."""
    if sorted(old) == sorted(new):
        k = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
        return (f"was trained on the same {len(old)} tags in another order (output {k + 1} is "
                f"{printable(old[k])!r} there, {printable(new[k])!r} in this dataset)")
    gone = [t for t in old if t not in new]
    added = [t for t in new if t not in old]
    parts = ([f"without {', '.join(map(printable, gone[:3]))}" + (" ..." if len(gone) > 3 else "")] if gone else []) + \
            ([f"with {', '.join(map(printable, added[:3]))}" + (" ..." if len(added) > 3 else "")] if added else [])
    return f"was trained on another vocabulary (this dataset's tags: {'; '.join(parts)})"


def _check_same_dataset(ckpt_path: Path, saved: Any, now: dict[str, Any] | None) -> None:
    """A resumed run goes on with the dataset it began with: same tracks, splits and labels."""
    if not isinstance(saved, dict) or now is None or saved.get("digest") in (None, now["digest"]):
        return
    was, here = printable(saved.get("path", "?")), printable(now["path"])
    if saved.get("tracks") != now["tracks"]:
        how = f"{was}, {saved.get('tracks', '?')} tracks; {here} has {now['tracks']}"
    else:
        how = f"{was}; {here} has as many tracks, but other tracks, splits or labels"
    raise TrainingError(f"--resume: {ckpt_path} was trained on another dataset ({how}); resume with the run's own "
                        "dataset, or start a new run in another OUT_DIR")


def _save_epoch(run: _Run, result: EpochResult, progress: _Progress) -> None:
    """Export the model when it is the best yet, log the epoch, and write the checkpoint last:
    a run killed before it repeats the epoch on --resume (and :func:`trim_log` drops its line)."""
    if run.writer:
        if result.best:
            metrics = {"valid_loss": result.valid_loss, "epoch": result.epoch}
            metrics.update({k: v for k, v in (("roc_auc", result.roc_auc), ("pr_auc", result.pr_auc)) if v is not None})
            run.model_config.provenance["best_epoch"] = result.epoch
            try:
                save_model(run.model, run.out_dir / MODEL_DIR_NAME, metrics=metrics, force=run.force)
            except ForeignFileError as exc:  # put there during the epoch: check_run_dir saw none
                raise TrainingError(str(exc)) from None
        with open(run.out_dir / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(result)) + "\n")
    rngs = gather(rng_state(run.augment), run.world)  # every rank's, so each resumes its own streams
    if run.writer:
        checkpoint = {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "epoch": progress.epochs,
            "best_loss": progress.best_loss, "bad_epochs": progress.bad_epochs, "rng": rngs,
            "architecture": architecture_of(run.model_config), "dataset": run.dataset_id,
        }
        atomic_write(run.out_dir / CHECKPOINT_NAME, lambda p: torch.save(checkpoint, p))


def _finish(run: _Run, epochs: int, best_loss: float) -> None:
    """Mark the run finished, so that --resume on it does nothing more."""
    if run.writer:
        (run.out_dir / FINISHED_NAME).write_text(json.dumps({"epochs": epochs, "best_valid_loss": best_loss}) + "\n")
    if run.world > 1:
        dist.barrier()  # no rank returns before rank 0 has written


# ---------------------------------------------------------------- an epoch
def _train_epoch(run: _Run, epoch: int, on_step) -> tuple[float | None, float | None, float]:
    """``plan.steps`` optimiser steps; returns the mean supervised and pseudo-label losses
    (None where the run has no such crops) and the samples per second."""
    plan, config = run.plan, run.config
    run.model.train()
    start = time.perf_counter()
    loaders = ([plan.labeled] if plan.labeled is not None else []) + plan.unlabeled
    for loader in loaders:
        loader.sampler.set_epoch(epoch)
    labeled = iter(plan.labeled) if plan.labeled is not None else None
    unlabeled = [iter(loader) for loader in plan.unlabeled]
    sup_sum, pseudo_sum, seen = 0.0, 0.0, 0
    for step in range(plan.steps):
        x, y, n_l = _next_batch(run, labeled, unlabeled, step)
        if run.augment is not None:
            x = run.augment(x)  # labelled and unlabelled crops alike (the paper's noisy student: docs/noisy-student.md)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            logits = run.ddp_model(x)
        losses = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").mean(1)
        sup = losses[:n_l].mean() if n_l else losses.new_zeros(())
        pseudo = losses[n_l:].mean() if unlabeled else losses.new_zeros(())
        loss = sup + config.pseudo_weight * pseudo
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; nothing was saved from this "
                f"epoch. Lower --lr (now {config.lr}) or check the data; --resume restarts from the last good epoch"
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if n_l:
            sup_sum += sup.item()
        if unlabeled:
            pseudo_sum += pseudo.item()
        seen += x.shape[0] * run.world
        if on_step is not None:
            on_step({"epoch": epoch + 1, "epochs": config.max_epochs, "step": step + 1, "steps": plan.steps,
                     "loss": loss.item(), "samples_per_s": seen / (time.perf_counter() - start)})
    seconds = time.perf_counter() - start
    return ((sup_sum / plan.steps) if plan.labeled is not None else None,
            (pseudo_sum / plan.steps) if unlabeled else None, seen / seconds)


def _next_batch(run: _Run, labeled: Iterator | None, unlabeled: list[Iterator],
                step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The step's crops and targets on the device, and how many of them are labelled: the
    labelled crops first, then the step's unlabelled crops with the teacher's soft labels."""
    device = run.device
    parts, targets = [], []
    if labeled is not None:
        x, y = next(labeled)
        parts.append(x)
        targets.append(y)
    if unlabeled:
        z, _ = next(unlabeled[step % len(unlabeled)])  # each yields exactly its share of steps
        z = z.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
            psi = teacher_probabilities(run.teacher, z, run.model_config.sample_rate)  # clean audio in
        parts.append(z)
        targets.append(psi)
    x = torch.cat([p.to(device, non_blocking=True) for p in parts])
    y = torch.cat([t.to(device, non_blocking=True).float() for t in targets])
    return x, y, parts[0].shape[0] if labeled is not None else 0


def _validate(run: _Run) -> tuple[float, dict[str, Any]]:
    """Validation loss and macro ROC-AUC / PR-AUC on the plan's held-out tracks; against the
    teacher's soft labels there are no true tags, so no AUCs (None)."""
    plan, chunks = run.plan, run.config.eval_chunks
    data, idx = plan.valid
    crop = run.model_config.crop_samples
    probs = predict_tracks(run.model, data, idx, crop, chunks, run.device, workers=plan.valid_workers,
                           rank=run.rank, world=run.world, amp=run.amp)
    if not plan.valid_by_teacher:
        targets = data.labels[idx]
        return bce(probs, targets), tagging_metrics(targets > 0.5, probs)
    if plan.teacher_targets is None:
        teacher, sample_rate = run.teacher, run.model_config.sample_rate
        plan.teacher_targets = predict_tracks(
            teacher, data, idx, crop, chunks, run.device, rank=run.rank, world=run.world, amp=run.amp,
            probabilities=lambda x: teacher_probabilities(teacher, x, sample_rate))
    return bce(probs, plan.teacher_targets), {"roc_auc": None, "pr_auc": None}


