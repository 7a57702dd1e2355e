"""Model directories: ``config.json`` + ``model.safetensors`` + ``README.md`` model card.

Weights are stored only as safetensors, which cannot run code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .fileio import atomic_write
from .models import ModelConfig, build_model, count_parameters

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


class ModelLoadError(Exception):
    """A model directory that cannot be loaded; the message says why in one line."""


def model_card(config: ModelConfig, n_params: int, metrics: dict[str, Any] | None = None, body: str = "") -> str:
    """A Hugging Face style model card: YAML metadata, then a human summary."""
    prov = config.provenance
    license_ = prov.get("license", "mit")
    datasets = prov.get("datasets", [])
    lines = ["---", "library_name: mttag", f"license: {license_}", "tags:", "- music-tagging",
             "- audio-classification", "- audio", f"- {config.arch}"]
    if datasets:
        lines += ["datasets:"] + [f"- {d}" for d in datasets]
    if metrics:
        lines += ["model-index:", f"- name: {prov.get('name', config.arch)}", "  results:",
                  "  - task:", "      type: audio-classification", "      name: Music tagging",
                  "    dataset:", f"      name: {prov.get('dataset_name', datasets[0] if datasets else 'custom')}",
                  f"      type: {datasets[0] if datasets else 'custom'}", "    metrics:"]
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                lines += [f"    - type: {key}", f"      value: {value:.4f}"]
    lines.append("---")
    title = prov.get("name", f"{config.arch} ({config.preset or 'custom'})")
    text = "\n".join(lines) + f"\n\n# {title}\n\n"
    text += (
        f"A music tagging model for [mttag](https://pypi.org/project/mttag/): architecture `{config.arch}`"
        f"{f', preset `{config.preset}`' if config.preset else ''}, {n_params:,} parameters, "
        f"{config.n_tags} tags, {config.sample_rate} Hz mono input, trained on {config.crop_seconds:g} s crops.\n\n"
        "```bash\nmttag tag ./music --model PATH_OR_REPO --top 5\n```\n\n"
    )
    if body:
        text += body.rstrip() + "\n\n"
    if metrics:
        text += "## Metrics\n\n| metric | value |\n| --- | --- |\n"
        text += "".join(f"| {k} | {v:.4f} |\n" for k, v in metrics.items() if isinstance(v, (int, float)))
        text += "\n"
    if prov:
        text += "## Provenance\n\n```json\n" + json.dumps(prov, indent=2, ensure_ascii=False) + "\n```\n\n"
    text += "## Tags\n\n" + ", ".join(config.tags) + "\n"
    return text


def save_model(
    model: nn.Module,
    directory: str | Path,
    metrics: dict[str, Any] | None = None,
    card_body: str = "",
) -> Path:
    """Write ``model`` (which carries its ``config``) as a model directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: ModelConfig = model.config
    config.provenance.setdefault("mttag_version", __version__)
    # DDP/compile wrappers and shared storage trip safetensors; store plain contiguous copies
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, config.save)
    card = model_card(config, count_parameters(model), metrics, card_body)
    atomic_write(directory / CARD_NAME, lambda p: Path(p).write_text(card, encoding="utf-8"))
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    try:
        return ModelConfig.load(path)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def load_local_model(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model directory from disk, in eval mode, on ``device``."""
    directory = Path(directory)
    config = load_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{directory}: no {WEIGHTS_NAME} (mttag only loads safetensors weights)")
    try:
        model = build_model(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{directory / CONFIG_NAME}: {exc}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{weights}: corrupt or truncated safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(f"{weights}: weights do not match the {config.arch} architecture ({detail})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            head = next(reversed(expected))  # the output layer's bias is last
            if name in (head, head.replace(".bias", ".weight")) and tensor.shape[0] != config.n_tags:
                raise ModelLoadError(
                    f"{directory}: config lists {config.n_tags} tags but the weights have {tensor.shape[0]} outputs"
                )
            raise ModelLoadError(
                f"{weights}: {name} has shape {tuple(tensor.shape)}, config expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
    return model.to(device).eval()
