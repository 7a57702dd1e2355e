"""Resolve what a user names as a model (``--model``/``--teacher``) to a local model directory.

A name is tried as, in order:

1. an existing local model directory;
2. a registered model name (``mttag models``): bundled in the package, a local directory named
   by a user registry, a Hub repo (optionally ``NAME@revision``) or a URL pinned by its hash
   (downloaded, verified and converted once; see :mod:`mttag.weights.download`);
3. a Hub repo id ``owner/name`` or ``owner/name@revision`` (branch, tag or commit sha),
   downloaded once into huggingface_hub's cache (see :mod:`mttag.weights.hub`).

No name (``None``) means the default model: ``MTTAG_MODEL`` if set, else the ``default`` of a user
registry, else the shipped default, which ships inside the wheel (see :mod:`mttag.weights.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from torch import nn

HOW_TO_GET_A_MODEL = (
    "pass --model with a model directory, a name from `mttag models` or a Hub repo id (owner/name)"
)


def _resolve_registered(entry: dict, revision: str | None, token: str | None, cache_dir,
                        progress: bool | None = None) -> Path:
    from . import registry

    kind = registry.location_kind(entry)
    if kind == "bundled":
        if revision:
            raise ModelLoadError(f"{entry['name']} is a local model directory and has no revisions; drop '@{revision}'")
        directory = registry.bundled_dir(entry)
        if not registry.is_complete(directory):
            if not entry.get("_shipped", True):
                raise ModelLoadError(
                    f"model '{entry['name']}' (from {entry.get('_registry')}) points at {directory}, which is not a "
                    f"model directory (config.json + model.safetensors); fix the registry entry, or {HOW_TO_GET_A_MODEL}"
                )
            raise ModelLoadError(
                f"model '{entry['name']}' is not available in this installation (its bundled files are missing "
                f"from {directory}); reinstall mttag from PyPI, or {HOW_TO_GET_A_MODEL}"
            )
        return directory
    if kind == "url":
        if revision:
            raise ModelLoadError(f"{entry['name']} is pinned to one file by its hash and has no revisions; drop '@{revision}'")
        from .download import download_url_model

        return download_url_model(entry, cache_dir, progress=progress)
    from .hub import download_model

    location = entry["location"]
    return download_model(location["hub"], revision=revision or location.get("revision"), cache_dir=cache_dir,
                          token=token)


def _resolve_default(token: str | None, cache_dir, progress: bool | None) -> Path:
    from . import registry

    name = registry.default_model_name()
    origin = registry.default_model_origin()
    if name and origin != "mttag":
        # MTTAG_MODEL or a user registry's default: any model reference, resolved like --model
        try:
            return resolve_model(name, token=token, cache_dir=cache_dir, progress=progress)
        except ModelLoadError as exc:
            raise ModelLoadError(f"the default model {name!r} (set by {origin}): {exc}") from None
    entry = registry.get_entry(name) if name else None
    if entry is None:
        raise ModelLoadError(f"no default model is registered in this installation; {HOW_TO_GET_A_MODEL}")
    try:
        return _resolve_registered(entry, None, token, cache_dir, progress)
    except ModelLoadError as exc:
        raise ModelLoadError(f"no --model given and the default {exc}") from None


def resolve_model(
    name: str | Path | None = None,
    *,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> Path:
    """A local model directory for ``name`` (see the module docstring); downloads what is not
    cached yet. ``progress``: show a download progress bar (``None``: when stderr is a terminal).

    Raises :class:`ModelLoadError` with a one-line message when nothing matches or the
    download is refused (no safetensors, corrupt, wrong hash, offline and not cached, ...).
    """
    from . import registry

    if name is None or str(name) == "":
        return _resolve_default(token, cache_dir, progress)

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if isinstance(name, Path):
        raise ModelLoadError(f"{name}: no such model directory")

    text = str(name)
    base, _, revision = text.partition("@")
    entry = registry.get_entry(base)
    if entry is not None:
        return _resolve_registered(entry, revision or None, token, cache_dir, progress)

    from .hub import download_model, parse_repo_ref

    parsed = parse_repo_ref(text)
    if parsed is not None:
        repo_id, revision = parsed
        return download_model(repo_id, revision=revision, cache_dir=cache_dir, token=token)

    raise ModelLoadError(
        f"{text}: not a model directory, a registered model (see `mttag models`) or a Hub repo id (owner/name[@revision])"
    )


def load_model(
    name: str | Path | None = None,
    device: str = "cpu",
    *,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> "nn.Module":
    """Load a model by local path, registered name or Hub repo id (``None``: the default model),
    in eval mode on ``device``. ``mttag.load_model("won2021-student")`` downloads it once."""
    from .modelfile import load_local_model  # torch: only when a model is loaded

    directory = resolve_model(name, token=token, cache_dir=cache_dir, progress=progress)
    try:
        return load_local_model(directory, device=device)
    except ModelLoadError as exc:
        # name the model the way the user did, not by its cache path
        if name is not None and str(directory) != str(name) and str(directory) in str(exc):
            raise ModelLoadError(str(exc).replace(str(directory), str(name))) from None
        raise
