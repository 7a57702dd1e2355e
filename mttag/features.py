"""Log-mel front end (SPEC §1), computed in torch so it runs batched on any device."""

from __future__ import annotations

import librosa
import torch
from torch import nn


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
        mel = librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=True, norm=None
        )
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
