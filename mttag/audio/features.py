"""Log-mel front end (the paper's, arXiv:2111.13457), computed in torch so it runs batched on any device."""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _cache_dir() -> Path:
    """``$MTTAG_CACHE_DIR/mel``, else ``$XDG_CACHE_HOME/mttag/mel`` (``~/.cache/mttag/mel``)."""
    if os.environ.get("MTTAG_CACHE_DIR"):
        return Path(os.environ["MTTAG_CACHE_DIR"]).expanduser() / "mel"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mttag" / "mel"


def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
                htk: bool = False, norm: str | None = "slaney") -> np.ndarray:
    """``librosa.filters.mel`` (``n_mels × (1 + n_fft // 2)``, float32), cached on disk.

    Importing librosa (and with it scipy.signal) takes ~1.5 s, about 40 % of the start-up
    of ``mttag tag`` on one file, and every model builds its filterbank. So the matrix is
    computed by librosa once per setting and librosa version, kept as a plain ``.npy``
    (read without pickle) in :func:`_cache_dir`; a cache that is missing, unreadable,
    unwritable or malformed just means librosa computes it again."""
    try:
        version = metadata.version("librosa")
    except metadata.PackageNotFoundError:
        version = "?"
    key = repr((version, int(sr), int(n_fft), int(n_mels), float(fmin), None if fmax is None else float(fmax),
                bool(htk), norm))
    path = _cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".npy")
    shape = (int(n_mels), 1 + int(n_fft) // 2)
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape == shape and cached.dtype == np.float32 and np.isfinite(cached).all():
            return cached
    except Exception:  # noqa: BLE001 - missing, truncated (EOFError), not an .npy: compute it again
        pass
    import librosa

    from ..util.fileio import atomic_write

    mel = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
                              norm=norm).astype(np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
            np.save(f, mel, allow_pickle=False)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError:
        pass  # a read-only home: computed again next time
    return mel


class LogMelSpectrogram(nn.Module):
    """Waveform ``B×N`` → log-mel ``B×n_mels×(1 + N // hop)``.

    Power STFT (periodic Hann, centred, reflect padding), an HTK mel matrix
    without area normalisation, then ``10·log10(max(x, 1e-10))`` with no top-dB
    clipping — the authors' torchaudio settings, reproduced without torchaudio.
    The window and filterbank are non-persistent buffers: they are derived from
    the config, so they never enter (or have to match) a checkpoint.
    """

    def __init__(
        self,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop_length: int = 512,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        f_max = sample_rate / 2 if f_max is None else f_max
        mel = mel_filters(sample_rate, n_fft, n_mels, fmin=f_min, fmax=f_max, htk=True, norm=None)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel).float(), persistent=False)

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # The STFT runs in float32 even under autocast: bf16/fp16 power spectra
        # lose the quiet bins that the log makes visible.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.float()
            if x.shape[-1] <= self.n_fft // 2:
                # reflect padding needs more samples than half the FFT size
                x = nn.functional.pad(x, (0, self.n_fft // 2 + 1 - x.shape[-1]))
            spec = torch.stft(
                x,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(self.mel_basis, power)
            return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
