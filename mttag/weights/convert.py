"""Convert the authors' released checkpoints (``teacher.ckpt``, ``compact_student.ckpt``)
into mttag model directories (docs/models.md describes them)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..models import ModelConfig, build_model, make_config, presets
from .modelfile import ForeignFileError, check_model_dir, save_model

_BLOCK_KEYS = {
    "0.fn.norm": "attn_norm",
    "0.fn.fn.to_qkv": "attn.to_qkv",
    "0.fn.fn.to_out.0": "attn.to_out",
    "1.fn.norm": "ff_norm",
    "1.fn.fn.net.0": "ff.0",
    "1.fn.fn.net.3": "ff.3",
}
_HEAD_KEYS = {"mlp_head.0.": "head_norm.", "mlp_head.1.": "head."}


class ConversionError(Exception):
    pass


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The student network's tensors, prefix removed. Loaded with ``weights_only=True``:
    a checkpoint cannot run code, and one that needs arbitrary objects is refused."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: not a loadable weights-only PyTorch checkpoint ({first[:160]})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: no state_dict inside")
    # the student checkpoint also carries its teacher ("teacher_network.") — not ours to keep
    net = {k[len("network."):]: v for k, v in state.items() if k.startswith("network.")}
    if not net:
        raise ConversionError(f"{path}: no 'network.' keys; not an authors' Music Tagging Transformer checkpoint")
    odd = next((k for k, v in net.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise ConversionError(f"{path}: 'network.{odd}' is not a tensor; not an authors' checkpoint")
    return net


def _rename(key: str, to_ours: bool) -> str:
    """One tensor name, the authors' to mttag's (``to_ours``) or back."""
    blocks, head = _BLOCK_KEYS, _HEAD_KEYS
    if not to_ours:
        blocks, head = {v: k for k, v in blocks.items()}, {v: k for k, v in head.items()}
    m = re.fullmatch(r"(transformer\.layers|blocks)\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m[1] == ("transformer.layers" if to_ours else "blocks"):
        if m[3] not in blocks:
            raise ConversionError(f"unexpected {'checkpoint' if to_ours else 'model'} key {key}")
        return f"{'blocks' if to_ours else 'transformer.layers'}.{m[2]}.{blocks[m[3]]}.{m[4]}"
    prefix = next((p for p in head if key.startswith(p)), None)
    return head[prefix] + key.split(".")[-1] if prefix else key


def rename_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Authors' key names → mttag's MusicTaggingTransformer names (the STFT window and mel matrix,
    ``spec.*``, are rebuilt from the config)."""
    return {_rename(k, True): v for k, v in state.items() if not k.startswith("spec.")}


def to_authors_layout(state: dict[str, torch.Tensor], prefix: str = "network.") -> dict[str, torch.Tensor]:
    """The inverse of :func:`rename_keys`, each name prefixed with ``prefix``."""
    return {prefix + _rename(k, False): v for k, v in state.items() if not k.startswith("spec.")}


def _as_dict(params) -> dict:
    return params.to_dict() if hasattr(params, "to_dict") else dict(params)


def infer_config(state: dict[str, torch.Tensor], tags: list[str], heads: int = 8) -> ModelConfig:
    """The config of a converted checkpoint: tensor shapes give the widths and depth; the
    closest preset (same width and depth) is named, with the differences as overrides."""
    try:
        channels = int(state["frontend.layer1.conv_1.weight"].shape[0])
        dim, fc_in = (int(n) for n in state["frontend.fc.weight"].shape)
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        max_len = int(state["pos_embedding"].shape[1]) - 1
        n_out = int(state["head.weight"].shape[0])
    except (KeyError, ValueError) as exc:
        raise ConversionError(f"checkpoint lacks expected tensor {exc}") from None
    if n_out != len(tags):
        raise ConversionError(f"the checkpoint predicts {n_out} tags but the tag list has {len(tags)}")
    if fc_in % channels:
        raise ConversionError(f"frontend.fc takes {fc_in} inputs, not a multiple of the {channels} conv channels")
    shape = dict(conv_channels=channels, dim=dim, depth=depth, heads=heads, max_len=max_len,
                 n_mels=fc_in // channels * 8)
    table = {name: _as_dict(p) for name, p in presets("transformer").items()}
    # an exact preset (the released teacher); else the preset of the same width and depth (the
    # released compact student is the paper's "small" student with 128 conv channels); else teacher
    preset = next((n for n, p in table.items() if all(p.get(k) == v for k, v in shape.items())), None) \
        or next((n for n, p in table.items() if (p.get("dim"), p.get("depth")) == (dim, depth)), "teacher")
    overrides = {k: v for k, v in shape.items() if table[preset].get(k) != v}
    try:
        return make_config("transformer", list(tags), preset, crop_seconds=10.0, **overrides)
    except ValueError as exc:
        raise ConversionError(f"the checkpoint's shapes are not a valid transformer ({exc})") from None


def convert_checkpoint(
    path: str | Path,
    out_dir: str | Path,
    tags: list[str],
    heads: int = 8,
    name: str | None = None,
    *,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    card_body: str | None = None,
    force: bool = False,
) -> Path:
    """Convert an authors' checkpoint to a model directory; returns the directory. ``provenance``
    adds to what the config records, ``metrics`` go into the card. Files in ``out_dir`` that mttag
    did not write are refused before the checkpoint is read, unless ``force``."""
    try:
        check_model_dir(out_dir, force)
    except ForeignFileError as exc:
        raise ConversionError(str(exc)) from None
    state = rename_keys(read_checkpoint(path))
    config = infer_config(state, tags, heads)
    config.provenance.update({
        "name": name or Path(path).stem,
        "converted_from": Path(path).name,
        "source": "Won, Choi, Serra (ISMIR 2021), github.com/minzwon/semi-supervised-music-tagging-transformer",
        "license": "mit",
        "datasets": ["million-song-dataset"],
    })
    config.provenance.update(provenance or {})
    try:
        model = build_model(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as exc:  # shapes that contradict each other
        first = " ".join(str(exc).split())[:200]
        raise ConversionError(f"{path}: the tensors do not fit one transformer ({first})") from None
    if missing or unexpected:
        raise ConversionError(f"{path}: keys do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    body = card_body if card_body is not None else "Converted from the authors' released PyTorch Lightning checkpoint."
    try:
        return save_model(model.eval(), out_dir, metrics=metrics, card_body=body, force=force)
    except ForeignFileError as exc:  # a file put there while the checkpoint was read
        raise ConversionError(str(exc)) from None
