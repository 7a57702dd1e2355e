"""Model resolution, the registry and Hub download/publish, against a fake Hub on 127.0.0.1.

huggingface_hub's real download and upload code runs; only the server is fake (see
tests/hub_server.py). A guard refuses any connection that is not to the loopback interface.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import FakeHub  # noqa: E402

from mttag.models import build_model, make_config  # noqa: E402
from mttag.weights import hub as mhub  # noqa: E402
from mttag.weights import registry  # noqa: E402
from mttag.weights.modelfile import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, ModelLoadError, load_local_model, save_model  # noqa: E402
from mttag.weights.pretrained import load_model, resolve_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# huggingface_hub's LFS upload hands httpx a file object as `data`; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")
TOKEN = "hf_test_write_token"  # alice's token on the fake Hub
TAGS = ["rock", "jazz", "ambient"]


# -- fixtures ------------------------------------------------------------------------------
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
def hub():
    with FakeHub(tokens={TOKEN: "alice", "hf_bob_token": "bob"}) as server:
        yield server


@pytest.fixture
def hf(hub, tmp_path, monkeypatch):
    """Point huggingface_hub (already imported: patch its constants too) at the fake Hub and a
    fresh cache; ``hf.env`` is the environment for ``python -m mttag`` subprocesses."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake Hub speaks LFS, not Xet
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agents.json"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))
    return SimpleNamespace(home=home, cache=home / "hub", env=env, hub=hub)


def go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _model_dir(root: Path, name: str, seed: int, tags=TAGS, metrics=None) -> Path:
    torch.manual_seed(seed)
    model = build_model(make_config("transformer", tags, "tiny"))
    return save_model(model, root / name, metrics=metrics)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    a = _model_dir(root, "a", 1, metrics={"roc_auc": 0.91, "pr_auc": 0.42})
    b = _model_dir(root, "b", 2)
    return SimpleNamespace(a=a, b=b, root=root)


