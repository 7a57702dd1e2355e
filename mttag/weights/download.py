"""Models downloaded from a URL pinned by a hash, converted once, then cached.

A registry entry with a location ``{"url": ..., "sha1": ...}`` (the file's *git blob* SHA-1,
what GitHub shows for a file) or ``{"url": ..., "sha256": ...}`` and a ``convert`` recipe
(``{"format": "won2021-ckpt", "tags": "cals", "heads": 8}``) names a file that is not itself a
model directory, typically the authors' PyTorch Lightning checkpoint. On first use it is

1. downloaded (stdlib ``urllib``: ``HTTPS_PROXY`` & co. apply) into a private staging folder in
   the cache, with a progress bar on a terminal;
2. refused unless every announced byte arrived and its hash is the pinned one; only then is
   the checkpoint, a pickle, opened, and only with ``torch.load(weights_only=True)``;
3. converted into a model directory (config.json, model.safetensors, README.md with provenance,
   licence and the published metrics, LICENSE, and ``source.json`` recording what it came from);
4. renamed into place in one step. The checkpoint itself is deleted: the cache keeps safetensors
   only, and a crash at any point leaves nothing that looks like a finished model.

The cache is huggingface_hub's (see :func:`mttag.weights.hub.hub_cache_dir`), in its own layout so that
``hf cache ls`` / ``hf cache rm`` see these models too::

    <HF_HUB_CACHE>/models--mttag-url--<name>/snapshots/<pinned hash>/{config.json, model.safetensors, ...}

A cached model is used without any network access, online or not (its content is fixed by the
hash), and is checked on each use against the sha256 of its weights recorded in ``source.json``.

:func:`fetch` is our own rather than huggingface_hub's downloader, because that one
(``file_download.http_get``) is internal API, takes no ``file://`` URLs, has no size cap and
cannot tell a stalled transfer from a cut-off one in its message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .. import __version__
from ..constants import CONFIG_NAME, WEIGHTS_NAME
from ..errors import ModelLoadError
from ..util.hashing import file_hash, git_blob_sha1  # noqa: F401 (git_blob_sha1: part of this module's API)
from ..util.text import one_line
from .hub import hub_cache_dir, is_offline

SOURCE_NAME = "source.json"
LICENSE_NAME = "LICENSE"
# checkpoint formats a "convert" recipe may name
FORMATS = ("won2021-ckpt",)
URL_SCHEMES = ("https", "http", "file")
HASH_KINDS = ("sha1", "sha256")
# nothing this large is a music tagging checkpoint; stops a wrong URL from filling the disk
MAX_DOWNLOAD_BYTES = 4 << 30
TIMEOUT_S = 60.0
_CHUNK = 1 << 16
_STALE_STAGING_S = 24 * 3600
_HEX = {"sha1": re.compile(r"^[0-9a-f]{40}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
_TRUE = {"1", "ON", "YES", "TRUE"}

MIT_TEXT = """\
Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


# -- hashes ----------------------------------------------------------------------------------
def pinned_hash(location: dict[str, Any]) -> tuple[str, str]:
    """``(kind, hex)`` of a URL location: ``sha256`` when given, else ``sha1`` (git blob id)."""
    for kind in ("sha256", "sha1"):
        if location.get(kind):
            return kind, str(location[kind]).lower()
    raise ModelLoadError(f"a URL location needs its hash ('sha1' or 'sha256'): {location.get('url')}")


