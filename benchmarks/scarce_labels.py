#!/usr/bin/env python3
"""Scarce-label benchmark on rendered music (issue 18, item 1).

One command renders (or reuses) a rendered collection, splits it by *piece* into

    labelled train   a few hundred tracks
    valid, test      >= 1,000 tracks each (cpu/gpu scales)
    unlabelled pool  other pieces, nested 1x / 3x / 10x the labelled set

plus a held-out test set rendered from other pieces with other SoundFonts, prepares
them with ``mttag prepare`` and trains, through the ``mttag`` CLI, the rows

    ResNet, Transformer, Transformer + DA,
    + KE   (`mttag train --teacher DA`: same-size student, fresh init, noised; 10x pool)
    + KD   (`mttag distill --teacher DA` into a student of ~1/9 the teacher's parameters)
    KE with a 1x, 3x and 10x unlabelled pool (how much untagged music is worth)

each to early stopping on validation loss (generous ``--max-epochs``, ``--patience``;
the best epoch is read from metrics.jsonl and a run stopped by the cap, its best epoch
within the patience of it, is flagged), for several seeds (in parallel processes on CPU). It scores
macro ROC-AUC / PR-AUC separately on the tags the augmentation chain leaves alone
(instruments, style, solo/ensemble, meter, mode, tempo) and on the ones it can change
(dynamics, reverb), mean and 95 % t-interval over the seeds, and writes

    OUT/scarce_labels.md     the tables
    OUT/results.json         every number, per seed and aggregated
    OUT/curves/ROW.png       train/valid loss and valid ROC-AUC per epoch, one line per seed

Scales (see docs/benchmarks.md, "Scarce-label benchmark"):

    python benchmarks/scarce_labels.py --scale smoke --work scarce-smoke   # minutes: the pipeline runs
    python benchmarks/scarce_labels.py --scale cpu   --work scarce-cpu     # 2 cores, 64-mel front end: all rows 1.5 h
    python benchmarks/scarce_labels.py --scale gpu   --work scarce-gpu     # paper widths, CUDA

The CPU scale trains every row at a coarser log-mel front end (64 mels, n_fft 2048, hop 1024:
half the paper's epoch time, the same answers); ``--front-end paper`` gives the paper's, which
takes about 3.2 h on 2 cores. Any option given explicitly overrides the scale's value. Every
finished run, evaluation and dataset is kept under WORK; the same command again resumes where
it stopped.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository's mttag, installed or not
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "rendered"))
from _common import Bench, mttag, n_params  # noqa: E402

B = Bench("scarce")
log, run, render, prepare, evaluate = B.log, B.run, B.render, B.prepare, B.evaluate

# The augmentation chain (polarity, noise, gain, filter, delay, pitch_shift, reverb) can
# change these tags of the rendered benchmark: gain -> dynamics, delay/reverb -> reverb.
SENSITIVE_KINDS = ("dynamics", "reverb")

# The CPU scale's log-mel front end for every row: half the paper's mel bins and frame rate
# halve the tiny Transformer's epoch (memory-bound at full resolution) and, measured on
# this benchmark, leave its three answers unchanged (docs/benchmarks.md). "paper" = the
# presets' own (128 mels, n_fft 1024, hop 512).
CPU_FRONT_END = "n_mels=64,n_fft=2048,hop_length=1024"
SCALES = {
    # data sizes in tracks; training settings shared by every row
    "smoke": dict(labelled=16, valid=24, test=24, heldout=24, pool_max=10, preset="tiny", student=None,
                  crop_seconds=3.69, batch_size=8, lr=1e-3, max_epochs=2, patience=2, steps=3,
                  eval_chunks=1, eval_chunks_test=1, seeds="0,1", device="cpu", workers=0, precision="fp32",
                  front_end=CPU_FRONT_END),
    "cpu": dict(labelled=300, valid=1000, test=1000, heldout=1000, pool_max=10, preset="tiny", student=None,
                crop_seconds=3.69, batch_size=16, lr=1e-3, max_epochs=120, patience=8, steps=48,
                eval_chunks=1, eval_chunks_test=2, seeds="0,1,2", device="cpu", workers=0, precision="native",
                front_end=CPU_FRONT_END),
    "gpu": dict(labelled=500, valid=1000, test=1000, heldout=1000, pool_max=10, preset="teacher", student="small",
                crop_seconds=10.0, batch_size=32, lr=1e-4, max_epochs=200, patience=20, steps=0,
                eval_chunks=8, eval_chunks_test=16, seeds="0,1,2", device="cuda", workers=8, precision="auto",
                front_end="paper"),
}
# what a scale key's flag means, where its name does not say it (the help adds each scale's value)
SCALE_HELP = {
    "front_end": "log-mel front end of every row, KEY=N,... with KEY n_mels, n_fft, hop_length; "
                 "'paper' = the presets' 128 mels, n_fft 1024, hop 512 ",
}
POOLS = (1, 3, 10)

ROWS = [  # (name, label, kind)
    ("resnet", "ResNet", "main"),
    ("transformer", "Transformer", "main"),
    ("transformer_da", "Transformer + DA", "main"),
    ("ke_10x", "Transformer + DA + KE (10× pool)", "main"),
    ("kd", "Transformer + DA + KD (≈1/9 params, from the DA teacher)", "main"),
    ("ke_1x", "KE, unlabelled pool 1×", "pool"),
    ("ke_3x", "KE, unlabelled pool 3×", "pool"),
    ("ke_10x", "KE, unlabelled pool 10×", "pool"),
]
ROW_NAMES = list(dict.fromkeys(n for n, _, _ in ROWS))
# Training order: the teachers, then the rows the benchmark's three questions compare (DA vs
# none, KE 10x vs its teacher, KD vs its teacher), then the cheap ResNet and last the pool curve
# (two more KE rows, the costliest), so that a run stopped early (or read with --report) has
# answered the questions first.
TRAIN_ORDER = ("transformer_da", "transformer", "ke_10x", "kd", "resnet", "ke_3x", "ke_1x")


# ---------------------------------------------------------------------------
# data


def assign(rendered: Path, a, seed: int) -> dict:
    """Piece-level partition: valid, test, labelled train, then the pool (nested prefixes)."""
    rows = list(csv.DictReader(open(rendered / "annotations.csv")))
    by_piece: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_piece[r["artist"]].append(r)
    pieces = sorted(by_piece)
    random.Random(seed).shuffle(pieces)
    targets = [("valid", a.valid), ("test", a.test), ("train", a.labelled)]
    part: dict[str, list[str]] = {"valid": [], "test": [], "train": [], "pool": []}
    counts = {"valid": 0, "test": 0, "train": 0}
    i = 0
    for name, target in targets:
        while i < len(pieces) and counts[name] < target:
            part[name].append(pieces[i])
            counts[name] += len(by_piece[pieces[i]])
            i += 1
    part["pool"] = pieces[i:]
    n_lab = counts["train"]
    pools: dict[int, list[dict]] = {}
    for k in POOLS:
        chosen, n = [], 0
        for p in part["pool"]:
            if n >= k * n_lab:
                break
            chosen += by_piece[p]
            n += len(by_piece[p])
        pools[k] = chosen
    return {"by_piece": by_piece, "part": part, "pools": pools}


def write_annotations(split: dict, k: int, out_csv: Path) -> dict:
    counts = {"train": 0, "valid": 0, "test": 0, "unlabeled": 0}
    tmp = out_csv.with_name(out_csv.name + f".{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "tags", "artist", "split"])
        for name in ("train", "valid", "test"):
            for p in split["part"][name]:
                for r in split["by_piece"][p]:
                    w.writerow([r["path"], r["tags"], r["artist"], name])
                    counts[name] += 1
        for r in split["pools"][k]:
            w.writerow([r["path"], "", r["artist"], "unlabeled"])
            counts["unlabeled"] += 1
    os.replace(tmp, out_csv)
    return counts


# ---------------------------------------------------------------------------
# models


def n_params_of(arch: str, preset: str, crop: float, params: dict | None = None) -> int:
    from mttag.models import build_model, count_parameters, make_config

    return count_parameters(build_model(make_config(arch, [f"t{i}" for i in range(33)], preset, crop, **(params or {}))))


def pick_student(preset: str, crop: float) -> tuple[dict, int, int]:
    """A Transformer whose parameter count is closest to 1/9 of the ``preset`` teacher's."""
    teacher = n_params_of("transformer", preset, crop)
    best = None
    for conv in (4, 8, 16, 32, 64):
        for dim in (8, 16, 24, 32, 48, 64, 96, 128):
            for depth in (1, 2, 3, 4):
                heads = 4 if dim % 4 == 0 else 2
                p = {"conv_channels": conv, "dim": dim, "depth": depth, "heads": heads}
                try:
                    n = n_params_of("transformer", preset, crop, p)
                except Exception:
                    continue
                score = abs(math.log(teacher / n / 9))
                if best is None or score < best[0]:
                    best = (score, p, n)
    return {"arch": "transformer", "params": best[1]}, best[2], teacher


