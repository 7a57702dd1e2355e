#!/usr/bin/env python3
"""Project the wall time of a scarce-label scale from a finished (smoke) run's timings.

    python benchmarks/scarce/estimate.py scarce-smoke --scale cpu [--epochs 20] [--slowdown 1.0]

Per row it takes, from WORK/runs/ROW_sS/metrics.jsonl, the training throughput (crops/s,
averaged over seeds and epochs) and the validation time per track (epoch seconds minus the
training part, over the smoke validation set), and projects one epoch of the target scale as

    steps * batch / (crops/s)  +  valid tracks * eval_chunks * (valid s per track and crop)

times ``--epochs`` epochs (best epoch + patience; early stopping decides the real number),
plus test and held-out evaluation (same per-track cost, ``eval_chunks_test`` crops) and a
fixed per-run start-up. Runs are packed onto ``--parallel`` processes (the longest first).
Rendering and preparing are added from render.py's README figure (170 s per 2,000 renderings
on 2 idle cores) and the smoke run's prepare speed. ``--slowdown`` divides the measured
throughput, e.g. to undo the contention of a shared machine (< 1) or add some (> 1).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import scarce_labels as S  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--epochs", type=float, default=20.0, help="epochs a run without augmentation trains (best + patience) [20]")
    ap.add_argument("--epochs-aug", type=float, default=None,
                    help="epochs an augmented run (DA, KE, KD) trains [--epochs]; augmentation slows convergence")
    ap.add_argument("--slowdown", type=float, default=1.0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--startup", type=float, default=25.0, help="seconds per run for process start-up [25]")
    a = ap.parse_args(argv)
    res = json.loads((a.work / "results.json").read_text())
    sm = res["settings"]
    tgt = S.SCALES[a.scale]
    smoke_valid = res["counts"]["1"]["valid"]
    crops_smoke = sm["batch_size"] * sm["steps"]
    per_run = {}
    lines = []
    for name in S.ROW_NAMES:
        sps, vpt = [], []
        for s in sm["seeds"].split(","):
            f = a.work / "runs" / f"{name}_s{s}" / "metrics.jsonl"
            if not f.is_file():
                continue
            for m in map(json.loads, f.read_text().splitlines()):
                sps.append(m["samples_per_s"])
                vpt.append(max(0.0, m["seconds"] - crops_smoke / m["samples_per_s"]) / smoke_valid / sm["eval_chunks"])
        if not sps:
            continue
        sps_m = sum(sps) / len(sps) / a.slowdown
        vpt_m = sum(vpt) / len(vpt) * a.slowdown
        epoch = tgt["batch_size"] * tgt["steps"] / sps_m + tgt["valid"] * tgt["eval_chunks"] * vpt_m
        evals = (tgt["test"] + tgt["heldout"]) * tgt["eval_chunks_test"] * vpt_m
        n_ep = a.epochs if name in ("resnet", "transformer") or a.epochs_aug is None else a.epochs_aug
        per_run[name] = n_ep * epoch + evals + a.startup
        lines.append(f"{name:15s} {sps_m:6.1f} crops/s  valid {1000 * vpt_m:5.1f} ms/track  epoch {epoch:6.1f} s  "
                     f"run {per_run[name] / 60:5.1f} min")
    seeds = len(tgt["seeds"].split(","))
    jobs = sorted([t for t in per_run.values() for _ in range(seeds)], reverse=True)
    lanes = [0.0] * a.parallel
    for t in jobs:
        lanes[lanes.index(min(lanes))] += t
    n_render = int(1.08 * (tgt["labelled"] * (1 + tgt["pool_max"]) + tgt["valid"] + tgt["test"])) + tgt["heldout"]
    render_s = 170 * n_render / 2000 * a.slowdown
    prep_s = 0.02 * (3 * (tgt["labelled"] + tgt["valid"] + tgt["test"]) + tgt["labelled"] * 14 + tgt["heldout"]) * a.slowdown
    print("\n".join(lines))
    print(f"training + evaluation: {sum(jobs) / 60:.0f} min of runs on {a.parallel} processes -> "
          f"{max(lanes) / 60:.0f} min wall; render {n_render} tracks ~{render_s / 60:.0f} min, "
          f"prepare ~{prep_s / 60:.0f} min; total ~{(max(lanes) + render_s + prep_s) / 60:.0f} min "
          f"({a.epochs:g} epochs per run without DA, {a.epochs_aug or a.epochs:g} with; slowdown {a.slowdown:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
