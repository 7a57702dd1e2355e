"""The musicnn port: bundled models, and agreement with TensorFlow outputs saved by
``benchmarks/musicnn_fidelity.py --reference`` (no TensorFlow needed here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

import mttag
from mttag.models import build_model, count_parameters, make_config
from mttag.models.musicnn import PATCH_FRAMES, Musicnn, compress
from mttag.weights.modelfile import load_local_model

DATA = Path(__file__).parent / "data" / "musicnn_reference.npz"
BUNDLED = Path(mttag.__file__).parent / "data" / "models"
MODELS = ["msd-musicnn", "mtt-musicnn"]
WINDOW = 47872  # 187 hops of 256 samples at 16 kHz


@pytest.fixture(scope="module")
def ref():
    with np.load(DATA) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def models():
    return {key: load_local_model(BUNDLED / key) for key in MODELS}


def _audio(ref) -> np.ndarray:
    return ref["audio_int16"].astype(np.float32) / 32767


def _windows(audio: np.ndarray) -> torch.Tensor:
    k = len(audio) // WINDOW
    return torch.from_numpy(np.stack([audio[i * WINDOW:(i + 1) * WINDOW] for i in range(k)]))


@pytest.mark.parametrize("key", MODELS)
def test_bundled_model_directory(key, models):
    directory = BUNDLED / key
    for name in ("config.json", "model.safetensors", "README.md", "LICENSE"):
        assert (directory / name).is_file()
    assert (directory / "model.safetensors").stat().st_size < 5_000_000
    model = models[key]
    assert isinstance(model, Musicnn) and not model.training
    cfg = model.config
    assert cfg.arch == "musicnn" and cfg.sample_rate == 16000 and cfg.n_tags == 50
    assert cfg.crop_samples == WINDOW and model.frontend.n_frames(cfg.crop_samples) == PATCH_FRAMES
    assert cfg.provenance["license"] == "isc" and "musicnn 0.1.0" in cfg.provenance["source"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in model.state_dict().values())
    first = {"msd-musicnn": ["rock", "pop", "alternative"], "mtt-musicnn": ["guitar", "classical", "slow"]}[key]
    assert cfg.tags[:3] == first
    card = (directory / "README.md").read_text(encoding="utf-8")
    assert "license: isc" in card and "float32" in card and "numpy 2" in card and "pons2019musicnn" in card
    metrics = json.loads((directory / "config.json").read_text())["provenance"]["published_metrics"]
    assert metrics["roc_auc"] == pytest.approx(0.8802 if key == "msd-musicnn" else 0.9067, abs=1e-4)


@pytest.mark.parametrize("key", MODELS)
def test_patch_outputs_match_tensorflow(key, models, ref):
    """Same log-mel input (computed by musicnn's own code) → same outputs as the TF graph."""
    name = key.split("-")[0]
    model = models[key]
    patches = torch.from_numpy(ref["logmel_patches"])
    with torch.inference_mode():
        feats = model.embeddings(patches)
        logits = model.head(feats["penultimate"])
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), ref[f"{name}_prob"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(logits.numpy(), ref[f"{name}_logits"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(feats["penultimate"].numpy(), ref[f"{name}_penultimate"], rtol=0, atol=2e-4)


def test_front_end_matches_musicnn_logmel(models, ref):
    """Waveform windows → musicnn's log-mel patches (librosa + float16 + log10(10000x+1))."""
    model = models["msd-musicnn"]
    with torch.inference_mode():
        logmel = model.logmel(_windows(_audio(ref))).numpy()
    expected = ref["logmel_patches"]
    assert logmel.shape == expected.shape == (2, PATCH_FRAMES, 96)
    # window 0 starts where the track starts: every frame is musicnn's (zero padded on the left
    # as librosa >= 0.10 pads); later windows lack the audio before their first frame
    np.testing.assert_allclose(logmel[0], expected[0], rtol=0, atol=2e-3)
    np.testing.assert_allclose(logmel[1, 1:], expected[1, 1:], rtol=0, atol=2e-3)


@pytest.mark.parametrize("key", MODELS)
def test_waveform_to_tags_matches_tensorflow(key, models, ref):
    name = key.split("-")[0]
    model = models[key]
    with torch.inference_mode():
        prob = torch.sigmoid(model(_windows(_audio(ref)))).numpy()
    expected = ref[f"{name}_prob"]
    assert prob.shape == expected.shape == (2, 50)
    np.testing.assert_allclose(prob[0], expected[0], rtol=0, atol=2e-3)
    top5 = lambda p: set(np.argsort(-p)[:5].tolist())  # noqa: E731
    assert top5(prob[0]) == top5(expected[0])
    assert np.abs(prob.mean(0) - ref[f"{name}_track_prob"]).max() < 0.05


def test_eval_shortcut_equals_plain_relu_bn_max(models, ref):
    """Eval mode pools over frequency before ReLU/batch norm; it must equal the plain order."""
    model = models["mtt-musicnn"]
    patches = torch.from_numpy(ref["logmel_patches"][:1])
    blocks = list(model.timbral) + list(model.temporal)
    with torch.inference_mode():
        fast = [b(model.input_bn(patches.unsqueeze(1))) for b in blocks]
        try:
            for b in blocks:
                b.training = True  # the plain path (the batch norms themselves stay in eval mode)
            plain = [b(model.input_bn(patches.unsqueeze(1))) for b in blocks]
        finally:
            for b in blocks:
                b.training = False
    for f, p in zip(fast, plain):
        # the two orders differ only by float rounding (a few ulp, depending on the CPU's kernels);
        # a wrong order (pooling a ReLU'd map vs. not) differs by ~0.1
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_samples,frames", [(WINDOW, 187), (48000, 187), (8000, 31), (3 * WINDOW, 561), (100, 1)])
def test_any_length(models, n_samples, frames):
    model = models["msd-musicnn"]
    x = torch.randn(2, n_samples) * 0.1
    with torch.inference_mode():
        assert model.logmel(x).shape == (2, frames, 96)
        logits = model(x)
    assert logits.shape == (2, 50) and torch.isfinite(logits).all()


def test_compress_is_float32_after_float16_rounding():
    mel = torch.tensor([0.0, 1e-3, 6.6, 100.0, 5000.0])
    out = compress(mel)
    rounded = mel.half().double()
    np.testing.assert_allclose(out.double().numpy(), torch.log10(10000 * rounded + 1).numpy(), rtol=1e-6)
    assert torch.isfinite(out).all()  # numpy 2's float16 arithmetic would give inf from 6.6 up
    assert torch.isfinite(compress(torch.tensor([1e9]))).all()


def test_presets_and_parameter_count():
    tags = [f"t{i}" for i in range(50)]
    model = build_model(make_config("musicnn", tags))
    assert count_parameters(model) == 787_159
    assert next(reversed(model.state_dict())) == "head.bias"
    big = build_model(make_config("musicnn", tags, "big"))
    assert big.dense.out_features == 500 and big.midend[0].conv.out_channels == 512


def test_tagger_runs_bundled_model(models, ref, tmp_path):
    from mttag.inference.tagging import Tagger

    path = tmp_path / "clip.wav"
    sf.write(path, ref["audio_int16"], 16000, subtype="PCM_16")
    result = next(Tagger(models["mtt-musicnn"], device="cpu", windows=None).tag_files([path], top=5))
    assert result.ok and len(result.tags) == 5
    assert result.duration == pytest.approx(len(ref["audio_int16"]) / 16000)


def test_precision_auto_is_bf16_only_on_a_cpu_with_native_bf16_and_bf16_stays_close(models, ref, tmp_path, monkeypatch):
    """auto is bf16 for musicnn on a CPU with native bf16 and float32 elsewhere (CUDA, MPS,
    other CPUs; there bit-identical to fp32); bf16 keeps the probabilities within 0.02 and
    the top-5 tags (on the reference clip)."""
    from mttag import device
    from mttag.inference.tagging import Tagger, resolve_precision

    net = models["msd-musicnn"]
    assert resolve_precision("auto", torch.device("cuda"), net) == "fp32"
    assert resolve_precision("auto", torch.device("mps"), net) == "fp32"
    assert resolve_precision("auto", torch.device("cpu"), net) == "fp32"  # conftest: no native bf16
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu"), net) == "bf16"
    assert resolve_precision("auto", torch.device("cuda"), net) == "fp32"
    assert resolve_precision("fp32", torch.device("cpu"), net) == "fp32"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    path = tmp_path / "clip.wav"
    sf.write(path, ref["audio_int16"], 16000, subtype="PCM_16")

    def probs(precision):
        tagger = Tagger(net, device="cpu", windows=None, precision=precision)
        assert tagger.precision == (precision if precision != "auto" else "fp32")
        r = next(tagger.tag_files([path], top=None))
        return dict(r.tags)

    auto, fp32, bf16 = probs("auto"), probs("fp32"), probs("bf16")
    assert auto == fp32
    assert max(abs(bf16[t] - fp32[t]) for t in fp32) < 0.02
    top = sorted(fp32, key=fp32.get, reverse=True)[:5]
    assert len(set(top) & set(sorted(bf16, key=bf16.get, reverse=True)[:5])) >= 4


def test_bf16_patch_product_equals_the_convolution_it_replaces():
    """Under CPU bf16 autocast the one-channel blocks compute conv → max over frequency as a
    bf16 product of unfolded patches: the same numbers up to bf16 rounding."""
    from mttag.models.musicnn import _bf16_conv_max_over_frequency

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 40, 96, generator=g)
    for kh, kw in ((7, 38), (7, 67), (5, 1)):
        w, b = torch.randn(8, 1, kh, kw, generator=g) * 0.1, torch.randn(8, generator=g)
        ref = torch.nn.functional.conv2d(x, w, b, padding=(kh // 2, 0)).amax(dim=3)
        got = _bf16_conv_max_over_frequency(x, w, b, kh // 2)
        assert got.shape == ref.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, ref, atol=0.05, rtol=0.02)


def test_cpu_bf16_runs_frontend_blocks_as_bf16_products(models):
    """Under CPU bf16 autocast both kinds of front-end block take a bf16 matrix product
    (close to float32, not identical)."""
    model = models[MODELS[0]].eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 60, 96, generator=g)
    with torch.inference_mode():
        for block in [*model.temporal, *model.timbral]:
            fp32 = block(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = block(x)
            assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
            assert not torch.equal(bf16, fp32)
            torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("frames", [1, 7, 60, 187, 200])
def test_bf16_products_compute_the_convolution_of_the_rounded_inputs(models, frames):
    """The unfolded (timbral) and banded (temporal) products are the convolution followed by
    the max over frequency: against float64 on the same bf16-rounded inputs and weights they
    differ only by the rounding of the product to bf16, at every frame (so no tap, block edge or
    padding frame is misplaced)."""
    from mttag.models.musicnn import _bf16_conv_max_over_frequency, _bf16_temporal_conv_max_over_frequency

    model = models[MODELS[0]].eval()
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(2, 1, frames, 96, generator=g)
    xr = x.bfloat16().double()
    with torch.inference_mode():
        for blocks, product in ((model.temporal, _bf16_temporal_conv_max_over_frequency),
                                (model.timbral, _bf16_conv_max_over_frequency)):
            for block in blocks:
                weight, bias = block.conv.weight, block.conv.bias
                pad = max(block.time_pad)
                want = F.conv2d(xr, weight.bfloat16().double(), bias.double(), padding=(pad, 0)).amax(dim=3)
                got = product(x, weight, bias, pad)
                assert got.shape == want.shape
                # bf16 keeps 8 significant bits of the product (before the bias)
                scale = (want - bias.double()[:, None]).abs().max().item()
                torch.testing.assert_close(got.double(), want, atol=2.0 ** -8 * scale, rtol=2.0 ** -8)
