"""Tagging throughput on CPU (or any device): decode vs model vs end to end.

Generates N synthetic 4-minute tracks (chord progressions with a bass line,
percussive noise bursts and a little hiss; 44.1 kHz stereo, half mp3, half flac),
then times, for the default number of windows and for ``--windows all``:

* decode   — probing, decoding, downmixing and resampling every window through
             :func:`mttag.audio.windows.iter_windows` (no model);
* model    — the Music Tagging Transformer (teacher preset, random weights) on
             batches of windows already in memory (no decoding);
* tag      — :meth:`mttag.Tagger.tag_files` end to end (decoding in worker
             threads, overlapped with the model).

Reports tracks/s and × real time (seconds of audio tagged per second).

    python benchmarks/tag.py                 # 20 tracks, CPU
    python benchmarks/tag.py -n 6 --device cuda --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100
_BLOCK_SECONDS = 10.0


def synth_block(t0: float, frames: int, sr: int = SR, seed: int = 0) -> np.ndarray:
    """``frames`` stereo samples of a synthetic song starting at ``t0`` seconds.

    A pure function of the absolute time, so a track can be written block by block
    (memory bounded for an hour-long file) without seams between blocks.
    """
    rng = np.random.default_rng([seed, int(t0 * 1000)])
    t = t0 + np.arange(frames) / sr
    bpm = 96 + 8 * (seed % 5)
    beat = 60.0 / bpm
    roots = np.array([0, 5, 7, 3, 8, 10, 2, 5]) + (seed % 7)  # semitones above A2
    bar = np.floor(t / (4 * beat)).astype(int) % len(roots)
    base = 110.0 * 2 ** (roots[bar] / 12)
    out = np.zeros(frames)
    for interval, gain in ((0, 0.25), (4 if seed % 2 else 3, 0.18), (7, 0.18), (12, 0.08)):
        f = base * 2 ** (interval / 12)
        # (the phase jumps at chord changes: an audible click, harmless for timing)
        out += gain * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t))
    env = np.exp(-((t % beat) / (0.25 * beat)))  # per-beat decay
    out *= 0.5 + 0.5 * env
    out += 0.35 * np.sin(2 * np.pi * base / 2 * t) * np.exp(-((t % (2 * beat)) / (0.4 * beat)))
    hat = np.exp(-((t % (beat / 2)) / 0.02))
    out += 0.12 * hat * rng.standard_normal(frames)
    out += 0.01 * rng.standard_normal(frames)
    out *= 0.35
    stereo = np.stack([out, 0.8 * out + 0.2 * np.roll(out, 300)], axis=1)
    return stereo.astype(np.float32)


def write_track(path: str | Path, seconds: float, seed: int = 0, sr: int = SR) -> Path:
    """Write a synthetic stereo track to ``path`` (format from the extension: wav, flac,
    ogg, opus, mp3 through soundfile; m4a/aac through ffmpeg), block by block."""
    path = Path(path)
    total = int(round(seconds * sr))
    block = int(_BLOCK_SECONDS * sr)
    ext = path.suffix.lower()
    if ext in (".m4a", ".aac", ".mp4"):
        cmd = ["ffmpeg", "-y", "-v", "error", "-f", "f32le", "-ar", str(sr), "-ac", "2", "-i", "-",
               "-c:a", "aac", "-b:a", "160k", str(path)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        for start in range(0, total, block):
            proc.stdin.write(synth_block(start / sr, min(block, total - start), sr, seed).tobytes())
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg could not write {path}")
        return path
    kwargs = {
        ".mp3": dict(format="MP3", subtype="MPEG_LAYER_III"),
        ".ogg": dict(format="OGG", subtype="VORBIS"),
        ".opus": dict(format="OGG", subtype="OPUS"),
    }.get(ext, {})
    file_sr = 48000 if ext == ".opus" else sr  # opus only supports 8/12/16/24/48 kHz
    with sf.SoundFile(path, "w", file_sr, 2, **kwargs) as f:
        for start in range(0, total, block):
            f.write(synth_block(start / sr, min(block, total - start), sr, seed))
    return path


def _audio_seconds(paths) -> float:
    return sum(sf.info(str(p)).duration for p in paths)


def bench_decode(paths, config, windows) -> tuple[float, int]:
    from mttag.audio.windows import iter_windows

    n = 0
    t = time.perf_counter()
    for p in paths:
        _, gen = iter_windows(p, config.sample_rate, config.crop_seconds, windows)
        for _ in gen:
            n += 1
    return time.perf_counter() - t, n


def bench_model(model, device, n_windows: int, batch_size: int) -> float:
    import torch

    x = torch.randn(batch_size, model.config.crop_samples).numpy() * 0.1
    batch = [w for w in x]
    from mttag import Tagger

    tagger = Tagger(model, device, batch_size=batch_size)
    tagger._predict(batch[:2])  # warm-up (allocator, kernels)
    t = time.perf_counter()
    left = n_windows
    while left > 0:
        tagger._predict(batch[: min(batch_size, left)])
        left -= batch_size
    if tagger.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench_tag(paths, model, device, windows, batch_size) -> float:
    from mttag import Tagger

    tagger = Tagger(model, device, batch_size=batch_size, windows=windows)
    t = time.perf_counter()
    results = list(tagger.tag_files(paths))
    elapsed = time.perf_counter() - t
    bad = [r for r in results if not r.ok]
    if bad:
        raise SystemExit(f"tagging failed: {bad[0].path}: {bad[0].error}")
    return elapsed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--tracks", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=240.0, help="track length (default 4 minutes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: mttag's (2 on CPU, 16 on GPU)")
    ap.add_argument("--preset", default="teacher", help="transformer preset (teacher, small, tiny)")
    ap.add_argument("--model", help="a model directory or name instead (e.g. the bundled default: 'default')")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--dir", help="keep the generated tracks here (reused when present)")
    args = ap.parse_args(argv)

    import torch

    from mttag.device import select_device
    from mttag.inference.tagging import DEFAULT_WINDOWS, default_batch_size
    from mttag.inference.vocab import CALS_TAGS
    from mttag.models import build_model, count_parameters, make_config

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    args.batch_size = args.batch_size or default_batch_size(device)
    torch.manual_seed(0)
    if args.model:
        from mttag.weights.pretrained import load_model

        model = load_model(None if args.model == "default" else args.model, device=str(device))
        name = f"{model.config.arch} ({args.model})"
    else:
        model = build_model(make_config("transformer", CALS_TAGS, args.preset)).to(device).eval()
        name = f"transformer/{args.preset}"
    config = model.config

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mttag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    t = time.perf_counter()
    for i in range(args.tracks):
        p = work / f"track {i:02d}.{'mp3' if i % 2 == 0 else 'flac'}"
        if not p.exists():
            write_track(p, args.seconds, seed=i)
        paths.append(p)
    print(f"{len(paths)} tracks of {args.seconds / 60:g} min (mp3 + flac, 44.1 kHz stereo) in {work} "
          f"[{time.perf_counter() - t:.1f} s to generate]")
    audio_s = _audio_seconds(paths)
    print(f"model: {name}, {count_parameters(model) / 1e6:.2f} M parameters, "
          f"{config.crop_seconds:g} s windows at {config.sample_rate} Hz; device {device}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs\n")

    def rate(seconds: float) -> str:
        return f"{len(paths) / seconds:7.3f} tracks/s  {audio_s / seconds:7.1f}x real time  ({seconds:6.1f} s)"

    try:
        for windows in (DEFAULT_WINDOWS, None):
            label = "all" if windows is None else str(windows)
            dec, n_win = bench_decode(paths, config, windows)
            mod = bench_model(model, device, n_win, args.batch_size)
            e2e = bench_tag(paths, model, device, windows, args.batch_size)
            print(f"--windows {label}: {n_win} windows ({n_win / len(paths):.1f} per track)")
            print(f"  decode+resample   {rate(dec)}  {1000 * dec / n_win:6.1f} ms/window")
            print(f"  model             {rate(mod)}  {1000 * mod / n_win:6.1f} ms/window")
            print(f"  end to end        {rate(e2e)}  "
                  f"(decode {100 * dec / (dec + mod):.0f}% / model {100 * mod / (dec + mod):.0f}% of serial time; "
                  f"overlap saves {max(0.0, dec + mod - e2e):.1f} s)")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
