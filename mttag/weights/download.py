"""Models from a URL pinned by a hash: downloaded into a staging folder, hash-checked before the
checkpoint is opened, converted, renamed into huggingface_hub's cache as
``models--mttag-url--NAME/snapshots/<hash>`` (docs/models.md, "Caching").

The transfer is our own (stdlib ``urllib``) because huggingface_hub's downloader is internal API,
takes no ``file://`` URLs, has no size cap and cannot tell a stalled transfer from a cut-off one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .. import __version__
from ..constants import CONFIG_NAME, DATA_DIR, WEIGHTS_NAME
from ..errors import ModelLoadError
from ..util.hashing import file_hash, git_blob_sha1  # noqa: F401 (git_blob_sha1: part of this module's API)
from ..util.text import one_line
from .hub import hub_cache_dir, is_offline

SOURCE_NAME = "source.json"
FORMATS = ("won2021-ckpt",)  # checkpoint formats a "convert" recipe may name
URL_SCHEMES = ("https", "http", "file")
HASH_KINDS = ("sha1", "sha256")
MAX_DOWNLOAD_BYTES = 4 << 30  # no tagging checkpoint is this large: a wrong URL cannot fill the disk
TIMEOUT_S = 60.0
_STALE_S = 24 * 3600  # staging folders of crashed downloads older than this are removed


def pinned_hash(location: dict[str, Any]) -> tuple[str, str]:
    """``(kind, hex)`` of a URL location: ``sha256`` when given, else ``sha1`` (git blob id)."""
    for kind in ("sha256", "sha1"):
        if location.get(kind):
            return kind, str(location[kind]).lower()
    raise ModelLoadError(f"a URL location needs its hash ('sha1' or 'sha256'): {location.get('url')}")


def human_size(n: int | float | None) -> str:
    from rich.filesize import decimal

    return decimal(int(n)) if isinstance(n, (int, float)) and n > 0 else "?"


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc or parts.scheme + ":"


# -- the cache -------------------------------------------------------------------------------
def storage_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    return hub_cache_dir(cache_dir) / f"models--mttag-url--{name}"


def snapshot_dir(entry: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    return storage_folder(entry["name"], cache_dir) / "snapshots" / pinned_hash(entry["location"])[1]


def recipe(entry: dict[str, Any]) -> dict[str, Any]:
    """What determines the converted model: the pinned file and the conversion settings."""
    kind, digest = pinned_hash(entry["location"])
    convert = entry.get("convert") or {}
    return {"hash": f"{kind}:{digest}", "format": convert.get("format"), "tags": convert.get("tags"),
            "heads": int(convert.get("heads", 8))}


def _read_source(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / SOURCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_dir(entry: dict[str, Any], cache_dir: str | Path | None = None) -> Path | None:
    """The converted model of a URL entry if it is complete in the cache (no network, no hashing)."""
    directory = snapshot_dir(entry, cache_dir)
    complete = (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()
    return directory if complete and _read_source(directory).get("recipe") == recipe(entry) else None


def _verify_cached(entry: dict[str, Any], directory: Path) -> None:
    """Each use: the weights and config must still hash to what source.json recorded."""
    from .modelfile import safetensors_problem

    recorded, problem = _read_source(directory).get("files") or {}, None
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        want = recorded.get(filename)
        got = want and file_hash(directory / filename, "sha256")
        problem = problem or (f"{SOURCE_NAME} records no hash for {filename}" if not want else None) or (
            f"{filename} has sha256 {got[:12]}... instead of {want[:12]}..." if got != want else None)
    problem = problem or safetensors_problem(directory / WEIGHTS_NAME)
    if problem:
        _remove_tree(directory)
        raise ModelLoadError(f"{entry['name']}: the cached model in {directory} is damaged ({problem}); it was "
                             "removed, run the command again to download it afresh")


def _remove_tree(path: Path) -> None:
    """Move a directory out of ``snapshots/`` in one step, then delete it: never half a model."""
    parent = path.parent.parent if path.parent.name == "snapshots" else path.parent
    trash = parent / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


# -- download --------------------------------------------------------------------------------
def fetch(url: str, dest: Path, label: str, *, progress: bool | None = None, max_bytes: int = MAX_DOWNLOAD_BYTES,
          expected_size: int | None = None, timeout: float = TIMEOUT_S) -> int:
    """Stream ``url`` into ``dest``; returns the number of bytes. A one-line :class:`ModelLoadError`
    on HTTP errors, an unreachable host, a stalled or cut-off transfer (fewer bytes than announced)
    or more than ``max_bytes``; ``dest`` may then hold partial data, which the caller removes."""
    from huggingface_hub.utils import tqdm  # honours HF_HUB_DISABLE_PROGRESS_BARS

    scheme, host = urllib.parse.urlsplit(url).scheme.lower(), _host(url)
    if scheme not in URL_SCHEMES:
        raise ModelLoadError(f"{label}: cannot download {url!r}: only {', '.join(URL_SCHEMES)} URLs are supported")
    request = urllib.request.Request(url, headers={"User-Agent": f"mttag/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as exc:
        raise ModelLoadError(f"{label}: downloading {url} failed with HTTP {exc.code} {exc.reason}; check the URL "
                             "of the registry entry (or its mirror) and try again later") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if scheme == "file":
            raise ModelLoadError(f"{label}: cannot read {url} ({reason})") from None
        raise ModelLoadError(f"{label}: cannot reach {host} ({reason}); check the connection or proxy, or point "
                             "MTTAG_REGISTRY at a registry with a mirror you can reach (see docs/models.md)") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.strip().isdigit() else None
        if total is not None and total > max_bytes:
            raise ModelLoadError(f"{label}: {url} is {human_size(total)}, more than any model mttag downloads; refused")
        announced, received = (total if total is not None else expected_size), 0
        shown = progress is not False and sys.stderr.isatty()  # never into a pipe or a log
        with open(dest, "wb") as out, tqdm(total=announced, unit="B", unit_scale=True, leave=False,
                                           desc=f"downloading {label}", disable=not shown) as bar:
            while True:
                try:
                    chunk = response.read(1 << 16)
                except TimeoutError as exc:
                    raise ModelLoadError(f"{label}: the download from {host} stalled ({str(exc) or 'timed out'}) "
                                         f"after {human_size(received)}; nothing was kept, run the command again") from None
                except Exception as exc:  # a reset connection, http.client.IncompleteRead, ...
                    raise ModelLoadError(f"{label}: the connection to {host} broke after {human_size(received)} "
                                         f"({type(exc).__name__}); nothing was kept, run the command again") from None
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes or (total is not None and received > total):
                    raise ModelLoadError(f"{label}: {url} sent more data than announced; refused")
                out.write(chunk)
                bar.update(len(chunk))
    if announced is not None and received != announced:
        raise ModelLoadError(f"{label}: the download from {host} was cut off ({received:,} of {announced:,} bytes); "
                             "nothing was kept, run the command again")
    return received


def _convert(entry: dict[str, Any], checkpoint: Path, out_dir: Path) -> Path:
    """Run the entry's conversion recipe on a verified checkpoint, recording where it came from."""
    from ..inference.vocab import resolve_tags
    from .convert import ConversionError, convert_checkpoint

    name, location, convert = entry["name"], entry["location"], entry.get("convert") or {}
    if convert.get("format") not in FORMATS:
        raise ModelLoadError(f"{name}: unknown checkpoint format {convert.get('format')!r}; known: {', '.join(FORMATS)}")
    tags = convert.get("tags")
    try:
        tag_list = list(tags) if isinstance(tags, list) else resolve_tags(str(tags))
    except ValueError as exc:
        raise ModelLoadError(f"{name}: {exc}") from None
    kind, digest = pinned_hash(location)
    provenance = {
        "name": name, "description": entry.get("description"), "url": location["url"],
        kind if kind == "sha256" else "git_blob_sha1": digest,
        "converted_from": Path(urllib.parse.urlsplit(location["url"]).path).name or "checkpoint",
        "license": entry.get("license", "unknown"), "homepage": entry.get("url"),
        "datasets": entry.get("datasets") or ["million-song-dataset"],
        **{k: entry.get(k) for k in ("source", "copyright", "paper", "metrics", "metrics_note", "dataset_name")},
    }
    metrics = {k: v for k, v in (entry.get("metrics") or {}).items() if isinstance(v, (int, float))}
    body = [entry.get("description") or "", "",
            f"Downloaded from <{location['url']}> ({'git blob SHA-1' if kind == 'sha1' else 'sha256'} `{digest}`, "
            f"verified before it was opened) and converted to safetensors by mttag {__version__}; "
            "the original checkpoint was not kept."]
    if entry.get("paper"):
        body += ["", f"Paper: {entry['paper']}."]
    if metrics:
        body += ["", f"Metrics below: {entry.get('metrics_note') or 'published by the authors, not re-measured on these weights'}."]
    if entry.get("license"):
        body += ["", f"License: {entry['license']}" + (f" ({entry['copyright']})" if entry.get("copyright") else "") + "."]
    try:
        directory = convert_checkpoint(
            checkpoint, out_dir, tag_list, heads=int(convert.get("heads", 8)), name=name,
            provenance={k: v for k, v in provenance.items() if v is not None}, metrics=metrics or None,
            card_body="\n".join(body).strip())
    except (ConversionError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{name}: the downloaded checkpoint (hash verified) could not be converted: "
                             f"{one_line(exc, 300)}") from None
    if str(entry.get("license", "")).lower() == "mit" and entry.get("copyright"):
        mit = (DATA_DIR / "mit-license.txt").read_text(encoding="utf-8")
        (directory / "LICENSE").write_text(f"MIT License\n\n{entry['copyright']}\n\n{mit}", encoding="utf-8")
    return directory


