"""Model directories: ``config.json``, ``model.safetensors`` (never pickles) and a ``README.md`` card.

Loading is our own rather than ``safetensors.torch.load_model`` so that the network is built on the
``meta`` device and checked against the weights' header before any tensor is read or allocated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .. import __version__
from ..constants import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME  # noqa: F401 (re-exported)
from ..errors import ModelLoadError
from ..models import ModelConfig, build_model, count_parameters, place
from ..util.display import printable
from ..util.fileio import atomic_write
from ..util.text import one_line


def _card_metadata(config: ModelConfig, metrics: dict[str, Any] | None) -> str:
    """The card's YAML block, by huggingface_hub's ``ModelCardData``, so that any name (``run: v2``,
    ``yes``) reads back as exactly that string."""
    from huggingface_hub import EvalResult, ModelCardData

    prov = config.provenance
    datasets = [str(d) for d in prov.get("datasets", [])]
    dataset_type = datasets[0] if datasets else "custom"
    results = [
        EvalResult(task_type="audio-classification", task_name="Music tagging", dataset_type=dataset_type,
                   dataset_name=str(prov.get("dataset_name", dataset_type)), metric_type=str(key),
                   metric_value=round(float(value), 4))
        for key, value in (metrics or {}).items() if isinstance(value, (int, float))
    ]
    data = ModelCardData(library_name="mttag", license=str(prov.get("license", "mit")),
                         tags=["music-tagging", "audio-classification", "audio", str(config.arch)],
                         datasets=datasets or None, model_name=str(prov.get("name", config.arch)) if results else None,
                         eval_results=results or None)
    return "---\n" + data.to_yaml() + "\n---"


def model_card(config: ModelConfig, n_params: int, metrics: dict[str, Any] | None = None, body: str = "") -> str:
    """A Hugging Face style model card: YAML metadata, then a human summary."""
    prov = config.provenance
    title = prov.get("name", f"{config.arch} ({config.preset or 'custom'})")
    text = _card_metadata(config, metrics) + f"\n\n# {title}\n\n"
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


class ForeignFileError(FileExistsError):
    """A file mttag would replace was not written by mttag; the message names it in one line."""


def _is_mttag_config(path: Path) -> bool:
    """A config.json that :meth:`ModelConfig.save` wrote, not another tool's."""
    try:
        if path.stat().st_size > 10_000_000:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"format_version", "arch", "tags"} <= set(data)


def _is_mttag_card(path: Path) -> bool:
    """A README.md that :func:`model_card` wrote: its YAML block names mttag as the library."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(65536)
    except OSError:
        return False
    if not head.startswith("---\n"):
        return False
    meta = head[4:].split("\n---", 1)[0]
    return any(line.strip() == "library_name: mttag" for line in meta.splitlines())


def foreign_model_files(directory: str | Path) -> list[Path]:
    """The files :func:`save_model` would replace in ``directory`` that mttag did not write (weights
    are mttag's when its config is beside them); a path that is not a directory is itself in the way."""
    directory = Path(directory)
    if not os.path.lexists(directory):
        return []
    if not directory.is_dir():
        return [directory]
    config, weights, card = directory / CONFIG_NAME, directory / WEIGHTS_NAME, directory / CARD_NAME
    ours = config.is_file() and _is_mttag_config(config)
    foreign = []
    if os.path.lexists(config) and not ours:
        foreign.append(config)
    # weights carry no mark of their own: they are mttag's when the config beside them is
    if os.path.lexists(weights) and not (ours and weights.is_file()):
        foreign.append(weights)
    if os.path.lexists(card) and not (card.is_file() and _is_mttag_card(card)):
        foreign.append(card)
    return foreign


def check_model_dir(directory: str | Path, force: bool = False) -> None:
    """Raise :class:`ForeignFileError` if writing a model into ``directory`` would replace a
    file mttag did not write (``force``: replace such files, but never a non-directory)."""
    foreign = foreign_model_files(directory)
    if foreign and foreign[0] == Path(directory):
        raise ForeignFileError(f"{printable(directory)}: exists and is not a folder")
    if foreign and not force:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ForeignFileError(f"{printable(foreign[0])}{more}: exists and was not written by mttag; refusing to "
                               "replace it (add --force to replace it)")


def save_model(
    model: nn.Module,
    directory: str | Path,
    metrics: dict[str, Any] | None = None,
    card_body: str = "",
    *,
    force: bool = False,
) -> Path:
    """Write ``model`` (which carries its ``config``) as a model directory, replacing only files
    mttag wrote unless ``force`` (:class:`ForeignFileError`)."""
    directory = Path(directory)
    check_model_dir(directory, force)
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
    """The config of a model directory, every field checked against its allowed range."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    try:
        return ModelConfig.load(path)
    except (ValueError, TypeError, OSError) as exc:  # json.JSONDecodeError is a ValueError
        raise ModelLoadError(f"{path}: {one_line(exc)}") from None


def read_safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` from a safetensors header alone; ``safe_open`` raises unless the
    tensors' byte ranges tile the file exactly (sizes, gaps, overlaps, end), so we check nothing more."""
    with safe_open(str(path), framework="numpy") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a well-formed safetensors file (header and size), or None."""
    try:
        read_safetensors_header(path)
    except (OSError, ValueError, SafetensorError) as exc:
        return one_line(exc, 300)
    return None


def load_local_model(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model directory, in eval mode, on ``device``. Nothing is allocated before the config
    and the header agree: the network is built on the ``meta`` device and compared with the
    header's names and shapes; only then are the weights read."""
    directory = Path(directory)
    config = load_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{directory}: no {WEIGHTS_NAME} (mttag only loads safetensors weights)")
    try:
        with torch.device("meta"):
            model = build_model(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{directory / CONFIG_NAME}: {one_line(exc)}") from None
    try:
        header = read_safetensors_header(weights)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelLoadError(f"{weights}: corrupt or truncated safetensors file ({one_line(exc)})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(f"{weights}: weights do not match the {config.arch} architecture ({detail})")
    head = next(reversed(expected))  # the output layer's bias is last
    for name, (dtype, shape) in header.items():
        want = tuple(expected[name].shape)
        if shape != want:
            if name in (head, head.replace(".bias", ".weight")) and shape and shape[0] != config.n_tags:
                raise ModelLoadError(
                    f"{directory}: config lists {config.n_tags} tags but the weights have {shape[0]} outputs"
                )
            raise ModelLoadError(f"{weights}: {name} has shape {shape}, config expects {want}")
        if expected[name].is_floating_point() != dtype.startswith(("F", "BF")):
            raise ModelLoadError(f"{weights}: {name} is stored as {dtype}, config expects {expected[name].dtype}")
    state = {}
    try:
        with safe_open(str(weights), framework="pt") as f:
            for name in header:
                # a fresh (aligned) tensor of the network's own dtype per weight, as copying into an
                # allocated network would give: views into the file's buffer are unaligned, and some
                # CPU kernels then round differently
                src = f.get_tensor(name)
                state[name] = torch.empty(src.shape, dtype=expected[name].dtype, device="cpu").copy_(src)
                del src
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{weights}: corrupt or truncated safetensors file ({one_line(exc)})") from None
    model.load_state_dict(state, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a module that computes a buffer in __init__ without computed_buffers(): a bug of mttag
        raise ModelLoadError(f"{directory}: {left[0]} was not materialised (mttag bug: report it)")
    return place(model, device).eval()
