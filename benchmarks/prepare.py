"""Benchmark `mttag prepare` and crop reads from the prepared store.

Generates N tracks (default: 30 s stereo 44.1 kHz mp3, like MSD previews), then measures
1. plain decode + resample of every file to 22,050 Hz mono, one process (the baseline);
2. ``prepare_dataset`` on the same files with all cores (tracks/s, hours of audio per second,
   × real time);
3. random 10 s crop reads from the store (median / p99 ms), against decoding a 10 s crop
   from the source file.

    python benchmarks/prepare.py --tracks 200 --seconds 30 --format mp3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mttag.audio.decode import load_audio  # noqa: E402
from mttag.training.prepare import prepare_dataset  # noqa: E402
from mttag.training.sources import TrackSpec  # noqa: E402
from mttag.training.store import PreparedDataset  # noqa: E402

TAGS = ["rock", "pop", "jazz", "electronic", "ambient", "metal", "folk", "house"]


def generate(folder: Path, n: int, seconds: float, fmt: str, sr: int = 44100, distinct: int = 8) -> list[TrackSpec]:
    """``distinct`` different clips are encoded (mp3 encoding is slow), then copied to ``n`` files."""
    rng = np.random.default_rng(0)
    specs = []
    t = np.arange(int(seconds * sr)) / sr
    bases: list[Path] = []
    for i in range(n):
        path = folder / f"a{i % 97:02d}" / f"{i:05d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(bases) < distinct:
            f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
            x = 0.2 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 1.5 * f0 * t) + 0.03 * rng.standard_normal(len(t))
            x *= 0.6 + 0.4 * np.sin(2 * np.pi * 2 * t) ** 2  # some rhythm
            stereo = np.stack([x, np.roll(x, 100)], axis=1).astype(np.float32)
            sf.write(str(path), stereo, sr)
            bases.append(path)
        else:
            shutil.copyfile(bases[i % distinct], path)
        tags = list(rng.choice(TAGS, size=rng.integers(1, 4), replace=False))
        specs.append(TrackSpec(str(path), tags, f"artist{i % 97}"))
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--format", default="mp3", choices=["mp3", "wav", "flac", "ogg"])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--crops", type=int, default=2000)
    ap.add_argument("--baseline-tracks", type=int, default=None, help="tracks decoded for the baseline (default: all)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="mttag-bench-"))
    try:
        t0 = time.perf_counter()
        specs = generate(work / "audio", args.tracks, args.seconds, args.format)
        print(f"generated {args.tracks} × {args.seconds:g} s {args.format} in {time.perf_counter() - t0:.1f} s ({work})")
        audio_s = args.tracks * args.seconds

        nb = args.baseline_tracks or args.tracks
        t0 = time.perf_counter()
        for spec in specs[:nb]:
            load_audio(spec.path, 22050)
        base = time.perf_counter() - t0
        print(f"baseline decode+resample, 1 process: {nb / base:7.1f} tracks/s  {nb * args.seconds / base:7.0f}× real time")

        out = work / "ds"
        if out.exists():
            shutil.rmtree(out)
        t0 = time.perf_counter()
        ds = prepare_dataset(specs, out, min_count=1, workers=args.workers)
        wall = time.perf_counter() - t0
        print(f"prepare, {args.workers} workers:         {args.tracks / wall:7.1f} tracks/s  {audio_s / wall:7.0f}× real time"
              f"  ({audio_s / 3600 / wall * 3600:.2f} h audio per hour → {audio_s / 3600 / wall:.4f} h/s), "
              f"{ds.summary['failed']} failed")
        size = sum(p.stat().st_size for p in (out / "shards").glob("*.i16"))
        print(f"store: {size / 2**20:.1f} MiB for {ds.summary['hours']:.2f} h "
              f"({size / max(ds.summary['hours'], 1e-9) / 2**30:.2f} GiB per hour of audio)")

        t0 = time.perf_counter()
        prepare_dataset(specs, out, min_count=1, workers=args.workers)
        print(f"re-run on a finished store (resume check): {time.perf_counter() - t0:.2f} s")

        ds = PreparedDataset(out)
        rng = np.random.default_rng(0)
        length = 10 * 22050
        times = []
        for _ in range(args.crops):
            i = int(rng.integers(len(ds)))
            t0 = time.perf_counter()
            x = ds.random_crop(i, length, rng)
            times.append(time.perf_counter() - t0)
            assert len(x) == length
        ms = np.array(times) * 1e3
        print(f"random 10 s crop from the store: median {np.median(ms):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms "
              f"({args.crops} reads, page cache warm)")
        times = []
        for k in range(min(50, args.tracks)):
            spec = specs[int(rng.integers(len(specs)))]
            off = float(rng.uniform(0, max(0.0, args.seconds - 10)))
            t0 = time.perf_counter()
            load_audio(spec.path, 22050, offset=off, duration=10.0)
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1e3
        print(f"10 s crop decoded from the source {args.format}: median {np.median(ms):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
