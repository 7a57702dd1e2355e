#!/usr/bin/env python3
"""What ``mttag similar`` pays before its first query on a large index: opening it (with the
track table ``tracks.idx`` and, for comparison, without it, as every index was opened before
it), finding the query track by its path, one exact query, and the process's memory.

Each measurement runs in a fresh process (so nothing is cached in Python; the files may be in
the page cache, as they are for a user who runs queries one after another). The index is
any mttag index (e.g. one left by benchmarks/ann_recall.py in its --work folder), or a
synthetic one written here with --tracks.

    python benchmarks/index_open.py --index /tmp/mttag-ann-bench/n10000000.mttag
    python benchmarks/index_open.py --tracks 1000000 --work /tmp/mttag-open
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def synthetic(path: Path, n: int) -> None:
    from mttag.inference.index import IndexWriter

    ident = {"name": "synthetic-musicnn", "revision": "sha256:synthetic-200", "dim": 200}
    with IndexWriter(path, ident, [f"tag{i}" for i in range(50)], 8) as w:
        for a in range(0, n, 100_000):
            b = min(n, a + 100_000)
            rng = np.random.default_rng(a)
            w.add_rows([f"/home/someone/Music/Artist {i % 5000:04d}/{i:08d} Song.flac" for i in range(a, b)],
                       rng.uniform(60, 600, b - a), rng.standard_normal((b - a, 200)),
                       rng.random((b - a, 50), dtype=np.float32), [8] * (b - a), keys=True)


def measure(path: Path, table: bool) -> dict:
    from mttag.inference import index as index_mod

    if not table:  # as before the track table: every line of tracks.jsonl parsed
        index_mod.read_table = lambda *a, **k: None
    t = time.perf_counter()
    idx = index_mod.EmbeddingIndex(path, ann="off")
    out = {"table": table, "tracks": len(idx), "open_s": time.perf_counter() - t}
    key = idx.paths[len(idx) // 2]
    t = time.perf_counter()
    row = idx.row_of(key)
    out["row_of_s"] = time.perf_counter() - t
    assert row == len(idx) // 2
    t = time.perf_counter()
    hits = idx.search(idx.vector(row), 10)
    out["exact_query_s"] = time.perf_counter() - t
    assert hits
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    out["rss_anon_mb"] = int(status.get("RssAnon", "0 kB").split()[0]) / 1024
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path)
    ap.add_argument("--tracks", type=int, default=1_000_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mttag-open-bench"))
    ap.add_argument("--phase", choices=["with", "without"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = args.index or args.work / f"n{args.tracks}.mttag"
    if args.phase:
        print(json.dumps(measure(path, args.phase == "with")))
        return
    if not (path / "index.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic(path, args.tracks)
    if not (path / "tracks.idx").exists():  # an index written before the table: a writer leaves one
        from mttag.inference.index import IndexWriter, read_manifest

        m = read_manifest(path)
        t = time.perf_counter()
        with IndexWriter(path, m["model"], m["tags"], m.get("windows"), resume=True):
            pass  # it parses every line once, and closing writes the table of the rows it holds
        print(f"track table written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    for phase in ("with", "without"):
        done = subprocess.run([sys.executable, __file__, "--phase", phase, "--index", os.fspath(path)],
                              stdout=subprocess.PIPE, text=True, check=True)
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
