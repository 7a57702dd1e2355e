#!/usr/bin/env python3
"""Channels-last convolution weights on the CPU (``mttag.models.place``): speed and sameness.

For each model (architecture, preset, crop length) it times, on one torch thread, a training
step (forward, backward, Adam; batch ``--batch``) and an inference forward (batch 2, as
``mttag tag`` runs on a CPU, per window), with the network as built (NCHW) and as
``place(model, "cpu")`` leaves it (channels-last conv weights), in float32 and under bf16
autocast. The variants are interleaved and repeated, and the median is printed, so a
machine that gets busier affects them alike. It also prints the largest difference in
float32 logits between the two layouts.

    python benchmarks/conv_layout.py                       # tiny Transformer and ResNet, teacher Transformer
    python benchmarks/conv_layout.py --models transformer:tiny:3.69 --repeats 5
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from mttag.models import build_model, make_config, place


def timed(fn, n: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels on first use
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="transformer:tiny:3.69,resnet:tiny:3.69,transformer:teacher:10",
                    help="ARCH:PRESET:CROP_SECONDS, comma-separated")
    ap.add_argument("--batch", type=int, default=16, help="training batch [16]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s); training batch {a.batch}, inference batch 2; "
          f"median of {a.repeats} interleaved repeats")
    print(f"{'model':28s} {'precision':9s} {'train step NCHW':>16s} {'channels-last':>14s} {'×':>5s} "
          f"{'infer/window NCHW':>18s} {'channels-last':>14s} {'×':>5s}")
    for spec in a.models.split(","):
        arch, preset, crop = spec.split(":")
        torch.manual_seed(0)
        base = build_model(make_config(arch, [f"t{i}" for i in range(50)], preset, float(crop)))
        n = base.config.crop_samples
        big = preset not in ("tiny",)
        batch = 4 if big else a.batch  # a paper-width step at batch 16 takes many seconds on one core
        x = torch.randn(batch, n) * 0.1
        y = (torch.rand(batch, 50) > 0.8).float()
        res: dict = {}
        for _ in range(a.repeats):
            for layout in ("nchw", "cl"):
                for amp in (False, True):
                    m = copy.deepcopy(base)
                    m = place(m, "cpu") if layout == "cl" else m
                    opt = torch.optim.Adam(m.parameters(), 1e-3)

                    def step(m=m, opt=opt, amp=amp):
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                            logits = m(x)
                        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()

                    tr = timed(step, 1 if big else 3)
                    m.eval()

                    @torch.no_grad()
                    def infer(m=m, amp=amp):
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                            m(x[:2])

                    ev = timed(infer, 2 if big else 5) / 2
                    res.setdefault((layout, amp), []).append((tr, ev))
        name = f"{arch} {preset} ({float(crop):g} s)" + (f", batch {batch}" if batch != a.batch else "")
        for amp in (False, True):
            t0 = statistics.median(t for t, _ in res[("nchw", amp)])
            t1 = statistics.median(t for t, _ in res[("cl", amp)])
            e0 = statistics.median(e for _, e in res[("nchw", amp)])
            e1 = statistics.median(e for _, e in res[("cl", amp)])
            print(f"{name:28s} {'bf16' if amp else 'fp32':9s} {1000 * t0:13.0f} ms {1000 * t1:11.0f} ms {t0 / t1:5.2f} "
                  f"{1000 * e0:15.1f} ms {1000 * e1:11.1f} ms {e0 / e1:5.2f}")
        plain, placed = copy.deepcopy(base).eval(), place(copy.deepcopy(base), "cpu").eval()
        with torch.no_grad():
            diff = (plain(x[:2]) - placed(x[:2])).abs().max().item()
        print(f"{'':28s} largest |Δ logit| between the layouts, float32: {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
