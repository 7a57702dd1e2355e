"""Resolve what a user names as a model (``--model``/``--teacher``) to a local model directory."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .modelfile import ModelLoadError, load_local_model


def resolve_model(name: str | Path) -> Path:
    """A local model directory for ``name``."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ModelLoadError(f"{name}: no such model directory")


def load_model(name: str | Path, device: str = "cpu") -> nn.Module:
    """Load a model by local path, in eval mode on ``device``."""
    return load_local_model(resolve_model(name), device=device)
