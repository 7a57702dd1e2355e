"""The registry of known models: ``mttag/data/registry.json``, merged with the user's registry
files, each entry a name and a location (``bundled``, ``hub`` or ``url``); docs/models.md
describes the files, their order and the default model. Statuses are computed when asked."""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from ..constants import CONFIG_NAME, DATA_DIR, WEIGHTS_NAME
from ..errors import ModelLoadError
from ..util.fs import user_config_dir

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
_HEX = {"sha1": re.compile(r"^[0-9a-f]{40}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def user_registry_paths() -> list[Path]:
    """The user registry files in effect, in the order they apply (later ones win)."""
    config = user_config_dir() / USER_REGISTRY_NAME
    paths = [config] if config.is_file() else []
    for part in filter(str.strip, (os.environ.get(ENV_REGISTRY) or "").split(os.pathsep)):
        path = Path(part.strip()).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{ENV_REGISTRY}={part.strip()}: no such registry file")
        paths.append(path)
    return paths


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
    models, default = data.get("models", [] if not shipped else None), data.get("default")
    if not isinstance(models, list):
        raise ModelLoadError(f"{path}: the model registry has no 'models' list")
    if default is not None and (not isinstance(default, str) or not default.strip()):
        raise ModelLoadError(f"{path}: 'default' must be a model name")
    seen = set()
    for entry in models:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in seen:
            raise ModelLoadError(f"{path}: registry entry without a unique name: {entry!r}"[:200])
        if not _NAME.match(name) or "--" in name:
            raise ModelLoadError(
                f"{path}: registry entry name {name!r} may only use letters, digits, '.', '_' and single '-'"[:200])
        seen.add(name)
    return {"default": default, "models": models}


def _location_problem(entry: dict[str, Any]) -> str | None:
    """What is wrong with an entry's location (and a URL entry's ``convert`` recipe), or None."""
    from ..inference.vocab import VOCABULARIES
    from .download import FORMATS, HASH_KINDS, URL_SCHEMES

    location = entry.get("location")
    kinds = [k for k in LOCATION_KINDS if isinstance(location, dict) and k in location]
    if len(kinds) != 1:
        return " needs a location with exactly one of 'bundled', 'hub' or 'url'"
    kind = kinds[0]
    if kind in ("bundled", "hub") and (not isinstance(location[kind], str) or not location[kind].strip()):
        return f": location '{kind}' must be a non-empty string"
    if kind == "hub" and location.get("revision") is not None and not isinstance(location["revision"], str):
        return ": 'revision' must be a string"
    if kind != "url":
        return None
    url, hashes, size = location["url"], [k for k in HASH_KINDS if k in location], location.get("size")
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme.lower() not in URL_SCHEMES:
        return f": 'url' must be an {'/'.join(URL_SCHEMES)} URL"
    if not hashes:
        return (": a URL location needs its hash, 'sha1' (git blob SHA-1) or 'sha256'; mttag never downloads an "
                "unpinned file")
    for k in hashes:
        if not isinstance(location[k], str) or not _HEX[k].match(location[k].lower()):
            return f": '{k}' must be {40 if k == 'sha1' else 64} hexadecimal digits"
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        return ": 'size' must be a positive number of bytes"
    convert = entry.get("convert")
    if not isinstance(convert, dict):
        return ': a URL entry needs a \'convert\' object, e.g. {"format": "won2021-ckpt", "tags": "cals", "heads": 8}'
    if convert.get("format") not in FORMATS:
        return f": convert.format must be one of {', '.join(FORMATS)}"
    tags, heads = convert.get("tags"), convert.get("heads", 8)
    if not ((isinstance(tags, list) and tags and all(isinstance(t, str) and t.strip() for t in tags))
            or (isinstance(tags, str) and tags.lower() in VOCABULARIES)):
        return f": convert.tags must be {' or '.join(VOCABULARIES)} or a list of tag names"
    if isinstance(heads, bool) or not isinstance(heads, int) or not 1 <= heads <= 64:
        return ": convert.heads must be a whole number from 1 to 64"
    return None


def check_entry(entry: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`ModelLoadError` (one line, naming the file) unless the entry's location is valid."""
    problem = _location_problem(entry)
    if problem:
        raise ModelLoadError(f"{path}: registry entry {entry['name']!r}{problem}")


def load_registry(path: str | Path | None = None) -> dict[str, Any]:
    """The shipped registry merged with the user registries (with ``path``: that file alone), entry
    by entry and key by key. Each entry carries ``_path`` (the file its location came from),
    ``_shipped`` and ``_registry`` (the last file that changed it)."""
    files = [(Path(path if path is not None else REGISTRY_PATH), True)]
    if path is None:
        files += [(p, False) for p in user_registry_paths()]
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
    return {"default": default, "default_from": default_from, "models": list(entries.values()), "_path": str(files[0][0])}


def get_entry(name: str, path: str | Path | None = None) -> dict[str, Any] | None:
    return next((e for e in load_registry(path)["models"] if e["name"] == name), None)


def default_model_name(path: str | Path | None = None) -> str | None:
    """The model used without ``--model``: ``MTTAG_MODEL`` (any model reference), else the last user
    registry's ``default``, else the shipped one."""
    return load_registry(path).get("default")


def default_model_origin() -> str:
    """Where the default model was chosen: ``MTTAG_MODEL``, a user registry file or ``mttag``."""
    registry = load_registry()
    origin = registry.get("default_from")
    return "mttag" if origin in (None, registry["_path"]) else origin


def location_kind(entry: dict[str, Any]) -> str:
    return next(k for k in LOCATION_KINDS if k in entry["location"])


def bundled_dir(entry: dict[str, Any]) -> Path | None:
    """The directory a bundled/local entry points at, existing or not; shipped entries must stay
    inside the package, user registries may name any directory."""
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
    """Where the entry's files are on this machine now (bundled, local or cached), else None; no network."""
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
    found = found if found is not None else local_dir(entry, cache_dir)
    if location_kind(entry) != "bundled":
        return CACHED if found else NOT_DOWNLOADED
    return NOT_AVAILABLE if not found else BUNDLED if entry.get("_shipped", True) else LOCAL


def where(entry: dict[str, Any]) -> str:
    """``bundled (models/x)``, ``local /dir``, ``hub owner/name@rev`` or ``url https://... (sha1 1b2a6f91f327)``."""
    location, kind = entry["location"], location_kind(entry)
    if kind == "bundled":
        return f"bundled ({location['bundled']})" if entry.get("_shipped", True) else f"local {bundled_dir(entry)}"
    if kind == "url":
        from .download import pinned_hash

        hash_kind, digest = pinned_hash(location)
        return f"url {location['url']} ({'git sha1' if hash_kind == 'sha1' else hash_kind} {digest[:12]})"
    return f"hub {location['hub']}" + (f"@{location['revision']}" if location.get("revision") else "")


def download_size(entry: dict[str, Any]) -> int | None:
    """Bytes a first use downloads: ``location.size`` (exact), else the entry's ``download_size``."""
    for value in (entry["location"].get("size"), entry.get("download_size")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def count_safetensors_parameters(path: Path) -> int | None:
    """Parameters in a safetensors file (BatchNorm statistics excluded), from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith(_BUFFER_SUFFIXES))
    except (SafetensorError, OSError, ValueError, TypeError):
        return None


def list_models(cache_dir: str | Path | None = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Every registered model with its computed ``status``, ``path`` (local directory or None),
    ``where``, ``download_size``, ``registry`` (the file that last changed it), ``default`` and,
    when the weights are here, ``params`` counted from them."""
    registry = load_registry(path)
    out = []
    for entry in registry["models"]:
        found = local_dir(entry, cache_dir)
        item = {k: v for k, v in entry.items() if not k.startswith("_")}
        counted = count_safetensors_parameters(found / WEIGHTS_NAME) if found is not None else None
        if counted is not None:
            item["params"] = counted
        item.update(status=entry_status(entry, cache_dir, found), path=str(found) if found else None,
                    where=where(entry), download_size=download_size(entry) if location_kind(entry) != "bundled" else None,
                    registry="mttag" if entry["_registry"] == registry["_path"] else entry["_registry"],
                    default=entry["name"] == registry.get("default"))
        out.append(item)
    return out
