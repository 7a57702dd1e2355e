"""A training run's directory (OUT_DIR): its lock, what files are mttag's, the checkpoint's random
state and loading, the dataset identity a resumed run must match, and the metrics log."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError
from ..models import ModelConfig
from ..util.display import printable
from ..util.fileio import ExclusiveLock, atomic_write
from ..weights.modelfile import foreign_model_files
from .store import PreparedDataset

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "metrics.jsonl"
MODEL_DIR_NAME = "model"
FINISHED_NAME = "finished.json"
LOCK_NAME = ".lock"


# ---------------------------------------------------------------- checkpoints
def rng_state(augment=None) -> dict[str, Any]:
    """The random state a resumed run needs to go on exactly: torch's (crop positions,
    dropout, the DataLoader workers' seeds), CUDA's, and the augmentation chain's own
    generator. Nothing in a run draws from numpy's or Python's global generators (the
    samplers use generators seeded by (seed, epoch)), so those are neither seeded nor
    saved; checkpoints that still hold them resume all the same."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "augment": augment.generator.get_state() if augment is not None else None}


def set_rng_state(state: dict[str, Any], augment=None) -> None:
    if augment is not None and state.get("augment") is not None:
        augment.generator.set_state(state["augment"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the run directory
_held_locks: set[str] = set()


@contextlib.contextmanager
def run_lock(out_dir: str | Path, what: str | None = None) -> Iterator[None]:
    """Hold ``OUT_DIR/.lock`` (creating ``OUT_DIR``) so that no second run writes into the
    same directory: another process is refused with :class:`mttag.util.fileio.LockedError`,
    whose message names it (pid and command line). Re-entrant within one process, so
    the command line can lock a directory before :func:`train` locks it again."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(out_dir)
    if key in _held_locks:
        yield
        return
    with ExclusiveLock(out_dir / LOCK_NAME, what or f"another training run in {out_dir}"):
        _held_locks.add(key)
        try:
            yield
        finally:
            _held_locks.discard(key)


def architecture_of(config: ModelConfig) -> dict[str, Any]:
    """What a checkpoint's weights depend on, as plain data (loads with ``weights_only``): the
    output units are the vocabulary's tags in its order, so the names and order are kept."""
    return {"arch": config.arch, "preset": config.preset, "params": json.loads(json.dumps(config.params)),
            "num_tags": len(config.tags), "tags": list(config.tags)}


def dataset_identity(data: PreparedDataset | None) -> dict[str, Any] | None:
    """What identifies a prepared dataset for ``--resume``: a digest of its track list (each
    track's path as given in its source, split and label row, in path order, so that preparing
    the same sources again gives the same digest) and its vocabulary, with its size and the
    path it was opened from (for messages). Read from the documented on-disk files."""
    if data is None:
        return None
    root = Path(data.path)
    index = np.load(root / "index.npy")
    blob = (root / "paths.bin").read_bytes()
    labels = np.load(root / "labels.npy")
    keys = []
    for row, lab in zip(index, labels):
        start, size = int(row["path_start"]), int(row["path_len"])
        keys.append(blob[start : start + size] + b"\0" + bytes([int(row["split"]) & 0xFF]) + lab.tobytes())
    digest = hashlib.sha256(json.dumps(list(data.tags), ensure_ascii=False).encode("utf-8"))
    for key in sorted(keys):
        digest.update(len(key).to_bytes(4, "little") + key)
    return {"digest": digest.hexdigest(), "tracks": len(keys), "path": str(data.path)}


def _json_object(path: Path) -> Any:
    try:
        if path.stat().st_size > 10_000_000:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _is_run_log(path: Path) -> bool:
    """metrics.jsonl as :func:`_save_epoch` writes it: one JSON object with an epoch per line
    (the last line may be torn by a kill)."""
    try:
        if path.stat().st_size > 100_000_000:
            return False
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return False
    for k, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if k == len(lines) - 1:
                continue
            return False
        if not (isinstance(record, dict) and "epoch" in record and "valid_loss" in record):
            return False
    return True


# The files of a run directory other than its checkpoint and model, and how to know mttag's own.
_RUN_FILES: dict[str, Callable[[Path], bool]] = {
    # fields every mttag version has written (later ones add more)
    "train_config.json": lambda p: isinstance(d := _json_object(p), dict)
    and {"arch", "preset", "batch_size", "lr", "max_epochs"} <= set(d),
    LOG_NAME: _is_run_log,
    FINISHED_NAME: lambda p: isinstance(d := _json_object(p), dict) and "epochs" in d
    and set(d) <= {"epochs", "best_valid_loss"},
    # the lock file holds its holder's "pid N: command" line, or nothing once released
    LOCK_NAME: lambda p: _head(p, 4) in (b"", b"pid "),
}


def foreign_run_files(out_dir: str | Path) -> list[Path]:
    """The files a run in ``out_dir`` would replace or append to that mttag did not write
    (train_config.json, metrics.jsonl, finished.json, .lock, and the model directory's
    files); ``[out_dir]`` itself when it is not a directory."""
    out_dir = Path(out_dir)
    if not os.path.lexists(out_dir):
        return []
    if not out_dir.is_dir():
        return [out_dir]
    foreign = []
    for name, ours in _RUN_FILES.items():
        path = out_dir / name
        if os.path.lexists(path):
            try:
                mine = path.is_file() and ours(path)
            except OSError:
                mine = False
            if not mine:
                foreign.append(path)
    return foreign + foreign_model_files(out_dir / MODEL_DIR_NAME)


def check_run_dir(out_dir: str | Path, force: bool = False) -> None:
    """Raise :class:`TrainingError` (one line, naming the file) when a run in ``out_dir`` would
    replace or append to a file mttag did not write, unless ``force``; a directory an earlier
    run made (its own train_config.json, log, model card, ...) passes, so ``--resume`` works."""
    out_dir = Path(out_dir)
    foreign = foreign_run_files(out_dir)
    if foreign and foreign[0] == out_dir:
        raise TrainingError(f"{printable(out_dir)}: exists and is not a directory")
    if out_dir / MODEL_DIR_NAME in foreign:  # listed only when it is not a folder: --force cannot help
        raise TrainingError(f"{printable(out_dir / MODEL_DIR_NAME)}: exists and is not a directory; "
                            "the run exports its model there")
    if foreign and not force:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise TrainingError(f"{printable(foreign[0])}{more}: exists and was not written by mttag; refusing to "
                            "replace it (add --force to replace it, or choose another OUT_DIR)")


def run_settings(out_dir: Path) -> str:
    """``--arch A --preset P`` (or ``--student FILE``) of the run in ``out_dir``, from its
    train_config.json; empty when unknown."""
    try:
        old = json.loads((out_dir / "train_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(old, dict):
        return ""
    if old.get("student_config"):
        return "a custom --student config"
    return f"--arch {old.get('arch', '?')} --preset {old.get('preset', '?')}"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint as saved by :func:`train`, loaded with ``weights_only=True`` only;
    anything else is a one-line :class:`TrainingError` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt zip, truncated file, pickled code, ...
        import pickle

        if isinstance(exc, pickle.UnpicklingError) and "weights" in str(exc).lower():
            why = "it holds pickled Python objects, which mttag never loads"
        else:
            why = f"{type(exc).__name__}"
        raise TrainingError(f"--resume: {path} is corrupt or not an mttag checkpoint ({why}); "
                            "start a new run in another OUT_DIR") from None
    needed = ("model", "optimizer", "epoch", "best_loss", "bad_epochs", "rng")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise TrainingError(f"--resume: {path} is not an mttag checkpoint (keys missing); "
                            "start a new run in another OUT_DIR")
    return state


def trim_log(log: Path, epochs: int) -> None:
    """Drop lines of epochs after the checkpoint's (a kill between the log line and the
    checkpoint), so the epoch that --resume runs again is not logged twice."""
    if not log.is_file():
        return
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            epoch = int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
        if epoch <= epochs:
            keep.append(line if line.endswith("\n") else line + "\n")
    if keep != lines:
        atomic_write(log, lambda p: p.write_text("".join(keep), encoding="utf-8"))
