"""Scoring a model on a prepared split: per-track probabilities from evenly spaced chunks, the
loss, and macro/per-tag ROC-AUC and PR-AUC (``mttag evaluate``, and validation in the loop)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..device import select_device
from ..errors import TrainingError
from ..models import place
from .distributed import gather
from .loader import ChunkDataset
from .metrics import tagging_metrics
from .store import PreparedDataset


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_tracks(model: nn.Module, data: PreparedDataset, indices: np.ndarray, crop: int, chunks: int,
                   device: torch.device, batch_size: int = 8, workers: int = 0, rank: int = 0, world: int = 1,
                   amp: bool = False, probabilities: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Track-level probabilities (mean over ``chunks`` evenly spaced crops) for ``indices``;
    with several ranks each predicts a shard and all get the whole result.
    ``probabilities`` maps a batch of crops to probabilities (default: sigmoid of ``model``)."""
    if probabilities is None:
        probabilities = lambda x: torch.sigmoid(model(x).float())  # noqa: E731
    was_training = model.training
    model.eval()
    shard = np.arange(len(indices))[rank::world]
    ds = ChunkDataset(data, np.asarray(indices)[shard], crop, chunks)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    local: dict[int, np.ndarray] = {}
    for x, k in loader:
        b = x.shape[0]
        x = x.to(device, non_blocking=True).flatten(0, 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            p = probabilities(x).float().view(b, chunks, -1).mean(1).cpu().numpy()
        for kk, pp in zip(k.tolist(), p):
            local[int(shard[kk])] = pp
    model.train(was_training)
    merged: dict[int, np.ndarray] = {}
    for part in gather(local, world):
        merged.update(part)
    return np.stack([merged[i] for i in range(len(indices))])


def bce(probs: np.ndarray, targets: np.ndarray) -> float:
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))


def evaluate(model: nn.Module, dataset: str | Path | PreparedDataset, split: str = "test", chunks: int = 8,
             device: str | torch.device = "auto", batch_size: int = 8, workers: int = 0) -> dict[str, Any]:
    """Macro and per-tag ROC-AUC / PR-AUC of ``model`` on a split, with the validation chunking.

    Tags are matched by name, so a model can be scored on any dataset sharing
    some of its vocabulary (for example a converted MSD model on your own tags).
    """
    data = PreparedDataset(dataset) if isinstance(dataset, (str, Path)) else dataset
    dev = select_device(device) if isinstance(device, str) else device
    model = place(model, dev).eval()
    indices = data.split(split)
    if len(indices) == 0:
        raise TrainingError(f"the dataset has no '{split}' tracks")
    model_tags = list(model.config.tags)
    common = [t for t in data.tags if t in model_tags]
    if not common:
        raise TrainingError("the model and the dataset share no tag names")
    probs = predict_tracks(model, data, indices, model.config.crop_samples, chunks, dev, batch_size, workers)
    probs = probs[:, [model_tags.index(t) for t in common]]
    labels = data.labels[indices][:, [list(data.tags).index(t) for t in common]]
    result = tagging_metrics(labels > 0.5, probs, common)
    result.update({"split": split, "chunks": chunks, "loss": bce(probs, labels),
                   "tags_not_in_model": [t for t in data.tags if t not in model_tags]})
    return result
