"""``--engine ray`` on this machine with 1 and 2 model actors ("workers"): throughput,
scaling efficiency, the cost of each stage, and a projection to a 10-million-track catalogue.

    PYTHONPATH=. python benchmarks/ray_scaling.py --tracks 16 --seconds 30

Measured: wall time of each run (Ray already started, so it counts the actors' start, as
a real job's would), tracks per second, and the seconds each stage spent per track, summed
over the workers that ran it: list (the driver), read (bytes to a local file), decode
(the model's windows only), model (forward passes), write (Parquet parts). Every run also
checks that the output holds each track once.

Projected, not measured: a catalogue of ``--catalogue`` tracks on N CPU nodes of
``--node-cores`` cores (every stage's measured per-track CPU cost spread over the cores) and
on N GPU nodes (decode, read and write on the node's cores as measured; the model's cost
divided by ``--gpu-speedup``, an assumption: no GPU was measured here), from the stage
costs of the first (least contended) run, with ``--efficiency`` (assumed) and storage that
keeps up. The 2-worker efficiency printed is this machine's, measured: on a 2-core machine
the second actor competes with decoding for the same cores, so it says little about a cluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))


def make_tracks(folder: Path, n: int, seconds: float) -> list[Path]:
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    sr = 22050
    t = np.arange(int(seconds * sr)) / sr
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        f0 = 110 * 2 ** (i % 12 / 12)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.4 + 0.6 * np.exp(-(t % 0.5) / 0.1)) + 0.02 * rng.standard_normal(t.size)
        path = folder / f"track{i:04d}.flac"
        sf.write(path, x.astype(np.float32), sr)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each synthetic track")
    ap.add_argument("--model", default=None, help="default: the bundled default model")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--workers", default="1,2", help="model actors per run, comma-separated")
    ap.add_argument("--catalogue", type=float, default=10e6)
    ap.add_argument("--nodes", default="1,10,50")
    ap.add_argument("--node-cores", type=int, default=16)
    ap.add_argument("--gpu-speedup", type=float, default=30.0,
                    help="assumed model speed-up of one GPU over one CPU core (not measured here)")
    ap.add_argument("--efficiency", type=float, default=0.8,
                    help="assumed parallel efficiency of a real cluster's cores (this machine's is printed, measured)")
    args = ap.parse_args()

    import pyarrow.dataset as pads
    import ray

    from mttag.engines import ray_engine
    from mttag.weights.pretrained import load_model

    work = Path(tempfile.mkdtemp(prefix="mttag-ray-bench-"))
    try:
        tracks = make_tracks(work / "music", args.tracks, args.seconds)
        net = load_model(args.model, device="cpu")
        rows = []
        for w in [int(x) for x in args.workers.split(",")]:
            # one core for decoding and writing besides the actors' (see ray_engine._cluster_plan)
            ray.init(num_cpus=w + 1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            out = work / f"out-{w}"
            start = time.perf_counter()
            first: list[tuple[float, int]] = []

            def on_part(summary) -> None:
                if not first:  # the pipeline is full from here on: actors started, model loaded
                    first.append((time.perf_counter() - start, summary.tagged + summary.failed))

            s = ray_engine.run([work / "music"], out, model=net, windows=args.windows, precision="fp32",
                               actors=w, rows_per_part=max(1, args.tracks // 4), on_part=on_part)
            wall = time.perf_counter() - start
            s.first_part = first[0]
            ray.shutdown()
            paths = pads.dataset(str(out), format="parquet").to_table(columns=["path"]).column("path").to_pylist()
            assert sorted(paths) == sorted(str(p) for p in tracks), "a track missing or written twice"
            rows.append((w, wall, s))
        # the same tracks on one machine: the engines must agree
        import numpy as np

        from mttag.inference.tagging import Tagger

        local = {r.path: r.probabilities for r in Tagger(net, "cpu", windows=args.windows, precision="fp32")
                 .tag_files([str(p) for p in tracks])}
        table = pads.dataset(str(work / f"out-{rows[0][0]}"), format="parquet").to_table(columns=["path", "scores"])
        worst = max(float(np.max(np.abs(np.asarray(sc, np.float32) - local[p])))
                    for p, sc in zip(table.column("path").to_pylist(), table.column("scores").to_pylist()))
        base = rows[0][1]
        print(f"\n{args.tracks} tracks of {args.seconds:.0f} s, {args.windows} windows each, model "
              f"{rows[0][2].model_name}, this machine: {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}")
        print(f"Ray vs one machine (float32): largest difference of any tag score {worst:.3g}")
        w1 = rows[0][0]
        print(f"{'workers':>7} {'wall s':>7} {'to 1st part s':>13} {'tracks/s':>8} "
              f"{'speed-up':>8} {'efficiency':>10} | per track, ms: {'list':>5} {'read':>5} {'decode':>6} {'model':>6} {'write':>5}")
        for w, wall, s in rows:
            per = {k: 1000 * v / args.tracks for k, v in s.stage_seconds.items()}
            print(f"{w:>7} {wall:>7.1f} {s.first_part[0]:>13.1f} {args.tracks / wall:>8.2f} "
                  f"{base / wall:>8.2f} {base / wall / w * w1:>10.0%} | {'':>14} "
                  f"{per.get('list', 0):>5.2f} {per.get('read', 0):>5.2f} {per.get('decode', 0):>6.1f} "
                  f"{per.get('model', 0):>6.1f} {per.get('write', 0):>5.2f}")
        print("(wall: from the call to the last part, the actors' start included; speed-up and efficiency against "
              "the first row; stage costs: seconds per track summed over the workers that ran the stage)")
        # projection from the per-track stage costs of the first (least contended) run
        w, wall, s = rows[0]
        per = {k: v / args.tracks for k, v in s.stage_seconds.items()}
        efficiency = args.efficiency
        cpu_track = per.get("read", 0) + per.get("decode", 0) + per.get("model", 0) + per.get("write", 0)
        host_track = per.get("read", 0) + per.get("decode", 0) + per.get("write", 0)
        gpu_model = per.get("model", 0) / args.gpu_speedup
        print(f"\nprojected for {args.catalogue:,.0f} tracks from the stage costs at {w} worker(s) (parallel efficiency "
              f"{efficiency:.0%}, assumed; "
              f"GPU model cost = CPU core cost / {args.gpu_speedup:g}, assumed):")
        print(f"{'nodes':>6} {'CPU nodes (' + str(args.node_cores) + ' cores)':>24} {'GPU nodes (1 GPU + ' + str(args.node_cores) + ' cores)':>32}")
        for n in [int(x) for x in args.nodes.split(",")]:
            cpu_h = args.catalogue * cpu_track / (n * args.node_cores * efficiency) / 3600
            # a GPU node: the GPU and the cores work at once; the slower of the two sets the pace
            gpu_h = args.catalogue * max(gpu_model, host_track / (args.node_cores * efficiency)) / n / 3600
            print(f"{n:>6} {cpu_h:>21.1f} h {gpu_h:>29.1f} h")
        print(f"listing on the driver: {per.get('list', 0) * args.catalogue / 60:.1f} min for the catalogue "
              f"(measured on a local folder; an object store lists ~1,000 keys per request)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
