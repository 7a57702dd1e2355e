#!/usr/bin/env python3
"""Recall and latency of the ANN file (``mttag.inference.ann``) against exact search, at 1 M and 10 M tracks.

Synthetic but musicnn-like data: ``mttag embed`` with the bundled msd-musicnn gives 200-d
unit vectors that share a common direction (any two tracks have a cosine of ~0.5-0.8) and
cluster by style. Here: a common mean + one of 2,000 cluster centres (sizes drawn from a
Dirichlet, so some styles are big) + per-track noise, normalised; 50 random tag
probabilities and durations. Written in chunks with the real IndexWriter, the ANN file built
with the real :func:`mttag.inference.ann.build`, then searched in a fresh process with the real
:class:`mttag.inference.index.EmbeddingIndex` (ann="on" and "off"):

* queries: new draws from the same mixture (an audio file not in the index), 200 of them;
* truth: the exact top 10 of each query (one batched pass over the vectors, in its own
  process, so that the measuring one reads only what ANN queries read);
* recall@10: the share of the exact top 10 that the ANN search returns in its top 10;
  also under a ``--tag`` filter (probability >= 0.3) plus a duration filter (54 % pass),
  and under a strict tag filter (>= 0.97: 3 % pass), against exact search with those filters;
* latency: one query at a time (``search(top=10)``: graph, exact rescoring, filters),
  p50 and p95, after 20 warm-up queries, for each ``--ef`` (expansion_search); the exact
  search's for comparison (fewer queries);
* build: seconds and peak resident set; memory when searching: the query process's peak
  resident set (mapped pages included) and anonymous memory; disk: the size of ``ann.usearch``.

The indexes stay in --work and are reused (``--keep`` also reuses their ANN files, to measure
other --ef values without building again). Results are in docs/similarity.md.

    python benchmarks/ann_recall.py --sizes 1000000 10000000 --work /tmp/ann
    python benchmarks/ann_recall.py --sizes 100000              # a quick run
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_TAGS = 50
DIM = 200  # msd-musicnn, mttag's bundled default model
CLUSTERS = 2000
CHUNK = 500_000


def mixture(seed: int = 0):
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(DIM) * 1.5
    centres = rng.standard_normal((CLUSTERS, DIM)) * rng.uniform(0.6, 1.2, (CLUSTERS, 1))
    weights = rng.dirichlet(np.full(CLUSTERS, 0.5))
    return mean, centres, weights


def draw(n: int, rng: np.random.Generator, model) -> np.ndarray:
    mean, centres, weights = model
    labels = rng.choice(CLUSTERS, n, p=weights)
    v = mean + centres[labels] + rng.standard_normal((n, DIM)) * 0.9
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write(path: Path, n: int) -> dict:
    from mttag.inference.index import IndexWriter

    model = mixture()
    tags = [f"tag{i}" for i in range(N_TAGS)]
    ident = {"name": "synthetic-musicnn", "revision": f"sha256:synthetic-{DIM}", "dim": DIM}
    t0 = time.perf_counter()
    with IndexWriter(path, ident, tags, 8) as w:
        for a in range(0, n, CHUNK):
            b = min(n, a + CHUNK)
            rng = np.random.default_rng(1000 + a // CHUNK)
            paths = [f"/home/someone/Music/Artist {i % 5000:04d}/Album {i % 97:02d}/{i % 20 + 1:02d} Song {i:08d}.flac"
                     for i in range(a, b)]
            w.add_rows(paths, rng.uniform(60, 600, b - a), draw(b - a, rng, model),
                       rng.random((b - a, N_TAGS), dtype=np.float32), [8] * (b - a), keys=True)
    return {"write_s": time.perf_counter() - t0}


def build(path: Path, expansion_add: int | None = None) -> dict:
    from mttag.inference import ann

    if expansion_add:  # a cheaper graph than mttag builds: a lower bound on its recall, for sizes too slow to build
        ann.EXPANSION_ADD = expansion_add

    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 30:
            print(f"  ann build {done}/{total}", file=sys.stderr, flush=True)
            last[0] = time.perf_counter()

    r = ann.build(path, rebuild=True, progress=progress)
    return {"build_s": r.seconds, "ann_bytes": r.bytes, "expansion_add": ann.EXPANSION_ADD,
            "build_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def truth(vectors: np.ndarray, queries: np.ndarray, k: int, keep: np.ndarray | None = None) -> np.ndarray:
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for a in range(0, len(vectors), CHUNK):
        b = min(len(vectors), a + CHUNK)
        s = queries @ np.asarray(vectors[a:b]).T
        if keep is not None:
            s[:, ~keep[a:b]] = -np.inf
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        best_r = np.concatenate([best_r, top + a], 1)
        order = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_r, order, 1)
    return best_r


def query_set(queries: int) -> tuple[np.ndarray, np.ndarray]:
    Q = draw(queries + 20, np.random.default_rng(7), mixture())
    return Q[:20], Q[20:]


def cases(idx) -> dict:
    return {
        "none": {},
        "tag>=0.3+duration": {"tags": [(idx.tag_index("tag3"), 0.3)], "min_duration": 120, "max_duration": 540},
        "tag>=0.97 (3%)": {"tags": [(idx.tag_index("tag7"), 0.97)]},
    }


def exact_truth(path: Path, queries: int) -> dict:
    """The exact top 10 of every query and filter, saved for the measuring process (which then
    never reads every vector, so its memory is that of ANN queries alone)."""
    from mttag.inference.index import EmbeddingIndex

    idx = EmbeddingIndex(path, ann="off")
    _, Q = query_set(queries)
    t = time.perf_counter()
    strict = idx.tag_index("tag7")
    masks = {
        "none": None,
        "tag>=0.3+duration": ((np.asarray(idx.scores[:, idx.tag_index("tag3")], dtype=np.float32) >= 0.3)
                              & (idx.durations >= 120) & (idx.durations <= 540)),
        "tag>=0.97 (3%)": np.asarray(idx.scores[:, strict], dtype=np.float32) >= 0.97,
    }
    exact = {name: truth(idx.vectors, Q, 10, m) for name, m in masks.items()}
    np.savez(path.parent / f"{path.name}.truth.npz", **{str(i): exact[name] for i, name in enumerate(masks)})
    return {"truth_s": time.perf_counter() - t}


def measure(path: Path, queries: int, exact_queries: int, ef: list[int], min_fetch: int | None) -> dict:
    from mttag.inference import ann
    from mttag.inference.index import EmbeddingIndex

    if min_fetch:
        ann.MIN_FETCH = min_fetch

    out: dict = json.loads(subprocess.run(
        [sys.executable, __file__, "--phase", "truth", "--sizes", path.name[1:-6], "--work", str(path.parent),
         "--queries", str(queries)], stdout=subprocess.PIPE, text=True, check=True).stdout.strip().splitlines()[-1])
    t = time.perf_counter()
    idx = EmbeddingIndex(path, ann="on")
    out["open_s"] = time.perf_counter() - t
    assert idx.ann is not None, idx.ann_note
    warm, Q = query_set(queries)
    saved = np.load(path.parent / f"{path.name}.truth.npz")
    exact = {name: saved[str(i)] for i, name in enumerate(cases(idx))}
    out.update({"tracks": len(idx), "runs": []})
    for e in ef:
        ann.EXPANSION_SEARCH = e
        for q in warm:
            idx.search(q, 10)
        for name, kw in cases(idx).items():
            times, recall = [], []
            for i, q in enumerate(Q):
                t = time.perf_counter()
                hits = idx.search(q, 10, **kw)
                times.append(time.perf_counter() - t)
                recall.append(len({h.row for h in hits} & set(exact[name][i].tolist())) / 10)
            out["runs"].append({"expansion_search": e, "min_fetch": ann.MIN_FETCH, "filter": name, "recall@10": float(np.mean(recall)),
                                "p50_ms": 1000 * float(np.percentile(times, 50)),
                                "p95_ms": 1000 * float(np.percentile(times, 95))})
            print(json.dumps(out["runs"][-1]), file=sys.stderr, flush=True)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    out["ann_query_peak_rss_mb"] = int(status["VmHWM"].split()[0]) / 1024
    out["ann_query_rss_anon_mb"] = int(status.get("RssAnon", "0 kB").split()[0]) / 1024
    times = []
    for q in Q[:exact_queries]:
        t = time.perf_counter()
        idx.search(q, 10, exact=True)
        times.append(time.perf_counter() - t)
    out["exact_p50_ms"] = 1000 * float(np.percentile(times, 50))
    out["exact_p95_ms"] = 1000 * float(np.percentile(times, 95))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mttag-ann-bench"))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--exact-queries", type=int, default=10)
    ap.add_argument("--ef", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--min-fetch", type=int, help="Candidates rescored at least (default: mttag.inference.ann.MIN_FETCH).")
    ap.add_argument("--expansion-add", type=int, help="Build with this expansion_add instead of mttag's "
                    "(mttag.inference.ann.EXPANSION_ADD): a cheaper graph whose recall is a lower bound on mttag's, "
                    "for sizes whose build would take too long on this machine.")
    ap.add_argument("--phase", choices=["write", "build", "truth", "measure"], help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="Keep the indexes in --work (default: reuse if present).")
    args = ap.parse_args()
    if args.phase:  # one phase, in its own process (memory and timings of that phase alone)
        path = args.work / f"n{args.sizes[0]}.mttag"
        result = {"write": lambda: write(path, args.sizes[0]), "build": lambda: build(path, args.expansion_add),
                  "truth": lambda: exact_truth(path, args.queries),
                  "measure": lambda: measure(path, args.queries, args.exact_queries, args.ef, args.min_fetch)}[args.phase]()
        print(json.dumps(result))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        row = {"tracks": n, "dim": DIM}
        path = args.work / f"n{n}.mttag"
        phases = (["write"] if not (path / "index.json").exists() else []) + ["build", "measure"]
        if (path / "ann.json").exists() and args.keep:
            phases.remove("build")
        for phase in phases:
            cmd = [sys.executable, __file__, "--phase", phase, "--sizes", str(n), "--work", str(args.work),
                   "--queries", str(args.queries), "--exact-queries", str(args.exact_queries), "--ef", *map(str, args.ef)]
            if args.min_fetch:
                cmd += ["--min-fetch", str(args.min_fetch)]
            if args.expansion_add:
                cmd += ["--expansion-add", str(args.expansion_add)]
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        row["vectors_bytes"] = (path / "vectors.f32").stat().st_size
        print(json.dumps(row, indent=1), flush=True)


if __name__ == "__main__":
    main()
