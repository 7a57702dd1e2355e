"""Where a training step's time goes: data loading, augmentation, teacher, forward+backward.

    python benchmarks/train_step.py --preset teacher --batch-size 32 --device cpu --steps 5
    python benchmarks/train_step.py --preset teacher --device cuda --steps 20 --loop-steps 100

Builds a small prepared dataset of generated audio in a temporary folder, then

1. times each stage of a noisy-student step separately (a sync after each stage, so the
   shares add up; same code paths as mttag.training.loop), and
2. with ``--loop-steps N``, runs N steps the way the training loop does (no syncs between
   stages, loader workers prefetching) and reports the clips per second that gives and,
   on CUDA, the GPU utilisation sampled every 50 ms through NVML while it ran, and the peak
   GPU memory.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mttag.device import select_device
from mttag.models import build_model, make_config
from mttag.training.augment import paper_chain
from mttag.training.loader import CropDataset, EpochSampler
from mttag.training.loop import teacher_probabilities
from mttag.training.prepare import prepare_dataset
from mttag.training.sources import TrackSpec


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
    ap.add_argument("--loop-steps", type=int, default=0, help="steps of the pipelined loop (0: skip)")
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
    loader = DataLoader(ds, args.batch_size, sampler=EpochSampler(len(ds), args.batch_size * (args.steps + args.loop_steps + 2), 0),
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
    if args.loop_steps:
        loop(args, device, amp, it, aug, model, opt, config)


def loop(args, device, amp, it, aug, model, opt, config) -> None:
    """The training loop's own order of work, timed as a whole: what a user's run gets."""

    def step():
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        xa = aug(x)
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            teacher_probabilities(model, x, config.sample_rate)
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.binary_cross_entropy_with_logits(model(xa).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (autotuning, first allocations)
    sync(device)
    samples, stop = [], threading.Event()

    def sample_utilisation():
        while not stop.wait(0.05):
            try:
                samples.append(torch.cuda.utilization(device))
            except Exception:  # no NVML: report throughput alone
                return

    sampler = threading.Thread(target=sample_utilisation, daemon=True) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if sampler:
        sampler.start()
    t = time.perf_counter()
    for _ in range(args.loop_steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t
    stop.set()
    print(f"pipelined loop: {args.loop_steps} steps of {args.batch_size} in {seconds:.2f} s = "
          f"{args.loop_steps * args.batch_size / seconds:.1f} clips/s")
    if samples:
        print(f"GPU utilisation over {len(samples)} samples: median {np.median(samples):.0f} %, "
              f"mean {np.mean(samples):.0f} %, min {min(samples)} %; "
              f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
