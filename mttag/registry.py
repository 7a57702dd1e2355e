"""The registry of known pretrained models: data in ``mttag/data/registry.json``, not code.

Each entry names a model (``--model NAME``) and says where its weights live: ``{"bundled":
"models/NAME"}`` (a model directory shipped inside the package, relative to the registry
file) or ``{"hub": "owner/name", "revision": "..."}`` (downloaded on first use). The
registry never pretends: a bundled directory missing from the installed package is reported
as ``not available``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .modelfile import CONFIG_NAME, WEIGHTS_NAME, ModelLoadError

REGISTRY_PATH = Path(__file__).parent / "data" / "registry.json"

# status values reported by list_models()
BUNDLED = "bundled"
CACHED = "cached"
NOT_DOWNLOADED = "not downloaded"
NOT_AVAILABLE = "not available"

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def load_registry(path: str | Path | None = None) -> dict[str, Any]:
    """The parsed registry file (``REGISTRY_PATH`` by default), checked for shape."""
    path = Path(path) if path is not None else REGISTRY_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"default": None, "models": [], "_path": str(path)}
    except ValueError as exc:
        raise ModelLoadError(f"{path}: the model registry is not valid JSON ({exc})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise ModelLoadError(f"{path}: the model registry has no 'models' list")
    seen = set()
    for entry in models:
        name = entry.get("name") if isinstance(entry, dict) else None
        location = entry.get("location") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in seen:
            raise ModelLoadError(f"{path}: registry entry without a unique name: {entry!r}"[:200])
        if not isinstance(location, dict) or ("bundled" in location) == ("hub" in location):
            raise ModelLoadError(f"{path}: registry entry {name!r} needs a location with 'bundled' or 'hub'")
        seen.add(name)
    data["_path"] = str(path)
    return data


def get_entry(name: str, path: str | Path | None = None) -> dict[str, Any] | None:
    """The registry entry called ``name``, or None."""
    registry = load_registry(path)
    entry = next((e for e in registry["models"] if e["name"] == name), None)
    if entry is not None:
        entry = dict(entry, _path=registry["_path"])
    return entry


def default_model_name(path: str | Path | None = None) -> str | None:
    """The name of the model ``mttag tag`` uses without ``--model``."""
    return load_registry(path).get("default")


def bundled_dir(entry: dict[str, Any]) -> Path | None:
    """The directory a bundled entry points at (whether or not it exists); None for Hub entries."""
    rel = entry["location"].get("bundled")
    if rel is None:
        return None
    base = Path(entry.get("_path") or REGISTRY_PATH).parent
    target = (base / rel).resolve()
    if base.resolve() not in target.parents:
        raise ModelLoadError(f"registry entry {entry['name']!r} points outside the package: {rel}")
    return target


def is_complete(directory: Path | None) -> bool:
    return directory is not None and (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()


def local_dir(entry: dict[str, Any], cache_dir: str | Path | None = None) -> Path | None:
    """Where the entry's files are on this machine right now (bundled or cached), else None; no network."""
    if "bundled" in entry["location"]:
        directory = bundled_dir(entry)
        return directory if is_complete(directory) else None
    from .hub import cached_model_dir

    return cached_model_dir(entry["location"]["hub"], entry["location"].get("revision"), cache_dir)


def entry_status(entry: dict[str, Any], cache_dir: str | Path | None = None) -> str:
    found = local_dir(entry, cache_dir)
    if "bundled" in entry["location"]:
        return BUNDLED if found else NOT_AVAILABLE
    return CACHED if found else NOT_DOWNLOADED


def where(entry: dict[str, Any]) -> str:
    """Where the weights live, for people: ``bundled (models/x)`` or ``hub owner/name@rev``."""
    location = entry["location"]
    if "bundled" in location:
        return f"bundled ({location['bundled']})"
    rev = location.get("revision")
    return f"hub {location['hub']}" + (f"@{rev}" if rev else "")


def count_safetensors_parameters(path: Path) -> int | None:
    """Parameters stored in a safetensors file (BatchNorm statistics excluded), read from its header only."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        return sum(
            math.prod(info["shape"]) for key, info in header.items()
            if key != "__metadata__" and not key.endswith(_BUFFER_SUFFIXES)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_models(cache_dir: str | Path | None = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Every registered model with its computed ``status`` (bundled / cached / not downloaded /
    not available), ``path`` (local directory or None), ``where`` and ``default`` flag.
    ``params`` is counted from the local weights when they are present."""
    registry = load_registry(path)
    out = []
    for raw in registry["models"]:
        entry = dict(raw, _path=registry["_path"])
        found = local_dir(entry, cache_dir)
        if "bundled" in entry["location"]:
            status = BUNDLED if found else NOT_AVAILABLE
        else:
            status = CACHED if found else NOT_DOWNLOADED
        item = {k: v for k, v in entry.items() if not k.startswith("_")}
        if found is not None:
            counted = count_safetensors_parameters(found / WEIGHTS_NAME)
            if counted is not None:
                item["params"] = counted
        item.update(
            status=status,
            path=str(found) if found else None,
            where=where(entry),
            default=entry["name"] == registry.get("default"),
        )
        out.append(item)
    return out
