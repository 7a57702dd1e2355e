"""Calibrated confidence and the per-tag fields of results (issue 35)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mttag
from mttag.inference import calibration
from mttag.inference.tagging import Tagger, score_tags, select_scores


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def _write_table(tmp_path, model="m", revision="abc", tags=None):
    path = tmp_path / f"calibration-{model}-{revision}.json"  # tables are cached by path
    path.write_text(json.dumps({"models": {model: {"revision": revision, "tags": tags or {}}}}))
    return path


def test_fit_and_confidence_are_the_percentile_in_the_reference():
    rng = np.random.default_rng(0)
    # two tags on very different scales: "rock" always high, "harp" always low
    logits = np.stack([rng.normal(1.5, 0.5, 400), rng.normal(-4.0, 1.0, 400)], axis=1)
    table_data = calibration.fit(["rock", "harp"], _sigmoid(logits))
    mu_rock, sd_rock = table_data["rock"]
    assert mu_rock == pytest.approx(1.5, abs=0.1) and sd_rock == pytest.approx(0.5, abs=0.05)
    t = calibration.Table("m", "r", {k: tuple(v) for k, v in table_data.items()}, {})
    # the same place in each tag's own distribution gives the same confidence
    assert t.confidence("rock", _sigmoid(mu_rock)) == pytest.approx(0.5)
    z = 1.6448536  # 95th percentile of a normal
    hi_rock = t.confidence("rock", _sigmoid(mu_rock + z * sd_rock))
    hi_harp = t.confidence("harp", _sigmoid(table_data["harp"][0] + z * table_data["harp"][1]))
    assert hi_rock == pytest.approx(0.95, abs=1e-4) and hi_harp == pytest.approx(0.95, abs=1e-4)
    # a raw 0.5 is ordinary for rock but exceptional for harp
    assert t.confidence("rock", 0.5) < 0.01 < 0.99 < t.confidence("harp", 0.5)
    # empirical check: about 5 % of the reference lies above 0.95
    conf = t.confidences(["rock", "harp"], _sigmoid(logits[0]))
    assert np.all((conf >= 0) & (conf <= 1))
    above = np.mean([t.confidence("rock", p) >= 0.95 for p in _sigmoid(logits[:, 0])])
    assert 0.02 < above < 0.09
    assert t.confidence("unknown", 0.5) is None
    # saturated probabilities stay finite
    assert 0.0 <= t.confidence("rock", 1.0) <= 1.0 and 0.0 <= t.confidence("rock", 0.0) <= 1.0


def test_tables_are_keyed_by_model_and_revision(tmp_path, tiny_model, monkeypatch):
    path = _write_table(tmp_path, tags={"rock": [0.0, 1.0]})
    assert calibration.table("m", "abc", path).confidence("rock", 0.5) == pytest.approx(0.5)
    assert calibration.table("m", "other", path) is None  # other weights: no confidence
    assert calibration.table("nope", None, path) is None
    # a loaded model finds its table by provenance name and the hash of its weights
    name = "tiny-test"
    monkeypatch.setitem(tiny_model.config.provenance, "name", name)
    path = _write_table(tmp_path, name, calibration.revision_of(tiny_model), {"rock": [0.0, 1.0]})
    assert calibration.table_for(tiny_model, path) is not None
    path = _write_table(tmp_path, name, "0" * 12, {"rock": [0.0, 1.0]})
    assert calibration.table_for(tiny_model, path) is None


@pytest.mark.parametrize("name", ["musicnn", "msd-musicnn", "mtt-musicnn"])
def test_bundled_models_have_tables_for_every_output(name):
    model = mttag.load_model(name)
    table = calibration.table_for(model)
    assert table is not None and table.revision == calibration.revision_of(model)
    assert set(table.tags) == set(model.config.tags)
    assert all(sigma > 0 for _, sigma in table.tags.values())
    assert calibration.confidence(name, model.config.tags[0], 0.5) is not None


def test_score_tags_merges_spellings_and_orders_by_confidence():
    names = ["msd:rock", "msd:female vocalists", "msd:female vocalist", "mtt:woman", "mtt:harp"]
    probs = np.array([0.6, 0.2, 0.1, 0.3, 0.2])
    table = calibration.Table("m", "r", {"msd:rock": (1.0, 0.5), "msd:female vocalists": (-2.0, 1.0),
                                         "msd:female vocalist": (-3.0, 1.0), "mtt:woman": (-1.0, 1.0),
                                         "mtt:harp": (-4.0, 0.5)}, {})
    scores = score_tags(probs, names, table)
    assert [s.tag for s in scores] == ["harp", "female vocals", "rock"]
    voc = scores[1]
    # of the three spellings, the one most confident relative to its own reference
    assert voc.name == "msd:female vocalist" and voc.kind == "voice" and voc.probability == pytest.approx(0.1)
    assert [s.confidence for s in scores] == sorted([s.confidence for s in scores], reverse=True)
    # without a table: merged, ordered by raw probability, no confidence
    plain = score_tags(probs, names, None)
    assert [(s.tag, s.confidence) for s in plain] == [("rock", None), ("female vocals", None), ("harp", None)]
    assert plain[1].name == "mtt:woman"
    assert [s.tag for s in select_scores(scores, None, None, 0.5)] == [s.tag for s in scores if s.confidence >= 0.5]
    # threshold on the raw probability (female vocals' 0.1 is below it), then the top
    assert [s.tag for s in select_scores(scores, None, 0.15, None)] == ["harp", "rock"]
    assert [s.tag for s in select_scores(scores, 1, 0.15, None)] == ["harp"]


def test_tagger_results_use_one_spelling_kind_and_confidence(make_audio, tmp_path):
    files = [make_audio(tmp_path / f"t{i}.wav", seconds=4.0, kind="music", seed=i) for i in range(2)]
    net = mttag.load_model("msd-musicnn")
    tagger = Tagger(net, "cpu", windows=2, precision="fp32")
    results = list(tagger.tag_files(files, top=None))
    for r in results:
        shown = [t for t, _ in r.tags]
        assert "Progressive rock" not in shown and "progressive rock" in shown
        assert "female vocals" in shown and not {"female vocalist", "female vocalists"} & set(shown)
        assert len(shown) == len(set(shown)) == 47
        assert [s.tag for s in r.scores] == shown
        assert [s.probability for s in r.scores] == [p for _, p in r.tags]
        conf = [s.confidence for s in r.scores]
        assert all(c is not None for c in conf) and conf == sorted(conf, reverse=True)
        assert {s.kind for s in r.scores} >= {"genre", "mood", "voice", "era"}
        # the model's own names and raw probabilities stay available
        assert r.tag_names == list(net.config.tags)
        i = r.tag_names.index("Progressive rock")
        assert next(s for s in r.scores if s.tag == "progressive rock").probability == pytest.approx(r.probabilities[i])
    confident = list(tagger.tag_files(files, top=None, min_confidence=0.9))
    for r, c in zip(results, confident):
        assert [s.tag for s in c.scores] == [s.tag for s in r.scores if s.confidence >= 0.9]


def test_min_confidence_needs_a_calibrated_model(tiny_model, make_audio, tmp_path):
    f = make_audio(tmp_path / "a.wav", seconds=2.0)
    tagger = Tagger(tiny_model, "cpu", windows=1)
    assert tagger.calibration is None
    r = next(tagger.tag_files([f], top=3))
    assert r.scores is not None and all(s.confidence is None for s in r.scores)
    with pytest.raises(ValueError, match="no calibration"):
        next(tagger.tag_files([f], top=3, min_confidence=0.9))
