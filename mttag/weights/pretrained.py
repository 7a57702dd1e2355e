"""What a user names as a model (``--model``, ``--teacher``, ``mttag.load_model``) to a local model
directory: an existing directory, else a registered name, else a Hub id ``owner/name[@revision]``;
no name is the default model (docs/models.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from torch import nn

HOW_TO_GET_A_MODEL = "pass --model with a model directory, a name from `mttag models` or a Hub repo id (owner/name)"


def _resolve_registered(entry: dict, revision: str | None, token: str | None, cache_dir,
                        progress: bool | None = None) -> Path:
    from . import registry

    kind, name = registry.location_kind(entry), entry["name"]
    if kind != "hub" and revision:
        what = "a local model directory" if kind == "bundled" else "pinned to one file by its hash"
        raise ModelLoadError(f"{name} is {what} and has no revisions; drop '@{revision}'")
    if kind == "url":
        from .download import download_url_model

        return download_url_model(entry, cache_dir, progress=progress)
    if kind == "hub":
        from .hub import download_model

        location = entry["location"]
        return download_model(location["hub"], revision or location.get("revision"), cache_dir, token)
    directory = registry.bundled_dir(entry)
    if registry.is_complete(directory):
        return directory
    if not entry.get("_shipped", True):
        raise ModelLoadError(f"model '{name}' (from {entry.get('_registry')}) points at {directory}, which is not a "
                             f"model directory (config.json + model.safetensors); fix the registry entry, or "
                             f"{HOW_TO_GET_A_MODEL}")
    raise ModelLoadError(f"model '{name}' is not available in this installation (its bundled files are missing "
                         f"from {directory}); reinstall mttag from PyPI, or {HOW_TO_GET_A_MODEL}")


def resolve_model(name: str | Path | None = None, *, token: str | None = None, cache_dir: str | Path | None = None,
                  progress: bool | None = None) -> Path:
    """A local model directory for ``name``, downloaded if not cached yet (``progress``: a progress
    bar; ``None``: when stderr is a terminal). Raises a one-line :class:`ModelLoadError`."""
    from . import registry

    if name is None or str(name) == "":
        name, origin = registry.default_model_name(), registry.default_model_origin()
        if name and origin != "mttag":  # MTTAG_MODEL or a user registry: any reference, as with --model
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
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    if isinstance(name, Path):
        raise ModelLoadError(f"{name}: no such model directory")
    name = str(name)
    base, _, revision = name.partition("@")
    entry = registry.get_entry(base)
    if entry is not None:
        return _resolve_registered(entry, revision or None, token, cache_dir, progress)
    from .hub import download_model, parse_repo_ref

    parsed = parse_repo_ref(name)
    if parsed is None:
        raise ModelLoadError(f"{name}: not a model directory, a registered model (see `mttag models`) or a Hub repo "
                             "id (owner/name[@revision])")
    return download_model(parsed[0], revision=parsed[1], cache_dir=cache_dir, token=token)


def load_model(name: str | Path | None = None, device: str = "cpu", *, token: str | None = None,
               cache_dir: str | Path | None = None, progress: bool | None = None) -> "nn.Module":
    """Load a model by local path, registered name or Hub repo id (``None``: the default model),
    in eval mode on ``device``. ``mttag.load_model("won2021-student")`` downloads it once."""
    from .modelfile import load_local_model  # torch: only when a model is loaded

    directory = resolve_model(name, token=token, cache_dir=cache_dir, progress=progress)
    try:
        return load_local_model(directory, device=device)
    except ModelLoadError as exc:
        if name is not None and str(directory) != str(name) and str(directory) in str(exc):
            raise ModelLoadError(str(exc).replace(str(directory), str(name))) from None  # the user's name, not the cache path
        raise
