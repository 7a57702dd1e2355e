"""The base of the log-mel networks (the Transformer, the short-chunk ResNet): what they can do,
declared once, and the spectrogram front end they share."""

from __future__ import annotations

import torch
from torch import nn

from ..audio.features import LogMelSpectrogram
from . import computed_buffers
from .config import ModelConfig


class MelTagger(nn.Module):
    """Waveform ``B×N`` at ``config.sample_rate`` → tag logits ``B×n_tags``; a subclass builds its
    layers after this front end and defines ``forward_with_embedding``."""

    # What these networks can do (see mttag.models): oneDNN's convolutions are fastest with
    # channels-last weights on a CPU, and bf16 tagging on CUDA is safe for them. A network
    # that takes inputs longer than its training crop whole says how long (the Transformer).
    channels_last_on_cpu = True
    bf16_on_cuda = True
    max_samples = 0

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.arch_params = p = config.arch_params  # typed and range-checked
        with computed_buffers():
            self.spec = LogMelSpectrogram(config.sample_rate, p.n_fft, p.hop_length, p.n_mels)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(waveform)[0]

    def forward_with_embedding(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
