"""A model file cannot ask for unbounded resources: every config field is checked against its
allowed range, and the weights' header against the config, before any network is allocated."""

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mttag.weights.modelfile as modelfile
from mttag import ModelLoadError, load_model, save_model
from mttag.constants import DATA_DIR
from mttag.models import (
    ModelConfig,
    TransformerParams,
    build_model,
    make_config,
    place,
    preset_names,
    preset_params,
    presets,
)

TAGS = ["rock", "pop", "jazz"]
BUNDLED = DATA_DIR / "models"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(build_model(make_config("transformer", TAGS, "tiny")).eval(),
                      tmp_path_factory.mktemp("v") / "tiny")


def _with_config(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    config = json.loads((src / "config.json").read_text())
    config = edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _params(**kw):
    def edit(config):
        config["params"].update(kw)
        return config
    return edit


def _top(**kw):
    def edit(config):
        config.update(kw)
        return config
    return edit


@pytest.fixture
def no_build(monkeypatch):
    """Fail if a network gets built: bad configs must be refused before."""
    def refuse(config):
        raise AssertionError("a network was built from an invalid config")
    monkeypatch.setattr(modelfile, "build_model", refuse)


@pytest.mark.parametrize("edit,needle", [
    (_params(depth=1_000_000), "params.depth = 1000000"),
    (_params(dim=40_000), "params.dim = 40000"),
    (_params(dim=-64), "params.dim = -64"),
    (_params(heads=0), "params.heads = 0"),
    (_params(heads=True), "params.heads = True"),
    (_params(dim=64.5), "params.dim = 64.5"),
    (_params(dropout=float("nan")), "params.dropout = nan"),
    (_params(dim=66), "not divisible"),
    (_params(dimm=512), "unknown parameter 'dimm'"),
    (_top(params=[1, 2]), "params must be a JSON object"),
    (_top(sample_rate=0), "sample_rate = 0"),
    (_top(sample_rate=-22050), "sample_rate = -22050"),
    (_top(sample_rate="22050"), "sample_rate = '22050'"),
    (_top(crop_seconds=0), "crop_seconds = 0"),
    (_top(crop_seconds=1e9), "crop_seconds = 1000000000.0 is not allowed"),
    (_top(crop_seconds=float("inf")), "crop_seconds = inf"),
    (_top(crop_seconds=120.0), "longer than this transformer takes"),
    (_top(arch="lstm"), "arch = 'lstm'"),
    (_top(tags=[]), "tags must be a list of 1 to"),
    (_top(tags=["rock", "pop", "rock"]), "lists 'rock' more than once"),
    (_top(tags=["rock", "", "jazz"]), "tags[1]"),
    (_top(tags="rock,pop,jazz"), "tags must be a list"),
    (_top(weights="model.pt"), "unknown config key 'weights'"),
    (_top(format_version="1"), "format_version"),
    (_top(provenance=[]), "provenance must be a JSON object"),
    (lambda config: [config], "must be a JSON object, not list"),
    (lambda config: "transformer", "must be a JSON object, not str"),
])
def test_bad_config_refused_before_building(tiny_dir, tmp_path, no_build, edit, needle):
    d = _with_config(tiny_dir, tmp_path / "m", edit)
    with pytest.raises(ModelLoadError) as exc:
        load_model(d)
    message = str(exc.value)
    assert "\n" not in message and len(message) < 600
    assert message.startswith(str(d / "config.json")) and needle in message


def test_deeply_nested_config_is_one_line(tiny_dir, tmp_path):
    d = _with_config(tiny_dir, tmp_path / "m", lambda c: c)
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError, match="config.json: ") as exc:
        load_model(d)
    assert "\n" not in str(exc.value)

def _forbid_tensor_reads(monkeypatch, why: str) -> None:
    """``safe_open`` may read the header, never a tensor: the check must come from the header alone."""
    real = modelfile.safe_open

    class HeaderOnly:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def get_tensor(self, name):
            raise AssertionError(why)

    monkeypatch.setattr(modelfile, "safe_open", HeaderOnly)


