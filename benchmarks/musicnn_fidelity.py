#!/usr/bin/env python3
"""Fidelity and speed of mttag's musicnn port against the TensorFlow original.

Runs in an environment that has TensorFlow, numpy 1 and the ``musicnn`` package
(unpacked wheel on PYTHONPATH) *and* mttag importable; see docs/musicnn.md:

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=/work/main:/tmp/musicnn_pkg/src \\
        /tmp/tfenv/bin/python benchmarks/musicnn_fidelity.py

What it does, for both bundled models (msd-musicnn, mtt-musicnn):

1. makes music clips: General-MIDI arrangements rendered by ``fluidsynth`` with the
   FluidR3 GM soundfont (Debian packages ``fluidsynth`` ``fluid-soundfont-gm``) at
   44.1 kHz, plus one clip synthesised with numpy alone (no music files ship here);
2. patch level: musicnn's own log-mel patches (``musicnn.extractor.batch_data``)
   go through the TF graph (``musicnn.models.define_model`` + the checkpoint) and
   through ``Musicnn.patch_logits_from_logmel``; reports the max abs difference of
   the sigmoid outputs, the logits and every intermediate representation;
3. track level, same audio files: musicnn's ``extractor`` (what ``top_tags`` uses)
   against mttag's ``Tagger`` over consecutive windows; compares top-5;
4. speed on CPU for the same files.

``--reference PATH`` also writes the unit tests' reference file (a short
numpy-generated clip, its musicnn log-mel patches and the TF outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # musicnn uses tf.compat.v1.layers
warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed")  # tf.compat.v1.layers, per layer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
MODELS = {"msd-musicnn": "MSD_musicnn", "mtt-musicnn": "MTT_musicnn"}
FEATURES = ["timbral", "temporal", "cnn1", "cnn2", "cnn3", "mean_pool", "max_pool", "penultimate"]


# --------------------------------------------------------------------------- clips
def _varlen(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, notes: list[tuple], programs: dict[int, int], bpm: float, ppq: int = 480) -> None:
    """A format-0 MIDI file. ``notes``: (channel, start_beat, length_beats, pitch, velocity)."""
    events: list[tuple[int, int, bytes]] = []
    tempo = int(round(60_000_000 / bpm))
    events.append((0, 0, b"\xff\x51\x03" + tempo.to_bytes(3, "big")))
    for ch, prog in programs.items():
        events.append((0, 0, bytes([0xC0 | ch, prog])))
    for ch, start, length, pitch, vel in notes:
        on = int(round(start * ppq))
        off = max(on + 1, int(round((start + length) * ppq)))
        events.append((on, 2, bytes([0x90 | ch, pitch, int(np.clip(vel, 1, 127))])))
        events.append((off, 1, bytes([0x80 | ch, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    track, now = bytearray(), 0
    for tick, _, data in events:
        track += _varlen(tick - now) + data
        now = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + ppq.to_bytes(2, "big")
    path.write_bytes(header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track))


DRUMS = 9
KICK, SNARE, CLAP, HAT, OPEN_HAT, RIDE, CRASH = 36, 38, 39, 42, 46, 51, 49


def _chord(root: int, kind: str) -> list[int]:
    shapes = {"maj": [0, 4, 7], "min": [0, 3, 7], "7": [0, 4, 7, 10], "m7": [0, 3, 7, 10], "maj7": [0, 4, 7, 11],
              "5": [0, 7, 12]}
    return [root + i for i in shapes[kind]]


def piece(style: str, seconds: float, rng: np.random.Generator):
    """(notes, programs, bpm) for a few bars in ``style``."""
    notes: list[tuple] = []
    if style == "rock":
        bpm, programs = 132, {0: 30, 1: 33}  # distortion guitar, finger bass
        prog = [(40, "5"), (36, "5"), (43, "5"), (38, "5")]  # E C G D power chords
    elif style == "piano_ballad":
        bpm, programs = 68, {0: 0, 1: 0}
        prog = [(48, "maj"), (43, "maj"), (45, "min"), (41, "maj")]  # C G Am F
    elif style == "strings":
        bpm, programs = 84, {0: 48, 1: 40, 2: 42}  # string ensemble, violin, cello
        prog = [(50, "min"), (46, "maj"), (41, "maj"), (45, "maj")]  # Dm Bb F A
    elif style == "techno":
        bpm, programs = 128, {0: 81, 1: 38, 2: 89}  # saw lead, synth bass, warm pad
        prog = [(45, "min"), (45, "min"), (41, "maj"), (43, "maj")]
    elif style == "jazz":
        bpm, programs = 150, {0: 0, 1: 32, 2: 65}  # piano, acoustic bass, alto sax
        prog = [(50, "m7"), (43, "7"), (48, "maj7"), (45, "7")]  # ii V I VI
    elif style == "folk":
        bpm, programs = 100, {0: 25, 1: 73}  # steel-string guitar, flute
        prog = [(43, "maj"), (48, "maj"), (50, "maj"), (43, "maj")]  # G C D G
    else:
        raise ValueError(style)
    n_bars = int(np.ceil(seconds * bpm / 60 / 4)) + 1
    for bar in range(n_bars):
        t0 = 4 * bar
        root, kind = prog[bar % len(prog)]
        chord = _chord(root, kind)
        scale = sorted({(p - root) % 12 for p in chord} | {2, 5, 9})
        if style == "rock":
            for e in range(8):
                notes += [(0, t0 + e / 2, 0.45, p, 100 + rng.integers(-8, 8)) for p in chord]
                notes.append((1, t0 + e / 2, 0.45, root - 12, 100))
            for b in range(4):
                notes.append((DRUMS, t0 + b, 0.2, KICK if b % 2 == 0 else SNARE, 115))
                notes += [(DRUMS, t0 + b + h / 2, 0.1, HAT, 80) for h in range(2)]
            if bar % 4 == 0:
                notes.append((DRUMS, t0, 1.0, CRASH, 110))
        elif style == "piano_ballad":
            for e in range(8):
                p = (chord + [c + 12 for c in chord])[e % 6]
                notes.append((0, t0 + e / 2, 1.2, p, 60 + rng.integers(-6, 6)))
            notes.append((0, t0, 4, root - 12, 70))
            for b in range(0, 4, 1 if bar % 2 else 2):
                notes.append((1, t0 + b, 1.0 if bar % 2 else 2.0, 72 + int(rng.choice(scale)) + root % 12 - 0, 85))
        elif style == "strings":
            notes += [(0, t0, 4, p + 12, 70) for p in chord]
            notes.append((2, t0, 2, root - 12, 80))
            notes.append((2, t0 + 2, 2, root - 5, 75))
            for b in range(4):
                notes.append((1, t0 + b, 1.0, 74 + int(rng.choice(scale)) + root % 12, 90))
        elif style == "techno":
            for b in range(4):
                notes.append((DRUMS, t0 + b, 0.2, KICK, 120))
                notes.append((DRUMS, t0 + b + 0.5, 0.1, OPEN_HAT, 80))
                if b % 2:
                    notes.append((DRUMS, t0 + b, 0.2, CLAP, 100))
            for s in range(16):
                notes.append((1, t0 + s / 4, 0.2, root - 12 + (12 if s % 4 == 2 else 0), 105))
                if s % 2 == 0:
                    notes.append((0, t0 + s / 4, 0.2, chord[(s // 2) % len(chord)] + 24, 85))
            notes += [(2, t0, 4, p + 12, 50) for p in chord]
        elif style == "jazz":
            for b in range(4):
                notes.append((DRUMS, t0 + b, 0.3, RIDE, 75))
                notes.append((DRUMS, t0 + b + 2 / 3, 0.2, RIDE, 60))
                notes.append((1, t0 + b, 0.95, root - 12 + [0, 4, 7, 9][b] - (0 if kind != "m7" or b != 1 else 1), 95))
            for hit in (0.66, 2.66):
                notes += [(0, t0 + hit, 0.5, p + 12, 70) for p in chord[1:]]
            for e in range(8):
                if rng.random() < 0.8:
                    swing = (e // 2) + (0 if e % 2 == 0 else 2 / 3)
                    notes.append((2, t0 + swing, 0.3, 67 + int(rng.choice(scale)) + root % 12, 90))
        elif style == "folk":
            for b in range(8):
                up = b % 2
                for i, p in enumerate(chord + [chord[0] + 12]):
                    notes.append((0, t0 + b / 2 + 0.015 * i, 0.45, p, 80 - 15 * up))
            for b in range(4):
                notes.append((1, t0 + b, 0.9, 74 + int(rng.choice(scale)) + root % 12, 80))
    return notes, programs, bpm


def synth_clip(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Chords, bass and drums made with numpy only (for machines without fluidsynth)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n)
    beat = 60 / 120
    roots = [220.0, 174.61, 261.63, 196.0]  # A F C G
    for bar in range(int(np.ceil(seconds / (4 * beat)))):
        start = int(bar * 4 * beat * sr)
        end = min(n, int((bar + 1) * 4 * beat * sr))
        if start >= n:
            break
        seg = t[: end - start]
        root = roots[bar % 4]
        third = 1.189 if bar % 4 == 0 else 1.26
        for f in (root, root * third, root * 1.498):
            for h in range(1, 7):  # a bright, decaying harmonic tone
                out[start:end] += 0.05 / h * np.sin(2 * np.pi * f * h * seg) * np.exp(-seg * (0.6 + 0.3 * h))
        out[start:end] += 0.12 * np.sign(np.sin(2 * np.pi * root / 4 * seg)) * np.exp(-seg * 1.5)
    for k in range(int(seconds / beat * 2)):
        start = int(k * beat / 2 * sr)
        if start >= n:
            break
        m = min(n - start, int(0.25 * sr))
        seg = t[:m]
        if k % 2 == 0 and (k // 2) % 2 == 0:  # kick
            out[start:start + m] += 0.6 * np.sin(2 * np.pi * (50 + 100 * np.exp(-seg * 30)) * seg) * np.exp(-seg * 12)
        if k % 2 == 0 and (k // 2) % 2 == 1:  # snare
            out[start:start + m] += 0.3 * rng.standard_normal(m) * np.exp(-seg * 20)
        hat = rng.standard_normal(m)
        hat = np.diff(hat, prepend=0.0)  # crude high-pass
        out[start:start + m] += 0.05 * hat * np.exp(-seg * 60)
    return (0.9 * out / np.abs(out).max()).astype(np.float32)


def make_clips(folder: Path, seconds: float, use_fluidsynth: bool = True) -> list[tuple[str, Path]]:
    clips = []
    rng = np.random.default_rng(2019)
    if use_fluidsynth and shutil.which("fluidsynth") and SOUNDFONT.is_file():
        for style in ["rock", "piano_ballad", "strings", "techno", "jazz", "folk"]:
            mid, wav = folder / f"{style}.mid", folder / f"{style}_raw.wav"
            write_midi(mid, *piece(style, seconds, rng))
            subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", "44100", "-F", str(wav), str(SOUNDFONT), str(mid)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            x, sr = sf.read(wav, dtype="float32", always_2d=True)
            x = x[: int(seconds * sr)]
            x = 0.89 * x / np.abs(x).max()  # -1 dBFS peak
            out = folder / f"{style}.wav"
            sf.write(out, x, sr, subtype="PCM_16")
            clips.append((style, out))
    else:
        print("(fluidsynth or FluidR3_GM.sf2 missing: only the numpy clip is used)")
    out = folder / "numpy_synth.wav"
    sf.write(out, synth_clip(seconds, 22050, seed=1), 22050, subtype="PCM_16")
    clips.append(("numpy_synth", out))
    return clips


# --------------------------------------------------------------------------- the two implementations
class TFOriginal:
    """musicnn's own graph and checkpoint, in a persistent session."""

    def __init__(self, checkpoint: str, n_frames: int = 187):
        import tensorflow as tf
        from musicnn import configuration, models

        self.tf = tf
        labels = configuration.MTT_LABELS if "MTT" in checkpoint else configuration.MSD_LABELS
        self.graph = tf.Graph()
        with self.graph.as_default():
            with tf.name_scope("model"):
                self.x = tf.compat.v1.placeholder(tf.float32, [None, n_frames, configuration.N_MELS])
                self.is_training = tf.compat.v1.placeholder(tf.bool)
                y, *feats = models.define_model(self.x, self.is_training, checkpoint, len(labels))
                self.outputs = {"logits": y, "prob": tf.nn.sigmoid(y), **dict(zip(FEATURES, feats))}
            self.sess = tf.compat.v1.Session(graph=self.graph)
            # unlike musicnn's extractor, no bare except: a failed restore must not go unnoticed
            tf.compat.v1.train.Saver().restore(self.sess, str(Path(models.__file__).parent / checkpoint) + "/")

    def run(self, patches: np.ndarray, names=("logits", "prob")) -> dict[str, np.ndarray]:
        fetch = {k: self.outputs[k] for k in names}
        return self.sess.run(fetch, feed_dict={self.x: patches, self.is_training: False})


