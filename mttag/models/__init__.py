"""Model architectures. Each takes a :class:`ModelConfig` and maps waveforms ``B×N`` to logits.

Configs, typed parameters and presets (:mod:`.config`, :mod:`.params`) do not need
torch; the networks are imported when first built.

A network declares what it can do as class attributes, read with ``getattr`` and a default so
that code outside the models never branches on an architecture's name:
``channels_last_on_cpu`` (:func:`place`), ``bf16_on_cuda`` (:func:`mttag.device.resolve_precision`,
default False: float32 until measured) and ``max_samples`` (the longest input taken whole, longer
than the training crop; default 0: windows of the crop).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any

from .config import FORMAT_VERSION, ModelConfig
from .params import (
    PARAMS,
    ArchParams,
    MusicnnParams,
    ResNetParams,
    TransformerParams,
    params_class,
    preset_names,
    preset_params,
)

if TYPE_CHECKING:
    from torch import nn

# arch name -> (module, class); imported lazily so that e.g. listing models stays cheap
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "transformer": ("mttag.models.transformer", "MusicTaggingTransformer"),
    "resnet": ("mttag.models.resnet", "ShortChunkResNet"),
    "musicnn": ("mttag.models.musicnn", "Musicnn"),
    "musicnn-multi": ("mttag.models.musicnn", "MusicnnMulti"),
}
# Training crop length each architecture was designed for (the papers of mttag.models.transformer
# and mttag.models.resnet; musicnn: Pons & Serra 2019).
# The ResNet's "3.69 s" is exactly 81,480 samples at 22,050 Hz; musicnn's "3 s" patch is
# 187 frames of hop 256 at 16 kHz = 2.992 s.
DEFAULT_CROP_SECONDS = {"transformer": 10.0, "resnet": 81480 / 22050, "musicnn": 187 * 256 / 16000,
                        "musicnn-multi": 187 * 256 / 16000}


def _module(arch: str):
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    module_name, class_name = ARCHITECTURES[arch]
    module = importlib.import_module(module_name)
    return module, getattr(module, class_name)


def presets(arch: str) -> dict[str, ArchParams]:
    """``arch``'s presets: name -> typed parameters (see :func:`preset_names` for just the names)."""
    params_class(arch)
    from .params import PRESETS

    return dict(PRESETS[arch])


def build_model(config: ModelConfig) -> "nn.Module":
    """Instantiate the (untrained) network a config describes; the config is checked first
    (``ValueError`` with a one-line message). Under ``with torch.device("meta")`` no memory is
    allocated except for the small, parameter-free front ends (see :func:`computed_buffers`)."""
    config.validate()
    return _module(config.arch)[1](config)


def computed_buffers():
    """Context for building modules whose tensors are computed, not loaded (the spectrogram
    front ends: window and mel filterbank are non-persistent buffers). When the network is being
    built on the ``meta`` device (see :func:`mttag.weights.modelfile.load_local_model`), these are built
    on the CPU, so that a model materialised from a state dict has them right."""
    import torch

    if torch.empty(0).device.type == "meta":
        return torch.device("cpu")
    return contextlib.nullcontext()


def place(model: "nn.Module", device) -> "nn.Module":
    """``model`` moved to ``device``; on the CPU a network of 2-D convolutions (the Transformer's
    front end, the ResNet) also gets its conv weights in channels-last order, oneDNN's native
    layout, which the default layout makes it reorder into at every layer. Measured on a 2-core
    AVX-512 CPU (benchmarks/conv_layout.py): training steps 1.2x faster, and 2.1x for the teacher
    preset under bf16; inference 1.15-1.6x, and 3.5x for the teacher under bf16. Outputs agree
    with the default layout to float rounding; saved weights are unaffected (``save_model``
    stores contiguous copies). Like ``.to``, it changes ``model`` in place."""
    import torch

    model = model.to(device)
    if torch.device(device).type == "cpu" and getattr(model, "channels_last_on_cpu", False):
        model = model.to(memory_format=torch.channels_last)
    return model


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
    """A config for ``arch`` at a named preset, with optional parameter overrides.

    Unknown override names and out-of-range values raise ``ValueError`` (one line). The
    config's ``params`` spell out every parameter, so a later change of a default cannot
    change a saved model.
    """
    params = preset_params(arch, preset).replace(**overrides)
    config = ModelConfig(
        arch=arch,
        tags=list(tags),
        preset=preset,
        params=params.to_dict(),
        crop_seconds=crop_seconds_for(arch, crop_seconds),
    )
    return config


def count_parameters(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ARCHITECTURES", "FORMAT_VERSION", "PARAMS", "ArchParams", "ModelConfig", "MusicnnParams", "ResNetParams",
    "TransformerParams", "build_model", "computed_buffers", "count_parameters", "crop_seconds_for", "make_config", "place",
    "params_class", "preset_names", "preset_params", "presets",
]
