#!/usr/bin/env python3
"""Query latency, memory and size of an embedding index (``mttag similar``) at 100 k and 1 M tracks.

Synthetic indexes (random unit vectors, 50 random tag probabilities, realistic path lengths)
are written with the real :class:`mttag.inference.index.IndexWriter`, then searched in a fresh
process with the real :class:`mttag.inference.index.EmbeddingIndex`, which reports:

* open: reading the manifest and ``tracks.jsonl`` (paths, durations); vectors are memory-mapped;
* query: ``search(top=20)``, exact cosine over every row (median of 20 random queries after one
  warm-up: the vectors in the page cache, as after the first query of a session), also with a
  ``--tag`` filter and a duration filter;
* memory: peak resident set (``VmHWM``, which counts the mapped vector pages read) and the
  process's own anonymous memory (``RssAnon``: what the operating system cannot just drop).

    python benchmarks/similar_latency.py                     # 100k and 1M, dims 200 (musicnn) and 256
    python benchmarks/similar_latency.py --sizes 100000 --dims 200
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_TAGS = 50


def build(path: Path, n: int, dim: int, seed: int = 0) -> float:
    from mttag.inference.index import IndexWriter

    rng = np.random.default_rng(seed)
    tags = [f"tag{i}" for i in range(N_TAGS)]
    model = {"name": "synthetic", "revision": f"sha256:synthetic-{dim}", "dim": dim}
    t0 = time.perf_counter()
    with IndexWriter(path, model, tags, 8) as w:
        for a in range(0, n, 50_000):
            b = min(n, a + 50_000)
            paths = [f"/home/someone/Music/Artist {i % 5000:04d}/Album {i % 97:02d}/{i % 20 + 1:02d} Song title number {i:07d}.flac"
                     for i in range(a, b)]
            w.add_rows(paths, rng.uniform(60, 600, b - a), rng.standard_normal((b - a, dim), dtype=np.float32),
                       rng.random((b - a, N_TAGS), dtype=np.float32), [8] * (b - a))
    return time.perf_counter() - t0


def measure(path: Path, queries: int = 20) -> dict:
    """Runs in a fresh process (see main): open and search, with timings and memory."""
    from mttag.inference.index import EmbeddingIndex

    t0 = time.perf_counter()
    idx = EmbeddingIndex(path)
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)

    def timed(**kw) -> float:
        times = []
        idx.search(rng.standard_normal(idx.dim), 20, **kw)  # warm-up: pages in the cache
        for _ in range(queries):
            q = rng.standard_normal(idx.dim)
            t = time.perf_counter()
            hits = idx.search(q, 20, **kw)
            times.append(time.perf_counter() - t)
            assert len(hits) == 20
        return float(np.median(times))

    out = {"tracks": len(idx), "dim": idx.dim, "open_s": open_s,
           "query_ms": 1000 * timed(),
           "query_tag_ms": 1000 * timed(tags=[(idx.tag_index("tag3"), 0.3)]),
           "query_duration_ms": 1000 * timed(min_duration=120, max_duration=300)}
    status = Path("/proc/self/status").read_text().splitlines()
    for line in status:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon"):
            out[key] = int(value.split()[0]) / 1024  # MB
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dims", default="200,256")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the indexes (default: a temporary folder)")
    ap.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.measure:  # the child process
        print(json.dumps(measure(args.measure)))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    root = args.dir or Path(tempfile.mkdtemp(prefix="mttag-latency-"))
    rows = []
    try:
        for dim in (int(d) for d in args.dims.split(",")):
            for n in (int(s) for s in args.sizes.split(",")):
                path = root / f"n{n}-d{dim}.mttag"
                build_s = build(path, n, dim)
                sizes = {f.name: f.stat().st_size for f in path.iterdir() if f.is_file()}
                child = subprocess.run([sys.executable, __file__, "--measure", str(path)], capture_output=True,
                                       text=True, check=True)
                r = json.loads(child.stdout)
                r.update(build_s=build_s, bytes=sum(sizes.values()), files=sizes)
                r["mb_per_100k"] = r["bytes"] / n * 100_000 / 1e6
                rows.append(r)
                print(f"n={n:>9,} dim={dim}: {r['mb_per_100k']:.1f} MB per 100k tracks, open {r['open_s']:.2f} s, "
                      f"query {r['query_ms']:.1f} ms (tag filter {r['query_tag_ms']:.1f}, duration filter "
                      f"{r['query_duration_ms']:.1f}), peak RSS {r['VmHWM']:.0f} MB, anonymous {r['RssAnon']:.0f} MB",
                      flush=True)
                shutil.rmtree(path)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print("\n| tracks | dim | index size | per 100k tracks | open | query (top 20) | + --tag filter | + duration filter | peak RSS | anonymous memory |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['tracks']:,} | {r['dim']} | {r['bytes'] / 1e6:,.0f} MB | {r['mb_per_100k']:.0f} MB | {r['open_s']:.2f} s "
              f"| {r['query_ms']:.0f} ms | {r['query_tag_ms']:.0f} ms | {r['query_duration_ms']:.0f} ms "
              f"| {r['VmHWM']:,.0f} MB | {r['RssAnon']:,.0f} MB |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
