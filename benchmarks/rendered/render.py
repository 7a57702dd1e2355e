#!/usr/bin/env python3
"""Render real compositions with real sampled instruments into a multi-label
tagging benchmark.

Scores come from the corpus shipped inside the ``music21`` package (Bach
chorales, Palestrina and Monteverdi, trecento music, Haydn/Mozart/Beethoven
string quartets, Essen folk songs, Scottish/Irish fiddle tunes).  Each
rendering takes an excerpt of one piece, gives its parts General MIDI
instruments, a tempo, a dynamic level, optionally a drum groove, an
accompaniment (for single-line tunes) and a reverberant room, and plays it
through FluidSynth with a SoundFont.  The tags are derived from these choices
and from the notes themselves (mode, meter), so they are ground truth.

    python benchmarks/rendered/render.py OUT --n 2000 --seed 0
    python benchmarks/rendered/render.py OUT_HELDOUT --n 300 --soundfonts heldout --pieces heldout

writes ``OUT/audio/*.flac`` (mono, 22,050 Hz), ``OUT/annotations.csv``
(``path,tags,artist,split``: ready for ``mttag prepare --annotations``, the
artist being the source piece so that splits are piece-level),
``OUT/renders.csv`` (every choice made for every rendering) and
``OUT/tags.txt``.

The plan (which piece, which excerpt, which instruments, ...) is a pure
function of ``--seed`` and the options; the audio of a rendering does not
depend on ``--jobs`` (each chunk of renderings gets a fresh synthesizer).

System requirements: see README.md beside this file.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# vocabulary

FAMILIES = ("piano", "harpsichord", "organ", "strings", "brass", "woodwind", "choir",
            "guitar", "mallets", "synth", "accordion", "harp")
STYLES = ("chorale", "renaissance", "medieval", "quartet", "folk", "irish")
TEMPI = ("slow", "mid-tempo", "fast")
MODES = ("major", "minor")
METERS = ("duple", "triple", "compound")
DYNAMICS = ("soft", "mezzo", "loud")
TEXTURES = ("solo", "ensemble")
TAGS = FAMILIES + ("drums",) + STYLES + TEMPI + MODES + METERS + DYNAMICS + TEXTURES + ("reverb",)

# General MIDI programs (0-based) per family, from high to low register.
PROGRAMS = {
    "piano": [[0], [1], [2]],
    "harpsichord": [[6]],
    "organ": [[19], [20], [16]],
    "strings": [[40, 40, 41, 42, 43], [48], [49]],
    "brass": [[56, 56, 60, 57, 58], [61], [60, 60, 57, 58]],
    "woodwind": [[73, 68, 71, 70, 70], [74, 74, 71, 70], [72, 68, 69, 70]],
    "choir": [[52], [53]],
    "guitar": [[24], [25]],
    "mallets": [[11], [12]],
    "synth": [[80], [81], [89], [90]],
    "accordion": [[21], [23]],
    "harp": [[46]],
}
# Solo instruments for single-line tunes (program per family).
SOLO_PROGRAMS = {
    "strings": [40, 110, 41], "woodwind": [73, 74, 75, 71, 68, 72, 78], "piano": [0, 1],
    "accordion": [21, 22], "guitar": [24, 25], "harp": [46], "mallets": [11, 12, 13],
    "brass": [56, 60], "synth": [80, 81], "organ": [19, 16], "harpsichord": [6],
}
DRUM_KITS = [0, 8, 16, 24, 25, 32, 40]  # GM2 kit numbers on bank 128; missing kits fall back to 0

# Instrumentation template weights (deliberately imbalanced, like real tags).
ENSEMBLE_WEIGHTS = {
    "default": {"strings": 20, "organ": 12, "piano": 12, "brass": 10, "woodwind": 10, "choir": 10,
                "mixed": 14, "guitar": 4, "harpsichord": 4, "synth": 2, "mallets": 2},
    "quartet": {"strings": 50, "piano": 10, "woodwind": 10, "brass": 6, "mixed": 14, "organ": 4,
                "harpsichord": 4, "guitar": 2},
    "chorale": {"organ": 26, "choir": 22, "strings": 14, "brass": 12, "piano": 8, "woodwind": 6,
                "mixed": 10, "synth": 2},
}
SOLO_WEIGHTS = {"strings": 20, "woodwind": 25, "piano": 12, "accordion": 10, "guitar": 8, "harp": 5,
                "mallets": 5, "brass": 7, "synth": 4, "organ": 4}
ACCOMP_WEIGHTS = {"piano": 25, "guitar": 25, "accordion": 12, "organ": 10, "strings": 10, "harp": 8,
                  "harpsichord": 6, "synth": 4}
MIXED_FAMILIES = ("strings", "brass", "woodwind", "piano", "organ", "choir", "guitar")

STYLE_WEIGHTS = {"folk": 25, "irish": 20, "chorale": 20, "renaissance": 16, "medieval": 9, "quartet": 10}
DRUM_PROB = {"folk": 0.3, "irish": 0.35, "chorale": 0.08, "renaissance": 0.06, "medieval": 0.12, "quartet": 0.1}
ACCOMP_PROB = 0.55  # single-line tunes that get an accompaniment (then "ensemble")
TEMPO_RANGES = {"slow": (50, 76), "mid-tempo": (80, 116), "fast": (120, 168)}  # beats per minute
VELOCITY = {"soft": (34, 54), "mezzo": (66, 90), "loud": (104, 124)}

SOUNDFONT_SETS = {
    # (file name, Debian package); searched in SOUNDFONT_DIRS
    "train": [("FluidR3_GM.sf2", "fluid-soundfont-gm"), ("TimGM6mb.sf2", "timgm6mb-soundfont")],
    "heldout": [("MuseScore_General_Lite.sf3", "musescore-general-soundfont-small"),
                ("sf_GMbank.sf2", "csound-soundfont")],
    "fm": [("OPL-3_FM_128M.sf2", "opl3-soundfont")],
}
SOUNDFONT_DIRS = ["/usr/share/sounds/sf2", "/usr/share/sounds/sf3", "/usr/share/soundfonts",
                  "/usr/share/samples", "/usr/local/share/soundfonts"]
HELDOUT_PIECE_PERCENT = 15  # pieces reserved (by hash) for --pieces heldout

# ---------------------------------------------------------------------------
# requirements


class RequirementError(RuntimeError):
    pass


def check_requirements(soundfont_paths: list[str]) -> None:
    missing = []
    try:
        import music21  # noqa: F401
    except ImportError:
        missing.append("the Python package music21 (pip install music21)")
    try:
        import fluidsynth  # noqa: F401
        if not hasattr(fluidsynth, "Synth"):
            raise ImportError
    except (ImportError, OSError):
        missing.append("pyfluidsynth and the FluidSynth library "
                       "(apt-get install fluidsynth libfluidsynth3; pip install pyfluidsynth)")
    for p in soundfont_paths:
        if not Path(p).is_file():
            missing.append(f"SoundFont {p}")
    if missing:
        raise RequirementError("missing requirements:\n  - " + "\n  - ".join(missing)
                               + "\nsee benchmarks/rendered/README.md")


def resolve_soundfonts(spec: str) -> list[str]:
    """'train', 'heldout', 'fm', or comma-separated SoundFont paths / set names."""
    out, missing = [], []
    for item in spec.split(","):
        item = item.strip()
        if item in SOUNDFONT_SETS:
            for name, pkg in SOUNDFONT_SETS[item]:
                hit = next((str(Path(d) / name) for d in SOUNDFONT_DIRS if (Path(d) / name).is_file()), None)
                if hit is None:
                    missing.append(f"{name} (apt-get install {pkg})")
                else:
                    out.append(hit)
        elif item:
            if not Path(item).is_file():
                missing.append(item)
            out.append(item)
    if missing:
        raise RequirementError("SoundFont(s) not found: " + ", ".join(missing)
                               + "\nsee benchmarks/rendered/README.md")
    return out


# ---------------------------------------------------------------------------
# catalogue of source pieces (music21 corpus)

def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def piece_pool(piece_id: str) -> str:
    """'heldout' for a fixed ~15 % of pieces (by hash), never used by --pieces main."""
    return "heldout" if _stable_hash("pool:" + piece_id) % 100 < HELDOUT_PIECE_PERCENT else "main"


def _abc_numbers(path: Path) -> list[int]:
    nums = []
    with open(path, encoding="latin-1") as f:
        for line in f:
            m = re.match(r"X:\s*(\d+)", line)
            if m:
                nums.append(int(m.group(1)))
    return nums


def catalogue() -> dict[str, list[str]]:
    """Piece ids ('corpus/relative/path' or 'path#number' for tunes in collections) per style."""
    from music21 import corpus

    def rel(p) -> str:
        s = str(p).replace(os.sep, "/")
        return s.split("/corpus/", 1)[1] if "/corpus/" in s else s

    def files(composer, exts):
        return sorted(rel(p) for p in corpus.getComposer(composer) if str(p).endswith(exts))

    root = Path(corpus.getComposer("bach")[0]).parents[1]
    cat: dict[str, list[str]] = {}
    cat["chorale"] = [p for p in files("bach", (".mxl",)) if re.search(r"/bwv\d+\.\d+\.mxl$", p)]
    cat["renaissance"] = files("palestrina", (".krn",)) + files("monteverdi", (".mxl",)) + files("josquin", (".abc",))
    cat["medieval"] = files("trecento", (".xml",)) + files("luca", (".xml",)) + files("ciconia", (".xml",))
    cat["quartet"] = files("haydn", (".mxl", ".krn")) + files("mozart", (".mxl", ".krn")) + \
        [p for p in files("beethoven", (".mxl", ".krn")) if "opus133" not in p]
    folk = []
    for p in files("essenFolksong", (".abc",)):
        folk += [f"{p}#{n}" for n in _abc_numbers(root / p)]
    cat["folk"] = folk
    irish = []
    for p in files("ryansMammoth", (".abc",)) + files("oneills1850", (".abc",)):
        nums = _abc_numbers(root / p)
        irish += [p] if len(nums) <= 1 else [f"{p}#{n}" for n in nums]
    cat["irish"] = irish
    return cat


# ---------------------------------------------------------------------------
# the plan: every random choice, a pure function of the seed


@dataclass
class Item:
    index: int
    piece: str
    style: str
    split: str
    soundfont: str
    start_frac: float
    tempo_class: str
    bpm: float
    dynamics: str
    reverb: bool
    room: float
    reverb_level: float
    drums: bool
    drum_kit: int
    ensemble: str          # template name for polyphonic pieces ('' for tunes)
    ensemble_variant: int
    mixed_families: list = field(default_factory=list)
    solo_family: str = ""  # single-line tunes
    solo_program: int = 0
    accomp_family: str = ""  # '' = none
    accomp_variant: int = 0
    transpose: int = 0
    gain_db: float = 0.0
    seed: int = 0


def _choice(rng, weights: dict):
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def assign_split(piece: str, seed: int, fractions=(0.75, 0.10, 0.15)) -> str:
    u = (_stable_hash(f"split:{seed}:{piece}") % 10_000) / 10_000
    return "train" if u < fractions[0] else "valid" if u < fractions[0] + fractions[1] else "test"


def make_plan(cat: dict[str, list[str]], n: int, seed: int, soundfonts: list[str], pieces: str = "main",
              versions: float = 2.0, all_split: str | None = None) -> list[Item]:
    """``n`` renderings. Each chosen piece is rendered about ``versions`` times
    (different instruments/tempo/soundfont: several "recordings" of one piece
    sharing one group)."""
    rng = np.random.default_rng(seed)
    total_w = sum(STYLE_WEIGHTS.values())
    counts = {s: int(round(n * w / total_w)) for s, w in STYLE_WEIGHTS.items()}
    counts["folk"] += n - sum(counts.values())
    items: list[Item] = []
    for style in STYLES:
        pool = [p for p in cat.get(style, []) if pieces == "all" or piece_pool(p) == pieces]
        if not pool or counts[style] <= 0:
            continue
        k = counts[style]
        n_pieces = max(1, min(len(pool), int(math.ceil(k / versions))))
        chosen = [pool[i] for i in rng.choice(len(pool), size=n_pieces, replace=False)]
        for j in range(k):
            piece = chosen[j % n_pieces]
            items.append(_plan_item(rng, len(items), piece, style, soundfonts, seed, all_split))
    return items


def _plan_item(rng, index, piece, style, soundfonts, seed, all_split) -> Item:
    tempo_class = _choice(rng, {"slow": 25, "mid-tempo": 50, "fast": 25})
    lo, hi = TEMPO_RANGES[tempo_class]
    dyn = _choice(rng, {"soft": 25, "mezzo": 50, "loud": 25})
    reverb = bool(rng.random() < 0.4)
    drums = bool(rng.random() < DRUM_PROB[style])
    single_line = style in ("folk", "irish")
    it = Item(
        index=index, piece=piece, style=style,
        split=all_split or assign_split(piece, seed),
        soundfont=soundfonts[int(rng.integers(len(soundfonts)))],
        start_frac=float(rng.random()), tempo_class=tempo_class, bpm=float(rng.uniform(lo, hi)),
        dynamics=dyn, reverb=reverb, room=float(rng.uniform(0.7, 0.95)),
        reverb_level=float(rng.uniform(0.75, 1.0)), drums=drums,
        drum_kit=int(DRUM_KITS[int(rng.integers(len(DRUM_KITS)))]),
        ensemble="", ensemble_variant=0, transpose=int(rng.integers(-2, 3)),
        gain_db=float(rng.uniform(-3, 3)), seed=int(rng.integers(2**31)),
    )
    if single_line:
        it.solo_family = _choice(rng, SOLO_WEIGHTS)
        progs = SOLO_PROGRAMS[it.solo_family]
        it.solo_program = int(progs[int(rng.integers(len(progs)))])
        if rng.random() < ACCOMP_PROB:
            it.accomp_family = _choice(rng, ACCOMP_WEIGHTS)
            it.accomp_variant = int(rng.integers(8))
    else:
        weights = ENSEMBLE_WEIGHTS.get(style, ENSEMBLE_WEIGHTS["default"])
        it.ensemble = _choice(rng, weights)
        it.ensemble_variant = int(rng.integers(8))
        if it.ensemble == "mixed":
            it.mixed_families = [MIXED_FAMILIES[int(rng.integers(len(MIXED_FAMILIES)))] for _ in range(8)]
    return it


# ---------------------------------------------------------------------------
# pure musical helpers

def meter_class(numerator: int, denominator: int) -> str:
    if denominator >= 8 and numerator in (6, 9, 12):
        return "compound"
    if numerator % 3 == 0 and numerator not in (6, 12):
        return "triple"
    return "duple"


# Krumhansl-Kessler key profiles
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(pc_weights) -> tuple[int, str]:
    """(tonic pitch class, 'major'|'minor') by correlating a duration-weighted
    pitch-class histogram with the Krumhansl-Kessler profiles."""
    h = np.asarray(pc_weights, dtype=float)
    if h.sum() <= 0:
        return 0, "major"
    best = (-2.0, 0, "major")
    for tonic in range(12):
        for mode, prof in (("major", _MAJOR), ("minor", _MINOR)):
            r = np.corrcoef(h, np.roll(prof, tonic))[0, 1]
            if r > best[0]:
                best = (r, tonic, mode)
    return best[1], best[2]


def programs_for_parts(item: Item, n_parts: int) -> list[tuple[str, int]]:
    """(family, GM program) per part, parts ordered from the top voice down."""
    if item.solo_family:
        return [(item.solo_family, item.solo_program)]
    out = []
    for i in range(n_parts):
        fam = item.mixed_families[i % len(item.mixed_families)] if item.ensemble == "mixed" else item.ensemble
        variants = PROGRAMS[fam]
        progs = variants[item.ensemble_variant % len(variants)]
        pos = 0 if n_parts == 1 else round(i * (len(progs) - 1) / (n_parts - 1))
        out.append((fam, progs[pos]))
    return out


def accomp_program(item: Item) -> int:
    variants = PROGRAMS[item.accomp_family]
    return variants[item.accomp_variant % len(variants)][-1]


def derive_tags(item: Item, families: set[str], mode: str, meter: str, n_voices: int) -> list[str]:
    tags = set(families)
    if item.drums:
        tags.add("drums")
    tags |= {item.style, item.tempo_class, mode, meter, item.dynamics}
    tags.add("solo" if n_voices == 1 and not item.drums else "ensemble")
    if item.reverb:
        tags.add("reverb")
    return [t for t in TAGS if t in tags]


def drum_pattern(meter: str, beats_per_bar: int, beat_ql: float, kit_rng) -> list[tuple[float, int, float]]:
    """(offset in quarter notes within the bar, GM drum key, relative velocity) for one bar."""
    ev = []
    hat = 42 if kit_rng.random() < 0.7 else 51
    if meter == "compound":
        sub = beat_ql / 3
        for b in range(beats_per_bar):
            for s in range(3):
                ev.append((b * beat_ql + s * sub, hat, 0.6 if s else 0.8))
            ev.append((b * beat_ql, 36 if b % 2 == 0 else 38, 1.0))
    elif meter == "triple":
        for b in range(beats_per_bar):
            ev.append((b * beat_ql, hat, 0.7))
            ev.append((b * beat_ql, 36 if b == 0 else 38, 1.0 if b == 0 else 0.7))
    else:
        for b in range(beats_per_bar):
            ev.append((b * beat_ql, hat, 0.8))
            ev.append((b * beat_ql + beat_ql / 2, hat, 0.55))
            ev.append((b * beat_ql, 36 if b % 2 == 0 else 38, 1.0))
    return ev


# ---------------------------------------------------------------------------
# score -> note events


def _parse(piece: str):
    from music21 import corpus
    if "#" in piece:
        path, num = piece.split("#")
        return corpus.parse(path, number=int(num))
    return corpus.parse(piece)


def extract(score) -> dict:
    """Parts (top voice first) as lists of (offset, duration, midi), the time
    signature and the length, in quarter notes."""
    from music21 import meter as m21meter
    ts = score.recurse().getElementsByClass(m21meter.TimeSignature).first()
    num, den = (ts.numerator, ts.denominator) if ts is not None else (4, 4)
    beat_ql = float(ts.beatDuration.quarterLength) if ts is not None else 1.0
    bar_ql = float(ts.barDuration.quarterLength) if ts is not None else 4.0
    parts = []
    src_parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    for part in src_parts:
        notes, open_ties = [], {}
        for n in part.flatten().notes:
            dur = float(n.duration.quarterLength)
            if dur <= 0:
                continue
            off = float(n.offset)
            tie = n.tie.type if n.tie is not None else None
            for p in n.pitches:
                midi = int(p.midi)
                k = open_ties.get(midi)
                if tie in ("stop", "continue") and k is not None and abs(notes[k][0] + notes[k][1] - off) < 1e-3:
                    notes[k] = (notes[k][0], notes[k][1] + dur, midi)  # tied: lengthen the held note
                else:
                    notes.append((off, dur, midi))
                    k = len(notes) - 1
                if tie in ("start", "continue"):
                    open_ties[midi] = k
                else:
                    open_ties.pop(midi, None)
        if notes:
            parts.append(notes)
    # order parts by mean pitch, highest first
    parts.sort(key=lambda ns: -np.mean([x[2] for x in ns]))
    length = max(o + d for ns in parts for o, d, _ in ns) if parts else 0.0
    return {"parts": parts, "num": num, "den": den, "beat_ql": beat_ql, "bar_ql": bar_ql, "length": length}


def excerpt_notes(parts, length: float, bar_ql: float, start_frac: float, span_ql: float):
    """Notes of [start, start+span) (quarter notes), starting on a bar line;
    short pieces are repeated (tunes are played more than once)."""
    period = math.ceil(max(length, 1e-6) / bar_ql - 1e-6) * bar_ql
    if period >= span_ql:
        start = math.floor(start_frac * (period - span_ql) / bar_ql) * bar_ql
    else:
        start = 0.0
    reps = int(math.ceil((start + span_ql) / period)) + 1
    out = []
    for notes in parts:
        sel = []
        for r in range(reps):
            for o, d, m in notes:
                t = o + r * period - start
                if t + d <= 0 or t >= span_ql:
                    continue
                if t < 0:
                    d, t = d + t, 0.0
                sel.append((t, min(d, span_ql - t), m))
        out.append(sorted(sel))
    return out


# ---------------------------------------------------------------------------
# synthesis


class Renderer:
    def __init__(self, soundfont: str, sample_rate: int):
        import fluidsynth
        self.sr = sample_rate
        self.fs = fluidsynth.Synth(gain=0.5, samplerate=float(sample_rate), **{
            "synth.chorus.active": 0, "synth.reverb.active": 1, "synth.cpu-cores": 1,
            "synth.polyphony": 256})
        self.sfid = self.fs.sfload(soundfont)
        if self.sfid < 0:
            raise RuntimeError(f"FluidSynth could not load {soundfont}")

    def close(self):
        self.fs.delete()

    def render(self, events, seconds: float, programs: dict[int, tuple[int, int]], reverb: tuple | None):
        """events: (time s, kind 0=off/1=on, channel, key, velocity)."""
        fs = self.fs
        fs.system_reset()
        for ch, (bank, prog) in programs.items():
            fs.program_select(ch, self.sfid, bank, prog)
            fs.cc(ch, 7, 110)
            fs.cc(ch, 91, reverb[3] if reverb else 0)
            fs.cc(ch, 93, 0)
        if reverb:
            fs.set_reverb(roomsize=reverb[0], damping=0.3, width=0.8, level=reverb[2])
        total = int(round(seconds * self.sr))
        chunks, pos = [], 0
        for t, kind, ch, key, vel in sorted(events):
            s = min(total, int(round(t * self.sr)))
            if s > pos:
                chunks.append(fs.get_samples(s - pos))
                pos = s
            if kind:
                fs.noteon(ch, key, vel)
            else:
                fs.noteoff(ch, key)
        if total > pos:
            chunks.append(fs.get_samples(total - pos))
        for ch in programs:
            fs.all_sounds_off(ch)
        # flush: no reverb tail or voice may leak into the next rendering
        # FluidSynth applies events at 64-sample block boundaries of its own
        # clock: realign the clock so that every rendering starts on one.
        fs.set_reverb(roomsize=0.0, damping=1.0, width=0.0, level=0.0)
        flush = self.sr // 2
        flush += (-(total + flush)) % 64
        fs.get_samples(flush)
        x = np.concatenate(chunks).astype(np.float32).reshape(-1, 2).mean(axis=1) / 32768.0
        return x


def render_item(item: Item, info: dict, renderer: Renderer, seconds: float):
    rng = np.random.default_rng(item.seed)
    spq = 60.0 / (item.bpm * info["beat_ql"])  # seconds per quarter note
    span = seconds / spq
    parts = excerpt_notes(info["parts"], info["length"], info["bar_ql"], item.start_frac, span)
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("empty excerpt")
    parts = parts[:8]
    assignments = programs_for_parts(item, len(parts))
    lo, hi = VELOCITY[item.dynamics]
    base_vel = rng.uniform(lo, hi)
    events, programs, families = [], {}, set()
    pcs = np.zeros(12)
    voices = 0
    channels = [c for c in range(16) if c != 9]
    for i, (notes, (fam, prog)) in enumerate(zip(parts, assignments)):
        ch = channels[i]
        programs[ch] = (0, prog)
        families.add(fam)
        voices += 1
        for o, d, m in notes:
            key = m + item.transpose
            while key < 24:
                key += 12
            while key > 108:
                key -= 12
            pcs[key % 12] += d
            t = max(0.0, o * spq + rng.normal(0, 0.008))
            accent = 6 if abs((o / info["bar_ql"]) - round(o / info["bar_ql"])) < 1e-6 else 0
            vel = int(np.clip(base_vel + accent + rng.normal(0, 6), 1, 127))
            events.append((t, 1, ch, key, vel))
            events.append((t + max(0.05, d * spq * 0.95), 0, ch, key, 0))
    tonic, mode = estimate_key(pcs)
    meter = meter_class(info["num"], info["den"])
    if item.accomp_family:
        ch = channels[len(parts)]
        programs[ch] = (0, accomp_program(item))
        families.add(item.accomp_family)
        voices += 1
        third = 4 if mode == "major" else 3
        bass = 48 + tonic
        bar_s = info["bar_ql"] * spq
        n_bars = int(math.ceil(seconds / bar_s))
        style = item.accomp_variant % 2  # 0 sustained chord, 1 bass + chord on beats
        for b in range(n_bars):
            t0 = b * bar_s
            vel = int(np.clip(base_vel - 12 + rng.normal(0, 4), 1, 127))
            if style == 0:
                for k in (bass - 12, bass, bass + third, bass + 7):
                    events += [(t0, 1, ch, k, vel), (t0 + bar_s * 0.98, 0, ch, k, 0)]
            else:
                beat_s = info["beat_ql"] * spq
                nb = max(1, int(round(info["bar_ql"] / info["beat_ql"])))
                for j in range(nb):
                    tj = t0 + j * beat_s
                    ks = [bass - 12 if j % 2 == 0 else bass - 5] if j == 0 or j % 2 == 0 else [bass + third, bass + 7, bass + 12]
                    for k in ks:
                        events += [(tj, 1, ch, k, vel), (tj + beat_s * 0.9, 0, ch, k, 0)]
    if item.drums:
        programs[9] = (128, item.drum_kit)
        nb = max(1, int(round(info["bar_ql"] / info["beat_ql"])))
        pat = drum_pattern(meter, nb, info["beat_ql"], rng)
        bar_s = info["bar_ql"] * spq
        for b in range(int(math.ceil(seconds / bar_s))):
            for off, key, rel in pat:
                t = b * bar_s + off * spq
                if t < seconds:
                    vel = int(np.clip(base_vel * rel + rng.normal(0, 5), 1, 127))
                    events += [(t, 1, 9, key, vel), (t + 0.1, 0, 9, key, 0)]
    reverb = (item.room, 0.3, item.reverb_level, int(rng.integers(90, 128))) if item.reverb else None
    x = renderer.render(events, seconds, programs, reverb)
    if item.drums and np.abs(x).max() == 0:
        raise ValueError("silent rendering")
    x *= 10 ** (item.gain_db / 20)
    fade = int(0.25 * renderer.sr)
    x[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    peak = float(np.abs(x).max())
    if peak < 1e-4:
        raise ValueError("silent rendering")
    if peak > 0.98:
        x *= 0.98 / peak
    tags = derive_tags(item, families, mode, meter, voices)
    return x, tags, {"mode": mode, "tonic": int(tonic), "meter": meter, "families": sorted(families),
                     "voices": voices, "programs": {str(k): v[1] for k, v in programs.items()}}


# ---------------------------------------------------------------------------
# driver

_CACHE: dict = {}


def _load_info(piece: str) -> dict:
    if piece not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        try:
            _CACHE[piece] = extract(_parse(piece))
        except Exception as exc:  # unparseable corpus file: skip its renderings
            _CACHE[piece] = {"error": f"{type(exc).__name__}: {exc}"}
    return _CACHE[piece]


def _render_chunk(args):
    chunk, out_dir, seconds, sample_rate = args
    import warnings
    warnings.filterwarnings("ignore")
    import soundfile as sf
    results = []
    renderers: dict[str, Renderer] = {}
    try:
        for d in chunk:
            item = Item(**d)
            name = f"{item.index:06d}.flac"
            path = Path(out_dir) / "audio" / name
            info = _load_info(item.piece)
            if "error" in info or not info["parts"]:
                results.append((item.index, None, info.get("error", "no notes")))
                continue
            if item.soundfont not in renderers:
                renderers[item.soundfont] = Renderer(item.soundfont, sample_rate)
            try:
                x, tags, extra = render_item(item, info, renderers[item.soundfont], seconds)
            except Exception as exc:
                results.append((item.index, None, f"{type(exc).__name__}: {exc}"))
                continue
            tmp = path.with_suffix(".tmp.flac")
            sf.write(str(tmp), x, sample_rate, subtype="PCM_16")
            os.replace(tmp, path)
            results.append((item.index, {"path": name, "tags": tags, **extra}, None))
    finally:
        for r in renderers.values():
            r.close()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=2000, help="number of renderings [2000]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=12.0, help="excerpt length [12]")
    ap.add_argument("--sample-rate", type=int, default=22050)
    ap.add_argument("--soundfonts", default="train",
                    help="'train' (FluidR3 GM + TimGM6mb), 'heldout' (MuseScore General Lite + csound GM bank), "
                         "'fm' (OPL-3 FM), or comma-separated .sf2/.sf3 paths [train]")
    ap.add_argument("--pieces", choices=("main", "heldout", "all"), default="main",
                    help="piece pool: 'heldout' is a fixed ~15%% of the corpus never used by 'main' [main]")
    ap.add_argument("--versions", type=float, default=2.0, help="renderings per piece, on average [2]")
    ap.add_argument("--split", default=None, help="put every rendering in this split (e.g. test); "
                    "default: piece-level 75/10/15 train/valid/test")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chunk", type=int, default=40)
    ap.add_argument("--plan-only", action="store_true", help="write plan.json and stop")
    a = ap.parse_args(argv)
    try:
        sfs = resolve_soundfonts(a.soundfonts)
        check_requirements(sfs)
    except RequirementError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "audio").mkdir(exist_ok=True)
    cat = catalogue()
    plan = make_plan(cat, a.n, a.seed, sfs, a.pieces, a.versions, a.split)
    (a.out / "plan.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                 "items": [asdict(i) for i in plan]}, indent=0))
    print(f"plan: {len(plan)} renderings of {len({i.piece for i in plan})} pieces, "
          f"soundfonts {[Path(s).name for s in sfs]}", flush=True)
    if a.plan_only:
        return 0
    order = sorted(plan, key=lambda i: (i.soundfont, i.piece, i.index))
    chunks = [[asdict(i) for i in order[k:k + a.chunk]] for k in range(0, len(order), a.chunk)]
    jobs = [(c, str(a.out), a.seconds, a.sample_rate) for c in chunks]
    results = []
    if a.jobs > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(a.jobs) as pool:
            for k, r in enumerate(pool.imap_unordered(_render_chunk, jobs)):
                results += r
                print(f"  {k + 1}/{len(jobs)} chunks, {time.time() - t0:.0f} s", flush=True)
    else:
        for k, j in enumerate(jobs):
            results += _render_chunk(j)
            print(f"  {k + 1}/{len(jobs)} chunks, {time.time() - t0:.0f} s", flush=True)
    by_index = {i.index: i for i in plan}
    ok = sorted((r for r in results if r[1] is not None), key=lambda r: r[0])
    failed = [(r[0], r[2]) for r in results if r[1] is None]
    with open(a.out / "annotations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "tags", "artist", "split"])
        for idx, res, _ in ok:
            w.writerow([res["path"], ",".join(res["tags"]), by_index[idx].piece, by_index[idx].split])
    with open(a.out / "renders.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols = ["path", "tags", "group", "split", "style", "soundfont", "bpm", "tempo_class", "dynamics",
                "reverb", "drums", "mode", "tonic", "meter", "voices", "programs"]
        w.writerow(cols)
        for idx, res, _ in ok:
            it = by_index[idx]
            w.writerow([res["path"], ",".join(res["tags"]), it.piece, it.split, it.style,
                        Path(it.soundfont).name, f"{it.bpm:.1f}", it.tempo_class, it.dynamics, int(it.reverb),
                        int(it.drums), res["mode"], res["tonic"], res["meter"], res["voices"],
                        json.dumps(res["programs"])])
    (a.out / "tags.txt").write_text("\n".join(TAGS) + "\n")
    if failed:
        with open(a.out / "failures.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "piece", "error"])
            for idx, err in sorted(failed):
                w.writerow([idx, by_index[idx].piece, err])
    counts = {t: 0 for t in TAGS}
    for _, res, _ in ok:
        for t in res["tags"]:
            counts[t] += 1
    print(f"rendered {len(ok)} / {len(plan)} ({len(failed)} skipped) in {time.time() - t0:.0f} s")
    print("tag counts: " + ", ".join(f"{t} {c}" for t, c in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
