import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mttag import ModelLoadError, load_model, save_model
from mttag.models import build_model, make_config, place

TAGS = ["rock", "pop", "jazz"]


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(make_config("transformer", TAGS, "tiny"))


def test_round_trip(tmp_path):
    model = _model().eval()
    save_model(model, tmp_path / "m", metrics={"roc_auc": 0.9})
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = load_model(tmp_path / "m")
    state = loaded.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 22050)
    with torch.no_grad():
        # loading places the network as mttag runs it (channels-last on the CPU): same network
        assert torch.equal(place(model, "cpu")(x), loaded(x))
    assert loaded.config.tags == TAGS
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mttag") and "music-tagging" in card and "0.9000" in card


def test_buffers_not_stored(tmp_path):
    save_model(_model(), tmp_path / "m")
    keys = load_file(tmp_path / "m" / "model.safetensors").keys()
    assert not any(k.startswith("spec.") for k in keys)


def test_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_model(tmp_path / "missing")
    d = tmp_path / "m"
    save_model(_model(), d)
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(d)


def test_tag_count_mismatch(tmp_path):
    d = tmp_path / "m"
    save_model(_model(), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["tags"] = cfg["tags"] + ["extra"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="lists 4 tags but the weights have 3 outputs"):
        load_model(d)


def test_newer_format_refused(tmp_path):
    d = tmp_path / "m"
    save_model(_model(), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="newer than this mttag"):
        load_model(d)


def test_wrong_architecture_weights(tmp_path):
    d = tmp_path / "m"
    save_model(_model(), d)
    save_file({"foo": torch.zeros(1)}, d / "model.safetensors")
    with pytest.raises(ModelLoadError, match="do not match"):
        load_model(d)


def test_saved_files_follow_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        save_model(_model(), tmp_path / "m")
    finally:
        os.umask(old)
    for f in (tmp_path / "m").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", ["run: v2", "#1 model", "yes", "null", "- dash", "ünï \"quoted\""])
def test_model_card_metadata_reads_back_exactly(tmp_path, name):
    import yaml

    from mttag.models import build_model, make_config
    from mttag.weights.modelfile import save_model

    model = build_model(make_config("transformer", ["a", "b"], "tiny"))
    model.config.provenance.update(name=name, datasets=[name], dataset_name=name)
    save_model(model, tmp_path / "m", metrics={"roc_auc": 0.9})
    text = (tmp_path / "m" / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---")[1])
    entry = meta["model-index"][0]
    assert entry["name"] == name and meta["datasets"] == [name]
    assert entry["results"][0]["dataset"]["name"] == name
    assert entry["results"][0]["metrics"][0] == {"type": "roc_auc", "value": 0.9}
