import librosa
import numpy as np
import pytest
import torch

from mttag.audio.features import LogMelSpectrogram


def _reference(x: np.ndarray) -> np.ndarray:
    """SPEC §1 computed with librosa alone."""
    mel = librosa.feature.melspectrogram(
        y=x, sr=22050, n_fft=1024, hop_length=512, win_length=1024, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=128, fmin=0.0, fmax=11025.0, htk=True, norm=None,
    )
    return 10 * np.log10(np.maximum(mel, 1e-10))


@pytest.mark.parametrize("n_samples", [220500, 22050 * 3 + 17])
def test_matches_librosa(n_samples):
    rng = np.random.default_rng(0)
    t = np.arange(n_samples) / 22050
    x = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    ours = LogMelSpectrogram()(torch.from_numpy(x)[None])[0].numpy()
    ref = _reference(x)
    assert ours.shape == ref.shape == (128, 1 + n_samples // 512)
    # dB values: float32 STFT vs librosa's float64-accumulated one
    assert np.max(np.abs(ours - ref)) < 2e-3


def test_frames_for_ten_seconds():
    assert LogMelSpectrogram()(torch.zeros(2, 220500)).shape == (2, 128, 431)


def test_silence_floor_and_batch_independence():
    spec = LogMelSpectrogram()
    x = torch.zeros(3, 22050)
    x[1] = torch.randn(22050)
    out = spec(x)
    assert torch.all(out[0] == -100.0)  # 10*log10(1e-10)
    assert torch.allclose(out[1], spec(x[1:2])[0])


# -- the mel filterbank cache ---------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(sr=16000, n_fft=512, n_mels=96),  # musicnn: slaney scale + norm
                                dict(sr=22050, n_fft=1024, n_mels=128, fmax=11025.0, htk=True, norm=None)])
def test_mel_filters_are_librosas_and_come_from_the_cache_the_second_time(kw, tmp_path, monkeypatch):
    import sys

    from mttag.audio.features import mel_filters

    monkeypatch.setenv("MTTAG_CACHE_DIR", str(tmp_path))
    expected = librosa.filters.mel(**kw)
    first = mel_filters(**kw)
    np.testing.assert_array_equal(first, expected)
    assert len(list((tmp_path / "mel").glob("*.npy"))) == 1 and not list((tmp_path / "mel").glob(".*"))
    monkeypatch.setitem(sys.modules, "librosa", None)  # importing librosa now fails: the cache must answer
    np.testing.assert_array_equal(mel_filters(**kw), expected)


@pytest.mark.parametrize("content", [b"", b"not an npy file", "wrong shape", "nan"])
def test_a_bad_cache_file_is_recomputed_and_replaced(content, tmp_path, monkeypatch):
    from mttag.audio.features import mel_filters

    monkeypatch.setenv("MTTAG_CACHE_DIR", str(tmp_path))
    kw = dict(sr=16000, n_fft=512, n_mels=96)
    mel_filters(**kw)
    (path,) = (tmp_path / "mel").glob("*.npy")
    if content == "wrong shape":
        np.save(path, np.zeros((3, 3), np.float32))
    elif content == "nan":
        np.save(path, np.full((96, 257), np.nan, np.float32))
    else:
        path.write_bytes(content)
    np.testing.assert_array_equal(mel_filters(**kw), librosa.filters.mel(**kw))
    np.testing.assert_array_equal(np.load(path), librosa.filters.mel(**kw))


def test_an_unwritable_cache_still_gives_the_filters(tmp_path, monkeypatch):
    from mttag.audio.features import mel_filters

    blocker = tmp_path / "a file"
    blocker.write_text("x")
    monkeypatch.setenv("MTTAG_CACHE_DIR", str(blocker))  # its "mel" folder cannot be made
    np.testing.assert_array_equal(mel_filters(16000, 512, 96), librosa.filters.mel(sr=16000, n_fft=512, n_mels=96))


def test_loading_the_bundled_model_with_a_warm_cache_does_not_import_librosa(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MTTAG_CACHE_DIR": str(tmp_path)}
    code = "import sys, mttag; mttag.load_model('msd-musicnn'); print('librosa' in sys.modules)"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split() == ["True"] and second.stdout.split() == ["False"]
