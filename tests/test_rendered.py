"""The rendered benchmark's generator (benchmarks/rendered/render.py): its pure
parts always; a short synthesis when FluidSynth and a SoundFont are installed."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def R():
    spec = importlib.util.spec_from_file_location("mttag_bench_render", ROOT / "benchmarks" / "rendered" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


FAKE_CATALOGUE = {
    "chorale": [f"bach/bwv{i}.1.mxl" for i in range(40)],
    "renaissance": [f"palestrina/Agnus_{i:02d}.krn" for i in range(40)],
    "medieval": [f"trecento/piece{i}.xml" for i in range(20)],
    "quartet": [f"haydn/op{i}/movement1.mxl" for i in range(10)],
    "folk": [f"essenFolksong/han1.abc#{i}" for i in range(200)],
    "irish": [f"ryansMammoth/tune{i}.abc" for i in range(100)],
}


def test_vocabulary_is_about_thirty_distinct_tags(R):
    assert len(R.TAGS) == len(set(R.TAGS))
    assert 28 <= len(R.TAGS) <= 36


def test_plan_is_a_pure_function_of_the_seed(R):
    a = R.make_plan(FAKE_CATALOGUE, 120, 3, ["a.sf2", "b.sf2"])
    b = R.make_plan(FAKE_CATALOGUE, 120, 3, ["a.sf2", "b.sf2"])
    c = R.make_plan(FAKE_CATALOGUE, 120, 4, ["a.sf2", "b.sf2"])
    assert len(a) == 120
    assert [asdict(i) for i in a] == [asdict(i) for i in b]
    assert [asdict(i) for i in a] != [asdict(i) for i in c]
    assert {i.style for i in a} == set(R.STYLES)
    assert {i.soundfont for i in a} == {"a.sf2", "b.sf2"}


def test_splits_are_piece_level_and_pools_disjoint(R):
    plan = R.make_plan(FAKE_CATALOGUE, 300, 0, ["a.sf2"])
    by_piece = {}
    for it in plan:
        by_piece.setdefault(it.piece, set()).add(it.split)
    assert all(len(s) == 1 for s in by_piece.values())
    assert any(len([i for i in plan if i.piece == p]) > 1 for p in by_piece)  # several versions per piece
    assert all(R.piece_pool(i.piece) == "main" for i in plan)
    held = R.make_plan(FAKE_CATALOGUE, 50, 0, ["a.sf2"], pieces="heldout", all_split="test")
    assert held and all(R.piece_pool(i.piece) == "heldout" and i.split == "test" for i in held)
    assert not {i.piece for i in held} & set(by_piece)


def test_meter_and_key(R):
    assert R.meter_class(4, 4) == "duple" and R.meter_class(2, 2) == "duple" and R.meter_class(4, 2) == "duple"
    assert R.meter_class(3, 4) == "triple" and R.meter_class(3, 2) == "triple"
    assert R.meter_class(6, 8) == "compound" and R.meter_class(9, 8) == "compound" and R.meter_class(12, 8) == "compound"
    c_major = np.zeros(12)
    c_major[[0, 2, 4, 5, 7, 9, 11]] = [4, 1, 3, 1, 3, 1, 1]
    assert R.estimate_key(c_major) == (0, "major")
    a_minor = np.zeros(12)
    a_minor[[9, 11, 0, 2, 4, 5, 8]] = [4, 1, 3, 1, 3, 1, 1]
    assert R.estimate_key(a_minor) == (9, "minor")


def test_tags_and_instruments(R):
    plan = R.make_plan(FAKE_CATALOGUE, 60, 1, ["a.sf2"])
    tune = next(i for i in plan if i.style == "folk" and not i.accomp_family and not i.drums)
    assert R.programs_for_parts(tune, 1) == [(tune.solo_family, tune.solo_program)]
    tags = R.derive_tags(tune, {tune.solo_family}, "minor", "compound", 1)
    assert "solo" in tags and "folk" in tags and "minor" in tags and "compound" in tags
    assert tune.tempo_class in tags and tune.dynamics in tags
    assert ("reverb" in tags) == tune.reverb
    assert all(t in R.TAGS for t in tags)
    quartet = next(i for i in plan if i.style == "quartet")
    progs = R.programs_for_parts(quartet, 4)
    assert len(progs) == 4 and all(0 <= p < 128 for _, p in progs)
    tags = R.derive_tags(quartet, {f for f, _ in progs}, "major", "duple", 4)
    assert "ensemble" in tags and "solo" not in tags


def test_excerpt_repeats_short_tunes(R):
    tune = [[(0.0, 1.0, 60), (1.0, 1.0, 62), (2.0, 2.0, 64)]]  # one 4/4 bar
    ex = R.excerpt_notes(tune, 4.0, 4.0, 0.5, 10.0)
    assert [o for o, _, _ in ex[0]] == [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0]
    assert all(o + d <= 10.0 + 1e-9 for o, d, _ in ex[0])
    long = [[(float(t), 1.0, 60 + t % 12) for t in range(64)]]
    ex = R.excerpt_notes(long, 64.0, 4.0, 0.99, 8.0)
    assert ex[0][0][0] == 0.0 and len(ex[0]) == 8 and ex[0][0][2] == 60 + 52 % 12  # starts on a bar line (52 = floor(0.99 * 56 / 4) * 4)


def test_synthesis(R):
    pytest.importorskip("fluidsynth")
    try:
        sfs = R.resolve_soundfonts("train")
    except R.RequirementError:
        pytest.skip("General MIDI SoundFonts not installed")
    sf = min(sfs, key=lambda p: Path(p).stat().st_size)
    info = {"parts": [[(float(t), 1.0, 72 + (t % 5)) for t in range(8)], [(0.0, 4.0, 48), (4.0, 4.0, 43)]],
            "num": 4, "den": 4, "beat_ql": 1.0, "bar_ql": 4.0, "length": 8.0}
    plan = R.make_plan(FAKE_CATALOGUE, 60, 2, [sf])
    item = next(i for i in plan if i.style == "chorale")
    item.drums, item.bpm = True, 120.0
    other = next(i for i in plan if i.style == "renaissance")
    outs = []
    for _ in range(2):  # a fresh synthesizer per chunk: the same chunk gives the same audio
        r = R.Renderer(sf, 22050)
        try:
            outs.append([R.render_item(it, info, r, 2.0) for it in (item, other)])
        finally:
            r.close()
    (x, tags, extra), (x2, _, _) = outs[0]
    assert x.shape == (44100,) and x.dtype == np.float32
    assert 1e-3 < np.abs(x).max() <= 0.98 + 1e-6
    assert "drums" in tags and "ensemble" in tags and extra["meter"] == "duple"
    assert np.array_equal(x, outs[1][0][0]) and np.array_equal(x2, outs[1][1][0])
