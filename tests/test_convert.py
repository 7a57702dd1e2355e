"""A checkpoint in the authors' exact key layout converts to a model that matches an
independent forward pass written here from SPEC §2 alone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mttag import load_model
from mttag.audio.features import LogMelSpectrogram
from mttag.cli import app
from mttag.weights.convert import ConversionError, convert_checkpoint

C, D, L, H, N_TAGS = 8, 32, 2, 4, 5


def _authors_checkpoint(path, student=False):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"network.spec.spectrogram.window": torch.ones(1024), "network.spec.mel_scale.fb": torch.ones(513, 128)}

    def bn(prefix, c):
        sd[prefix + ".weight"] = 1 + r(c)
        sd[prefix + ".bias"] = r(c)
        sd[prefix + ".running_mean"] = r(c)
        sd[prefix + ".running_var"] = 1 + r(c).abs()
        sd[prefix + ".num_batches_tracked"] = torch.tensor(10)

    bn("network.frontend.input_bn", 1)
    for i, c_in in ((1, 1), (2, C), (3, C)):
        p = f"network.frontend.layer{i}"
        sd[p + ".conv_1.weight"], sd[p + ".conv_1.bias"] = r(C, c_in, 3, 3), r(C)
        bn(p + ".bn_1", C)
        sd[p + ".conv_2.weight"], sd[p + ".conv_2.bias"] = r(C, C, 3, 3), r(C)
        bn(p + ".bn_2", C)
        if c_in != C:
            sd[p + ".conv_3.weight"], sd[p + ".conv_3.bias"] = r(C, c_in, 3, 3), r(C)
            bn(p + ".bn_3", C)
    sd["network.frontend.fc.weight"], sd["network.frontend.fc.bias"] = r(D, 16 * C), r(D)
    sd["network.pos_embedding"], sd["network.cls_token"] = r(1, 513, D), r(D)
    for i in range(L):
        p = f"network.transformer.layers.{i}"
        sd[p + ".0.fn.norm.weight"], sd[p + ".0.fn.norm.bias"] = 1 + r(D), r(D)
        sd[p + ".0.fn.fn.to_qkv.weight"] = r(3 * D, D)
        sd[p + ".0.fn.fn.to_out.0.weight"], sd[p + ".0.fn.fn.to_out.0.bias"] = r(D, D), r(D)
        sd[p + ".1.fn.norm.weight"], sd[p + ".1.fn.norm.bias"] = 1 + r(D), r(D)
        sd[p + ".1.fn.fn.net.0.weight"], sd[p + ".1.fn.fn.net.0.bias"] = r(4 * D, D), r(4 * D)
        sd[p + ".1.fn.fn.net.3.weight"], sd[p + ".1.fn.fn.net.3.bias"] = r(D, 4 * D), r(D)
    sd["network.mlp_head.0.weight"], sd["network.mlp_head.0.bias"] = 1 + r(D), r(D)
    sd["network.mlp_head.1.weight"], sd["network.mlp_head.1.bias"] = r(N_TAGS, D), r(N_TAGS)
    if student:
        sd["teacher_network.cls_token"] = r(D)
    torch.save({"state_dict": sd, "epoch": 3}, path)
    return {k[len("network."):]: v for k, v in sd.items() if k.startswith("network.")}


def _reference_forward(w, wave):
    """SPEC §2 written out with functional ops on the authors' tensors."""
    def bn(x, p):
        return F.batch_norm(x, w[p + ".running_mean"], w[p + ".running_var"], w[p + ".weight"], w[p + ".bias"], eps=1e-5)

    def conv(x, p):
        return F.conv2d(x, w[p + ".weight"], w[p + ".bias"], padding=1)

    x = bn(LogMelSpectrogram()(wave).unsqueeze(1), "frontend.input_bn")
    for i, pool in ((1, (2, 2)), (2, (2, 2)), (3, (2, 1))):
        p = f"frontend.layer{i}"
        y = bn(conv(F.relu(bn(conv(x, p + ".conv_1"), p + ".bn_1")), p + ".conv_2"), p + ".bn_2")
        skip = bn(conv(x, p + ".conv_3"), p + ".bn_3") if i == 1 else x
        x = F.max_pool2d(F.relu(y + skip), pool)
    b, c, f, t = x.shape
    x = x.permute(0, 3, 1, 2).reshape(b, t, c * f) @ w["frontend.fc.weight"].T + w["frontend.fc.bias"]
    x = torch.cat([w["cls_token"].expand(b, 1, D), x], 1) + w["pos_embedding"][:, : t + 1]
    for i in range(L):
        p = f"transformer.layers.{i}"
        h = F.layer_norm(x, (D,), w[p + ".0.fn.norm.weight"], w[p + ".0.fn.norm.bias"])
        q, k, v = (h @ w[p + ".0.fn.fn.to_qkv.weight"].T).chunk(3, dim=-1)
        split = lambda z: z.reshape(b, -1, H, D // H).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = torch.softmax(q @ k.transpose(-1, -2) * (D // H) ** -0.5, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, -1, D)
        x = x + o @ w[p + ".0.fn.fn.to_out.0.weight"].T + w[p + ".0.fn.fn.to_out.0.bias"]
        h = F.layer_norm(x, (D,), w[p + ".1.fn.norm.weight"], w[p + ".1.fn.norm.bias"])
        h = F.gelu(h @ w[p + ".1.fn.fn.net.0.weight"].T + w[p + ".1.fn.fn.net.0.bias"])
        x = x + h @ w[p + ".1.fn.fn.net.3.weight"].T + w[p + ".1.fn.fn.net.3.bias"]
    h = F.layer_norm(x[:, 0], (D,), w["mlp_head.0.weight"], w["mlp_head.0.bias"])
    return h @ w["mlp_head.1.weight"].T + w["mlp_head.1.bias"]


@pytest.mark.parametrize("student", [False, True])
def test_converted_matches_spec_forward(tmp_path, student):
    weights = _authors_checkpoint(tmp_path / "teacher.ckpt", student=student)
    tags = [f"tag{i}" for i in range(N_TAGS)]
    out = convert_checkpoint(tmp_path / "teacher.ckpt", tmp_path / "model", tags, heads=H)
    model = load_model(out)
    assert model.config.params["conv_channels"] == C and model.config.params["depth"] == L
    wave = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 22050 * 4)).astype(np.float32)) * 0.3
    with torch.no_grad():
        ours = model(wave)
        ref = _reference_forward(weights, wave)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_cli_convert_and_tag_count_check(tmp_path):
    _authors_checkpoint(tmp_path / "teacher.ckpt")
    runner = CliRunner()
    res = runner.invoke(app, ["convert", str(tmp_path / "teacher.ckpt"), str(tmp_path / "m"), "--tags", "cals"])
    assert res.exit_code == 2 and "predicts 5 tags but the tag list has 50" in res.output
    (tmp_path / "tags.txt").write_text("\n".join(f"t{i}" for i in range(N_TAGS)))
    res = runner.invoke(app, ["convert", str(tmp_path / "teacher.ckpt"), str(tmp_path / "m"), "--tags", str(tmp_path / "tags.txt"), "--heads", "4"])
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "m").config.tags[0] == "t0"


