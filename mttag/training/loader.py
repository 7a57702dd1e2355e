"""What the training loop reads: random crops of prepared tracks (:class:`CropDataset`), fixed
chunks for validation (:class:`ChunkDataset`), and an epoch order each rank shards (:class:`EpochSampler`)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .store import PreparedDataset


# ---------------------------------------------------------------- data
class CropDataset(Dataset):
    """Random crops of tracks of a prepared dataset, with their label rows."""

    def __init__(self, data: PreparedDataset, indices: np.ndarray, crop: int, labels: np.ndarray | None = None):
        self.data, self.indices, self.crop = data, np.asarray(indices), crop
        self.labels = data.labels if labels is None else labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        # torch seeds each worker (and each epoch) differently, so crops differ across both
        rng = np.random.default_rng(torch.randint(0, 2**62, (1,)).item())
        return torch.from_numpy(self.data.random_crop(i, self.crop, rng)), torch.from_numpy(self.labels[i])


class ChunkDataset(Dataset):
    """``n`` evenly spaced crops of each track, for validation and evaluation."""

    def __init__(self, data: PreparedDataset, indices: np.ndarray, crop: int, n: int):
        self.data, self.indices, self.crop, self.n = data, np.asarray(indices), crop, n

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        return torch.from_numpy(self.data.evenly_spaced_crops(i, self.crop, self.n)), k


class EpochSampler(Sampler):
    """``num_samples`` indices per epoch for this rank, drawn from permutations seeded by
    ``(seed, epoch)``: each epoch's batches depend only on the epoch number, which makes
    ``--resume`` exact, and ranks take disjoint interleaved shards of the same permutation."""

    def __init__(self, n: int, num_samples: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.num_samples, self.seed, self.rank, self.world = n, num_samples, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        need = self.num_samples * self.world
        order = np.concatenate([rng.permutation(self.n) for _ in range(-(-need // self.n))])
        return iter(order[self.rank :: self.world][: self.num_samples].tolist())
