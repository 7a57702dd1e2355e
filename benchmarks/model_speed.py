"""CPU time per 4-minute track for the registered models, at mttag's default windows.

Compares the bundled default (``msd-musicnn``) with the paper's two released Transformers,
``won2021-teacher`` and ``won2021-student``. Their real checkpoints are not downloaded: weight
values do not change speed, so checkpoints with random weights are written in the authors'
exact layout and shapes (teacher: conv 128 / attention 256; compact student: conv 128 /
attention 64, its file also carrying the teacher under ``teacher_network.``) and converted
with mttag's converter, as the first use of those names does. The parameter counts printed
are those of the converted models.

For each model, on N synthetic 4-minute tracks (44.1 kHz stereo FLAC, generated like
``benchmarks/tag.py``'s):

* model   — the forward passes alone: the default number of windows (8) of one track, in
            batches of mttag's CPU batch size, audio already in memory;
* tag     — :meth:`mttag.Tagger.tag_files` on one track end to end (decode, resample, the
            windows through the model), as ``mttag tag`` runs it.

Reported per track: wall-clock seconds and process CPU seconds (all threads; with T torch
threads, CPU ≈ T × wall for the model part). Medians over the tracks, after one warm-up track.

    python benchmarks/model_speed.py               # 3 tracks, torch's default threads
    python benchmarks/model_speed.py -n 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tag import write_track  # noqa: E402  (benchmarks/tag.py)


def _authors_checkpoint(path: Path, preset: str, overrides: dict, with_teacher: bool) -> None:
    """A random checkpoint in the authors' layout (flat state dict, ``network.`` keys)."""
    import torch

    from mttag.inference.vocab import CALS_TAGS
    from mttag.models import build_model, make_config
    from mttag.weights.convert import to_authors_layout

    def spec(prefix):
        return {prefix + "spec.spectrogram.window": torch.hann_window(1024),
                prefix + "spec.mel_scale.fb": torch.rand(513, 128)}

    model = build_model(make_config("transformer", CALS_TAGS, preset, **overrides))
    state = {**spec("network."), **to_authors_layout(model.state_dict())}
    if with_teacher:
        teacher = build_model(make_config("transformer", CALS_TAGS, "teacher"))
        state.update({**spec("teacher_network."), **to_authors_layout(teacher.state_dict(), "teacher_network.")})
    torch.save(state, path)


def converted_models(work: Path) -> dict[str, Path]:
    """``won2021-teacher`` / ``won2021-student`` directories converted from random authors'-layout files."""
    from mttag.inference.vocab import CALS_TAGS
    from mttag.weights.convert import convert_checkpoint

    out = {}
    for name, filename, preset, overrides, with_teacher in (
        ("won2021-teacher", "teacher.ckpt", "teacher", {}, False),
        ("won2021-student", "compact_student.ckpt", "small", {"conv_channels": 128}, True),
    ):
        ckpt = work / filename
        _authors_checkpoint(ckpt, preset, overrides, with_teacher)
        out[name] = convert_checkpoint(ckpt, work / name, CALS_TAGS, heads=8, name=name)
        print(f"{name}: {filename} {ckpt.stat().st_size / 1e6:.1f} MB (random weights, authors' layout) -> "
              f"{(out[name] / 'model.safetensors').stat().st_size / 1e6:.1f} MB safetensors")
    return out


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(model, tracks: list[Path], windows: int, batch_size: int) -> dict[str, float]:
    import numpy as np

    from mttag import Tagger

    tagger = Tagger(model, "cpu", batch_size=batch_size, windows=windows)
    rng = np.random.default_rng(0)
    batch = [(0.1 * rng.standard_normal(model.config.crop_samples)).astype(np.float32) for _ in range(windows)]

    def forward():
        for i in range(0, windows, batch_size):
            tagger._predict(batch[i:i + batch_size])

    def tag_one(path):
        results = list(tagger.tag_files([path]))
        if not results[0].ok:
            raise SystemExit(f"tagging failed: {path}: {results[0].error}")

    forward()  # warm-up: allocator, kernels, first decode
    tag_one(tracks[0])
    model_runs = [_timed(forward) for _ in tracks]
    tag_runs = [_timed(lambda p=p: tag_one(p)) for p in tracks]
    return {
        "model_wall": statistics.median(w for w, _ in model_runs),
        "model_cpu": statistics.median(c for _, c in model_runs),
        "tag_wall": statistics.median(w for w, _ in tag_runs),
        "tag_cpu": statistics.median(c for _, c in tag_runs),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--tracks", type=int, default=3, help="tracks timed per model (after one warm-up)")
    ap.add_argument("--seconds", type=float, default=240.0, help="track length (default 4 minutes)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--dir", help="keep the generated tracks and models here (reused when present)")
    args = ap.parse_args(argv)

    import torch

    from mttag.inference.tagging import CPU_BATCH_SIZE, DEFAULT_WINDOWS
    from mttag.models import count_parameters
    from mttag.weights.modelfile import load_local_model
    from mttag.weights.pretrained import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mttag-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tracks = []
        for i in range(args.tracks):
            path = work / f"track{i}.flac"
            if not path.exists():
                write_track(path, args.seconds, seed=i)
            tracks.append(path)
        models = {"msd-musicnn": load_model("msd-musicnn")}
        models.update({name: load_local_model(d) for name, d in converted_models(work).items()})
        print(f"\n{len(tracks)} tracks of {args.seconds / 60:g} min (FLAC, 44.1 kHz stereo); --windows {DEFAULT_WINDOWS}, "
              f"batch {CPU_BATCH_SIZE}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs\n")
        print("| model | parameters | window | model: wall / CPU s | tag one track: wall / CPU s |")
        print("|---|---:|---:|---:|---:|")
        for name, model in models.items():
            r = bench(model, tracks, DEFAULT_WINDOWS, CPU_BATCH_SIZE)
            print(f"| {name} | {count_parameters(model):,} | {model.config.crop_seconds:.2f} s "
                  f"| {r['model_wall']:.2f} / {r['model_cpu']:.2f} | {r['tag_wall']:.2f} / {r['tag_cpu']:.2f} |",
                  flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
