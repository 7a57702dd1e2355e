#!/usr/bin/env python3
"""The paper's Table 4 on the rendered benchmark (benchmarks/rendered/).

Renders (or reuses) a rendered collection, keeps the tags of a small share of
the training pieces and drops them for the rest (unlabelled : labelled >= 2.3,
the paper's ratio or more), prepares it with ``mttag prepare``, then trains and
evaluates, all through the ``mttag`` CLI, on the same test set:

    ResNet, ResNet+DA, Transformer, Transformer+DA,
    Transformer+DA+KE   (noisy student: `mttag train --teacher` = the Transformer+DA run),
    Transformer+DA+KD   (`mttag distill` of a smaller student from the KE model)

for each seed, and writes a Markdown table of macro ROC-AUC / PR-AUC (mean ±
half the range over the seeds) on the test set, and on a held-out set rendered
from other pieces with other SoundFonts (a new "recording") when one is given.

CPU scale (default, see docs/benchmarks.md):

    python benchmarks/table4.py --work table4-work

paper widths on a GPU:

    python benchmarks/table4.py --work table4-gpu --preset teacher --student small \\
        --crop-seconds 10 --resnet-crop-seconds 3.69 --epochs 200 --patience 20 \\
        --steps 0 --batch-size 32 --lr 1e-4 --eval-chunks 8 --eval-chunks-test 16 \\
        --device cuda --workers 8 --tracks 20000

Every finished run is kept (``WORK/runs/NAME/eval_*.json``); running the same
command again resumes where it stopped.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, also when this module is imported from elsewhere
sys.path.insert(0, str(HERE.parent))  # the repository's mttag, installed or not
from _common import Bench, mttag, n_params  # noqa: E402

B = Bench("table4")
log, run, render, prepare, evaluate = B.log, B.run, B.render, B.prepare, B.evaluate

CONFIGS = [  # (name, label in the table)
    ("resnet", "ResNet"),
    ("resnet_da", "ResNet + DA"),
    ("transformer", "Transformer"),
    ("transformer_da", "Transformer + DA"),
    ("transformer_da_ke", "Transformer + DA + KE"),
    ("transformer_da_kd", "Transformer + DA + KD (small)"),
    # the paper's chain minus the three transforms that change this benchmark's own tags
    # (gain: dynamics; delay and reverb: reverb), to tell "DA hurts" from "DA corrupts labels"
    ("transformer_da_safe", "Transformer + DA without gain/delay/reverb"),
]
TAG_SAFE_AUGMENT = ["--augment-p", "gain=0", "--augment-p", "delay=0", "--augment-p", "reverb=0"]
TINY_STUDENT = {"arch": "transformer", "params": {"conv_channels": 8, "dim": 32, "depth": 2, "heads": 4}}


# ---------------------------------------------------------------------------
# data


def make_annotations(rendered: Path, out_csv: Path, labelled_share: float, seed: int) -> dict:
    """Labelled / unlabelled partition of the training pieces (piece-level)."""
    rows = list(csv.DictReader(open(rendered / "annotations.csv")))
    train_groups = sorted({r["artist"] for r in rows if r["split"] == "train"})
    rng = random.Random(seed)
    rng.shuffle(train_groups)
    labelled = set(train_groups[: max(1, round(labelled_share * len(train_groups)))])
    counts = {"train": 0, "unlabeled": 0, "valid": 0, "test": 0}
    tmp = out_csv.with_name(f"{out_csv.name}.{os.getpid()}.tmp")  # seeds run in parallel write it too
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "tags", "artist", "split"])
        for r in rows:
            split, tags = r["split"], r["tags"]
            if split == "train" and r["artist"] not in labelled:
                split, tags = "unlabeled", ""
            counts[split] += 1
            w.writerow([r["path"], tags, r["artist"], split])
    os.replace(tmp, out_csv)
    counts["ratio"] = round(counts["unlabeled"] / max(1, counts["train"]), 2)
    return counts


# ---------------------------------------------------------------------------
# runs


def run_args(a, crop: float | None, augment: bool, seed: int) -> list:
    """The options every training run of the table shares (`mttag train` and `mttag distill`)."""
    args = ["--augment" if augment else "--no-augment",
            "--max-epochs", a.epochs, "--patience", a.patience, "--batch-size", a.batch_size,
            "--lr", a.lr, "--eval-chunks", a.eval_chunks, "--device", a.device, "--workers", a.workers, "--seed", seed,
            "--quiet"]
    if crop:
        args += ["--crop-seconds", crop]
    if a.steps:
        args += ["--steps-per-epoch", a.steps]
    return args


def train_args(a, arch: str, augment: bool, seed: int) -> list:
    crop = a.resnet_crop_seconds if arch == "resnet" else a.crop_seconds
    return ["--arch", arch, "--preset", a.preset, *run_args(a, crop, augment, seed)]


def do_run(a, name: str, seed: int, dataset: Path, runs: Path, student_json: Path) -> Path:
    out = runs / f"{name}_s{seed}"
    model = out / "model"
    logfile = runs / f"{name}_s{seed}.log"
    if (out / "done").is_file():
        return model
    t0 = time.time()
    if name in ("resnet", "resnet_da", "transformer", "transformer_da"):
        arch = "resnet" if name.startswith("resnet") else "transformer"
        cmd = mttag("train", dataset, out, *train_args(a, arch, name.endswith("_da"), seed))
    elif name == "transformer_da_safe":
        cmd = mttag("train", dataset, out, *train_args(a, "transformer", True, seed), *TAG_SAFE_AUGMENT)
    elif name == "transformer_da_ke":
        teacher = runs / f"transformer_da_s{seed}" / "model"
        cmd = mttag("train", dataset, out, *train_args(a, "transformer", True, seed), "--teacher", teacher)
    elif name == "transformer_da_kd":
        teacher = runs / f"transformer_da_ke_s{seed}" / "model"
        cmd = mttag("distill", dataset, out, "--teacher", teacher, "--student", a.student or student_json,
                    *run_args(a, a.crop_seconds, True, seed))
    else:
        raise ValueError(name)
    if out.exists() and not (out / "done").exists() and (out / "checkpoint.pt").exists():
        cmd.append("--resume")
    run(cmd, logfile)
    (out / "done").write_text(f"{time.time() - t0:.0f}\n")
    return model


# ---------------------------------------------------------------------------
# table


def fmt(vals: list[float]) -> str:
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {(max(vals) - min(vals)) / 2:.4f}"


def table(results: dict, seeds: list[int], heldout: bool) -> str:
    head = "| Model | params | ROC-AUC | PR-AUC |"
    sep = "|---|---:|---:|---:|"
    if heldout:
        head += " ROC-AUC (held-out SoundFonts) | PR-AUC (held-out SoundFonts) |"
        sep += "---:|---:|"
    lines = [head, sep]
    for name, label in CONFIGS:
        rs = [results[(name, s)] for s in seeds if (name, s) in results]
        if not rs:
            continue
        p = rs[0].get("params")
        cells = [label, f"{p / 1e3:.0f} k" if p else "?",
                 fmt([r["test"]["roc_auc"] for r in rs]), fmt([r["test"]["pr_auc"] for r in rs])]
        if heldout:
            hs = [r["heldout"] for r in rs if r.get("heldout")]
            cells += [fmt([h["roc_auc"] for h in hs]), fmt([h["pr_auc"] for h in hs])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_in_parallel(argv: list[str], seeds: list[int], parallel: int, work: Path) -> None:
    """Run each seed's column in its own process, ``parallel`` at a time, the
    cores shared out between them; the caller then finds every run done and
    only collects the table."""
    failed, _ = B.run_processes(
        seeds, parallel, command=lambda seed: [sys.executable, __file__, *argv, "--seeds", str(seed), "--parallel", "1"],
        logfile=lambda seed: work / f"seed{seed}.log", label=lambda seed: f"seed {seed}")
    if failed:
        raise SystemExit(f"seeds {failed} failed; see {work}/seed*.log (run again to resume)")


def tag_kinds() -> dict[str, tuple[str, ...]]:
    """The benchmark's tags grouped by what they describe (from render.py's vocabulary)."""
    sys.path.insert(0, str(HERE / "rendered"))
    import render as R  # noqa: N812

    return {"instruments": R.FAMILIES + ("drums",), "style": R.STYLES, "tempo": R.TEMPI, "mode": R.MODES,
            "meter": R.METERS, "dynamics": R.DYNAMICS, "solo/ensemble": R.TEXTURES, "reverb": ("reverb",)}


def kinds_table(results: dict, seeds: list[int], split: str = "test") -> str:
    """Macro ROC-AUC per kind of tag, mean over the seeds."""
    kinds = tag_kinds()
    lines = ["| Model | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for name, label in CONFIGS:
        rs = [results[(name, s)][split] for s in seeds if results.get((name, s), {}).get(split)]
        if not rs:
            continue
        cells = []
        for tags in kinds.values():
            vals = [r["per_tag"][t]["roc_auc"] for r in rs for t in tags
                    if r["per_tag"].get(t, {}).get("roc_auc") is not None]
            cells.append(f"{sum(vals) / len(vals):.2f}" if vals else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("table4-work"))
    ap.add_argument("--rendered", type=Path, help="an existing render.py output (default: WORK/rendered, rendered now)")
    ap.add_argument("--heldout", type=Path, help="an existing held-out render (default: WORK/heldout, rendered now)")
    ap.add_argument("--no-heldout", action="store_true", help="skip the held-out SoundFont test set")
    ap.add_argument("--tracks", type=int, default=2000, help="renderings in the benchmark [2000]")
    ap.add_argument("--heldout-tracks", type=int, default=200)
    ap.add_argument("--render-seed", type=int, default=0)
    ap.add_argument("--labelled-share", type=float, default=0.25,
                    help="share of the training pieces that keep their tags [0.25: unlabelled/labelled = 3]")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--configs", default=",".join(n for n, _ in CONFIGS))
    ap.add_argument("--preset", default="tiny", help="model preset of the teacher-sized models [tiny]")
    ap.add_argument("--student", default=None,
                    help="KD student: small|tiny|CONFIG.json [default: a Transformer with conv 8, dim 32, depth 2]")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--steps", type=int, default=32, help="steps per epoch (0: one pass over the tracks) [32]")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate [1e-3; the paper: 1e-4]")
    ap.add_argument("--crop-seconds", type=float, default=3.69, help="Transformer crop [3.69, like the ResNet's]")
    ap.add_argument("--resnet-crop-seconds", type=float, default=3.69)
    ap.add_argument("--eval-chunks", type=int, default=1, help="validation crops per track during training [1]")
    ap.add_argument("--eval-chunks-test", type=int, default=2, help="crops per test track [2]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="rendering processes")
    ap.add_argument("--parallel", type=int, default=0,
                    help="seeds trained at once, the cores shared out between them "
                         "[0: as many as seeds and cores allow; on CPU two 1-thread runs do 1.35x "
                         "the work of one 2-thread run on these tiny models]")
    a = ap.parse_args(argv)

    t_start = time.time()
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    names = a.configs.split(",")

    rendered = a.rendered or work / "rendered"
    render(rendered, a.tracks, a.render_seed, [], a.jobs)
    heldout = None
    if not a.no_heldout:
        heldout = a.heldout or work / "heldout"
        render(heldout, a.heldout_tracks, a.render_seed + 1,
               ["--soundfonts", "heldout", "--pieces", "heldout", "--split", "test"], a.jobs)

    vocab = rendered / "tags.txt"
    ann = work / "annotations.csv"
    counts = make_annotations(rendered, ann, a.labelled_share, a.render_seed)
    log(f"tracks: {counts}")
    if counts["ratio"] < 2.3:
        log("warning: unlabelled/labelled ratio below the paper's 2.3")
    dataset = work / "dataset"
    prepare(dataset, ann, rendered / "audio", vocab, a.jobs, work / "prepare.log")
    heldout_ds = None
    if heldout is not None:
        heldout_ds = work / "heldout-dataset"
        prepare(heldout_ds, heldout / "annotations.csv", heldout / "audio", vocab, a.jobs, work / "prepare.log")

    student_json = work / "student.json"
    if not student_json.is_file():
        student_json.write_text(json.dumps(TINY_STUDENT))
    parallel = a.parallel or (min(len(seeds), os.cpu_count() or 1) if a.device == "cpu" else 1)
    if parallel > 1 and len(seeds) > 1:
        train_in_parallel(argv if argv is not None else sys.argv[1:], seeds, parallel, work)
    results: dict = {}
    timings: dict = {}
    for seed in seeds:
        for name in [n for n, _ in CONFIGS if n in names]:
            model = do_run(a, name, seed, dataset, runs, student_json)
            out = runs / f"{name}_s{seed}"
            timings[(name, seed)] = float((out / "done").read_text())
            r = {"test": evaluate(a, model, dataset, out / "eval_test.json", runs / f"{name}_s{seed}.log"),
                 "params": n_params(model)}
            if heldout_ds is not None:
                r["heldout"] = evaluate(a, model, heldout_ds, out / "eval_heldout.json", runs / f"{name}_s{seed}.log")
            results[(name, seed)] = r
            log(f"{name} seed {seed}: ROC-AUC {r['test']['roc_auc']:.4f} PR-AUC {r['test']['pr_auc']:.4f}"
                + (f" | held-out {r['heldout']['roc_auc']:.4f} / {r['heldout']['pr_auc']:.4f}" if r.get("heldout") else "")
                + f" ({timings[(name, seed)]:.0f} s)")
            md = table(results, seeds, heldout_ds is not None)
            (work / "table4.md").write_text(md + "\n")

    md = table(results, seeds, heldout_ds is not None)
    settings = (f"\nSettings: {counts['train']} labelled / {counts['unlabeled']} unlabelled (ratio {counts['ratio']}) / "
                f"{counts['valid']} valid / {counts['test']} test tracks; preset {a.preset}, KD student "
                f"{a.student or json.dumps(TINY_STUDENT['params'])}; {a.epochs} epochs max, patience {a.patience}, "
                f"{a.steps or 'full-pass'} steps/epoch, batch {a.batch_size}, lr {a.lr}, crops {a.crop_seconds} s "
                f"(ResNet {a.resnet_crop_seconds} s), seeds {seeds}; device {a.device}; "
                f"training time {sum(timings.values()) / 60:.1f} min (all runs, summed over processes); this invocation "
                f"{(time.time() - t_start) / 60:.1f} min of wall time (finished runs and renders are reused).\n")
    per_kind = ("\nMacro ROC-AUC per kind of tag (test set, mean over the seeds):\n\n"
                + kinds_table(results, seeds))
    if heldout_ds is not None:
        per_kind += ("\n\nThe same on the held-out SoundFonts:\n\n" + kinds_table(results, seeds, "heldout"))
    (work / "table4.md").write_text(md + "\n" + settings + per_kind + "\n")
    (work / "results.json").write_text(json.dumps(
        {f"{n}_s{s}": {**r, "seconds": timings.get((n, s))} for (n, s), r in results.items()}, indent=1))
    print(md)
    print(settings)
    print(per_kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
