"""The registry of known pretrained models: data in JSON files, not code.

The shipped registry is ``mttag/data/registry.json``. Users and organisations add or override
entries, and choose the default model, without touching the package, with registry files of
the same shape (read in this order, later ones winning):

1. ``mttag/data/registry.json`` (shipped);
2. ``$XDG_CONFIG_HOME/mttag/registry.json`` (default ``~/.config/mttag/registry.json``; on
   Windows ``%APPDATA%\\mttag\\registry.json``), if it exists;
3. the files named by ``MTTAG_REGISTRY`` (one path, or several separated by ``os.pathsep``),
   which must exist.

An entry whose name is already known is merged over the earlier one key by key (so a mirror
only needs ``{"name": ..., "location": {...}}``); a new name adds a model. The default model
(used without ``--model``) is ``MTTAG_MODEL`` if set, else the ``default`` of the last registry
file that has one, else the shipped default.

Each entry names a model (``--model NAME``) and says where its weights live, one of:

- ``{"bundled": "models/NAME"}``: a model directory next to the registry file (in a user
  registry it may also be an absolute path: a directory on a shared drive);
- ``{"hub": "owner/name", "revision": "..."}``: a Hugging Face Hub repo (``HF_ENDPOINT`` for a
  self-hosted Hub), downloaded on first use (:mod:`mttag.weights.hub`);
- ``{"url": "https://...", "sha1": "<git blob SHA-1>"}`` or ``"sha256"`` instead of
  ``"sha1"``, plus a ``"convert"`` recipe at the entry's top level: a checkpoint downloaded,
  verified and converted on first use (:mod:`mttag.weights.download`). A URL without a hash is refused.

The registry never pretends: statuses are computed when asked (a bundled directory missing from
the installed package is reported as ``not available``).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..constants import CONFIG_NAME, DATA_DIR, WEIGHTS_NAME
from ..errors import ModelLoadError

REGISTRY_PATH = DATA_DIR / "registry.json"
ENV_REGISTRY = "MTTAG_REGISTRY"
ENV_MODEL = "MTTAG_MODEL"
USER_REGISTRY_NAME = "registry.json"

# status values reported by list_models()
BUNDLED = "bundled"
LOCAL = "local"  # a directory named by a user registry
CACHED = "cached"
NOT_DOWNLOADED = "not downloaded"
NOT_AVAILABLE = "not available"

LOCATION_KINDS = ("bundled", "hub", "url")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


# -- where the files are -----------------------------------------------------------------------
def user_config_dir() -> Path:
    """mttag's folder in the user's configuration directory (``XDG_CONFIG_HOME`` honoured)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg).expanduser() / "mttag"
    if sys.platform == "win32" and os.environ.get("APPDATA"):  # pragma: no cover - Windows only
        return Path(os.environ["APPDATA"]) / "mttag"
    return Path.home() / ".config" / "mttag"


def user_registry_paths() -> list[Path]:
    """The user registry files in effect, in the order they apply (later ones win)."""
    paths = []
    config = user_config_dir() / USER_REGISTRY_NAME
    if config.is_file():
        paths.append(config)
    for part in (os.environ.get(ENV_REGISTRY) or "").split(os.pathsep):
        if not part.strip():
            continue
        path = Path(part.strip()).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{ENV_REGISTRY}={part.strip()}: no such registry file")
        paths.append(path)
    return paths


# -- reading and checking ------------------------------------------------------------------------
def _read_file(path: Path, shipped: bool) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if shipped:
            return {"default": None, "models": []}
        raise ModelLoadError(f"{path}: no such registry file") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ModelLoadError(f"{path}: the model registry is not readable JSON ({reason})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: the model registry must be a JSON object")
    models = data.get("models", [] if not shipped else None)
    if not isinstance(models, list):
        raise ModelLoadError(f"{path}: the model registry has no 'models' list")
    default = data.get("default")
    if default is not None and (not isinstance(default, str) or not default.strip()):
        raise ModelLoadError(f"{path}: 'default' must be a model name")
    seen = set()
    for entry in models:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in seen:
            raise ModelLoadError(f"{path}: registry entry without a unique name: {entry!r}"[:200])
        if not _NAME.match(name) or "--" in name:
            raise ModelLoadError(
                f"{path}: registry entry name {name!r} may only use letters, digits, '.', '_' and single '-'"[:200]
            )
        seen.add(name)
    return {"default": default, "models": models}