def download_url_model(entry: dict[str, Any], cache_dir: str | Path | None = None, *,
                       progress: bool | None = None) -> Path:
    """The converted model directory of a URL registry entry: from the cache (no network at all),
    else downloaded, verified, converted and cached. Raises :class:`ModelLoadError` (one line)."""
    name, location = entry["name"], entry["location"]
    cached = cached_dir(entry, cache_dir)
    if cached is not None:
        _verify_cached(entry, cached)
        return cached
    folder = storage_folder(name, cache_dir)
    if is_offline():
        size = (f"{human_size(location['size'])} " if location.get("size") else
                f"~{human_size(entry['download_size'])} " if entry.get("download_size") else "")
        raise ModelLoadError(f"{name} is not downloaded yet and HF_HUB_OFFLINE is set; unset it and run `mttag models "
                             f"--download {name}` once ({size}from {_host(location['url'])}), or copy {folder} from a "
                             "machine that has it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for child in folder.iterdir():  # staging and trash folders left by crashed runs
            if child.name.startswith((".incoming-", ".trash-")) and time.time() - child.stat().st_mtime > _STALE_S:
                shutil.rmtree(child, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder))
    except OSError as exc:
        raise ModelLoadError(f"{name}: cannot write to the model cache {folder.parent} ({exc.strerror or exc})") from None
    try:
        checkpoint = staging / "download.part"
        fetch(location["url"], checkpoint, name, progress=progress, expected_size=location.get("size"))
        for kind in [k for k in HASH_KINDS if location.get(k)]:  # every hash the entry pins
            want, got = str(location[kind]).lower(), file_hash(checkpoint, kind)
            if got != want:
                hint = (" (the pinned value is the file's plain SHA-1; 'sha1' takes the git blob SHA-1, or use 'sha256')"
                        if kind == "sha1" and file_hash(checkpoint, "plain-sha1") == want else "")
                raise ModelLoadError(
                    f"{name}: the file from {location['url']} does not match the pinned hash "
                    f"({'git blob sha1' if kind == 'sha1' else kind} {got[:12]}... instead of {want[:12]}...){hint}; "
                    "it was deleted unopened and nothing was cached")
        model_dir = _convert(entry, checkpoint, staging / "model")
        checkpoint.unlink()  # the cache keeps safetensors only
        source = {"name": name, "url": location["url"], "recipe": recipe(entry),
                  "files": {f: file_hash(model_dir / f, "sha256") for f in (CONFIG_NAME, WEIGHTS_NAME)},
                  "mttag_version": __version__, "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (model_dir / SOURCE_NAME).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        target = snapshot_dir(entry, cache_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if cached_dir(entry, cache_dir) is None:  # else another process finished first: keep its copy
            if target.exists():  # an incomplete directory, or one converted with other settings
                _remove_tree(target)
            try:
                os.rename(model_dir, target)
            except OSError:
                if cached_dir(entry, cache_dir) is None:  # not another process finishing first
                    raise
    except OSError as exc:
        raise ModelLoadError(f"{name}: writing to the model cache {folder} failed ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            folder.rmdir()  # only if empty: a failed first download leaves no trace at all
        except OSError:
            pass
    result = cached_dir(entry, cache_dir)
    if result is None:
        raise ModelLoadError(f"{name}: the converted model did not appear in {folder}; run the command again")
    return result
