"""Throughput of the batched augmentation chain (mttag.training.augment).

Prints clips/s for the paper chain applied to a whole ``B×N`` batch at once and
one example at a time, and the time each transform takes when it is switched on
for every example of the batch (p = 1), on the CPU and, when one is present, on
the GPU.

    python benchmarks/augment.py                      # batch 32, 10 s clips, cpu (+ cuda)
    python benchmarks/augment.py --device cuda --batch-size 64 --seconds 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mttag.training.augment import DEFAULT_PROBABILITIES, paper_chain  # noqa: E402

SR = 22050


def music_like(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """Synthetic stand-in for music: decaying harmonic notes, a kick-like thump and noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32) / SR
    out = torch.zeros(batch, n)
    for b in range(batch):
        for _ in range(6):
            f0 = 55 * 2 ** (torch.randint(0, 48, (1,), generator=g).item() / 12)
            onset = torch.rand(1, generator=g).item() * t[-1].item()
            env = torch.where(t >= onset, torch.exp(-(t - onset) * 2.0), torch.zeros(()))
            for h in range(1, 6):
                out[b] += env * torch.sin(2 * math.pi * f0 * h * t) / h
        beat = torch.exp(-((t * 2) % 1.0) * 30) * torch.sin(2 * math.pi * 60 * t)
        out[b] += beat + 0.02 * torch.randn(n, generator=g)
    return 0.2 * out / out.abs().amax(dim=1, keepdim=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn()``, in seconds.

    CPU time (all threads of this process) is less disturbed than wall time when
    other jobs share the machine.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def run(device: torch.device, batch: int, seconds: float, repeats: int, per_example_repeats: int) -> dict:
    n = int(seconds * SR)
    x = music_like(batch, n).to(device)
    chain = paper_chain(SR, seed=0)
    res = {"batched": timeit(lambda: chain(x), device, repeats)}

    def one_at_a_time():
        for i in range(batch):
            chain(x[i:i + 1])

    res["per_example"] = timeit(one_at_a_time, device, per_example_repeats)
    all_on = paper_chain(SR, seed=0, **{k: 1.0 for k in DEFAULT_PROBABILITIES})
    res["all_on"] = timeit(lambda: all_on(x), device, repeats)
    per_transform = {}
    for name in DEFAULT_PROBABILITIES:
        only = paper_chain(SR, seed=0, **{k: (1.0 if k == name else 0.0) for k in DEFAULT_PROBABILITIES})
        per_transform[name] = timeit(lambda: only(x), device, repeats)
    if device.type == "cpu":
        # the pitch shift's one-pass batched kernel (the GPU path) against the CPU's example-by-example
        ps = paper_chain(SR)["pitch_shift"]
        semitones = torch.linspace(-7, 7, batch, dtype=torch.float64)
        per_transform["pitch_shift, one pass (GPU path)"] = timeit(lambda: ps._sox_batched(x, semitones), device, repeats)
    res["per_transform"] = per_transform
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="all", help="cpu, cuda, or all (cpu + cuda if available)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--per-example-repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"batch {args.batch_size} × {args.seconds:g} s at {SR} Hz")
    for dev in devices:
        device = torch.device(dev)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        res = run(device, args.batch_size, args.seconds, args.repeats, args.per_example_repeats)
        b = args.batch_size
        print(f"\n[{dev}: {name}]")
        print(f"{'paper chain':34s} {'clips/s':>9s} {'ms/batch':>10s} {'CPU-s/batch':>12s}")
        for key, label in [("batched", "batched (paper probabilities)"),
                           ("per_example", "one example at a time"),
                           ("all_on", "batched, every transform on")]:
            wall, cpu = res[key]
            print(f"  {label:32s} {b / wall:9.1f} {wall * 1e3:10.1f} {cpu:12.2f}")
        print(f"{'per transform, p = 1 on the batch':34s} {'ms/batch':>9s} {'ms/clip':>10s} {'CPU-ms/clip':>12s}")
        for k, (wall, cpu) in res["per_transform"].items():
            print(f"  {k:32s} {wall * 1e3:9.1f} {wall * 1e3 / b:10.2f} {cpu * 1e3 / b:12.2f}")

if __name__ == "__main__":
    main()
