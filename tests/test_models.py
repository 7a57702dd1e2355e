import pytest
import torch

from mttag.models import build_model, count_parameters, make_config

TAGS = [f"t{i}" for i in range(50)]


@pytest.mark.parametrize(
    "arch,preset,expected",
    [("transformer", "teacher", 4.6e6), ("transformer", "small", 0.5e6), ("resnet", "teacher", 12.1e6)],
)
def test_parameter_counts(arch, preset, expected):
    n = count_parameters(build_model(make_config(arch, TAGS, preset)))
    assert abs(n - expected) / expected < 0.05


def test_tiny_presets_are_tiny():
    for arch in ("transformer", "resnet"):
        assert count_parameters(build_model(make_config(arch, TAGS, "tiny"))) < 300_000


def test_transformer_any_length_up_to_limit():
    torch.manual_seed(0)
    model = build_model(make_config("transformer", TAGS, "tiny")).eval()
    with torch.no_grad():
        for n in (22050, 220500, model.max_samples):
            assert model(torch.randn(2, n)).shape == (2, 50)
        with pytest.raises(ValueError, match="at most 512"):
            model(torch.randn(1, model.max_samples + 2048))


def test_transformer_batch_items_independent_in_eval():
    torch.manual_seed(0)
    model = build_model(make_config("transformer", TAGS, "tiny")).eval()
    x = torch.randn(3, 44100)
    with torch.no_grad():
        assert torch.allclose(model(x)[1], model(x[1:2])[0], atol=1e-5)


def test_resnet_chunk():
    torch.manual_seed(0)
    config = make_config("resnet", TAGS, "tiny")
    assert config.crop_samples == 81480
    model = build_model(config).eval()
    with torch.no_grad():
        assert model(torch.randn(4, config.crop_samples)).shape == (4, 50)


def test_gradients_flow():
    config = make_config("transformer", TAGS[:5], "tiny")
    model = build_model(config)
    loss = model(torch.randn(2, 22050)).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_preset_and_arch():
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("transformer", TAGS, "huge")
    with pytest.raises(ValueError, match="unknown architecture"):
        make_config("lstm", TAGS)
