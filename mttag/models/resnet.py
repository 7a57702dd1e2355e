"""Short-chunk ResNet baseline (Won, Ferraro, Bogdanov, Serra, "Evaluation of CNN-based
automatic music tagging models", SMC 2020, arXiv:2006.00751)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MelTagger
from .config import ModelConfig
from .params import ResNetParams


class ResBlockStride2(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.bn_1 = nn.BatchNorm2d(c_out)
        self.conv_2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn_2 = nn.BatchNorm2d(c_out)
        self.conv_3 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.bn_3 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_2(self.conv_2(F.relu(self.bn_1(self.conv_1(x)))))
        return F.relu(y + self.bn_3(self.conv_3(x)))


class ShortChunkResNet(MelTagger):
    """Waveform ``B×N`` (a 3.69 s chunk) → tag logits ``B×n_tags``."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        p: ResNetParams = self.arch_params
        n = p.channels
        self.input_bn = nn.BatchNorm2d(1)
        widths = [1, n, n, 2 * n, 2 * n, 2 * n, 2 * n, 4 * n]
        self.layers = nn.Sequential(*(ResBlockStride2(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.dense1 = nn.Linear(4 * n, 4 * n)
        self.bn = nn.BatchNorm1d(4 * n)
        self.dropout = nn.Dropout(p.dropout)
        self.dense2 = nn.Linear(4 * n, config.n_tags)

    def forward_with_embedding(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``B×n_tags`` and the embedding ``B×4n`` they are read from (the
        penultimate dense layer, after its ReLU)."""
        x = self.layers(self.input_bn(self.spec(waveform).unsqueeze(1)))
        # 128 mel bands halve seven times to one; max over whatever remains of frequency too
        x = x.amax(dim=(2, 3))
        embedding = F.relu(self.bn(self.dense1(x)))
        return self.dense2(self.dropout(embedding)), embedding
