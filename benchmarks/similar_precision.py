#!/usr/bin/env python3
"""Do the models' embeddings find similar music? precision@10 on the rendered benchmark.

Each rendering of ``benchmarks/rendered`` is a query; its 10 nearest neighbours (cosine,
renderings of the *same piece* left out, so that shared notes cannot help) are relevant when
they share an **instrument** family tag with the query (piano, strings, organ, ...: at least
one in common) or its **style** tag (chorale, renaissance, medieval, quartet, folk, irish).

Compared, for each bundled model (``mttag embed``'s pooling: the mean of the L2-normalised
window embeddings, and the plain mean of the raw window embeddings for comparison):

* **random**: the expected precision of 10 random neighbours (exact: the share of relevant
  candidates, averaged over the queries);
* **mel-stats**: the mean and standard deviation over time of each of 128 log-mel bands
  (256 numbers per track, each standardised over the set), a timbre baseline with no learning.

    python benchmarks/similar_precision.py                       # renders 600 pieces into data/similar-rendered first
    python benchmarks/similar_precision.py --data data/rendered  # reuse a rendered set
    python benchmarks/similar_precision.py --synthetic           # no FluidSynth: numpy timbres x styles

Rendering needs FluidSynth, SoundFonts and music21 (benchmarks/rendered/README.md); without
them the script says so and falls back to ``--synthetic`` (instrument timbres x rhythmic/harmonic
styles generated with numpy), which is a much easier, cruder test: say which one you report.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

FAMILIES = ("piano", "harpsichord", "organ", "strings", "brass", "woodwind", "choir",
            "guitar", "mallets", "synth", "accordion", "harp")
STYLES = ("chorale", "renaissance", "medieval", "quartet", "folk", "irish")


def load_rendered(data: Path) -> tuple[list[Path], list[set[str]], list[str]]:
    paths, tags, groups = [], [], []
    with open(data / "annotations.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            paths.append(data / "audio" / row["path"])
            tags.append(set(row["tags"].split(",")))
            groups.append(row["artist"])
    return paths, tags, groups


def render(data: Path, n: int, seed: int) -> bool:
    cmd = [sys.executable, str(HERE / "rendered" / "render.py"), str(data), "--n", str(n), "--seed", str(seed)]
    print("rendering:", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode == 0


# -- the synthetic fallback ----------------------------------------------------------------------

SYN_TIMBRES = {  # family -> (harmonic amplitudes, attack s, decay per s, vibrato)
    "strings": ([1, .5, .33, .25, .2, .16, .14], 0.08, 0.0, 5.5),
    "woodwind": ([1, 0, .33, 0, .2, 0, .14], 0.05, 0.0, 4.5),
    "organ": ([1, .8, .6, .5, .3, .3, .2, .2], 0.01, 0.0, 0.0),
    "piano": ([1, .4, .25, .15, .1], 0.002, 3.0, 0.0),
    "guitar": ([1, .6, .3, .2, .1, .05], 0.002, 5.0, 0.0),
    "brass": ([.6, 1, .8, .7, .5, .4, .3, .2], 0.04, 0.0, 0.0),
}
SYN_STYLES = {  # style -> (beats per minute, notes per beat, chord voices, scale)
    "chorale": (60, 1, 4, [0, 2, 4, 5, 7, 9, 11]),
    "folk": (120, 2, 1, [0, 2, 4, 7, 9]),
    "irish": (160, 3, 1, [0, 2, 3, 5, 7, 9, 10]),
    "renaissance": (80, 1, 3, [0, 2, 3, 5, 7, 8, 10]),
}


def synthesize(out: Path, per_cell: int = 6, seconds: float = 12.0, sr: int = 22050) -> None:
    """Instrument timbres x styles, ``per_cell`` pieces each (their own random melodies)."""
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    t_all = np.arange(int(seconds * sr)) / sr
    for family, (harm, attack, decay, vib) in SYN_TIMBRES.items():
        for style, (bpm, per_beat, voices, scale) in SYN_STYLES.items():
            for k in range(per_cell):
                note = 60.0 / bpm / per_beat
                n_notes = int(seconds / note)
                root = 48 + int(rng.integers(0, 12))
                y = np.zeros_like(t_all)
                for i in range(n_notes):
                    a, b = int(i * note * sr), int(min(seconds, (i + 1) * note) * sr)
                    t = t_all[: b - a]
                    degree = int(rng.integers(0, len(scale)))
                    for v in range(voices):
                        d = degree + 2 * v
                        midi = root + 12 * (d // len(scale)) + scale[d % len(scale)] + (12 if voices == 1 else 0)
                        f0 = 440.0 * 2 ** ((midi - 69) / 12) * (1 + 0.003 * np.sin(2 * np.pi * vib * t))
                        env = np.minimum(1, t / attack) * np.exp(-decay * t)
                        y[a:b] += env * sum(h * np.sin(2 * np.pi * f0 * (j + 1) * t) for j, h in enumerate(harm))
                y = 0.3 * y / (np.abs(y).max() + 1e-9) + 0.002 * rng.standard_normal(len(y))
                name = f"{len(rows):05d}.wav"
                import soundfile as sf

                sf.write(out / "audio" / name, y.astype(np.float32), sr)
                rows.append({"path": name, "tags": f"{family},{style}", "artist": f"{family}-{style}-{k}", "split": "test"})
    with open(out / "annotations.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "tags", "artist", "split"])
        w.writeheader()
        w.writerows(rows)


# -- embeddings ----------------------------------------------------------------------------------


def model_embeddings(name: str, paths: list[Path], windows: int | None) -> dict[str, np.ndarray]:
    """{pooling: n x dim} for one model; every file must embed."""
    from mttag.inference.embedder import Embedder, pool
    from mttag.weights.pretrained import load_model

    embedder = Embedder(load_model(name), "cpu", windows=windows, model_name=name)
    pooled, plain = [], []
    for r in embedder.tagger.tag_files(paths, top=1):
        if not r.ok:
            raise SystemExit(f"error: {r.path}: {r.error}")
        pooled.append(pool(r.window_embeddings))
        plain.append(r.window_embeddings.mean(axis=0))
    return {"mean of unit windows (mttag embed)": np.stack(pooled), "plain mean": np.stack(plain)}


def mel_stats(paths: list[Path]) -> np.ndarray:
    import torch

    from mttag.audio.decode import load_audio
    from mttag.audio.features import LogMelSpectrogram

    mel = LogMelSpectrogram(22050, 1024, 512, 128)
    rows = []
    with torch.inference_mode():
        for p in paths:
            x = torch.from_numpy(load_audio(p, 22050)).float()[None]
            m = mel(x)[0]  # 128 x frames
            rows.append(torch.cat([m.mean(1), m.std(1)]).numpy())
    feats = np.stack(rows)
    return (feats - feats.mean(0)) / (feats.std(0) + 1e-8)  # each number on the same footing


# -- precision@k ---------------------------------------------------------------------------------


def relevance(tags: list[set[str]]) -> dict[str, np.ndarray]:
    fam = np.array([[f in t for f in FAMILIES] for t in tags])
    sty = np.array([[s in t for s in STYLES] for t in tags])
    return {"instrument": (fam.astype(int) @ fam.T.astype(int)) > 0, "style": (sty.astype(int) @ sty.T.astype(int)) > 0}


def precision_at_k(vectors: np.ndarray, rel: dict[str, np.ndarray], groups: list[str], k: int = 10) -> dict[str, float]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = unit @ unit.T
    g = np.array(groups)
    same_piece = g[:, None] == g[None, :]  # includes the query itself
    sim[same_piece] = -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return {name: float(np.take_along_axis(r, order, axis=1).mean()) for name, r in rel.items()}


def random_baseline(rel: dict[str, np.ndarray], groups: list[str]) -> dict[str, float]:
    g = np.array(groups)
    eligible = g[:, None] != g[None, :]
    return {name: float(((r & eligible).sum(1) / eligible.sum(1)).mean()) for name, r in rel.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/similar-rendered"),
                    help="a rendered set (annotations.csv + audio/); rendered there if missing")
    ap.add_argument("--n", type=int, default=600, help="renderings to make when --data is missing [600]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default=None, help="only this split of the rendered set (default: all)")
    ap.add_argument("--models", default="msd-musicnn,mtt-musicnn")
    ap.add_argument("--windows", default="all", help="windows per track ('all': 4 musicnn windows per 12 s clip)")
    ap.add_argument("--synthetic", action="store_true", help="skip rendering: numpy timbres x styles")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    data = args.data
    kind = "rendered"
    if args.synthetic:
        kind = "synthetic"
        if not (data / "annotations.csv").exists():
            synthesize(data)
    elif not (data / "annotations.csv").exists() and not render(data, args.n, args.seed):
        print("rendering is not possible here (see the message above); falling back to --synthetic", flush=True)
        kind, data = "synthetic", data.with_name(data.name + "-synthetic")
        if not (data / "annotations.csv").exists():
            synthesize(data)
    paths, tags, groups = load_rendered(data)
    if args.split:
        with open(data / "annotations.csv", encoding="utf-8") as f:
            keep = [row["split"] == args.split for row in csv.DictReader(f)]
        paths, tags, groups = ([x for x, k in zip(seq, keep) if k] for seq in (paths, tags, groups))
    rel = relevance(tags)
    windows = None if args.windows == "all" else int(args.windows)
    print(f"{kind} set {data}: {len(paths)} tracks, {len(set(groups))} pieces", flush=True)

    results: dict[str, dict[str, float]] = {"random (expected)": random_baseline(rel, groups)}
    t0 = time.perf_counter()
    results["mel-stats (log-mel mean+std)"] = precision_at_k(mel_stats(paths), rel, groups)
    print(f"mel-stats: {time.perf_counter() - t0:.0f} s", flush=True)
    for name in args.models.split(","):
        t0 = time.perf_counter()
        for pooling, vectors in model_embeddings(name, paths, windows).items():
            results[f"{name}, {pooling}"] = precision_at_k(vectors, rel, groups)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\nprecision@10 ({kind} set, {len(paths)} tracks; same-piece neighbours excluded)\n")
    print("| embedding | instrument | style |\n| --- | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['instrument']:.3f} | {r['style']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"set": kind, "data": str(data), "tracks": len(paths), "results": results},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