def test_shape_mismatch_refused_before_reading_weights(tiny_dir, tmp_path, monkeypatch):
    """A config asking for another size than the weights hold is refused from the header alone."""
    d = _with_config(tiny_dir, tmp_path / "m", _params(dim=128, conv_channels=16))

    _forbid_tensor_reads(monkeypatch, "weights were read before the header was checked")
    with pytest.raises(ModelLoadError) as exc:
        load_model(d)
    assert "has shape" in str(exc.value) and "config expects" in str(exc.value) and "\n" not in str(exc.value)


def test_huge_header_shapes_refused(tiny_dir, tmp_path, monkeypatch):
    """A header announcing tensors far larger than the file is refused without allocating them."""
    d = _with_config(tiny_dir, tmp_path / "m", lambda c: c)
    header = json.dumps({"head.weight": {"dtype": "F32", "shape": [40000, 40000], "data_offsets": [0, 6_400_000_000]}})
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64)
    _forbid_tensor_reads(monkeypatch, "weights were read")
    with pytest.raises(ModelLoadError, match="corrupt or truncated.*file not fully covered"):
        load_model(d)


def test_trailing_bytes_and_inconsistent_sizes_refused(tiny_dir, tmp_path):
    d = _with_config(tiny_dir, tmp_path / "a", lambda c: c)
    with open(d / "model.safetensors", "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="corrupt or truncated.*file not fully covered"):
        load_model(d)
    # a tensor whose byte range does not match its shape
    d = _with_config(tiny_dir, tmp_path / "b", lambda c: c)
    data = (d / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = "head.weight"
    header[name]["shape"] = [header[name]["shape"][0] + 1] + header[name]["shape"][1:]
    text = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    with pytest.raises(ModelLoadError, match="corrupt or truncated.*invalid shape, data type, or offset for tensor"):
        load_model(d)


def test_weight_dtype_kind_checked(tiny_dir, tmp_path):
    d = _with_config(tiny_dir, tmp_path / "m", lambda c: c)
    state = load_file(d / "model.safetensors")
    state["head.weight"] = state["head.weight"].to(torch.int32)
    save_file(state, d / "model.safetensors")
    with pytest.raises(ModelLoadError, match="head.weight is stored as I32"):
        load_model(d)


def _load_old_way(directory: Path):
    """Allocate the network for real, then copy the weights in (the loader before meta builds)."""
    model = build_model(modelfile.load_config(directory))
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval()


@pytest.mark.parametrize("arch,preset,sr,n", [
    ("transformer", "tiny", 22050, 33075), ("resnet", "tiny", 22050, 81480), ("musicnn", "teacher", 16000, 47872),
])
def test_meta_build_loads_identically(tmp_path, arch, preset, sr, n):
    torch.manual_seed(1)
    config = make_config(arch, TAGS, preset)
    config.sample_rate = sr
    model = build_model(config)
    # non-trivial batch-norm statistics
    for name, buf in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buf.copy_(torch.rand_like(buf) + 0.5)
    save_model(model, tmp_path / "m")
    new = load_model(tmp_path / "m")
    old = place(_load_old_way(tmp_path / "m"), "cpu")  # placed as load_model places (channels-last)
    new_tensors = dict(new.named_buffers()) | dict(new.named_parameters())
    old_tensors = dict(old.named_buffers()) | dict(old.named_parameters())
    assert new_tensors.keys() == old_tensors.keys()
    for key, value in old_tensors.items():  # window and mel filterbank included (not in the file)
        assert not new_tensors[key].is_meta and new_tensors[key].dtype == value.dtype
        assert torch.equal(new_tensors[key], value), key
    assert all(p.requires_grad for p in new.parameters())
    x = torch.randn(2, n)
    with torch.no_grad():
        assert torch.equal(new(x), old(x))


@pytest.mark.parametrize("name", ["msd-musicnn", "mtt-musicnn"])
def test_bundled_configs_load_unchanged(name):
    raw = json.loads((BUNDLED / name / "config.json").read_text())
    config = ModelConfig.load(BUNDLED / name / "config.json")
    assert config.arch_params.to_dict() == raw["params"]  # every parameter known, nothing dropped
    assert config.to_dict() == raw
    model = load_model(BUNDLED / name)
    assert model.config.n_tags == 50


def test_real_models_within_bounds():
    """The bounds admit the paper's presets and the authors' released models."""
    for arch in ("transformer", "resnet", "musicnn"):
        for preset in preset_names(arch):
            make_config(arch, [f"t{i}" for i in range(50)], preset).validate()
    tags = [f"t{i}" for i in range(50)]
    with torch.device("meta"):
        # the authors' released teacher and compact student (attention_ndim 64, conv_ndim 128)
        for dim in (256, 64):
            model = build_model(ModelConfig("transformer", tags, dict(conv_channels=128, dim=dim, depth=4, heads=8,
                                                                      max_len=512, n_mels=128), crop_seconds=10.0))
            assert model.head.weight.shape == (50, dim)
        build_model(make_config("transformer", tags, "large", dim=1024))  # paper Table 5's widest
        build_model(make_config("musicnn", tags, "big"))


def test_make_config_refuses_unknown_and_out_of_range():
    with pytest.raises(ValueError, match="unknown parameter 'dimm' for transformer; known: conv_channels, dim"):
        make_config("transformer", TAGS, "tiny", dimm=512)
    with pytest.raises(ValueError, match=r"params.depth = 0 .*expected an integer from 1 to 48"):
        make_config("transformer", TAGS, "tiny", depth=0)
    with pytest.raises(ValueError, match="params.channels = 100000"):
        make_config("resnet", TAGS, "tiny", channels=100_000)
    with pytest.raises(ValueError, match="unknown preset 'huge' for transformer; known: teacher, small, large, tiny"):
        make_config("transformer", TAGS, "huge")
    assert make_config("transformer", TAGS, "tiny", depth=3).params["depth"] == 3


def test_presets_are_typed_instances():
    assert preset_names("transformer") == ("teacher", "small", "large", "tiny")
    assert preset_names("resnet") == ("teacher", "small", "tiny")
    assert preset_names("musicnn") == ("teacher", "msd", "mtt", "big")
    assert presets("transformer")["large"] == preset_params("transformer", "large")
    assert isinstance(preset_params("transformer", "small"), TransformerParams)
    assert preset_params("transformer", "small").dim == 64
    with pytest.raises(Exception):
        preset_params("transformer", "small").dim = 1  # frozen
    with pytest.raises(ValueError, match="unknown architecture"):
        preset_names("lstm")


def test_build_model_checks_hand_made_configs():
    with pytest.raises(ValueError, match="params.heads = 0"):
        build_model(ModelConfig("transformer", TAGS, {"heads": 0}))
    with pytest.raises(ValueError, match="sample_rate = 0"):
        build_model(ModelConfig("transformer", TAGS, {}, sample_rate=0))


def test_params_dict_stays_compatible():
    """``config.params`` is still the plain dict config.json stores; old partial dicts take defaults."""
    config = ModelConfig.from_dict({"arch": "transformer", "tags": TAGS, "params": {"dim": 32, "heads": 4}})
    assert config.params == {"dim": 32, "heads": 4}
    assert config.arch_params.dim == 32 and config.arch_params.depth == 4
    assert ModelConfig.from_dict({**config.to_dict(), "files": ["labels.txt"]}).tags == TAGS


def test_params_are_typed_once_and_again_after_a_change(monkeypatch):
    """Reading a config types its params; building the network and checking the config again
    reuse them, and a change to ``params`` (in place or by assignment) is seen."""
    calls = []
    real = TransformerParams.from_dict.__func__

    def counted(cls, data):
        calls.append(1)
        return real(cls, data)

    monkeypatch.setattr(TransformerParams, "from_dict", classmethod(counted))
    config = ModelConfig.from_dict(make_config("transformer", TAGS, "tiny").to_dict())
    with torch.device("meta"):
        build_model(config)
    config.validate()
    assert config.arch_params.depth == 2 and len(calls) == 1
    config.params["depth"] = 3
    assert config.arch_params.depth == 3 and len(calls) == 2
    config.params = {"dim": 32, "heads": 4}
    assert config.arch_params.dim == 32 and len(calls) == 3
    config.params["heads"] = 5
    with pytest.raises(ValueError, match="not divisible"):
        config.validate()
