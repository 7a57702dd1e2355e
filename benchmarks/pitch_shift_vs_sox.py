"""mttag's pitch shift against the ``sox`` binary's ``pitch`` + ``rate`` (what the authors ran).

For a percussive clip and a piano-like clip (both synthesised here) and a set of shifts,
prints for SoX, mttag's ``sox`` method (WSOLA + band-limited resampling) and the phase
vocoder: onset sharpness (peak / mean of librosa's onset strength: smeared attacks lower
it) and the correlation with SoX's output of the log-mel spectrogram and of the long-term
spectrum. Needs ``sox`` on PATH (Debian: ``apt-get install sox``).

    python benchmarks/pitch_shift_vs_sox.py
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's mttag

SR = 22050


def drums(seconds: float = 6.0, seed: int = 0) -> np.ndarray:
    """Kick, snare and hi-hat on a 120 bpm grid: sharp attacks, little pitch."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n)
    t = np.arange(int(0.3 * SR)) / SR
    kick = np.sin(2 * np.pi * (55 * t + 60 * (1 - np.exp(-t * 30)) / 30)) * np.exp(-t * 12)
    snare = rng.standard_normal(t.size) * np.exp(-t * 25) * 0.6 + np.sin(2 * np.pi * 190 * t) * np.exp(-t * 20) * 0.3
    hat_noise = np.diff(rng.standard_normal(t.size + 1)) * np.exp(-t * 80) * 0.25
    beat = 0.5 * SR
    for i in range(int(seconds / 0.25)):
        at = int(i * beat / 2)
        for hit, when in ((kick, i % 4 == 0), (snare, i % 4 == 2), (hat_noise, True)):
            if when and at < n:
                m = min(hit.size, n - at)
                out[at:at + m] += hit[:m]
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def piano(seconds: float = 6.0) -> np.ndarray:
    """Piano-like notes: hammer attack, inharmonic partials, exponential decay."""
    n = int(seconds * SR)
    out = np.zeros(n)
    notes = [60, 64, 67, 72, 65, 69, 72, 77, 62, 65, 69, 74]
    for i, midi in enumerate(notes):
        at = int(i * seconds / len(notes) * SR)
        f0 = 440 * 2 ** ((midi - 69) / 12)
        t = np.arange(n - at) / SR
        tone = sum((0.6 ** h) * np.sin(2 * np.pi * f0 * (h + 1) * np.sqrt(1 + 0.0004 * (h + 1) ** 2) * t)
                   for h in range(8))
        click = np.exp(-t * 400) * 0.3
        out[at:] += (tone * np.exp(-t * 3) + click) * (1 - np.exp(-t * 2000))
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def sox_pitch(x: np.ndarray, semitones: float, tmp: Path) -> np.ndarray:
    import soundfile as sf

    src, dst = tmp / "in.wav", tmp / "out.wav"
    sf.write(src, x, SR, subtype="FLOAT")
    subprocess.run(["sox", "-V1", str(src), str(dst), "pitch", f"{semitones * 100:.0f}", "rate", str(SR)], check=True)
    y, sr = sf.read(dst, dtype="float32")
    assert sr == SR
    return y[: x.size] if y.size >= x.size else np.pad(y, (0, x.size - y.size))


def sharpness(x: np.ndarray) -> float:
    import librosa

    env = librosa.onset.onset_strength(y=x, sr=SR)
    return float(env.max() / max(env.mean(), 1e-9))


def logmel(x: np.ndarray) -> np.ndarray:
    import librosa

    return np.log(librosa.feature.melspectrogram(y=x, sr=SR, n_fft=2048, hop_length=512, n_mels=128) + 1e-6)


def spectrum(x: np.ndarray) -> np.ndarray:
    """Long-term spectrum in dB, floored 60 dB below its peak: the stop band near Nyquist
    (where every resampler leaves a different -100 dB of noise) does not count."""
    import librosa

    db = 20 * np.log10(np.abs(librosa.stft(x, n_fft=4096)).mean(axis=1) + 1e-12)
    return np.maximum(db, db.max() - 60)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.shape[-1], b.shape[-1])
    return float(np.corrcoef(a[..., :n].ravel(), b[..., :n].ravel())[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shifts", default="-7,-3,3,7", help="semitones, comma-separated")
    args = ap.parse_args()
    if shutil.which("sox") is None:
        sys.exit("needs the sox binary (Debian: apt-get install sox)")
    import torch

    from mttag.training.augment import PitchShift

    shifts = [float(s) for s in args.shifts.split(",")]
    methods = {"mttag sox": PitchShift(SR, method="sox"), "mttag vocoder": PitchShift(SR, method="vocoder")}
    print(f"{'clip':8} {'shift':>6} {'method':14} {'sharpness':>9} {'vs SoX':>7} {'logmel r':>8} {'spectrum r':>10} {'ms/clip':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, clip in (("drums", drums()), ("piano", piano())):
            print(f"{name:8} {'0':>6} {'original':14} {sharpness(clip):9.2f}")
            for s in shifts:
                ref = sox_pitch(clip, s, Path(tmp))
                ref_sharp = sharpness(ref)
                print(f"{name:8} {s:+6.1f} {'SoX':14} {ref_sharp:9.2f}")
                for label, ps in methods.items():
                    start = time.perf_counter()
                    y = ps.apply(torch.from_numpy(clip)[None], torch.tensor([s]))[0].numpy()
                    ms = 1000 * (time.perf_counter() - start)
                    sh = sharpness(y)
                    print(f"{name:8} {s:+6.1f} {label:14} {sh:9.2f} {100 * (sh / ref_sharp - 1):+6.0f}% "
                          f"{corr(logmel(y), logmel(ref)):8.3f} {corr(spectrum(y), spectrum(ref)):10.3f} {ms:8.0f}")


if __name__ == "__main__":
    main()
