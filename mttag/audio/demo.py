"""A few short synthetic tracks (chords, bass, drums, noise) in several formats, so the
quick start has something to tag on a machine with no music on it.

``mttag demo DIR`` writes them; so does ``python examples/make_demo_audio.py DIR``.
The audio is seeded: every run writes the same four tracks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 44100

# (file name, seconds, root note in Hz, minor, tempo in bpm, drums); one per format
# libsndfile writes, so the demo also shows that flac, mp3, ogg and wav all work
TRACKS = (
    ("slow minor piano.flac", 40, 110.0, True, 70, False),
    ("upbeat major band.mp3", 35, 146.8, False, 128, True),
    ("mid tempo groove.ogg", 30, 130.8, True, 100, True),
    ("quiet chords.wav", 25, 196.0, False, 80, False),
)


def note(freq: float, seconds: float, rng: np.random.Generator, bright: float = 0.5) -> np.ndarray:
    """A plucked note: six harmonics, each ``bright`` times the previous, quick attack, slow decay."""
    t = np.arange(int(seconds * SR)) / SR
    env = np.minimum(1, t * 50) * np.exp(-t * 2.5)
    x = sum((bright ** k) * np.sin(2 * np.pi * freq * (k + 1) * t + rng.uniform(0, 6.28)) for k in range(6))
    return env * x


def drums(seconds: float, bpm: float, rng: np.random.Generator) -> np.ndarray:
    """Hi-hat on every half beat, a falling-pitch kick on every beat."""
    out = np.zeros(int(seconds * SR))
    beat = int(60 / bpm * SR)
    kick_t = np.arange(int(0.15 * SR)) / SR
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-kick_t * 30)) * kick_t) * np.exp(-kick_t * 20)
    hat = rng.standard_normal(int(0.05 * SR)) * np.exp(-np.arange(int(0.05 * SR)) / SR * 80) * 0.3
    for i, start in enumerate(range(0, out.size - kick.size, beat // 2)):
        out[start : start + hat.size] += hat
        if i % 2 == 0:
            out[start : start + kick.size] += kick
    return out


def track(seconds: float, root: float, minor: bool, bpm: float, with_drums: bool, rng: np.random.Generator) -> np.ndarray:
    """One bar per chord of I-IV-V-I (triad plus bass), optional drums, a little noise; peak 0.8."""
    third = 2 ** ((3 if minor else 4) / 12)
    out = np.zeros(int(seconds * SR))
    bar = 240 / bpm
    progression = [1, 2 ** (5 / 12), 2 ** (7 / 12), 1]
    for i in range(int(seconds / bar)):
        f = root * progression[i % 4]
        chord = note(f, bar, rng) + note(f * third, bar, rng) + note(f * 1.5, bar, rng) + 0.8 * note(f / 2, bar, rng, 0.3)
        s = int(i * bar * SR)
        out[s : s + chord.size] += chord[: out.size - s]
    if with_drums:
        out += 2 * drums(seconds, bpm, rng)
    out += 0.01 * rng.standard_normal(out.size)
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


def write_demo(folder: str | Path) -> list[Path]:
    """Write the demo tracks (stereo, 44.1 kHz) into ``folder`` (created); return their paths."""
    import soundfile as sf

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = []
    for name, seconds, root, minor, bpm, with_drums in TRACKS:
        x = track(seconds, root, minor, bpm, with_drums, rng)
        sf.write(out / name, np.stack([x, x], 1), SR)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> None:
    """``python -m mttag.audio.demo [DIR]`` (default ``demo_music``)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    for path in write_demo(args[0] if args else "demo_music"):
        print(path)


if __name__ == "__main__":
    main()
