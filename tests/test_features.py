import librosa
import numpy as np
import pytest
import torch

from mttag.features import LogMelSpectrogram


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
