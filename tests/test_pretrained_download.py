"""The paper's pretrained Transformers by name: registry URL entries pinned by hash, downloaded
from a local HTTP server on 127.0.0.1, verified, converted, cached, used offline; user
registries (mirrors, overrides) and the user default model.

The checkpoints are built here in the authors' exact layout (``network.`` keys, the compact
student also carrying its ``teacher_network.``) with random weights, in the two real shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mttag.cli import app
from mttag.inference.vocab import CALS_TAGS
from mttag.models import build_model, make_config
from mttag.weights import download, registry
from mttag.weights.convert import to_authors_layout
from mttag.weights.modelfile import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, ModelLoadError, load_local_model
from mttag.weights.pretrained import load_model, resolve_model

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "ca6a68741cdc962358a88955114fb879956a5f70"
UPSTREAM = f"https://github.com/minzwon/semi-supervised-music-tagging-transformer/raw/{COMMIT}/data/"
PINNED = {
    "won2021-teacher": ("teacher.ckpt", "508b94cbe482fbf6c55df734c5caa6504825887e"),
    "won2021-student": ("compact_student.ckpt", "1b2a6f91f327801d1c90903195145ece26c7578d"),
}


def blob_sha1(data: bytes) -> str:
    """Written out here from the definition, independently of mttag.weights.download."""
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


# -- a static file server ----------------------------------------------------------------------
class FileServer:
    """Serves ``files`` (url path -> bytes) on 127.0.0.1; paths in ``truncate`` announce their full
    Content-Length but send half and close; every request is recorded."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if self.path in server.truncate else data)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- authors'-layout checkpoints -------------------------------------------------------------
def _spec_buffers(prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + "spec.spectrogram.window": torch.hann_window(1024),
            prefix + "spec.mel_scale.fb": torch.rand(513, 128)}


def authors_checkpoint(path: Path, kind: str, seed: int = 0, tags=CALS_TAGS):
    """Write ``teacher.ckpt`` (conv 128, attention 256) or ``compact_student.ckpt`` (conv 128,
    attention 64, plus its teacher under ``teacher_network.``) as the authors saved them (a flat
    state dict); returns the mttag model whose weights it holds."""
    torch.manual_seed(seed)
    preset, overrides = ("teacher", {}) if kind == "teacher" else ("small", {"conv_channels": 128})
    model = build_model(make_config("transformer", list(tags), preset, **overrides)).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    state = {**_spec_buffers("network."), **to_authors_layout(model.state_dict())}
    if kind == "student":
        teacher = build_model(make_config("transformer", list(tags), "teacher"))
        state.update(_spec_buffers("teacher_network."))
        state.update(to_authors_layout(teacher.state_dict(), prefix="teacher_network."))
    torch.save(state, path)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    teacher = authors_checkpoint(root / "teacher.ckpt", "teacher", seed=1)
    student = authors_checkpoint(root / "compact_student.ckpt", "student", seed=2)
    return SimpleNamespace(
        teacher=teacher, student=student,
        teacher_bytes=(root / "teacher.ckpt").read_bytes(), student_bytes=(root / "compact_student.ckpt").read_bytes(),
    )


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Fail any test that would open a connection off this machine."""
    original = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and self.family in (
            socket.AF_INET, socket.AF_INET6
        ):
            raise AssertionError(f"test tried to reach {address}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def env(tmp_path, monkeypatch, ckpts):
    """A fresh cache and config dir, a file server holding both checkpoints, and a user registry
    (``MTTAG_REGISTRY``) pointing the two shipped names at it, as an organisation's mirror would."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "MTTAG_MODEL", "MTTAG_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = FileServer()
    server.files["/mirror/teacher.ckpt"] = ckpts.teacher_bytes
    server.files["/mirror/compact_student.ckpt"] = ckpts.student_bytes
    reg = tmp_path / "registry.json"

    def write_registry(models, default=None, path=reg):
        data = {"models": models}
        if default:
            data["default"] = default
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return path

    def mirror(name, filename, data, **location):
        return {"name": name, "location": {"url": server.url(f"/mirror/{filename}"), "sha1": blob_sha1(data),
                                           **location}}

    write_registry([mirror("won2021-teacher", "teacher.ckpt", ckpts.teacher_bytes),
                    mirror("won2021-student", "compact_student.ckpt", ckpts.student_bytes)])
    monkeypatch.setenv("MTTAG_REGISTRY", str(reg))
    yield SimpleNamespace(home=home, cache=home / "hub", server=server, registry=reg, write_registry=write_registry,
                          mirror=mirror, tmp=tmp_path)
    server.stop()