def test_pickle_with_code_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"network.x": Evil()}}, tmp_path / "evil.ckpt")
    with pytest.raises(ConversionError, match="weights-only"):
        convert_checkpoint(tmp_path / "evil.ckpt", tmp_path / "m", ["a"])
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="not a loadable"):
        convert_checkpoint(tmp_path / "junk.ckpt", tmp_path / "m", ["a"])


def test_cli_convert_keeps_files_it_did_not_write(tmp_path):
    """A folder's own README.md and config.json are never replaced without --force; a model
    directory mttag wrote is replaced as before."""
    _authors_checkpoint(tmp_path / "teacher.ckpt")
    (tmp_path / "tags.txt").write_text("\n".join(f"t{i}" for i in range(N_TAGS)))
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("# my project notes\n")
    (folder / "config.json").write_text('{"editor": "vim"}\n')
    args = ["convert", str(tmp_path / "teacher.ckpt"), str(folder), "--tags", str(tmp_path / "tags.txt"), "--heads", "4"]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert "config.json" in res.output and "--force" in res.output and "not written by mttag" in res.output
    assert (folder / "README.md").read_text() == "# my project notes\n"
    assert (folder / "config.json").read_text() == '{"editor": "vim"}\n'
    assert not (folder / "model.safetensors").exists()
    # only the README in the way: named alone
    (folder / "config.json").unlink()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "README.md" in res.output and "(and" not in res.output, res.output
    assert (folder / "README.md").read_text() == "# my project notes\n"
    # mttag's own model directory is replaced without --force (converting again)
    mine = tmp_path / "mine"
    assert runner.invoke(app, [*args[:2], str(mine), *args[3:]]).exit_code == 0
    res = runner.invoke(app, [*args[:2], str(mine), *args[3:]])
    assert res.exit_code == 0, res.output
    # --force replaces the foreign files
    res = runner.invoke(app, args + ["--force"])
    assert res.exit_code == 0, res.output
    assert load_model(folder).config.tags[0] == "t0" and "library_name: mttag" in (folder / "README.md").read_text()


def test_save_model_refuses_foreign_weights(tmp_path):
    from safetensors.torch import save_file

    from mttag.models import build_model, make_config
    from mttag.weights.modelfile import ForeignFileError, save_model

    folder = tmp_path / "w"
    folder.mkdir()
    save_file({"x": torch.zeros(2)}, folder / "model.safetensors")  # someone else's weights, no config beside
    model = build_model(make_config("transformer", ["a", "b"], "tiny"))
    with pytest.raises(ForeignFileError, match="model.safetensors"):
        save_model(model, folder)
    assert list(load_file_keys(folder / "model.safetensors")) == ["x"]
    save_model(model, folder, force=True)
    assert load_model(folder).config.tags == ["a", "b"]
    (tmp_path / "f").write_text("a file")
    with pytest.raises(ForeignFileError, match="not a folder"):
        save_model(model, tmp_path / "f", force=True)


def load_file_keys(path):
    from safetensors.torch import load_file

    return load_file(path).keys()
