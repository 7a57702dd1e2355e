"""The combined default model: several musicnn networks on one front end (issue 35)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mttag
from mttag.models import build_model, make_config
from mttag.models.musicnn import MusicnnMulti, split_sources
from mttag.weights import registry
from mttag.weights.modelfile import load_local_model, save_model

SMALL = dict(frontend_filters=0.25, midend_filters=8, backend_units=16)


def _net(tags: list[str], seed: int, **overrides):
    torch.manual_seed(seed)
    net = build_model(make_config("musicnn", tags, "teacher", **{**SMALL, **overrides}))
    with torch.no_grad():  # trained-looking batch-norm statistics, different per network
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _waves(n: int = 2, seconds: float = 2.992) -> torch.Tensor:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    return torch.from_numpy(np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.02 * rng.standard_normal(t.size)
                                      for i in range(n)]).astype(np.float32))


@torch.inference_mode()
def test_combined_outputs_are_each_networks_own():
    a, b = _net(["rock", "pop", "jazz"], 0), _net(["violin", "rock"], 1)
    multi = MusicnnMulti.combine({"msd": a, "mtt": b})
    assert multi.config.tags == ["msd:rock", "msd:pop", "msd:jazz", "mtt:violin", "mtt:rock"]
    x = _waves()
    logits, emb = multi.forward_with_embedding(x)
    la, ea = a.forward_with_embedding(x)
    lb, eb = b.forward_with_embedding(x)
    torch.testing.assert_close(logits, torch.cat([la, lb], 1), rtol=0, atol=0)
    torch.testing.assert_close(emb, torch.cat([ea, eb], 1), rtol=0, atol=0)
    # one front end: the networks keep none of their own
    assert not any(hasattr(net, "frontend") for net in multi.nets.values())


@torch.inference_mode()
def test_combined_model_saves_and_loads(tmp_path):
    multi = MusicnnMulti.combine({"msd": _net(["rock", "pop"], 0), "mtt": _net(["violin"], 1)}, {"name": "pair"})
    save_model(multi, tmp_path / "pair")
    loaded = load_local_model(tmp_path / "pair")
    assert type(loaded) is MusicnnMulti and loaded.config.arch == "musicnn-multi"
    x = _waves(1)
    torch.testing.assert_close(loaded(x), multi(x), rtol=0, atol=0)


def test_tags_must_name_contiguous_sources():
    assert split_sources(["a:x", "a:y", "b:x"]) == [("a", ["x", "y"]), ("b", ["x"])]
    with pytest.raises(ValueError, match="source:name"):
        split_sources(["a:x", "y"])
    with pytest.raises(ValueError, match="contiguous"):
        split_sources(["a:x", "b:y", "a:z"])
    with pytest.raises(ValueError, match="differ"):
        MusicnnMulti.combine({"a": _net(["x"], 0), "b": _net(["y"], 1, backend_units=8)})


def test_musicnn_is_registered_bundled_and_the_default():
    entry = registry.get_entry("musicnn")
    assert entry is not None and entry["arch"] == "musicnn-multi"
    assert registry.is_complete(registry.bundled_dir(entry))
    assert registry.default_model_name() == "musicnn"


@torch.inference_mode()
def test_bundled_musicnn_equals_msd_and_mtt_musicnn():
    multi = mttag.load_model("musicnn")
    msd, mtt = mttag.load_model("msd-musicnn"), mttag.load_model("mtt-musicnn")
    assert multi.config.tags == [f"msd:{t}" for t in msd.config.tags] + [f"mtt:{t}" for t in mtt.config.tags]
    assert (multi.config.sample_rate, multi.config.crop_seconds) == (msd.config.sample_rate, msd.config.crop_seconds)
    x = _waves(2)
    torch.testing.assert_close(multi(x), torch.cat([msd(x), mtt(x)], 1), rtol=0, atol=0)


def test_window_plan_defaults_to_the_models_own(tiny_model):
    from mttag.constants import DEFAULT_WINDOWS
    from mttag.inference.tagging import Tagger, default_windows

    multi = mttag.load_model("musicnn")
    # two networks per window: 12 windows cost what msd-musicnn's 20 do
    assert default_windows(multi) == 12 and Tagger(multi, "cpu").windows == 12
    assert default_windows(mttag.load_model("msd-musicnn")) == DEFAULT_WINDOWS
    assert default_windows(tiny_model) == DEFAULT_WINDOWS
    assert Tagger(multi, "cpu", windows=20).windows == 20 and Tagger(multi, "cpu", windows=None).windows is None