def files_of(directory: Path, names=(CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)) -> dict[str, bytes]:
    return {n: (directory / n).read_bytes() for n in names if (directory / n).is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_cli(*args, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "mttag", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# -- download, cache, offline --------------------------------------------------------------
def test_download_then_reuse_cache_offline(hf, models, monkeypatch):
    hf.hub.add_commit("alice/tiny", files_of(models.a))
    path = mhub.download_model("alice/tiny")
    assert path.is_relative_to(hf.cache) and sorted(p.name for p in path.iterdir()) == [CARD_NAME, CONFIG_NAME, WEIGHTS_NAME]
    assert sha(path / WEIGHTS_NAME) == sha(models.a / WEIGHTS_NAME)
    assert hf.hub.content_requests() == 3

    # online again: the pinned snapshot is reused, nothing is transferred
    assert mhub.download_model("alice/tiny") == path
    assert hf.hub.content_requests() == 3

    go_offline(monkeypatch)
    before = len(hf.hub.requests)
    model = load_model("alice/tiny")
    assert len(hf.hub.requests) == before  # offline: no request at all
    x = torch.randn(1, model.config.crop_samples)
    assert torch.equal(model(x), load_local_model(models.a)(x))


def test_offline_and_not_cached_is_one_line(hf, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/never-downloaded")
    message = one_line(exc)
    assert "not in the cache" in message and "HF_HUB_OFFLINE" in message
    assert hf.hub.requests == []


def test_unreachable_hub_falls_back_to_cache(hf, models, monkeypatch):
    hf.hub.add_commit("alice/tiny", files_of(models.a))
    path = mhub.download_model("alice/tiny")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    assert mhub.download_model("alice/tiny") == path
    with pytest.raises(ModelLoadError) as exc:
        mhub.download_model("alice/other")
    assert "cannot reach" in one_line(exc)


def test_revision_pinning(hf, models, monkeypatch):
    sha_a = hf.hub.add_commit("alice/tiny", files_of(models.a), message="model a")
    sha_b = hf.hub.add_commit("alice/tiny", files_of(models.b), message="model b")
    hf.hub.add_commit("alice/tiny", files_of(models.a), branch="exp")
    weights = lambda ref: sha(resolve_model(ref) / WEIGHTS_NAME)  # noqa: E731
    a, b = sha(models.a / WEIGHTS_NAME), sha(models.b / WEIGHTS_NAME)
    assert weights("alice/tiny") == b
    assert weights(f"alice/tiny@{sha_a}") == a
    assert weights(f"alice/tiny@{sha_b[:10]}") == b  # short sha
    assert weights("alice/tiny@exp") == a
    assert resolve_model(f"alice/tiny@{sha_a}").name == sha_a
    before = len(hf.hub.requests)
    resolve_model(f"alice/tiny@{sha_a}")  # a cached commit is immutable: not even a listing request
    assert len(hf.hub.requests) == before

    go_offline(monkeypatch)  # every ref resolves from the cache to the commit it was pinned to
    assert weights("alice/tiny") == b
    assert weights("alice/tiny@exp") == a
    assert weights(f"alice/tiny@{sha_a}") == a


def test_hostile_revision_writes_nothing_outside_the_cache(hf, models, tmp_path):
    """A revision is a path in the cache (refs/<revision>): one that climbs out is refused before
    any request, even when the (hostile) server has such a branch."""
    evil = "../../../../elsewhere/x"
    hf.hub.add_commit("alice/evil", files_of(models.a))
    hf.hub.add_commit("alice/evil", files_of(models.a), branch=evil)
    before = len(hf.hub.requests)
    for revision in (evil, "/etc/passwd", "a\\b", "main\n", "refs//x", ".hidden", "x.lock"):
        with pytest.raises(ModelLoadError) as exc:
            resolve_model(f"alice/evil@{revision}")
        assert "not a valid revision" in one_line(exc)
        assert mhub.cached_model_dir("alice/evil", revision) is None
    assert len(hf.hub.requests) == before
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(ModelLoadError, match="not a valid revision"):
        mhub.push_model(models.a, "alice/evil", revision=evil)
    for revision in ("main", "v1.0", "refs/pr/1", "a" * 40, "feature/x-y_z+1"):
        assert mhub.revision_problem(revision) is None


def test_malformed_commit_from_server_refused(hf, models, tmp_path):
    """The commit the server names becomes the snapshot folder and the content of a ref file:
    it must be 40 hex digits, checked before anything is downloaded or written."""
    import dataclasses

    sha_main = hf.hub.add_commit("alice/evil", files_of(models.a))
    repo = hf.hub.repos["alice/evil"]
    bad = "../../../../elsewhere/y"
    repo.commits[bad] = dataclasses.replace(repo.commits[sha_main], sha=bad)
    repo.branches["main"] = bad
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/evil")
    assert "malformed commit id" in one_line(exc)
    assert hf.hub.content_requests() == 0
    assert not (tmp_path / "elsewhere").exists()
    assert not list(hf.cache.glob("models--alice--evil/refs/*"))


def test_pickle_only_repo_refused_before_download(hf, models):
    config = (models.a / CONFIG_NAME).read_bytes()
    hf.hub.add_commit("alice/pickled", {CONFIG_NAME: config, "pytorch_model.bin": b"\x80\x04fake pickle"})
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/pickled")
    message = one_line(exc)
    assert "pickle" in message and "model.safetensors" in message
    assert hf.hub.resolve_count("alice/pickled") == 0  # refused from the listing alone
    assert not (hf.cache / "models--alice--pickled" / "blobs").exists()


def test_repo_without_config_refused(hf, models):
    hf.hub.add_commit("alice/noconfig", {WEIGHTS_NAME: (models.a / WEIGHTS_NAME).read_bytes()})
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/noconfig")
    assert "no config.json" in one_line(exc)


@pytest.mark.parametrize(
    "path, mode, expect",
    [(WEIGHTS_NAME, "flip", "corrupted"), (WEIGHTS_NAME, "truncate", "incomplete"), (CONFIG_NAME, "flip", "corrupted")],
)
def test_corrupted_download_detected(hf, models, path, mode, expect):
    hf.hub.add_commit("alice/tiny", files_of(models.a))
    hf.hub.corrupt("alice/tiny", path, mode)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/tiny")
    message = one_line(exc)
    assert expect in message and path in message
    hf.hub.corruptions.clear()  # the bad file was not kept: a new attempt downloads it afresh
    assert sha(resolve_model("alice/tiny") / path) == sha(models.a / path)


def test_tampered_cache_detected_offline(hf, models, monkeypatch):
    hf.hub.add_commit("alice/tiny", files_of(models.a))
    weights = resolve_model("alice/tiny") / WEIGHTS_NAME
    blob = Path(os.path.realpath(weights))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    go_offline(monkeypatch)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/tiny")
    assert "corrupted" in one_line(exc)


def test_not_found_messages(hf, models):
    hf.hub.add_commit("alice/tiny", files_of(models.a))
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/missing")
    assert "no such model repo" in one_line(exc)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/tiny@no-such-branch")
    message = one_line(exc)
    assert "revision 'no-such-branch' not found" in message
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("definitely not a model")
    assert "mttag models" in one_line(exc)


def test_gated_repo_and_hf_token(hf, models, monkeypatch):
    hf.hub.add_commit("alice/gated", files_of(models.a), gated=True)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/gated")
    message = one_line(exc)
    assert "gated" in message and "HF_TOKEN" in message
    monkeypatch.setenv("HF_TOKEN", "hf_bob_token")  # HF_TOKEN is honoured
    assert sha(resolve_model("alice/gated") / WEIGHTS_NAME) == sha(models.a / WEIGHTS_NAME)


def test_private_repo_and_bad_token(hf, models, monkeypatch):
    hf.hub.add_commit("alice/secret", files_of(models.a), private=True)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/secret")
    assert "private" in one_line(exc)
    assert resolve_model("alice/secret", token=TOKEN).is_dir()
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/secret")
    assert "401" in one_line(exc)


def test_newer_config_refused(hf, models):
    config = json.loads((models.a / CONFIG_NAME).read_text())
    config["format_version"] = 99
    hf.hub.add_commit("alice/future", {**files_of(models.a), CONFIG_NAME: json.dumps(config).encode()})
    with pytest.raises(ModelLoadError) as exc:
        resolve_model("alice/future")
    message = one_line(exc)
    assert "alice/future" in message and "newer" in message and "pip install -U mttag" in message


def test_tag_count_mismatch(hf, models):
    config = json.loads((models.a / CONFIG_NAME).read_text())
    config["tags"] = TAGS + ["extra"]
    hf.hub.add_commit("alice/mismatch", {**files_of(models.a), CONFIG_NAME: json.dumps(config).encode()})
    with pytest.raises(ModelLoadError) as exc:
        load_model("alice/mismatch")
    message = one_line(exc)
    assert message.startswith("alice/mismatch") and "4 tags" in message and "3 outputs" in message


def test_config_named_files(hf, models):
    config = json.loads((models.a / CONFIG_NAME).read_text())
    config["files"] = ["extra/labels.txt"]
    hf.hub.add_commit("alice/extra", {**files_of(models.a), CONFIG_NAME: json.dumps(config).encode(),
                                      "extra/labels.txt": b"rock\njazz\nambient\n", "unrelated.bin": b"x"})
    path = resolve_model("alice/extra")
    assert (path / "extra" / "labels.txt").read_text().startswith("rock")
    assert not (path / "unrelated.bin").exists()
    config["files"] = ["../escape.txt"]
    hf.hub.add_commit("alice/extra", {CONFIG_NAME: json.dumps(config).encode()})
    with pytest.raises(ModelLoadError, match="unsafe file path"):
        resolve_model("alice/extra")


# -- publishing ----------------------------------------------------------------------------
def test_push_round_trip(hf, models, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    url = mhub.push_model(models.a, "alice/pushed")
    commit = url.rsplit("/", 1)[-1]
    assert url.startswith(hf.hub.url + "/alice/pushed/commit/") and len(commit) == 40
    assert set(hf.hub.repos["alice/pushed"].resolve("main").files) == {".gitattributes", CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}
    got = resolve_model(f"alice/pushed@{commit}")
    assert sha(got / WEIGHTS_NAME) == sha(models.a / WEIGHTS_NAME)
    card = (got / CARD_NAME).read_text()
    front = card.split("---")[1]
    import yaml

    meta = yaml.safe_load(front)
    assert meta["library_name"] == "mttag" and meta["license"] == "mit"
    assert {"music-tagging", "audio-classification"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0] == {"type": "roc_auc", "value": 0.91}

    # a directory without a card gets one generated; metrics from metrics.json are kept
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (bare / name).write_bytes((models.b / name).read_bytes())
    (bare / "metrics.json").write_text(json.dumps({"roc_auc": 0.8, "pr_auc": 0.3}))
    mhub.push_model(bare, "alice/pushed", revision="dev", private=True)
    dev = resolve_model("alice/pushed@dev")
    assert sha(dev / WEIGHTS_NAME) == sha(models.b / WEIGHTS_NAME)
    assert "library_name: mttag" in (dev / CARD_NAME).read_text() and "value: 0.8\n" in (dev / CARD_NAME).read_text()
    assert sha(resolve_model("alice/pushed") / WEIGHTS_NAME) == sha(models.a / WEIGHTS_NAME)  # main untouched
    assert not hf.hub.repos["alice/pushed"].private  # --private only applies when creating


def test_push_errors(hf, models, monkeypatch, tmp_path):
    with pytest.raises(ModelLoadError) as exc:  # no token at all
        mhub.push_model(models.a, "alice/x")
    assert "401" in one_line(exc) and "HF_TOKEN" in str(exc.value)
    with pytest.raises(ModelLoadError) as exc:  # bob may not write to alice's namespace
        mhub.push_model(models.a, "alice/x", token="hf_bob_token")
    assert "403" in one_line(exc)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / WEIGHTS_NAME).write_bytes((models.a / WEIGHTS_NAME).read_bytes())
    config = json.loads((models.a / CONFIG_NAME).read_text())
    config["tags"] = ["only-one"]
    (broken / CONFIG_NAME).write_text(json.dumps(config))
    before = len(hf.hub.requests)
    with pytest.raises(ModelLoadError) as exc:
        mhub.push_model(broken, "alice/x", token=TOKEN)
    assert "1 tags" in one_line(exc)
    assert len(hf.hub.requests) == before  # refused before talking to the Hub
    with pytest.raises(ModelLoadError):
        mhub.push_model(models.a, "not a repo id", token=TOKEN)


# -- registry ------------------------------------------------------------------------------
def test_shipped_registry_lists_musicnn_default():
    entries = {e["name"]: e for e in registry.list_models()}
    assert {"musicnn", "msd-musicnn", "mtt-musicnn"} <= set(entries)
    assert registry.default_model_name() == "musicnn" and entries["musicnn"]["default"]
    for name, entry in entries.items():
        assert entry["status"] in (registry.BUNDLED, registry.NOT_AVAILABLE, registry.CACHED, registry.NOT_DOWNLOADED)
        if "bundled" in entry["location"]:
            directory = registry.bundled_dir(registry.get_entry(name))
            assert (entry["status"] == registry.BUNDLED) == registry.is_complete(directory)
        for key in ("arch", "params", "tags", "source", "license", "where"):
            assert key in entry


@pytest.fixture
def custom_registry(tmp_path, monkeypatch, models):
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    for f in (CONFIG_NAME, WEIGHTS_NAME):
        (data / "models" / "here").mkdir(exist_ok=True)
        (data / "models" / "here" / f).write_bytes((models.a / f).read_bytes())
    path = data / "registry.json"
    path.write_text(json.dumps({
        "default": "gone",
        "models": [
            {"name": "gone", "arch": "musicnn", "params": 1, "tags": {"vocabulary": "msd-top50", "n_tags": 50},
             "source": "test", "license": "isc", "location": {"bundled": "models/gone"}},
            {"name": "here", "arch": "transformer", "params": None, "tags": {"vocabulary": "test", "n_tags": 3},
             "source": "test", "license": "mit", "location": {"bundled": "models/here"}},
            {"name": "remote", "arch": "transformer", "params": None, "tags": {"vocabulary": "test", "n_tags": 3},
             "source": "test", "license": "mit", "location": {"hub": "alice/remote"}},
        ],
    }))
    monkeypatch.setattr(registry, "REGISTRY_PATH", path)
    return path


def test_registry_statuses_and_absent_default(hf, models, custom_registry):
    status = lambda: {e["name"]: e["status"] for e in registry.list_models()}  # noqa: E731
    assert status() == {"gone": "not available", "here": "bundled", "remote": "not downloaded"}
    assert [e["params"] for e in registry.list_models() if e["name"] == "here"][0] > 1000  # counted from weights
    hf.hub.add_commit("alice/remote", files_of(models.a))
    assert resolve_model("remote").is_dir()
    assert status()["remote"] == "cached"
    assert resolve_model("here") == registry.bundled_dir(registry.get_entry("here"))
    for name in (None, "gone"):
        with pytest.raises(ModelLoadError) as exc:
            resolve_model(name)
        message = one_line(exc)
        assert "not available" in message and "--model" in message


def test_local_directory_wins(models, tmp_path, monkeypatch):
    monkeypatch.chdir(models.root)
    assert resolve_model("a") == Path("a")  # an existing directory, before any registry or Hub lookup
    assert resolve_model(models.b) == models.b


# -- command line --------------------------------------------------------------------------
def cli(*args, env=None):
    """``mttag ARGS`` in this process (the environment patched by the fixtures applies)."""
    from typer.testing import CliRunner

    from mttag.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def test_cli_models(hf):
    result = cli("models", "--format", "json")
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert any(e["name"] == "musicnn" and e["default"] for e in entries)
    table = cli("models", env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "msd-musicnn" in table.stdout and "status" in table.stdout


def _wav(path: Path, seconds: float = 1.5, sr: int = 22050) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), sr)
    return path


def test_cli_push_then_tag_online_and_offline(hf, models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pushed = cli("push", str(models.a), "alice/cli")
    assert pushed.exit_code == 0, pushed.output
    assert pushed.stdout.strip().startswith(hf.hub.url + "/alice/cli/commit/")

    audio = _wav(tmp_path / "tone.wav")
    # fp32: the child process below is not under conftest's patch, and auto is bf16 on a
    # CPU with native bf16
    online = cli("tag", str(audio), "--model", "alice/cli", "--format", "json", "-q", "--precision", "fp32")
    assert online.exit_code == 0, online.output
    assert hf.hub.resolve_count("alice/cli", "GET") >= 1
    # a real process, configured by environment variables only, with HF_HUB_OFFLINE=1
    before = len(hf.hub.requests)
    offline = run_cli("tag", str(audio), "--model", "alice/cli", "--format", "json", "-q", "--precision", "fp32",
                      env={**hf.env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert len(hf.hub.requests) == before and offline.stdout == online.stdout

    go_offline(monkeypatch)
    refused = cli("tag", str(audio), "--model", "alice/not-cached")
    assert refused.exit_code == 2 and "not in the cache" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_cli_push_errors_are_one_line(hf, models):
    result = cli("push", str(models.a), "alice/nope")  # no token
    assert result.exit_code == 2 and "HF_TOKEN" in result.stderr
    assert sum("error:" in line for line in result.stderr.splitlines()) == 1


def test_fresh_install_tags_with_bundled_default(tmp_path):
    """No --model and no network: the default model ships inside the package."""
    entry = registry.get_entry(registry.default_model_name())
    if not registry.is_complete(registry.bundled_dir(entry)):
        pytest.skip("the bundled default model is not in this checkout")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "empty-home"), HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    songs = tmp_path / "songs"
    songs.mkdir()
    _wav(songs / "a.wav", seconds=2.0)
    result = run_cli("tag", str(songs), "--format", "json", "-q", env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "empty-home" / "hub").exists()


@pytest.mark.parametrize("text,expected", [
    ("owner/name", ("owner/name", None)),
    ("owner/name@v1.0", ("owner/name", "v1.0")),
    ("Org-1/model.v2_x", ("Org-1/model.v2_x", None)),
    ("name", None),  # a bare name is a registry name or a directory, not a Hub id
    ("a/b/c", None),
    ("a--b/c", None),
    ("a/..b", None),
    ("a/b.", None),
    ("-a/b", None),
    ("owner/name@", None),
    ("x" * 97 + "/b", None),
])
def test_repo_ids_are_checked_by_huggingface_hub(text, expected):
    from mttag.weights.hub import parse_repo_ref

    assert parse_repo_ref(text) == expected
