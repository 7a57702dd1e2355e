import copy

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
            x = torch.randn(2, n)
            y = model(x)
            assert y.shape == (2, 50)
            # the whole input is read, up to its last half second (not a fixed-length prefix)
            x[:, -11025:] = torch.randn(2, 11025)
            assert (model(x) - y).abs().max() > 1e-4
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
    x = torch.randn(4, config.crop_samples)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (4, 50)
        # in eval each crop is scored on its own (BatchNorm uses its running statistics)
        torch.testing.assert_close(y[2], model(x[2:3])[0], atol=1e-5, rtol=1e-4)
        assert (y[0] - y[1]).abs().max() > 1e-6


def test_gradients_flow():
    config = make_config("transformer", TAGS[:5], "tiny")
    model = build_model(config)
    loss = model(torch.randn(2, 22050)).sum()
    loss.backward()
    # every parameter takes part: none detached, unused or cut off behind the classifier
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_unknown_preset_and_arch():
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("transformer", TAGS, "huge")
    with pytest.raises(ValueError, match="unknown architecture"):
        make_config("lstm", TAGS)


@pytest.mark.parametrize("arch", ["transformer", "resnet"])
def test_place_on_cpu_uses_channels_last_and_changes_nothing_else(arch, tmp_path):
    from mttag import load_model, save_model
    from mttag.models import place

    torch.manual_seed(0)
    plain = build_model(make_config(arch, ["a", "b", "c"], "tiny", 3.69)).eval()
    placed = place(copy.deepcopy(plain), "cpu")
    convs = [m.weight for m in placed.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    x = torch.randn(3, int(3.69 * 22050)) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(placed(x), plain(x), rtol=1e-5, atol=1e-5)
    # a placed network trains and saves like any other: contiguous weights in the file, equal values
    save_model(placed, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    state = loaded.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())


def test_place_leaves_musicnn_layout_alone():
    from mttag.models import place

    model = place(build_model(make_config("musicnn", ["a", "b"], "msd")), "cpu")
    assert all(p.is_contiguous() for p in model.parameters())


def test_precision_follows_what_the_model_declares_not_its_name():
    """auto picks bf16 on CUDA for a model that declares ``bf16_on_cuda``, whatever its
    architecture is called, and float32 for one that does not; training autocasts on CUDA only."""
    from types import SimpleNamespace

    from mttag.device import resolve_precision
    from mttag.models.resnet import ShortChunkResNet
    from mttag.models.transformer import MusicTaggingTransformer

    class Declares:
        bf16_on_cuda = True
        config = SimpleNamespace(arch="musicnn")

    class Silent:
        config = SimpleNamespace(arch="transformer")

    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    assert resolve_precision("auto", cuda, Declares()) == "bf16"
    assert resolve_precision("auto", cuda, Silent()) == "fp32"
    assert resolve_precision("auto", mps, Declares()) == "fp32"
    assert MusicTaggingTransformer.bf16_on_cuda and ShortChunkResNet.bf16_on_cuda
    assert resolve_precision("auto", cuda, None, training=True) == "bf16"
    assert resolve_precision("auto", cpu, None, training=True) == "fp32"  # conftest: no native bf16
    assert resolve_precision("bf16", cpu, None, training=True) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", cuda, Declares())


def test_teacher_takes_whole_inputs_as_long_as_it_declares():
    """A teacher with ``max_samples`` sees a crop longer than its window whole, whatever its
    architecture; without it, the crop is cut into windows of the teacher's crop length."""
    from mttag.training.loop import teacher_probabilities

    config = make_config("resnet", ["a", "b"], "tiny")

    class Teacher(torch.nn.Module):
        def __init__(self, max_samples=None):
            super().__init__()
            self.config, self.seen = config, []
            if max_samples is not None:
                self.max_samples = max_samples

        def forward(self, x):
            self.seen.append(tuple(x.shape))
            return torch.zeros(x.shape[0], 2)

    n = config.crop_samples * 3
    whole, windowed = Teacher(max_samples=10 * n), Teacher()
    for teacher in (whole, windowed):
        probs = teacher_probabilities(teacher, torch.zeros(2, n), config.sample_rate)
        assert probs.shape == (2, 2)
    assert whole.seen == [(2, n)]
    assert windowed.seen == [(6, config.crop_samples)]

