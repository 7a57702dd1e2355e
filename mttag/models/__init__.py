"""Model architectures. Each takes a :class:`ModelConfig` and maps waveforms ``B×N`` to logits."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from .config import FORMAT_VERSION, ModelConfig

# arch name -> (module, class); imported lazily so that e.g. listing models stays cheap
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "transformer": ("mttag.models.transformer", "MusicTaggingTransformer"),
    "resnet": ("mttag.models.resnet", "ShortChunkResNet"),
    "musicnn": ("mttag.models.musicnn", "Musicnn"),
}
# Training crop length each architecture was designed for (SPEC §3–4).
# The ResNet's "3.69 s" is exactly 81,480 samples at 22,050 Hz; musicnn's "3 s" patch is
# 187 frames of hop 256 at 16 kHz = 2.992 s.
DEFAULT_CROP_SECONDS = {"transformer": 10.0, "resnet": 81480 / 22050, "musicnn": 187 * 256 / 16000}


def _module(arch: str):
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    module_name, class_name = ARCHITECTURES[arch]
    module = importlib.import_module(module_name)
    return module, getattr(module, class_name)


def presets(arch: str) -> dict[str, dict[str, Any]]:
    return _module(arch)[0].PRESETS


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the (untrained) network a config describes."""
    return _module(config.arch)[1](config)


def crop_seconds_for(arch: str, crop_seconds: float | None = None) -> float:
    """``crop_seconds`` when given, else the length ``arch`` was designed for."""
    return DEFAULT_CROP_SECONDS.get(arch, 10.0) if crop_seconds is None else crop_seconds


def make_config(
    arch: str,
    tags: list[str],
    preset: str = "teacher",
    crop_seconds: float | None = None,
    **overrides: Any,
) -> ModelConfig:
    """A config for ``arch`` at a named preset, with optional parameter overrides."""
    table = presets(arch)
    if preset not in table:
        raise ValueError(f"unknown preset {preset!r} for {arch}; known: {', '.join(table)}")
    return ModelConfig(
        arch=arch,
        tags=list(tags),
        preset=preset,
        params={**table[preset], **overrides},
        crop_seconds=crop_seconds_for(arch, crop_seconds),
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHITECTURES", "FORMAT_VERSION", "ModelConfig", "build_model", "crop_seconds_for", "make_config", "presets", "count_parameters"]