def go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def wav(path: Path, seconds: float = 2.0, sr: int = 22050) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype("float32"), sr)
    return path


# -- the shipped registry --------------------------------------------------------------------
def test_shipped_entries_pin_the_authors_files(monkeypatch, tmp_path):
    monkeypatch.delenv("MTTAG_REGISTRY", raising=False)
    monkeypatch.delenv("MTTAG_MODEL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name, (filename, sha1) in PINNED.items():
        entry = registry.get_entry(name)
        assert entry["location"] == {"url": UPSTREAM + filename, "sha1": sha1}
        assert entry["convert"] == {"format": "won2021-ckpt", "tags": "cals", "heads": 8}
        assert entry["arch"] == "transformer" and entry["license"] == "mit" and entry["tags"]["n_tags"] == 50
        assert set(entry["metrics"]) == {"roc_auc", "pr_auc"}
    assert registry.default_model_name() == "musicnn"  # the offline default is unchanged
    # the hash the registry means is git's blob id
    assert download.git_blob_sha1(_write(tmp_path / "hello", b"hello\n")) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_authors_layout_matches_spec_builder(tmp_path):
    """The inverse mapping used to build these checkpoints gives exactly the SPEC §2 names and
    shapes of the independent builder in test_convert.py."""
    sys.path.insert(0, str(Path(__file__).parent))
    import test_convert as tc

    reference = tc._authors_checkpoint(tmp_path / "ref.ckpt")
    model = build_model(make_config("transformer", [f"t{i}" for i in range(tc.N_TAGS)], "tiny",
                                    conv_channels=tc.C, dim=tc.D, depth=tc.L, heads=tc.H))
    ours = {k[len("network."):]: v for k, v in to_authors_layout(model.state_dict()).items()}
    expected = {k: v for k, v in reference.items() if not k.startswith("spec.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in expected.items()}


# -- download, verify, convert, tag ------------------------------------------------------------
def test_download_verify_convert_tag(env, ckpts, tmp_path):
    directory = resolve_model("won2021-student")
    sha1 = blob_sha1(ckpts.student_bytes)
    assert directory == env.cache / "models--mttag-url--won2021-student" / "snapshots" / sha1
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "LICENSE", download.SOURCE_NAME])
    # the cache keeps safetensors only: no checkpoint, no partial file, no staging folder
    assert [f for f in cache_files(env.cache) if not f.startswith("models--mttag-url--won2021-student/snapshots/")] == []
    assert env.server.requests == ["/mirror/compact_student.ckpt"]

    model = load_local_model(directory)
    p = model.config.params
    assert (p["conv_channels"], p["dim"], p["depth"], p["heads"]) == (128, 64, 4, 8)
    assert model.config.preset == "small" and model.config.tags == CALS_TAGS
    assert sum(t.numel() for t in model.parameters()) == 1_108_852
    x = torch.randn(2, 22050 * 3)
    with torch.no_grad():
        assert torch.allclose(model(x), ckpts.student(x), atol=1e-5)  # the student, not the teacher inside the file

    card = (directory / CARD_NAME).read_text()
    assert "license: mit\n" in card and sha1 in card and "0.9217" in card and "ByteDance" in (directory / "LICENSE").read_text()
    prov = json.loads((directory / CONFIG_NAME).read_text())["provenance"]
    assert prov["git_blob_sha1"] == sha1 and prov["url"].endswith("/mirror/compact_student.ckpt")

    song = wav(tmp_path / "song.wav")
    result = CliRunner().invoke(app, ["tag", str(song), "--model", "won2021-student", "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    tags = json.loads(result.stdout)[0]["tags"]
    assert len(tags) == 5 and all(t["tag"] in CALS_TAGS for t in tags)
    assert env.server.requests == ["/mirror/compact_student.ckpt"]  # the second use downloaded nothing


def test_teacher_converts_in_its_shape(env, ckpts):
    model = load_model("won2021-teacher")
    p = model.config.params
    assert (p["conv_channels"], p["dim"], p["depth"], model.config.preset) == (128, 256, 4, "teacher")
    assert sum(t.numel() for t in model.parameters()) == 4_567_732
    x = torch.randn(1, 22050 * 2)
    with torch.no_grad():
        assert torch.allclose(model(x), ckpts.teacher(x), atol=1e-5)


def test_second_use_offline_and_without_network(env, monkeypatch):
    first = resolve_model("won2021-student")
    go_offline(monkeypatch)
    env.server.stop()  # and no server at all
    assert resolve_model("won2021-student") == first
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    model = load_model("won2021-student")  # online but unreachable: the cache is enough
    assert model.config.n_tags == 50 and env.server.requests == ["/mirror/compact_student.ckpt"]


def test_offline_and_not_cached_is_one_line(env, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-teacher")
    message = one_line(exc)
    assert "won2021-teacher" in message and "HF_HUB_OFFLINE" in message
    assert "mttag models --download won2021-teacher" in message
    assert env.server.requests == [] and cache_files(env.cache) == []


# -- refusals ----------------------------------------------------------------------------------
def test_wrong_hash_refused_before_unpickling(env, ckpts, monkeypatch):
    wrong = blob_sha1(ckpts.teacher_bytes)  # the other file's hash
    env.write_registry([env.mirror("won2021-student", "compact_student.ckpt", ckpts.student_bytes) | {
        "location": {"url": env.server.url("/mirror/compact_student.ckpt"), "sha1": wrong}}])

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on an unverified file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-student")
    message = one_line(exc)
    assert "won2021-student" in message and "does not match the pinned hash" in message and wrong[:12] in message
    assert env.server.requests == ["/mirror/compact_student.ckpt"]
    assert cache_files(env.cache) == []  # nothing half-written, nothing that looks cached
    assert not (env.cache / "models--mttag-url--won2021-student").exists()
    assert registry.entry_status(registry.get_entry("won2021-student")) == registry.NOT_DOWNLOADED


def test_plain_sha1_pinned_by_mistake_gets_a_hint(env, ckpts):
    plain = hashlib.sha1(ckpts.teacher_bytes).hexdigest()
    env.write_registry([{"name": "won2021-teacher",
                         "location": {"url": env.server.url("/mirror/teacher.ckpt"), "sha1": plain}}])
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-teacher")
    assert "git blob SHA-1" in one_line(exc)


def test_sha256_pin(env, ckpts):
    env.write_registry([{"name": "won2021-teacher", "location": {
        "url": env.server.url("/mirror/teacher.ckpt"), "sha256": hashlib.sha256(ckpts.teacher_bytes).hexdigest()}}])
    directory = resolve_model("won2021-teacher")
    assert directory.name == hashlib.sha256(ckpts.teacher_bytes).hexdigest()


def test_truncated_download_refused_and_not_cached(env):
    env.server.truncate.add("/mirror/compact_student.ckpt")
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-student")
    message = one_line(exc)
    assert "won2021-student" in message and "cut off" in message
    assert cache_files(env.cache) == []
    env.server.truncate.clear()  # running again downloads it afresh
    assert resolve_model("won2021-student").is_dir()


def test_http_error_and_unreachable_are_one_line(env, ckpts):
    env.write_registry([
        {"name": "won2021-teacher", "location": {"url": env.server.url("/gone.ckpt"), "sha1": "0" * 40}},
        {"name": "won2021-student", "location": {"url": "http://127.0.0.1:9/x.ckpt", "sha1": "0" * 40}},
    ])
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-teacher")
    assert "HTTP 404" in one_line(exc)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-student")
    assert "cannot reach 127.0.0.1:9" in one_line(exc) and "MTTAG_REGISTRY" in str(exc.value)
    assert cache_files(env.cache) == []


def test_damaged_cache_is_detected_and_removed(env):
    directory = resolve_model("won2021-student")
    weights = directory / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-student")
    assert "damaged" in one_line(exc) and not directory.exists()
    assert resolve_model("won2021-student") == directory  # downloaded afresh
    assert len(env.server.requests) == 2


def test_revision_refused_for_pinned_url(env):
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-student@main")
    assert "no revisions" in one_line(exc)


# -- user registries and the default model -----------------------------------------------------
def test_registry_validation(env, tmp_path, monkeypatch):
    bad = [
        ({"name": "x", "location": {"url": "https://example.org/x.ckpt"},
          "convert": {"format": "won2021-ckpt", "tags": "cals"}}, "needs its hash"),
        ({"name": "x", "location": {"url": "https://example.org/x.ckpt", "sha1": "abc"},
          "convert": {"format": "won2021-ckpt", "tags": "cals"}}, "40 hexadecimal"),
        ({"name": "x", "location": {"url": "https://example.org/x.ckpt", "sha1": "0" * 40}}, "'convert'"),
        ({"name": "x", "location": {"url": "ftp://example.org/x.ckpt", "sha1": "0" * 40},
          "convert": {"format": "won2021-ckpt", "tags": "cals"}}, "URL"),
        ({"name": "x", "location": {"hub": "a/b", "url": "https://e.org/x", "sha1": "0" * 40}}, "exactly one"),
        ({"name": "bad/name", "location": {"hub": "a/b"}}, "letters, digits"),
    ]
    for entry, expected in bad:
        env.write_registry([entry])
        with pytest.raises(ModelLoadError) as exc:
            registry.list_models()
        message = one_line(exc)
        assert expected in message and str(env.registry) in message, (entry, message)
    monkeypatch.setenv("MTTAG_REGISTRY", str(tmp_path / "missing.json"))
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("won2021-student")
    assert "MTTAG_REGISTRY" in one_line(exc)


def test_registry_override_precedence_and_local_entries(env, ckpts, models_dir, monkeypatch):
    config_registry = env.tmp / "config" / "mttag" / "registry.json"
    env.write_registry([
        {"name": "won2021-student", "location": {"url": "http://127.0.0.1:9/elsewhere.ckpt", "sha1": "0" * 40}},
        {"name": "ours", "arch": "transformer", "license": "mit", "location": {"bundled": str(models_dir)}},
    ], default="ours", path=config_registry)
    entries = {e["name"]: e for e in registry.list_models()}
    # MTTAG_REGISTRY (the mirror) wins over the config-dir file for the same name ...
    assert entries["won2021-student"]["location"]["url"] == env.server.url("/mirror/compact_student.ckpt")
    # ... and metadata not overridden comes from the shipped entry
    assert entries["won2021-student"]["metrics"] == {"roc_auc": 0.9217, "pr_auc": 0.3889}
    assert entries["won2021-student"]["registry"] == str(env.registry)
    assert entries["ours"]["status"] == registry.LOCAL and entries["ours"]["default"]
    assert registry.default_model_name() == "ours" and registry.default_model_origin() == str(config_registry)
    assert resolve_model() == models_dir

    monkeypatch.setenv("MTTAG_MODEL", "won2021-student")  # the environment beats any file
    assert registry.default_model_origin() == "MTTAG_MODEL"
    assert resolve_model().parent.name == "snapshots"
    assert load_model().config.n_tags == 50

    monkeypatch.setenv("MTTAG_MODEL", "nope/never")
    go_offline(monkeypatch)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model()
    assert "set by MTTAG_MODEL" in one_line(exc)


@pytest.fixture
def models_dir(tmp_path):
    from mttag.weights.modelfile import save_model

    torch.manual_seed(0)
    return save_model(build_model(make_config("transformer", ["a", "b", "c"], "tiny")), tmp_path / "ours")


def test_cli_models_lists_and_downloads(env, tmp_path):
    listed = CliRunner().invoke(app, ["models", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    student = entries["won2021-student"]
    assert student["status"] == registry.NOT_DOWNLOADED and student["download_size"] == 23_300_000
    assert student["params"] == 1_108_852 and student["metrics"]["roc_auc"] == 0.9217
    assert student["where"].startswith("url http://127.0.0.1:")
    text = CliRunner().invoke(app, ["models"], env={"COLUMNS": "100"})
    assert "downloads on first use" in text.stdout and "won2021-teacher" in text.stdout

    fetched = CliRunner().invoke(app, ["models", "--download", "won2021-student", "-q"])
    assert fetched.exit_code == 0, fetched.output
    assert Path(fetched.stdout.strip()).is_dir()
    after = {e["name"]: e for e in json.loads(CliRunner().invoke(app, ["models", "--format", "json"]).stdout)}
    assert after["won2021-student"]["status"] == registry.CACHED
    wide = CliRunner().invoke(app, ["models"], env={"COLUMNS": "220"})
    assert wide.exit_code == 0 and "cached" in wide.stdout

    song = tmp_path / "x.wav"  # paths are checked before the model: the file must exist to reach it
    song.write_bytes(b"")
    refused = CliRunner().invoke(app, ["tag", str(song), "--model", "won2021-teacher"], env={"HF_HUB_OFFLINE": "1"})
    assert refused.exit_code == 2 and "won2021-teacher is not downloaded yet" in refused.output


def test_user_default_in_a_fresh_offline_process(env, tmp_path):
    """Configured by environment variables only: MTTAG_MODEL picks the cached paper model."""
    resolve_model("won2021-student")
    songs = tmp_path / "songs"
    songs.mkdir()
    wav(songs / "a.wav")
    process_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "MTTAG_"))}
    process_env.update(HF_HOME=str(env.home), HF_HUB_OFFLINE="1", MTTAG_REGISTRY=str(env.registry),
                       MTTAG_MODEL="won2021-student", XDG_CONFIG_HOME=str(tmp_path / "config"), PYTHONPATH=str(ROOT))
    env.server.stop()
    result = subprocess.run([sys.executable, "-m", "mttag", "tag", str(songs), "--format", "json", "-q", "--all-tags"],
                            env=process_env, capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    assert {t["tag"] for t in json.loads(result.stdout)[0]["tags"]} == set(CALS_TAGS)


def test_distill_teacher_by_registered_name(env, ckpts, tmp_path):
    """`mttag distill --teacher NAME` goes through the same resolver (a small URL entry here)."""
    small = tmp_path / "small.ckpt"
    torch.manual_seed(3)
    tags = ["warm", "cold", "loud"]
    model = build_model(make_config("transformer", tags, "tiny", conv_channels=4, dim=16, depth=1, heads=2))
    torch.save({**_spec_buffers("network."), **to_authors_layout(model.state_dict())}, small)
    env.server.files["/mirror/small.ckpt"] = small.read_bytes()
    env.write_registry([{"name": "small-teacher", "arch": "transformer", "license": "mit",
                         "location": {"url": env.server.url("/mirror/small.ckpt"), "sha1": blob_sha1(small.read_bytes())},
                         "convert": {"format": "won2021-ckpt", "tags": tags, "heads": 2}}])
    folder = tmp_path / "library"
    folder.mkdir()
    for i in range(4):
        wav(folder / f"s{i}.wav", seconds=1.5)
    result = CliRunner().invoke(app, [
        "distill", str(tmp_path / "kd"), "--teacher", "small-teacher", "--unlabeled", str(folder), "--student", "tiny",
        "--crop-seconds", "1", "--max-epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--eval-chunks", "1",
        "--workers", "0", "--device", "cpu", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "kd" / "model").config.tags == tags
    assert env.server.requests == ["/mirror/small.ckpt"]