def port_outputs(model, patches: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(patches)
        feats = model.embeddings(x)
        logits = model.head(feats["penultimate"])
    out = {k: v.numpy() for k, v in feats.items()}
    for k in ("timbral", "temporal", "cnn1", "cnn2", "cnn3"):
        out[k] = out[k].transpose(0, 2, 1)  # B×C×T → TF's B×T×C
    out["logits"] = logits.numpy()
    out["prob"] = 1 / (1 + np.exp(-out["logits"].astype(np.float64)))
    return out


def musicnn_patches(path: Path) -> np.ndarray:
    from musicnn.extractor import batch_data

    batch, _ = batch_data(str(path), 187, 187)
    return batch.astype(np.float32)


def original_track(path: Path, checkpoint: str) -> np.ndarray:
    """musicnn's ``top_tags`` computation: mean of the extractor's taggram."""
    from musicnn.extractor import extractor

    with contextlib.redirect_stdout(io.StringIO()):
        taggram, _ = extractor(str(path), model=checkpoint, input_length=3, input_overlap=False, extract_features=False)
    return taggram.mean(axis=0)


def top(p: np.ndarray, tags: list[str], k: int = 5) -> list[str]:
    return [tags[i] for i in np.argsort(-p, kind="stable")[:k]]


# --------------------------------------------------------------------------- timing (own processes)
def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_original(checkpoint: str, paths: list[Path], repeats: int) -> dict[str, float]:
    """In a process without torch: musicnn as shipped, and its network alone."""
    original = TFOriginal(checkpoint)
    batches = [musicnn_patches(p) for p in paths]
    return {
        "shipped": _best(lambda: [original_track(p, checkpoint) for p in paths], repeats),
        "net_batch1": _best(lambda: [[original.run(b[i:i + 1], ["prob"]) for i in range(len(b))] for b in batches], repeats),
        "net": _best(lambda: [original.run(b, ["prob"]) for b in batches], repeats),
    }


def time_port(key: str, paths: list[Path], repeats: int) -> dict[str, float]:
    """In a process without TensorFlow: mttag's Tagger, and the network alone."""
    import torch

    from mttag.audio.decode import load_audio
    from mttag.inference.tagging import Tagger
    from mttag.weights.modelfile import load_local_model

    model = load_local_model(ROOT / "mttag" / "data" / "models" / key)
    tagger = Tagger(model, device="cpu", windows=None)
    with torch.inference_mode():
        logmels = [model.logmel(torch.from_numpy(musicnn_windows(load_audio(p, 16000)))) for p in paths]

    def net():
        with torch.inference_mode():
            for lm in logmels:
                model.patch_logits_from_logmel(lm).sigmoid()

    return {"tagger": _best(lambda: list(tagger.tag_files(paths, top=None)), repeats), "net": _best(net, repeats)}


def musicnn_windows(audio: np.ndarray, n: int = 47872) -> np.ndarray:
    """Consecutive 187-frame windows as musicnn cuts a track (an incomplete last one is dropped)."""
    k = max(1, len(audio) // n)
    audio = np.pad(audio, (0, max(0, n - len(audio))))
    return np.stack([audio[i * n:(i + 1) * n] for i in range(k)]).astype(np.float32)


def _timed_subprocess(mode: str, name: str, paths: list[Path], repeats: int, one_core: bool) -> dict[str, float]:
    import json

    cmd = [sys.executable, __file__, f"--{mode}", name, "--repeats", str(repeats), *map(str, paths)]
    env = dict(os.environ)
    if one_core:  # pin to one CPU and one thread in both frameworks
        cmd = ["taskset", "-c", "0", *cmd]
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def timing(paths: list[Path], total_audio: float, repeats: int, rounds: int) -> None:
    n = len(paths)
    configs = [("all cores", False)] + ([("one core", True)] if shutil.which("taskset") else [])
    print(f"speed on CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start), {n} files, "
          f"{total_audio:.0f} s of audio; each side in its own process, {rounds} alternating rounds x best of "
          f"{repeats}; s/track and x real time")
    for key, checkpoint in MODELS.items():
        for label, one_core in configs:
            orig: dict[str, float] = {}
            port: dict[str, float] = {}
            for _ in range(rounds):
                for k, v in _timed_subprocess("time-original", checkpoint, paths, repeats, one_core).items():
                    orig[k] = min(v, orig.get(k, v))
                for k, v in _timed_subprocess("time-port", key, paths, repeats, one_core).items():
                    port[k] = min(v, port.get(k, v))
            print(f"  {key}, {label}")
            for what, t in [("original: musicnn extractor per file (as top_tags runs it)", orig["shipped"]),
                            ("port: mttag Tagger.tag_files, windows=None", port["tagger"]),
                            ("network only, original, one patch per run (BATCH_SIZE=1)", orig["net_batch1"]),
                            ("network only, original, a track's patches per run", orig["net"]),
                            ("network only, port, a track's patches per run", port["net"])]:
                print(f"    {what:60s} {t / n:6.3f} s/track {total_audio / t:7.1f}x")
            print(f"    end to end the port takes {port['tagger'] / orig['shipped']:.2f}x the original's time; "
                  f"network alone {port['net'] / min(orig['net'], orig['net_batch1']):.2f}x the original's best")
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)\n")


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (default 30 s, like MSD/MTT previews)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is reported)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating original/port timing rounds")
    parser.add_argument("--reference", type=Path, help="also write the unit tests' reference .npz here")
    parser.add_argument("--no-fluidsynth", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--no-fidelity", action="store_true", help="timing only")
    parser.add_argument("--time-original", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--time-port", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_original or args.time_port:
        import json

        if args.time_original:
            result = time_original(args.time_original, args.files, args.repeats)
        else:
            result = time_port(args.time_port, args.files, args.repeats)
        print(json.dumps(result))
        return

    import musicnn
    import tensorflow as tf
    import torch

    from mttag.audio.decode import load_audio
    from mttag.inference.tagging import Tagger
    from mttag.weights.modelfile import load_local_model

    print(f"python {platform.python_version()}, numpy {np.__version__}, tensorflow {tf.__version__}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({platform.machine()})")
    print(f"musicnn from {Path(musicnn.__file__).parent}")

    work = Path(tempfile.mkdtemp(prefix="musicnn_bench_"))
    clips = make_clips(work, args.seconds, not args.no_fluidsynth)
    paths = [p for _, p in clips]
    total_audio = sum(sf.info(str(p)).duration for p in paths)
    print(f"{len(clips)} clips of {args.seconds:g} s: {', '.join(n for n, _ in clips)}\n")
    patches = {name: musicnn_patches(path) for name, path in clips}
    audio16k = {name: load_audio(path, 16000) for name, path in clips}  # mttag's decoder (soxr HQ)

    results = {}
    for key, checkpoint in ({} if args.no_fidelity else MODELS).items():
        model = load_local_model(ROOT / "mttag" / "data" / "models" / key)
        tags = model.config.tags
        original = TFOriginal(checkpoint)
        print(f"== {key} (TF checkpoint {checkpoint})")

        # -- patch level, same log-mel input
        worst = {k: 0.0 for k in ["prob", "logits"] + FEATURES}
        n_patches = 0
        for name, batch in patches.items():
            ref = original.run(batch, names=["prob", "logits"] + FEATURES)
            got = port_outputs(model, batch)
            n_patches += len(batch)
            for k in worst:
                r = np.asarray(ref[k], np.float64).reshape(got[k].shape)  # TF keeps a trailing 1 on cnn1-3
                worst[k] = max(worst[k], float(np.abs(r - got[k]).max()))
        print(f"patch level ({n_patches} patches of 187 frames, same log-mel input), max abs difference:")
        print(f"  sigmoid outputs {worst['prob']:.2e}   logits {worst['logits']:.2e}")
        print("  " + "  ".join(f"{k} {worst[k]:.1e}" for k in FEATURES))

        # -- track level, same audio files
        variants = {
            "port, musicnn's windows": lambda name, path: _port_mean(model, audio16k[name]),
            "mttag Tagger, windows=None": lambda name, path: next(
                Tagger(model, device="cpu", windows=None).tag_files([path], top=None)).probabilities,
            "mttag Tagger, default 8 windows": lambda name, path: next(
                Tagger(model, device="cpu").tag_files([path], top=None)).probabilities,
        }
        stats = {v: dict(order=0, same_set=0, overlap=0, diff=0.0) for v in variants}
        print("track level, same audio files: musicnn's extractor (as top_tags) vs the port")
        for name, path in clips:
            p_orig = original_track(path, checkpoint)
            t_orig = top(p_orig, tags)
            print(f"  {name:13s} original top-5: {', '.join(t_orig)}")
            for v, fn in variants.items():
                p = fn(name, path)
                t = top(p, tags)
                st = stats[v]
                st["order"] += t == t_orig
                st["same_set"] += set(t) == set(t_orig)
                st["overlap"] += len(set(t) & set(t_orig))
                st["diff"] = max(st["diff"], float(np.abs(p - p_orig).max()))
                if t != t_orig:
                    print(f"  {'':13s} {v}: {', '.join(t)}")
        for v, st in stats.items():
            print(f"  {v:32s} top-5 identical {st['order']}/{len(clips)}, same set {st['same_set']}/{len(clips)}, "
                  f"overlap {st['overlap']}/{5 * len(clips)}, max abs probability difference {st['diff']:.4f}")
        results[key] = dict(worst=worst, stats=stats)
        original.sess.close()
        print()

    if not args.no_timing:
        timing(paths, total_audio, args.repeats, args.rounds)

    if args.reference:
        write_reference(args.reference)
    shutil.rmtree(work, ignore_errors=True)
    ok = all(r["worst"]["prob"] < 1e-4 and r["stats"]["port, musicnn's windows"]["same_set"] == len(clips)
             for r in results.values())
    if results:
        print("PASS" if ok else "FAIL", "(patch-level sigmoid max abs diff < 1e-4; same top-5 with musicnn's windows)")
    sys.exit(0 if ok else 1)


def _port_mean(model, audio: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(musicnn_windows(audio)))).mean(0).numpy()


def write_reference(path: Path, seconds: float = 6.5) -> None:
    """The unit tests' reference: a short numpy clip (16 kHz int16), musicnn's log-mel
    patches of it (computed by musicnn's own code) and the TF outputs per patch."""
    from musicnn.extractor import batch_data

    audio = synth_clip(seconds, 16000, seed=7)
    pcm = np.round(audio * 32767).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        sf.write(wav, pcm, 16000, subtype="PCM_16")
        batch, _ = batch_data(str(wav), 187, 187)
    data = {"audio_int16": pcm, "sample_rate": np.array(16000), "logmel_patches": batch.astype(np.float32)}
    for key, checkpoint in MODELS.items():
        original = TFOriginal(checkpoint)
        out = original.run(batch.astype(np.float32), names=["logits", "prob", "penultimate"])
        name = key.split("-")[0]
        data[f"{name}_logits"] = out["logits"]
        data[f"{name}_prob"] = out["prob"]
        data[f"{name}_penultimate"] = out["penultimate"]
        data[f"{name}_track_prob"] = original_track_from_batch(original, batch)
        original.sess.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): {', '.join(f'{k} {v.shape}' for k, v in data.items())}")


def original_track_from_batch(original: TFOriginal, batch: np.ndarray) -> np.ndarray:
    return original.run(batch.astype(np.float32), names=["prob"])["prob"].mean(axis=0)


if __name__ == "__main__":
    main()
