#!/usr/bin/env python3
"""How fast ``mttag embed --from`` makes an index of a cluster's Parquet dataset, and with how
much memory: the step between ``mttag embed --engine ray`` and ``mttag similar`` on a catalogue.

A dataset of N synthetic tracks (200-d unit vectors as msd-musicnn gives, 50 tag scores, in
parts of --rows-per-part rows, written with the real schema and embedding description) is
made once in --work, then imported in a fresh process with the real
:func:`mttag.engines.dataset_index.import_dataset`. Prints the rows per second, the import's
peak resident set, and the sizes of the dataset and the index.

    python benchmarks/dataset_index.py --tracks 1000000 --work /tmp/mttag-import
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIM = 200
N_TAGS = 50


def make(folder: Path, n: int, rows_per_part: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mttag.inference.index import POOLING
    from mttag.inference.parquet import schema

    tags = [f"tag{i}" for i in range(N_TAGS)]
    described = {"model": {"name": "synthetic-musicnn", "revision": "sha256:synthetic", "dim": DIM},
                 "pooling": POOLING, "windows": 8}
    sch = schema(tags, "synthetic-musicnn", described)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for part, a in enumerate(range(0, n, rows_per_part)):
        m = min(n, a + rows_per_part) - a
        v = rng.standard_normal((m, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)

        def lists(values: np.ndarray, width: int):
            return pa.ListArray.from_arrays(pa.array(np.arange(0, m * width + 1, width, dtype=np.int32)),
                                            pa.array(values.reshape(-1)))

        columns = {
            "path": pa.array([f"s3://catalogue/music/{i:09d}.mp3" for i in range(a, a + m)]),
            "model": pa.array(["synthetic-musicnn"] * m),
            "duration": pa.array(rng.uniform(60, 600, m)),
            "windows": pa.array(np.full(m, 8, dtype=np.int32)),
            "tags": pa.array([[]] * m, type=sch.field("tags").type),
            "scores": lists(rng.random((m, N_TAGS), dtype=np.float32), N_TAGS),
            "embedding": lists(v, DIM),
            "error": pa.nulls(m, pa.string()),
        }
        pq.write_table(pa.Table.from_pydict(columns, schema=sch), folder / f"part-{part:06d}.parquet")
    return time.perf_counter() - start


def run_import(dataset: Path, index: Path) -> dict:
    from mttag.engines.dataset_index import import_dataset, open_dataset

    start = time.perf_counter()
    ds = open_dataset(str(dataset))
    opened = time.perf_counter() - start
    summary = import_dataset(ds, index)
    return {"parts": len(ds.files), "open_s": opened, "import_s": summary.seconds, "added": summary.added,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=1_000_000)
    ap.add_argument("--rows-per-part", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mttag-import-bench"))
    ap.add_argument("--phase", choices=["import"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    dataset, index = args.work / f"ds{args.tracks}", args.work / f"ix{args.tracks}.mttag"
    if args.phase:
        print(json.dumps(run_import(dataset, index)))
        return
    row: dict = {"tracks": args.tracks}
    if not dataset.exists():
        row["make_s"] = make(dataset, args.tracks, args.rows_per_part)
    shutil.rmtree(index, ignore_errors=True)
    done = subprocess.run([sys.executable, __file__, "--phase", "import", "--tracks", str(args.tracks),
                           "--work", str(args.work)], stdout=subprocess.PIPE, text=True, check=True)
    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
    row["rows_per_s"] = round(row["added"] / row["import_s"])
    row["dataset_mb"], row["index_mb"] = size(dataset) / 1e6, size(index) / 1e6
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
