"""Where a training step's time goes: data loading, augmentation, teacher, forward+backward.

    python benchmarks/train_step.py --preset teacher --batch-size 32 --device cpu --steps 5

Builds a small prepared dataset of generated audio in a temporary folder, then times each
stage of the training step separately (same code paths as mttag.training).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mttag.augment import paper_chain
from mttag.dataset import TrackSpec, prepare_dataset
from mttag.device import select_device
from mttag.models import build_model, make_config
from mttag.training import CropDataset, EpochSampler, teacher_probabilities


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="transformer")
    ap.add_argument("--preset", default="teacher")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tracks", type=int, default=64)
    args = ap.parse_args()
    device = select_device(args.device)
    amp = device.type == "cuda"
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    specs = []
    for i in range(args.tracks):
        sf.write(tmp / f"{i}.wav", (0.1 * rng.standard_normal(22050 * 30)).astype(np.float32), 22050)
        specs.append(TrackSpec(str(tmp / f"{i}.wav"), ["a"] if i % 2 else ["b"], f"g{i}", "train"))
    data = prepare_dataset(specs, tmp / "ds", min_count=1, tags_vocab=["a", "b"])
    config = make_config(args.arch, ["a", "b"], args.preset)
    model = build_model(config).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    aug = paper_chain(config.sample_rate, seed=0)
    ds = CropDataset(data, data.split("train"), config.crop_samples)
    loader = DataLoader(ds, args.batch_size, sampler=EpochSampler(len(ds), args.batch_size * (args.steps + 1), 0),
                        num_workers=args.workers, pin_memory=amp, drop_last=True)
    times = {"data": [], "augment": [], "teacher (eval, no grad)": [], "forward+backward+step": []}
    it = iter(loader)
    next(it)  # warm-up: worker start
    for _ in range(args.steps):
        t = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        sync(device)
        times["data"].append(time.perf_counter() - t)
        t = time.perf_counter()
        xa = aug(x)
        sync(device)
        times["augment"].append(time.perf_counter() - t)
        t = time.perf_counter()
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            teacher_probabilities(model, x, config.sample_rate)
        model.train()
        sync(device)
        times["teacher (eval, no grad)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.binary_cross_entropy_with_logits(model(xa).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        times["forward+backward+step"].append(time.perf_counter() - t)
    total = sum(np.median(v) for v in times.values())
    print(f"{args.arch}/{args.preset}, batch {args.batch_size}, {config.crop_seconds:g} s crops, {device}")
    print(f"{'stage':<26}{'median s':>10}{'share':>8}")
    for k, v in times.items():
        print(f"{k:<26}{np.median(v):>10.3f}{np.median(v) / total:>8.0%}")
    print(f"{'step total':<26}{total:>10.3f}   ({args.batch_size / total:.1f} samples/s)")


if __name__ == "__main__":
    main()
