#!/usr/bin/env python3
"""The scarce-label benchmark's three questions, answered from its results.json.

    python benchmarks/scarce/questions.py scarce-cpu [--markdown]

Each question compares two rows trained with the same seed (the KE and KD students of seed s
learn from the DA teacher of seed s; DA and the plain Transformer of seed s share their
initialisation seed and crop order), so the answer is the *paired* difference per seed, its
mean and 95 % t-interval. An interval that excludes zero is a measured effect; one that
straddles zero is not, whatever its mean.

1. Does DA help on the tags the augmentation leaves alone?   transformer_da − transformer
2. Does KE (10× unlabelled pool) beat its teacher?            ke_10x − transformer_da
3. Does the ≈1/9 KD student come within 0.01 of its teacher?  kd − transformer_da  (≥ −0.01)

plus the pool curve (ke_1x, ke_3x, ke_10x − transformer_da). Macro ROC-AUC and PR-AUC on the
test set and the held-out SoundFont set, on the invariant tags and on all tags.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

QUESTIONS = [
    ("DA vs no augmentation", "transformer_da", "transformer", "invariant", None),
    ("KE (10× pool) vs its DA teacher", "ke_10x", "transformer_da", "invariant", None),
    ("KD student (≈1/9) vs its DA teacher", "kd", "transformer_da", "invariant", -0.01),
    ("KE 1× pool vs its DA teacher", "ke_1x", "transformer_da", "invariant", None),
    ("KE 3× pool vs its DA teacher", "ke_3x", "transformer_da", "invariant", None),
    ("DA vs no augmentation, augmentation-sensitive tags", "transformer_da", "transformer", "sensitive", None),
]


def t975(df: int) -> float:
    try:
        from scipy import stats

        return float(stats.t.ppf(0.975, df))
    except ImportError:  # the values this script meets (2-10 seeds)
        return {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}[df]


def paired(runs: dict, a: str, b: str, split: str, group: str, metric: str) -> tuple[list[int], list[float]]:
    seeds, diffs = [], []
    for key, r in sorted(runs.items()):
        name, _, s = key.rpartition("_s")
        if name != a:
            continue
        other = runs.get(f"{b}_s{s}")
        if not other or not r.get(split) or not other.get(split):
            continue
        x, y = r[split][group][metric], other[split][group][metric]
        if x is None or y is None:
            continue
        seeds.append(int(s))
        diffs.append(x - y)
    return seeds, diffs


def summarise(diffs: list[float]) -> tuple[float, float | None]:
    m = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return m, None
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1))
    return m, t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))


def verdict(m: float, h: float | None, margin: float | None) -> str:
    if h is None:
        return "one seed: no interval"
    lo, hi = m - h, m + h
    if margin is not None:  # a non-inferiority question: is the difference above −margin?
        if lo > margin:
            return f"yes: the whole interval is above {margin:+.2f}"
        if hi < margin:
            return f"no: the whole interval is below {margin:+.2f}"
        return f"undecided: the interval straddles {margin:+.2f}"
    if lo > 0:
        return "yes: the interval is above zero"
    if hi < 0:
        return "no, it is worse: the interval is below zero"
    return "no measurable difference: the interval straddles zero"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    a = ap.parse_args(argv)
    res = json.loads((a.work / "results.json").read_text())
    runs = res["runs"]
    splits = ["test"] + (["heldout"] if any(r.get("heldout") for r in runs.values()) else [])
    print("| question | set | tags | seeds | ΔROC-AUC (mean ± 95 %) | per seed | ΔPR-AUC (mean ± 95 %) | answer (ROC-AUC) |")
    print("|---|---|---|---|---:|---|---:|---|")
    for title, x, y, group, margin in QUESTIONS:
        for split in splits:
            seeds, d_roc = paired(runs, x, y, split, group, "roc_auc")
            if not seeds:
                continue
            _, d_pr = paired(runs, x, y, split, group, "pr_auc")
            m, h = summarise(d_roc)
            mp, hp = summarise(d_pr)

            def fmt(v, w):
                return f"{v:+.3f}" + (f" ± {w:.3f}" if w is not None else "")

            print(f"| {title} | {split} | {group} | {','.join(map(str, seeds))} | {fmt(m, h)} | "
                  f"{', '.join(f'{d:+.3f}' for d in d_roc)} | {fmt(mp, hp)} | {verdict(m, h, margin)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