# ---------------------------------------------------------------------------
# runs


def common(a, crop: float, augment: bool, seed: int) -> list:
    args = ["--augment" if augment else "--no-augment", "--max-epochs", a.max_epochs, "--patience", a.patience,
            "--batch-size", a.batch_size, "--lr", a.lr, "--eval-chunks", a.eval_chunks, "--device", a.device,
            "--workers", a.workers, "--seed", seed, "--crop-seconds", crop, "--quiet", "--precision", a.precision]
    if a.steps:
        args += ["--steps-per-epoch", a.steps]
    for key, value in front_end(a).items():
        args += ["--param", f"{key}={value}"]
    return args


FRONT_END_KEYS = ("n_mels", "n_fft", "hop_length")


def front_end(a) -> dict[str, int]:
    """``--front-end n_mels=64,hop_length=1024``: the log-mel front end of every row (the
    Transformers, the ResNet and the KD student alike), e.g. a coarser one for a cheaper CPU run."""
    out = {}
    if (a.front_end or "").strip() in ("", "paper"):
        return out
    for item in filter(None, a.front_end.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in FRONT_END_KEYS or not value.strip().isdigit():
            raise SystemExit(f"--front-end {item!r}: expected KEY=INTEGER with KEY one of {', '.join(FRONT_END_KEYS)}")
        out[key] = int(value)
    return out


def check_front_end(a, work: Path) -> None:
    """Finished runs are reused, so a work folder keeps one front end: the first invocation
    records it in WORK/front_end.json and a later one with another is refused."""
    f, fe = work / "front_end.json", front_end(a)
    if f.is_file():
        old = json.loads(f.read_text())
        if old != fe:
            said = ",".join(f"{k}={v}" for k, v in old.items()) or "paper"
            raise SystemExit(f"{work} was run with --front-end {said}; give the same, or another --work")
        return
    if fe and any((work / "runs").glob("*/done")):
        raise SystemExit(f"{work} holds runs with the paper's front end (made before WORK/front_end.json); "
                         "give --front-end paper, or another --work")
    f.write_text(json.dumps(fe) + "\n")


def do_run(a, name: str, seed: int, datasets: dict, runs: Path, student: str) -> Path:
    out = runs / f"{name}_s{seed}"
    if (out / "done").is_file():
        return out
    logfile = runs / f"{name}_s{seed}.log"
    t0 = time.time()
    teacher = runs / f"transformer_da_s{seed}" / "model"
    if name in ("resnet", "transformer", "transformer_da"):
        arch = "resnet" if name == "resnet" else "transformer"
        crop = 3.69 if arch == "resnet" else a.crop_seconds
        preset = a.preset if arch == "transformer" else a.resnet_preset
        cmd = mttag("train", datasets[1], out, "--arch", arch, "--preset", preset,
                    *common(a, crop, name == "transformer_da", seed))
    elif name.startswith("ke_"):
        k = int(name[3:-1])
        cmd = mttag("train", datasets[k], out, "--arch", "transformer", "--preset", a.preset,
                    *common(a, a.crop_seconds, True, seed), "--teacher", teacher)
    elif name == "kd":
        cmd = mttag("distill", datasets[max(POOLS)], out, "--teacher", teacher, "--student", student,
                    *common(a, a.crop_seconds, True, seed))
    else:
        raise ValueError(name)
    if (out / "checkpoint.pt").exists():
        cmd.append("--resume")
    run(cmd, logfile)
    (out / "done").write_text(f"{time.time() - t0:.1f}\n")
    return out


def read_metrics(out: Path) -> list[dict]:
    f = out / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


def run_limits(out: Path, a) -> tuple[int, int]:
    """The ``--max-epochs`` and ``--patience`` the run in ``out`` last trained with (its
    train_config.json; a run extended with a higher cap is judged by that cap), else this
    invocation's."""
    try:
        cfg = json.loads((out / "train_config.json").read_text())
        return int(cfg["max_epochs"]), int(cfg["patience"])
    except (OSError, ValueError, KeyError, TypeError):
        return a.max_epochs, a.patience


def stopping(metrics: list[dict], max_epochs: int, patience: int = 1) -> dict:
    if not metrics:
        return {"best_epoch": None, "epochs": 0, "hit_cap": None}
    best = min(metrics, key=lambda m: m["valid_loss"])
    last = metrics[-1]["epoch"]
    return {"best_epoch": best["epoch"], "epochs": last, "best_valid_loss": best["valid_loss"],
            # stopped by the cap, not by patience: the best epoch is within `patience` of the end
            "hit_cap": bool(last >= max_epochs and last - best["epoch"] < patience),
            # the median: an epoch that waited on something else (a paused machine) does not skew it
            "epoch_seconds": statistics.median(m["seconds"] for m in metrics)}


# ---------------------------------------------------------------------------
# scoring


def tag_kinds() -> dict[str, tuple[str, ...]]:
    import render as R  # noqa: N812

    return {"instruments": R.FAMILIES + ("drums",), "style": R.STYLES, "tempo": R.TEMPI, "mode": R.MODES,
            "meter": R.METERS, "solo/ensemble": R.TEXTURES, "dynamics": R.DYNAMICS, "reverb": ("reverb",)}


def group_scores(ev: dict) -> dict:
    kinds = tag_kinds()
    groups = {"invariant": [t for k, ts in kinds.items() if k not in SENSITIVE_KINDS for t in ts],
              "sensitive": [t for k in SENSITIVE_KINDS for t in kinds[k]], **kinds}
    out = {"all": {"roc_auc": ev.get("roc_auc"), "pr_auc": ev.get("pr_auc")}}
    for g, tags in groups.items():
        d = {}
        for metric in ("roc_auc", "pr_auc"):
            vals = [ev["per_tag"][t][metric] for t in tags if ev["per_tag"].get(t, {}).get(metric) is not None]
            d[metric] = sum(vals) / len(vals) if vals else None
        out[g] = d
    return out


def mean_ci(vals: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    from scipy import stats

    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, float(stats.t.ppf(0.975, len(vals) - 1)) * sd / math.sqrt(len(vals))


def fmt(vals: list) -> str:
    m, h = mean_ci(vals)
    if m is None:
        return "–"
    return f"{m:.3f}" if h is None else f"{m:.3f} ± {h:.3f}"


def tables(res: dict, seeds: list[int], heldout: bool) -> str:
    out = []
    sets = [("test", "Test set (unseen pieces, training SoundFonts)")]
    if heldout:
        sets.append(("heldout", "Held-out test set (unseen pieces, held-out SoundFonts)"))
    for split, title in sets:
        out += [f"**{title}**: macro ROC-AUC / PR-AUC, mean ± 95 % t-interval over seeds {seeds}\n",
                "| Row | params | ROC-AUC invariant | PR-AUC invariant | ROC-AUC sensitive | PR-AUC sensitive | ROC-AUC all |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for kind in ("main", "pool"):
            for name, label, k in ROWS:
                if k != kind or name not in res:
                    continue
                rs = [res[name][s] for s in seeds if s in res[name]]
                p = rs[0].get("params")

                def col(group, metric, rs=rs):
                    return fmt([r[split][group][metric] for r in rs if r.get(split)])

                if len(rs) < len(seeds):
                    done = [str(s) for s in seeds if s in res[name]]
                    label += f" (seed{'s' * (len(done) > 1)} {', '.join(done)} only)"
                out.append(f"| {label} | {p / 1e3:.0f} k | {col('invariant', 'roc_auc')} | {col('invariant', 'pr_auc')} "
                           f"| {col('sensitive', 'roc_auc')} | {col('sensitive', 'pr_auc')} | {col('all', 'roc_auc')} |"
                           if p else f"| {label} | ? | – | – | – | – | – |")
            if kind == "main" and any(k == "pool" and n in res for n, _, k in ROWS):
                out.append("| *unlabelled pool size* | | | | | | |")
        out.append("")
    kinds = list(tag_kinds())
    out += ["**Per kind of tag** (test set, macro ROC-AUC, mean over seeds)\n",
            "| Row | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for name in ROW_NAMES:
        if name not in res:
            continue
        rs = [res[name][s]["test"] for s in seeds if s in res[name]]
        label = next(lbl for n, lbl, _ in ROWS if n == name)
        cells = []
        for kd in kinds:
            m, _ = mean_ci([r[kd]["roc_auc"] for r in rs])
            cells.append("–" if m is None else f"{m:.2f}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "**Early stopping** (best epoch by validation loss / epochs run, per seed; "
            "⚠ = stopped by --max-epochs, not by patience: still improving)\n",
            "| Row | best / run | s per epoch (median) | minutes per run |", "|---|---|---:|---:|"]
    for name in ROW_NAMES:
        if name not in res:
            continue
        rs = [res[name][s] for s in seeds if s in res[name]]
        label = next(lbl for n, lbl, _ in ROWS if n == name)
        be = ", ".join(f"{r['stop']['best_epoch']}/{r['stop']['epochs']}{' ⚠' if r['stop']['hit_cap'] else ''}" for r in rs)
        eps = sum(r["stop"].get("epoch_seconds", 0) for r in rs) / len(rs)
        mins = sum(r["seconds"] for r in rs) / len(rs) / 60
        out.append(f"| {label} | {be} | {eps:.1f} | {mins:.1f} |")
    return "\n".join(out)


def curves(res: dict, runs: Path, seeds: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for name in ROW_NAMES:
        if name not in res:
            continue
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
        for s in seeds:
            ms = read_metrics(runs / f"{name}_s{s}")
            if not ms:
                continue
            ep = [m["epoch"] for m in ms]
            if any(m.get("train_loss") is not None for m in ms):
                ax[0].plot(ep, [m.get("train_loss") for m in ms], label=f"seed {s} labelled")
            if any(m.get("train_pseudo_loss") is not None for m in ms):
                ax[0].plot(ep, [m.get("train_pseudo_loss") for m in ms], "--", label=f"seed {s} pseudo")
            ax[1].plot(ep, [m["valid_loss"] for m in ms], label=f"seed {s}")
            ax[2].plot(ep, [m.get("roc_auc") for m in ms], label=f"seed {s}")
            b = min(ms, key=lambda m: m["valid_loss"])
            ax[1].plot([b["epoch"]], [b["valid_loss"]], "k*")
        for axis, title in zip(ax, ("train loss", "valid loss (★ best)", "valid ROC-AUC")):
            axis.set_title(title)
            axis.set_xlabel("epoch")
            axis.legend(fontsize=7)
        fig.suptitle(next(lbl for n, lbl, _ in ROWS if n == name))
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=80)
        plt.close(fig)


# ---------------------------------------------------------------------------


def train_in_parallel(argv: list[str], jobs: list[tuple[str, int]], parallel: int, work: Path, runs: Path) -> None:
    """Run every (row, seed) in its own process, ``parallel`` at a time, the cores shared out
    between them; a KE/KD run starts once its seed's DA teacher is done. Job-level (not
    seed-level) scheduling keeps both cores busy with 3 seeds on 2 cores."""

    def ready(job, failed):
        name, seed = job
        if any(f[1] == seed for f in failed):
            return False
        return name in ("transformer_da", "resnet", "transformer") or (runs / f"transformer_da_s{seed}" / "done").is_file()

    pending = [j for j in jobs if not (runs / f"{j[0]}_s{j[1]}" / "done").is_file()]
    failed, not_run = B.run_processes(
        pending, parallel, ready=ready,
        command=lambda j: [sys.executable, __file__, *argv, "--seeds", str(j[1]), "--rows", j[0], "--parallel", "1",
                           "--train-only"],
        logfile=lambda j: runs / f"{j[0]}_s{j[1]}.driver.log", label=lambda j: f"{j[0]} seed {j[1]}")
    if failed or not_run:
        raise SystemExit(f"failed: {failed}, not run: {not_run}; see {runs}/*.log (run again to resume)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=tuple(SCALES), default="cpu")
    ap.add_argument("--work", type=Path, default=None, help="work/output folder [scarce-SCALE]")
    ap.add_argument("--render-seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="rendering/preparing processes")
    ap.add_argument("--rows", default=",".join(ROW_NAMES))
    ap.add_argument("--resnet-preset", default=None, help="ResNet preset [tiny; gpu: teacher]")
    ap.add_argument("--parallel", type=int, default=0,
                    help="runs trained at once, one process each [0: one per core on CPU, 1 on GPU]")
    ap.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true",
                    help="train nothing: evaluate and tabulate the runs finished so far (partial tables)")
    for key, val in SCALES["cpu"].items():
        flag = "--" + key.replace("_", "-")
        ap.add_argument(flag, type=type(val) if val is not None else str, default=None,
                        help=f"{SCALE_HELP.get(key, '')}[smoke {SCALES['smoke'][key]}, cpu {val}, gpu {SCALES['gpu'][key]}]")
    a = ap.parse_args(argv)
    for key, val in SCALES[a.scale].items():
        if getattr(a, key) is None:
            setattr(a, key, val)
    a.resnet_preset = a.resnet_preset or ("teacher" if a.scale == "gpu" else "tiny")
    fe = front_end(a)  # a bad --front-end stops here, before anything is rendered
    if a.precision == "native":
        # bf16 training where the CPU has it: 1.5-1.6x faster epochs, and on this benchmark the
        # same best epochs and test ROC-AUC (within 0.0005) as float32 (docs/benchmarks.md)
        from mttag.device import cpu_has_native_bf16

        a.precision = "bf16" if a.device == "cpu" and cpu_has_native_bf16() else "fp32"
    work = a.work or Path(f"scarce-{a.scale}")
    work.mkdir(parents=True, exist_ok=True)
    if not a.train_only:  # the invocation that started the --train-only ones has checked
        check_front_end(a, work)
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    names = [n for n in ROW_NAMES if n in a.rows.split(",")]
    t_start = time.time()

    # --- data (the parent does it once; seed processes find it done)
    rendered, heldout = work / "rendered", work / "heldout"
    n_main = int(math.ceil(1.08 * (a.labelled * (1 + a.pool_max) + a.valid + a.test)))
    render(rendered, n_main, a.render_seed, ["--split", "train"], a.jobs, work / "render.log")
    if a.heldout:
        render(heldout, a.heldout, a.render_seed + 1,
               ["--soundfonts", "heldout", "--pieces", "heldout", "--split", "test"], a.jobs, work / "render.log")
    split = assign(rendered, a, a.render_seed)
    vocab = rendered / "tags.txt"
    datasets, counts = {}, {}
    for k in POOLS:
        ann = work / f"annotations_pool{k}x.csv"
        counts[k] = write_annotations(split, k, ann) if not a.train_only else json.loads(
            (work / "counts.json").read_text())[str(k)]
        datasets[k] = work / f"dataset_pool{k}x"
        prepare(datasets[k], ann, rendered / "audio", vocab, a.jobs, work / "prepare.log")
    heldout_ds = None
    if a.heldout:
        heldout_ds = work / "dataset_heldout"
        prepare(heldout_ds, heldout / "annotations.csv", heldout / "audio", vocab, a.jobs, work / "prepare.log")
    if not a.train_only:
        (work / "counts.json").write_text(json.dumps({str(k): v for k, v in counts.items()}, indent=1))
        c = counts[max(POOLS)]
        log(f"tracks: {c['train']} labelled / {c['valid']} valid / {c['test']} test / pools "
            + ", ".join(f"{k}x={counts[k]['unlabeled']}" for k in POOLS) + f"; held-out {a.heldout}")
        if counts[max(POOLS)]["unlabeled"] < 0.95 * max(POOLS) * c["train"]:
            log("warning: the rendered collection has too few pieces left for the largest pool")

    # --- the KD student: ~1/9 of the teacher's parameters
    student_json = work / "student.json"
    if a.student:
        student = a.student
        n_s = n_params_of("transformer", a.student, a.crop_seconds, fe)
        n_t = n_params_of("transformer", a.preset, a.crop_seconds, fe)
    else:
        if student_json.is_file():
            cfg = json.loads(student_json.read_text())
        else:
            cfg, _, _ = pick_student(a.preset, a.crop_seconds)
            student_json.write_text(json.dumps(cfg))
        # counted with the front end the rows train with (--front-end changes the token projection)
        n_s = n_params_of("transformer", a.preset, a.crop_seconds, {**cfg["params"], **fe})
        n_t = n_params_of("transformer", a.preset, a.crop_seconds, fe)
        student = str(student_json)
    log(f"KD: teacher ({a.preset}) {n_t:,} parameters, student {n_s:,} (1/{n_t / n_s:.1f})")

    # --- training
    parallel = a.parallel or (min(len(seeds), os.cpu_count() or 1) if a.device == "cpu" else 1)
    need_da = any(n.startswith(("ke_", "kd")) for n in names)
    need_da = need_da or "transformer_da" in names
    order = (["transformer_da"] if need_da else []) + [n for n in TRAIN_ORDER if n in names and n != "transformer_da"]
    jobs = [(n, s) for n in order for s in seeds]
    if a.report:
        jobs = []
    elif parallel > 1 and len(jobs) > 1 and not a.train_only:
        train_in_parallel(argv, jobs, parallel, work, runs)
    for name, seed in jobs:  # sequentially (GPU, one core, or a child process's own job)
        out = do_run(a, name, seed, datasets, runs, student)
        if a.train_only:  # evaluate in the job's own process too, so that both cores are busy
            evaluate(a, out / "model", datasets[1], out / "eval_test.json", runs / f"{name}_s{seed}.log")
            if heldout_ds is not None:
                evaluate(a, out / "model", heldout_ds, out / "eval_heldout.json", runs / f"{name}_s{seed}.log")
    if a.train_only:
        return 0

    # --- evaluation and report
    res: dict = {}
    for name in names:
        res[name] = {}
        for seed in seeds:
            out = runs / f"{name}_s{seed}"
            if a.report and not (out / "done").is_file():
                continue  # not finished: left out of the partial tables
            logfile = runs / f"{name}_s{seed}.log"
            r = {"seconds": float((out / "done").read_text()), "params": None,
                 "stop": stopping(read_metrics(out), *run_limits(out, a)),
                 "test": group_scores(evaluate(a, out / "model", datasets[1], out / "eval_test.json", logfile))}
            if heldout_ds is not None:
                r["heldout"] = group_scores(evaluate(a, out / "model", heldout_ds, out / "eval_heldout.json", logfile))
            r["params"] = n_params(out / "model")
            res[name][seed] = r
    res = {n: rr for n, rr in res.items() if rr}  # --report: rows with no finished seed yet
    md = tables(res, seeds, heldout_ds is not None)
    c = counts[max(POOLS)]
    train_min = sum(r["seconds"] for rr in res.values() for r in rr.values()) / 60
    settings = (f"\nSettings (--scale {a.scale}): {c['train']} labelled / {c['valid']} valid / {c['test']} test tracks "
                f"(piece-level), unlabelled pools " + ", ".join(f"{k}× = {counts[k]['unlabeled']}" for k in POOLS)
                + f" tracks of other pieces; held-out SoundFont test set {a.heldout} tracks. Transformer preset {a.preset} "
                f"({n_t:,} params), ResNet preset {a.resnet_preset}, KD student {n_s:,} params (1/{n_t / n_s:.1f}); "
                + (f"front end {', '.join(f'{k} {v}' for k, v in fe.items())} (every row); " if fe else "")
                + f"crops {a.crop_seconds} s (ResNet 3.69 s), batch {a.batch_size}, lr {a.lr}, "
                f"{a.steps or 'full-pass'} steps/epoch, --max-epochs {a.max_epochs}, --patience {a.patience}, "
                f"eval crops {a.eval_chunks} (valid) / {a.eval_chunks_test} (test); device {a.device}, precision {a.precision}; seeds {seeds}. "
                f"Invariant tags: instruments, style, tempo, mode, meter, solo/ensemble; sensitive: dynamics, reverb. "
                f"Training time {train_min:.1f} min summed over runs; this invocation {(time.time() - t_start) / 60:.1f} min "
                f"wall (finished renders, datasets and runs are reused).\n")
    (work / "scarce_labels.md").write_text("# Scarce-label benchmark\n\n" + md + "\n" + settings)
    (work / "results.json").write_text(json.dumps({
        "scale": a.scale, "settings": {k: getattr(a, k) for k in SCALES["cpu"]}, "counts": counts,
        "teacher_params": n_t, "student_params": n_s,
        "runs": {f"{n}_s{s}": r for n, rr in res.items() for s, r in rr.items()},
        "aggregate": {n: {split: {g: {m: dict(zip(("mean", "ci95"), mean_ci([rr[s][split][g][m] for s in rr])))
                                      for m in ("roc_auc", "pr_auc")} for g in ("all", "invariant", "sensitive")}
                          for split in (["test", "heldout"] if heldout_ds else ["test"])} for n, rr in res.items()},
    }, indent=1, default=str))
    curves(res, runs, seeds, work / "curves")
    print(md)
    print(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
