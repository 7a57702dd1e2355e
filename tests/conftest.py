"""Shared test fixtures: synthetic audio files and a tiny model directory.

``make_audio(path, ...)`` writes a short synthetic track in the format its
extension names (wav, flac, ogg, opus, mp3 through soundfile; m4a/aac through
ffmpeg). ``tiny_model_dir`` is a seeded, randomly initialised tiny Transformer
with short windows so multi-window behaviour is testable on clips of a few seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from pathlib import Path

# Ray's native library must be loaded before usearch's (tests/test_ann.py): with usearch's
# loaded first, ray.init() later in the same process aborts in std::regex (a libstdc++ symbol
# clash between the two wheels), taking the whole test run with it (mttag.engines refuses
# that order with one line; separate processes, as the command line uses, are unaffected).
with contextlib.suppress(ImportError):
    import ray  # noqa: F401

import numpy as np
import pytest
import soundfile as sf

TEST_TAGS = ["rock", "pop", "jazz", "ambient", "metal", "folk", "electronic", "classical"]
# Window length of the tiny test model: 1.5 s, so a 4 s clip has 3 windows.
TINY_CROP_SECONDS = 1.5

HAS_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
needs_ffmpeg = pytest.mark.skipif(not HAS_FFMPEG, reason="needs ffmpeg and ffprobe on PATH")

_SOUNDFILE_KW = {
    ".mp3": dict(format="MP3", subtype="MPEG_LAYER_III"),
    ".ogg": dict(format="OGG", subtype="VORBIS"),
    ".opus": dict(format="OGG", subtype="OPUS"),
}


def synth(seconds: float, sr: int = 44100, channels: int = 2, kind: str = "music", freq: float = 440.0,
          amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """``frames × channels`` float32: ``music`` (a chord with a decaying beat and a
    little noise), ``tone`` (a sine at ``freq``, identical in every channel),
    ``chirp`` (a noise-free sweep, each channel a different phase) or ``silence``."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    if kind == "silence":
        mono = np.zeros(n)
    elif kind == "tone":
        mono = amp * np.sin(2 * np.pi * freq * t)
    elif kind == "chirp":
        cols = [amp * np.sin(2 * np.pi * (150 * t + 40 * t**2) + c) for c in range(channels)]
        return np.stack(cols, axis=1).astype(np.float32)
    elif kind == "music":
        f0 = 110.0 * 2 ** (seed % 12 / 12)
        mono = sum(g * np.sin(2 * np.pi * f0 * r * t) for g, r in ((1, 1), (0.6, 1.26), (0.6, 1.5), (0.3, 2)))
        mono = mono * (0.4 + 0.6 * np.exp(-(t % 0.5) / 0.1)) + 0.05 * rng.standard_normal(n)
        mono = amp * mono / np.max(np.abs(mono))
    else:
        raise ValueError(kind)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def write_audio(path: str | Path, data: np.ndarray, sr: int = 44100, subtype: str | None = None) -> Path:
    """Write ``frames × channels`` ``data`` to ``path`` in the format of its extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext in (".m4a", ".aac", ".mp4"):
        if not HAS_FFMPEG:
            pytest.skip("writing m4a needs ffmpeg")
        channels = 1 if data.ndim == 1 else data.shape[1]
        cmd = ["ffmpeg", "-y", "-v", "error", "-f", "f32le", "-ar", str(sr), "-ac", str(channels), "-i", "-",
               "-c:a", "aac", "-b:a", "128k", str(path)]
        subprocess.run(cmd, input=np.ascontiguousarray(data, dtype=np.float32).tobytes(), check=True)
        return path
    kwargs = dict(_SOUNDFILE_KW.get(ext, {}))
    if subtype:
        kwargs["subtype"] = subtype
    sf.write(str(path), data, sr, **kwargs)
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x less CPU (no
    spinning OpenMP workers competing with the decode threads). Use it module-wide with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def no_native_bf16():
    """``--precision auto`` picks bf16 on CPUs with native bf16: tests (and module-scoped
    fixtures) see float32 on every machine, so exactness checks hold wherever the suite
    runs. A test that wants the other branch patches ``mttag.device.cpu_has_native_bf16``
    itself; child processes are not patched (pass ``--precision fp32`` to compare them)."""
    from mttag import device

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device, "cpu_has_native_bf16", lambda: False)
        yield


@pytest.fixture(autouse=True)
def isolated_user_config(tmp_path_factory, monkeypatch):
    """A developer's own ~/.config/mttag/registry.json, MTTAG_REGISTRY or MTTAG_MODEL must
    not change what the tests see."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    # mttag's own cache (mel filterbanks): one per test session, never the developer's
    monkeypatch.setenv("MTTAG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mttag-cache"))
    monkeypatch.delenv("MTTAG_REGISTRY", raising=False)
    monkeypatch.delenv("MTTAG_MODEL", raising=False)


@pytest.fixture
def make_audio():
    """Factory: ``make_audio(path, seconds=2.0, sr=44100, channels=2, kind="music", **synth_kw)``.
    Opus files are written at 48 kHz (the only rate opus allows besides 8–24 kHz)."""

    def make(path, seconds: float = 2.0, sr: int = 44100, channels: int = 2, kind: str = "music",
             subtype: str | None = None, **kw) -> Path:
        if Path(path).suffix.lower() == ".opus":
            sr = 48000
        return write_audio(path, synth(seconds, sr, channels, kind, **kw), sr, subtype)

    return make


def save_tiny_model(directory: Path, seed: int = 0, crop_seconds: float = TINY_CROP_SECONDS) -> Path:
    import torch

    from mttag import save_model
    from mttag.models import build_model, make_config

    torch.manual_seed(seed)
    model = build_model(make_config("transformer", TEST_TAGS, "tiny", crop_seconds=crop_seconds))
    return save_model(model.eval(), directory)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Transformer (random weights, seed 0, 8 tags, 1.5 s windows)."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from mttag.weights.modelfile import load_local_model

    return load_local_model(tiny_model_dir)


def finishes(fn, timeout: float = 30.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not finish in {timeout} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    """An S3-compatible server (moto's) on 127.0.0.1 with a bucket ``catalogue``, and the
    standard environment pointing at it; yields a boto3 client."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    from moto.s3.responses import S3Response

    serialized = getattr(S3Response, "serialized", None)

    def fixed(self, result):
        # moto 5.2.1 names the CompleteMultipartUpload answer's root element wrongly, which
        # pyarrow (rightly) takes for an error (getmoto/moto#10055); real S3 does not
        status, headers, body = serialized(self, result)
        if self.data.get("Action") == "CompleteMultipartUpload" and isinstance(body, str):
            body = body.replace("CompleteMultipartUploadResponse", "CompleteMultipartUploadResult")
        return status, headers, body

    if serialized is not None:
        monkeypatch.setattr(S3Response, "serialized", fixed)
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="catalogue")
    yield client
    server.stop()
