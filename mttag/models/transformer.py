"""Music Tagging Transformer (Won, Choi, Serra, "Semi-supervised music tagging transformer",
ISMIR 2021, arXiv:2111.13457; the layers follow its Table 1).

A shallow 3×3 CNN turns the log-mel spectrogram into a sequence of ~0.1 s
tokens; a pre-norm Transformer summarises the sequence into a [CLS] vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MelTagger
from .config import ModelConfig
from .params import TransformerParams


class ResBlock2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: tuple[int, int]):
        super().__init__()
        self.conv_1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn_1 = nn.BatchNorm2d(c_out)
        self.conv_2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn_2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if c_in != c_out:
            self.conv_3 = nn.Conv2d(c_in, c_out, 3, padding=1)
            self.bn_3 = nn.BatchNorm2d(c_out)
            self.shortcut = True
        self.pool = nn.MaxPool2d(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_2(self.conv_2(F.relu(self.bn_1(self.conv_1(x)))))
        skip = self.bn_3(self.conv_3(x)) if self.shortcut else x
        return self.pool(F.relu(y + skip))


class ConvFrontEnd(nn.Module):
    """``B×1×F×T`` log-mel → ``B×T/4×D`` token sequence (paper Table 1)."""

    def __init__(self, n_mels: int, channels: int, dim: int):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1)
        self.layer1 = ResBlock2d(1, channels, (2, 2))
        self.layer2 = ResBlock2d(channels, channels, (2, 2))
        self.layer3 = ResBlock2d(channels, channels, (2, 1))
        self.fc = nn.Linear(channels * (n_mels // 8), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.input_bn(x))))
        b, c, f, t = x.shape
        # time-major tokens, each the channel-major/frequency-minor flattening
        x = x.permute(0, 3, 1, 2).reshape(b, t, c * f)
        return self.fc(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # fused kernel (flash / memory-efficient) where the device has one
        out = F.scaled_dot_product_attention(q, k, v)
        return self.dropout(self.to_out(out.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, dim * 4), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * 4, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ff(self.ff_norm(x))


class MusicTaggingTransformer(MelTagger):
    """Waveform ``B×N`` at ``config.sample_rate`` → tag logits ``B×n_tags``."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        p: TransformerParams = self.arch_params
        self.max_len = p.max_len
        dim = p.dim
        self.frontend = ConvFrontEnd(p.n_mels, p.conv_channels, dim)
        self.cls_token = nn.Parameter(torch.randn(dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, self.max_len + 1, dim))
        self.dropout = nn.Dropout(p.dropout)
        self.blocks = nn.ModuleList(Block(dim, p.heads, p.dropout) for _ in range(p.depth))
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, config.n_tags)

    @property
    def max_samples(self) -> int:
        """Longest input the positional embedding covers: inputs up to it, longer than the
        training crop too, are taken whole."""
        return self.arch_params.max_samples()

    def forward_with_embedding(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``B×n_tags`` and the embedding ``B×dim`` they are read from: the
        normalised [CLS] token, the Transformer's summary of the window."""
        x = self.spec(waveform).unsqueeze(1)
        x = self.frontend(x)
        b, n, _ = x.shape
        if n > self.max_len:
            raise ValueError(
                f"input of {waveform.shape[-1]} samples gives {n} tokens; this model takes at most "
                f"{self.max_len} ({self.max_samples / self.config.sample_rate:.1f} s)"
            )
        if n == 0:
            raise ValueError(f"input of {waveform.shape[-1]} samples is too short for this model")
        x = torch.cat([self.cls_token.expand(b, 1, -1), x], dim=1)
        x = self.dropout(x + self.pos_embedding[:, : n + 1])
        for block in self.blocks:
            x = block(x)
        embedding = self.head_norm(x[:, 0])
        return self.head(embedding), embedding