# -- settings --------------------------------------------------------------------------------
def _progress_wanted(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").upper() not in _TRUE


def human_size(n: int | float | None) -> str:
    from rich.filesize import decimal

    return decimal(int(n)) if isinstance(n, (int, float)) and n > 0 else "?"


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc or parts.scheme + ":"


# -- the cache -------------------------------------------------------------------------------
def storage_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    """``<hub cache>/models--mttag-url--<name>``: one folder per registered name."""
    return hub_cache_dir(cache_dir) / f"models--mttag-url--{name}"


def snapshot_dir(entry: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Where the converted model of a URL entry lives once downloaded (named by the pinned hash)."""
    _, digest = pinned_hash(entry["location"])
    return storage_folder(entry["name"], cache_dir) / "snapshots" / digest


def recipe(entry: dict[str, Any]) -> dict[str, Any]:
    """What determines the converted model: the pinned file and the conversion settings."""
    kind, digest = pinned_hash(entry["location"])
    convert = entry.get("convert") or {}
    return {
        "hash": f"{kind}:{digest}",
        "format": convert.get("format"),
        "tags": convert.get("tags"),
        "heads": int(convert.get("heads", 8)),
    }


def _read_source(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / SOURCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_dir(entry: dict[str, Any], cache_dir: str | Path | None = None) -> Path | None:
    """The converted model directory of a URL entry if it is complete in the cache; no network,
    no hashing (cheap enough for ``mttag models``)."""
    directory = snapshot_dir(entry, cache_dir)
    if not ((directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()):
        return None
    source = _read_source(directory)
    if source is None or source.get("recipe") != recipe(entry):
        return None
    return directory


def _verify_cached(entry: dict[str, Any], directory: Path) -> None:
    """Each use: the weights and config must still be what was written after the conversion."""
    from .modelfile import safetensors_problem

    name = entry["name"]
    source = _read_source(directory) or {}
    recorded = source.get("files") or {}
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        want = recorded.get(filename)
        got = file_hash(directory / filename, "sha256") if want else None
        problem = None
        if not want:
            problem = f"{SOURCE_NAME} records no hash for {filename}"
        elif got != want:
            problem = f"{filename} has sha256 {got[:12]}... instead of {want[:12]}..."
        elif filename == WEIGHTS_NAME:
            problem = safetensors_problem(directory / filename)
        if problem:
            _remove_tree(directory)
            raise ModelLoadError(
                f"{name}: the cached model in {directory} is damaged ({problem}); it was removed, "
                "run the command again to download it afresh"
            )


def _remove_tree(path: Path) -> None:
    """Move a directory out of the way in one step, then delete it (so no half-deleted model is
    seen). A snapshot goes to its storage folder first (never left inside ``snapshots/``)."""
    if not path.exists():
        return
    parent = path.parent.parent if path.parent.name == "snapshots" else path.parent
    trash = parent / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _clean_stale_staging(folder: Path) -> None:
    """Remove staging folders left by downloads that crashed (older than a day)."""
    try:
        children = list(folder.iterdir())
    except OSError:
        return
    now = time.time()
    for child in children:
        if child.name.startswith((".incoming-", ".trash-")):
            try:
                if now - child.stat().st_mtime > _STALE_STAGING_S:
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:
                pass


# -- download --------------------------------------------------------------------------------
def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )


def fetch(url: str, dest: Path, label: str, *, progress: bool | None = None, max_bytes: int = MAX_DOWNLOAD_BYTES,
          expected_size: int | None = None, timeout: float = TIMEOUT_S) -> int:
    """Stream ``url`` into the file ``dest``; returns the number of bytes. Raises
    :class:`ModelLoadError` (one line, naming ``label``) on HTTP errors, an unreachable host, a
    stalled or cut-off transfer (fewer bytes than ``Content-Length`` or ``expected_size``), or more
    than ``max_bytes``. ``dest`` may hold partial data after an error: the caller removes it."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise ModelLoadError(f"{label}: cannot download {url!r}: only {', '.join(URL_SCHEMES)} URLs are supported")
    request = urllib.request.Request(url, headers={"User-Agent": f"mttag/{__version__}"})
    host = _host(url)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as exc:
        raise ModelLoadError(
            f"{label}: downloading {url} failed with HTTP {exc.code} {exc.reason}; check the URL of the registry "
            "entry (or its mirror) and try again later"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if scheme == "file":
            raise ModelLoadError(f"{label}: cannot read {url} ({reason})") from None
        raise ModelLoadError(
            f"{label}: cannot reach {host} ({reason}); check the connection or proxy, or point MTTAG_REGISTRY "
            "at a registry with a mirror you can reach (see docs/models.md)"
        ) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.strip().isdigit() else None
        if total is not None and total > max_bytes:
            raise ModelLoadError(f"{label}: {url} is {human_size(total)}, more than any model mttag downloads; refused")
        announced = total if total is not None else expected_size
        received = 0
        with _progress_bar(_progress_wanted(progress)) as bar, open(dest, "wb") as out:
            task = bar.add_task(f"downloading {label}", total=announced)
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (socket.timeout, TimeoutError) as exc:
                    raise ModelLoadError(
                        f"{label}: the download from {host} stalled ({str(exc) or 'timed out'}) after "
                        f"{human_size(received)}; nothing was kept, run the command again"
                    ) from None
                except Exception as exc:  # a reset connection, http.client.IncompleteRead, ...
                    raise ModelLoadError(
                        f"{label}: the connection to {host} broke after {human_size(received)} "
                        f"({type(exc).__name__}); nothing was kept, run the command again"
                    ) from None
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes or (total is not None and received > total):
                    raise ModelLoadError(f"{label}: {url} sent more data than announced; refused")
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise ModelLoadError(
                        f"{label}: writing the download to {dest.parent} failed ({exc.strerror or exc}); "
                        "nothing was kept"
                    ) from None
                bar.update(task, advance=len(chunk))
    if announced is not None and received != announced:
        raise ModelLoadError(
            f"{label}: the download from {host} was cut off ({received:,} of {announced:,} bytes); "
            "nothing was kept, run the command again"
        )
    return received


def _convert(entry: dict[str, Any], checkpoint: Path, out_dir: Path) -> Path:
    """Run the entry's conversion recipe on a verified checkpoint."""
    from ..inference.vocab import resolve_tags
    from .convert import ConversionError, convert_checkpoint

    convert = entry.get("convert") or {}
    fmt = convert.get("format")
    if fmt not in FORMATS:
        raise ModelLoadError(f"{entry['name']}: unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    tags = convert.get("tags")
    try:
        tag_list = list(tags) if isinstance(tags, list) else resolve_tags(str(tags))
    except ValueError as exc:
        raise ModelLoadError(f"{entry['name']}: {exc}") from None
    location = entry["location"]
    kind, digest = pinned_hash(location)
    provenance = {
        "name": entry["name"],
        "description": entry.get("description"),
        "url": location["url"],
        kind if kind == "sha256" else "git_blob_sha1": digest,
        "converted_from": Path(urllib.parse.urlsplit(location["url"]).path).name or "checkpoint",
        "source": entry.get("source"),
        "license": entry.get("license", "unknown"),
        "copyright": entry.get("copyright"),
        "paper": entry.get("paper"),
        "metrics": entry.get("metrics"),
        "metrics_note": entry.get("metrics_note"),
        "homepage": entry.get("url"),
        "datasets": entry.get("datasets") or ["million-song-dataset"],
        "dataset_name": entry.get("dataset_name"),
    }
    provenance = {k: v for k, v in provenance.items() if v is not None}
    metrics = {k: v for k, v in (entry.get("metrics") or {}).items() if isinstance(v, (int, float))}
    body = [entry.get("description") or "", "",
            f"Downloaded from <{location['url']}> ({'git blob SHA-1' if kind == 'sha1' else 'sha256'} `{digest}`, "
            f"verified before it was opened) and converted to safetensors by mttag {__version__}; "
            "the original checkpoint was not kept."]
    if entry.get("paper"):
        body += ["", f"Paper: {entry['paper']}."]
    if metrics:
        note = entry.get("metrics_note") or "published by the authors, not re-measured on these weights"
        body += ["", f"Metrics below: {note}."]
    if entry.get("license"):
        body += ["", f"License: {entry['license']}" + (f" ({entry['copyright']})" if entry.get("copyright") else "") + "."]
    try:
        directory = convert_checkpoint(
            checkpoint, out_dir, tag_list, heads=int(convert.get("heads", 8)), name=entry["name"],
            provenance=provenance, metrics=metrics or None, card_body="\n".join(body).strip(),
        )
    except (ConversionError, ValueError, RuntimeError) as exc:
        detail = one_line(exc, 300)
        raise ModelLoadError(
            f"{entry['name']}: the downloaded checkpoint (hash verified) could not be converted: {detail}"
        ) from None
    if str(entry.get("license", "")).lower() == "mit" and entry.get("copyright"):
        text = f"MIT License\n\n{entry['copyright']}\n\n{MIT_TEXT}"
        (directory / LICENSE_NAME).write_text(text, encoding="utf-8")
    return directory


def download_url_model(
    entry: dict[str, Any],
    cache_dir: str | Path | None = None,
    *,
    progress: bool | None = None,
) -> Path:
    """The converted model directory of a URL registry entry: from the cache (no network at all),
    else downloaded, verified, converted and cached. Raises :class:`ModelLoadError` (one line)."""
    name = entry["name"]
    location = entry["location"]
    cached = cached_dir(entry, cache_dir)
    if cached is not None:
        _verify_cached(entry, cached)
        return cached
    folder = storage_folder(name, cache_dir)
    size = f"{human_size(location['size'])} " if location.get("size") else (
        f"~{human_size(entry['download_size'])} " if entry.get("download_size") else "")
    how = f"({size}from {_host(location['url'])})"
    if is_offline():
        raise ModelLoadError(
            f"{name} is not downloaded yet and HF_HUB_OFFLINE is set; unset it and run "
            f"`mttag models --download {name}` once {how}, or copy {folder} from a machine that has it"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _clean_stale_staging(folder)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder))
    except OSError as exc:
        raise ModelLoadError(f"{name}: cannot write to the model cache {folder.parent} ({exc.strerror or exc})") from None
    try:
        checkpoint = staging / "download.part"
        fetch(location["url"], checkpoint, name, progress=progress, expected_size=location.get("size"))
        for check in [k for k in HASH_KINDS if location.get(k)]:  # every hash the entry pins
            want = str(location[check]).lower()
            got = file_hash(checkpoint, check)
            if got != want:
                hint = ""
                if check == "sha1" and file_hash(checkpoint, "plain-sha1") == want:
                    hint = " (the pinned value is the file's plain SHA-1; 'sha1' takes the git blob SHA-1, or use 'sha256')"
                raise ModelLoadError(
                    f"{name}: the file from {location['url']} does not match the pinned hash "
                    f"({'git blob sha1' if check == 'sha1' else check} {got[:12]}... instead of {want[:12]}...){hint}; "
                    "it was deleted unopened and nothing was cached"
                )
        model_dir = _convert(entry, checkpoint, staging / "model")
        checkpoint.unlink()  # the cache keeps safetensors only
        source = {
            "name": name,
            "url": location["url"],
            "recipe": recipe(entry),
            "files": {f: file_hash(model_dir / f, "sha256") for f in (CONFIG_NAME, WEIGHTS_NAME)},
            "mttag_version": __version__,
            "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
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


def check_location(location: dict[str, Any], where: str) -> None:
    """Validate a URL location (raises ``ValueError`` with a one-line reason)."""
    url = location.get("url")
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme.lower() not in URL_SCHEMES:
        raise ValueError(f"{where}: 'url' must be an {'/'.join(URL_SCHEMES)} URL")
    kinds = [k for k in HASH_KINDS if k in location]
    if not kinds:
        raise ValueError(f"{where}: a URL location needs its hash, 'sha1' (git blob SHA-1) or 'sha256'; "
                         "mttag never downloads an unpinned file")
    for kind in kinds:
        value = location[kind]
        if not isinstance(value, str) or not _HEX[kind].match(value.lower()):
            raise ValueError(f"{where}: '{kind}' must be {40 if kind == 'sha1' else 64} hexadecimal digits")
    size = location.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ValueError(f"{where}: 'size' must be a positive number of bytes")


def check_convert(convert: Any, where: str) -> None:
    """Validate a ``convert`` recipe (raises ``ValueError``)."""
    from ..inference.vocab import VOCABULARIES

    if not isinstance(convert, dict):
        raise ValueError(f"{where}: a URL entry needs a 'convert' object, e.g. "
                         '{"format": "won2021-ckpt", "tags": "cals", "heads": 8}')
    if convert.get("format") not in FORMATS:
        raise ValueError(f"{where}: convert.format must be one of {', '.join(FORMATS)}")
    tags = convert.get("tags")
    ok_list = isinstance(tags, list) and tags and all(isinstance(t, str) and t.strip() for t in tags)
    if not (ok_list or (isinstance(tags, str) and tags.lower() in VOCABULARIES)):
        raise ValueError(f"{where}: convert.tags must be {' or '.join(VOCABULARIES)} or a list of tag names")
    heads = convert.get("heads", 8)
    if isinstance(heads, bool) or not isinstance(heads, int) or not 1 <= heads <= 64:
        raise ValueError(f"{where}: convert.heads must be a whole number from 1 to 64")