def check_entry(entry: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`ModelLoadError` (one line, naming the file) unless the entry's location is valid."""
    from .download import check_convert, check_location

    name = entry["name"]
    where = f"{path}: registry entry {name!r}"
    location = entry.get("location")
    kinds = [k for k in LOCATION_KINDS if isinstance(location, dict) and k in location]
    if len(kinds) != 1:
        raise ModelLoadError(f"{where} needs a location with exactly one of 'bundled', 'hub' or 'url'")
    kind = kinds[0]
    if kind in ("bundled", "hub") and (not isinstance(location[kind], str) or not location[kind].strip()):
        raise ModelLoadError(f"{where}: location '{kind}' must be a non-empty string")
    if kind == "hub" and location.get("revision") is not None and not isinstance(location["revision"], str):
        raise ModelLoadError(f"{where}: 'revision' must be a string")
    if kind == "url":
        try:
            check_location(location, where)
            check_convert(entry.get("convert"), where)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None


def load_registry(path: str | Path | None = None) -> dict[str, Any]:
    """The registry in effect: the shipped file merged with the user registries (see the module
    docstring). With ``path``, that one file alone. Every entry carries ``_path`` (the file its
    location came from), ``_shipped`` (whether that is the shipped registry) and ``_registry``
    (the last file that changed it)."""
    if path is not None:
        files = [(Path(path), True)]
    else:
        files = [(Path(REGISTRY_PATH), True)] + [(p, False) for p in user_registry_paths()]
    entries: dict[str, dict[str, Any]] = {}
    default, default_from = None, None
    for file, shipped in files:
        data = _read_file(file, shipped)
        if data["default"]:
            default, default_from = data["default"], str(file)
        for raw in data["models"]:
            old = entries.get(raw["name"])
            entry = dict(old or {}, **raw)
            entry["_registry"] = str(file)
            if old is None or "location" in raw:
                entry["_path"], entry["_shipped"] = str(file), shipped
            check_entry(entry, file)
            entries[raw["name"]] = entry
    if path is None and (os.environ.get(ENV_MODEL) or "").strip():
        default, default_from = os.environ[ENV_MODEL].strip(), ENV_MODEL
    return {"default": default, "default_from": default_from, "models": list(entries.values()),
            "_path": str(files[0][0]), "_files": [str(f) for f, _ in files]}


def get_entry(name: str, path: str | Path | None = None) -> dict[str, Any] | None:
    """The registry entry called ``name``, or None."""
    return next((e for e in load_registry(path)["models"] if e["name"] == name), None)


def default_model_name(path: str | Path | None = None) -> str | None:
    """What ``mttag tag`` uses without ``--model``: ``MTTAG_MODEL``, else the last user registry's
    ``default``, else the shipped default (a registered name, or with ``MTTAG_MODEL`` any model
    reference: a directory or a Hub id)."""
    return load_registry(path).get("default")


def default_model_origin() -> str:
    """Where the default model was chosen: ``MTTAG_MODEL``, a user registry file or ``mttag``."""
    registry = load_registry()
    origin = registry.get("default_from")
    return "mttag" if origin in (None, registry["_path"]) else origin


# -- locations -----------------------------------------------------------------------------------
def location_kind(entry: dict[str, Any]) -> str:
    return next(k for k in LOCATION_KINDS if k in entry["location"])


def bundled_dir(entry: dict[str, Any]) -> Path | None:
    """The directory a bundled/local entry points at (whether or not it exists); None otherwise.
    Shipped entries must stay inside the package; user registries may name any directory."""
    rel = entry["location"].get("bundled")
    if rel is None:
        return None
    base = Path(entry.get("_path") or REGISTRY_PATH).parent
    target = (base / Path(rel).expanduser()).resolve()
    if entry.get("_shipped", True) and base.resolve() not in target.parents:
        raise ModelLoadError(f"registry entry {entry['name']!r} points outside the package: {rel}")
    return target


def is_complete(directory: Path | None) -> bool:
    return directory is not None and (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()


def local_dir(entry: dict[str, Any], cache_dir: str | Path | None = None) -> Path | None:
    """Where the entry's files are on this machine right now (bundled, local or cached), else None;
    no network."""
    kind = location_kind(entry)
    if kind == "bundled":
        directory = bundled_dir(entry)
        return directory if is_complete(directory) else None
    if kind == "url":
        from .download import cached_dir

        return cached_dir(entry, cache_dir)
    from .hub import cached_model_dir

    return cached_model_dir(entry["location"]["hub"], entry["location"].get("revision"), cache_dir)


def entry_status(entry: dict[str, Any], cache_dir: str | Path | None = None, found: Path | None = None) -> str:
    """bundled / local / not available for directories, cached / not downloaded for downloads."""
    if found is None:
        found = local_dir(entry, cache_dir)
    if location_kind(entry) == "bundled":
        if not found:
            return NOT_AVAILABLE
        return BUNDLED if entry.get("_shipped", True) else LOCAL
    return CACHED if found else NOT_DOWNLOADED


def where(entry: dict[str, Any]) -> str:
    """Where the weights live, for people: ``bundled (models/x)``, ``local /dir``,
    ``hub owner/name@rev`` or ``url https://... (sha1 1b2a6f91f327)``."""
    location = entry["location"]
    kind = location_kind(entry)
    if kind == "bundled":
        if entry.get("_shipped", True):
            return f"bundled ({location['bundled']})"
        return f"local {bundled_dir(entry)}"
    if kind == "url":
        from .download import pinned_hash

        hash_kind, digest = pinned_hash(location)
        return f"url {location['url']} ({'git sha1' if hash_kind == 'sha1' else hash_kind} {digest[:12]})"
    rev = location.get("revision")
    return f"hub {location['hub']}" + (f"@{rev}" if rev else "")


def download_size(entry: dict[str, Any]) -> int | None:
    """Bytes a first use downloads, when the registry says (``location.size`` exact, else the
    entry's ``download_size`` estimate)."""
    for value in (entry["location"].get("size"), entry.get("download_size")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def count_safetensors_parameters(path: Path) -> int | None:
    """Parameters stored in a safetensors file (BatchNorm statistics excluded), read from its header
    only by ``safetensors.safe_open`` (which checks the header against the file; no torch needed)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return sum(
                math.prod(f.get_slice(key).get_shape()) for key in f.keys() if not key.endswith(_BUFFER_SUFFIXES)
            )
    except (SafetensorError, OSError, ValueError, TypeError):
        return None


def list_models(cache_dir: str | Path | None = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Every registered model with its computed ``status`` (bundled / local / cached / not
    downloaded / not available), ``path`` (local directory or None), ``where``, ``download_size``,
    ``registry`` (the file that defined or last changed it) and ``default`` flag. ``params`` is
    counted from the local weights when they are present."""
    registry = load_registry(path)
    out = []
    for entry in registry["models"]:
        found = local_dir(entry, cache_dir)
        item = {k: v for k, v in entry.items() if not k.startswith("_")}
        if found is not None:
            counted = count_safetensors_parameters(found / WEIGHTS_NAME)
            if counted is not None:
                item["params"] = counted
        item.update(
            status=entry_status(entry, cache_dir, found),
            path=str(found) if found else None,
            where=where(entry),
            download_size=download_size(entry) if location_kind(entry) != "bundled" else None,
            registry="mttag" if entry["_registry"] == registry["_path"] else entry["_registry"],
            default=entry["name"] == registry.get("default"),
        )
        out.append(item)
    return out
