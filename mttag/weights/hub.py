"""Models on the Hugging Face Hub (or any ``HF_ENDPOINT``): download into huggingface_hub's cache,
and publish (docs/models.md, "Caching" and "Security").

Kept over the library alone because it neither hashes what it downloads nor refuses pickle-only
repos, and it would make the commit a server names into a cache path unchecked.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .. import __version__
from ..constants import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from ..errors import ModelLoadError
from ..util.fileio import atomic_write
from ..util.hashing import file_sha256, git_blob_sha1
from ..util.text import one_line

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# a revision becomes a cache path (refs/<revision>): git's rules, narrowed to what Hub names use
_REVISION = re.compile(r"^[A-Za-z0-9._+\-/]{1,255}$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".mar")
_LOGIN = "set HF_TOKEN to a token of your account or run `hf auth login`"


# -- settings: read when used, so that changed environment variables count ---------------------
def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """huggingface_hub's model cache: ``cache_dir``, ``HF_HUB_CACHE``, ``HF_HOME/hub`` or its default."""
    from huggingface_hub import constants

    env = os.environ
    found = cache_dir or env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not found and env.get("HF_HOME"):
        found = os.path.join(os.path.expandvars(env["HF_HOME"]), "hub")
    return Path(os.path.expandvars(str(found or constants.HF_HUB_CACHE))).expanduser()


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (now, or when huggingface_hub was imported)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


# -- names ---------------------------------------------------------------------------------
def parse_repo_ref(text: str) -> tuple[str, str | None] | None:
    """Split ``owner/name@revision`` into ``(repo_id, revision)``; None if it is not a Hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id, sep, revision = str(text).partition("@")
    if repo_id.count("/") != 1 or (sep and not revision):  # a bare name is a registry name here
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id, (revision or None)


def _label(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def revision_problem(revision: object) -> str | None:
    """Why ``revision`` is not a safe Hub revision (branch, tag, ``refs/pr/N`` or commit sha), or None."""
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision):
        return "a revision may only hold letters, digits and . _ + - /"
    parts = revision.split("/")
    if ".." in revision or revision.endswith(".") or any(
            not p or p.startswith(".") or p.endswith(".lock") for p in parts):
        return "no '..', empty components, or components starting with '.' or ending in '.lock'"
    return None


def _check_names(repo_id: str, revision: str | None) -> None:
    parsed = parse_repo_ref(repo_id)
    if parsed is None or parsed[1] is not None:
        raise ModelLoadError(f"{repo_id!r} is not a Hub repo id; expected owner/name")
    if revision is not None and revision_problem(revision):
        raise ModelLoadError(f"{repo_id}@{revision!r:.80}: not a valid revision ({revision_problem(revision)}); "
                             "use a branch, tag or commit sha")


# -- errors --------------------------------------------------------------------------------
def _is_connection_error(exc: BaseException) -> bool:
    """Network down or host unreachable, whatever the HTTP client raised."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(names & {
        "ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "ProxyError", "ReadTimeout",
        "ConnectionError", "OfflineModeIsEnabled"})


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not re.match(r"^\s*\d{3} (Client|Server) Error\.?\s*$", ln)]
    return one_line((useful or lines or [exc])[0], 300)


def _hub_error(exc: BaseException, repo_id: str, revision: str | None, *, pushing: bool = False,
               filename: str | None = None) -> ModelLoadError:
    """A one-line, actionable error for an exception raised by huggingface_hub."""
    from huggingface_hub import errors

    endpoint, label = hub_endpoint(), _label(repo_id, revision)
    who = repo_id if pushing else label
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError):
        why = f"the repo is gated: accept its conditions at {endpoint}/{repo_id} while logged in, then {_LOGIN}"
    elif isinstance(exc, errors.RepositoryNotFoundError):
        why = (f"repo not found or not writable on {endpoint}; {_LOGIN} (a write token)" if pushing else
               f"no such model repo on {endpoint} (check the name; if it is private, {_LOGIN})")
    elif isinstance(exc, errors.RevisionNotFoundError):
        what = f"branch '{revision}'" if pushing else f"revision '{revision or 'main'}'"
        why = f"{what} not found; use a branch, tag or commit sha of the repo (see {endpoint}/{repo_id}/commits/main)"
    elif isinstance(exc, errors.LocalEntryNotFoundError):
        why = (f"not in the cache ({hub_cache_dir()}) and the Hub ({endpoint}) cannot be reached; "
               "connect and run once to download it, or unset HF_HUB_OFFLINE")
    elif isinstance(exc, errors.EntryNotFoundError):
        why = f"the repo has no {filename or 'such file'}; it is not a complete mttag model"
    elif isinstance(exc, errors.HfHubHTTPError) and status == 401:
        why = ("not authorised to publish (HTTP 401): set HF_TOKEN to a write token or run `hf auth login`"
               if pushing else f"unauthorised (HTTP 401): the token is missing or invalid; {_LOGIN}")
    elif isinstance(exc, errors.HfHubHTTPError) and status == 403:
        why = (f"your token may not write to the '{repo_id.split('/')[0]}' namespace (HTTP 403); use a write "
               "token of that user or organisation" if pushing else
               f"access denied (HTTP 403); request access at {endpoint}/{repo_id}, then {_LOGIN}")
    elif isinstance(exc, errors.HfHubHTTPError) and status is not None:
        why = f"the Hub answered HTTP {status}: {_first_line(exc)}; try again later"
    elif _is_connection_error(exc):
        why = f"cannot reach {endpoint} ({_first_line(exc)}); check the connection or HF_ENDPOINT"
    elif isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        why = (f"download of {filename or 'a file'} was incomplete (fewer bytes than the Hub announced); "
               "run the command again")
    elif isinstance(exc, OSError) and "token" in str(exc).lower():
        why = f"{_first_line(exc)}; {_LOGIN}"
    else:
        why = f"{'push' if pushing else 'download'} failed: {type(exc).__name__}: {_first_line(exc)}"
    return ModelLoadError(f"{who}: {why}")


# -- verification --------------------------------------------------------------------------
def _evict(path: Path) -> None:
    """Remove a bad file from the cache (snapshot link and blob), so the next run downloads it again."""
    blob = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    if blob != path and "blobs" in blob.parts:
        blob.unlink(missing_ok=True)


def _check_hash(snapshot: Path, name: str, label: str, listing: dict[str, Any] | None = None) -> None:
    """Compare a file with the hash the Hub published for it (the listing's, else the name of its
    cache blob: huggingface_hub names blobs by sha256 for LFS files, by git blob id for others)."""
    path = snapshot / name
    if not path.is_file():
        raise ModelLoadError(f"{label}: {name} is missing from the cached snapshot {snapshot}; run again online")
    sibling = (listing or {}).get(name)
    want = (getattr(getattr(sibling, "lfs", None), "sha256", None) or getattr(sibling, "blob_id", None)
            or (Path(os.path.realpath(path)).name if path.is_symlink() else "")).lower()
    kind = "sha256" if _SHA256.match(want) else "git" if _SHA1.match(want) else None
    got = kind and (file_sha256(path) if kind == "sha256" else git_blob_sha1(path))
    if kind and got != want:
        _evict(path)
        raise ModelLoadError(f"{label}: corrupted download of {name} ({kind} {got[:12]}... instead of {want[:12]}...); "
                             "the bad file was removed from the cache, run the command again")


def _verify(snapshot: Path, names: list[str], label: str, listing: dict[str, Any] | None = None) -> None:
    """Hash-check each file, then the weights' header and the config."""
    from ..models import ModelConfig
    from .modelfile import safetensors_problem

    for name in names:
        _check_hash(snapshot, name, label, listing)
    problem = safetensors_problem(snapshot / WEIGHTS_NAME)
    if problem:
        _evict(snapshot / WEIGHTS_NAME)
        raise ModelLoadError(f"{label}: {WEIGHTS_NAME} is corrupt ({problem}); it was removed from the cache, "
                             "run the command again")
    try:
        ModelConfig.load(snapshot / CONFIG_NAME)
    except (ValueError, TypeError, OSError) as exc:
        raise ModelLoadError(f"{label}: {CONFIG_NAME}: {one_line(exc)}") from None


def _config_files(config_path: Path, label: str) -> list[str]:
    """Extra files a config names (a top-level ``"files"`` list): inside the repo, never pickles."""
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{label}: {CONFIG_NAME} is not valid JSON ({exc})") from None
    except RecursionError:  # arrays nested thousands deep: Python's parser recurses per level
        raise ModelLoadError(f"{label}: {CONFIG_NAME} is nested too deeply to be a model config") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{label}: {CONFIG_NAME} is not a JSON object")
    source = data.get("files") if isinstance(data.get("files"), list) else []
    out = []
    for name in dict.fromkeys(n for n in source if isinstance(n, str)):
        if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
            raise ModelLoadError(f"{label}: {CONFIG_NAME} names an unsafe file path {name!r}")
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise ModelLoadError(f"{label}: {CONFIG_NAME} names {name!r}, a pickle-type file; mttag never loads those")
        if name not in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME):
            out.append(name)
    return out


def _check_listing(label: str, files: dict[str, Any]) -> None:
    """Refuse repos that are not safetensors mttag models, before anything is downloaded."""
    if WEIGHTS_NAME not in files:
        pickles = sorted(f for f in files if f.lower().endswith(PICKLE_SUFFIXES))
        if "model.safetensors.index.json" in files:
            raise ModelLoadError(f"{label}: sharded safetensors weights are not supported; publish a single {WEIGHTS_NAME}")
        if pickles:
            raise ModelLoadError(
                f"{label}: the repo only has pickle weights ({', '.join(pickles[:3])}), which mttag refuses to load "
                f"from the network; it needs {WEIGHTS_NAME} (convert the checkpoint locally and publish it with `mttag push`)")
        raise ModelLoadError(f"{label}: the repo has no {WEIGHTS_NAME}; it is not an mttag model")
    if CONFIG_NAME not in files:
        raise ModelLoadError(f"{label}: the repo has no {CONFIG_NAME}; it is not an mttag model (publish one with `mttag push`)")


# -- download ------------------------------------------------------------------------------
def cached_model_dir(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path | None:
    """The cached snapshot of ``repo_id`` at ``revision`` if its config and weights are there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    if revision is not None and revision_problem(revision):
        return None
    try:
        found = [try_to_load_from_cache(repo_id, name, cache_dir=str(hub_cache_dir(cache_dir)), revision=revision)
                 for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except (ValueError, OSError):
        return None
    folders = {Path(p).parent if isinstance(p, str) else None for p in found}
    return folders.pop() if len(folders) == 1 else None


def _from_cache(repo_id: str, revision: str | None, cache: Path, offline: bool) -> Path:
    label = _label(repo_id, revision)
    snapshot = cached_model_dir(repo_id, revision, cache)
    if snapshot is None and offline:
        raise ModelLoadError(f"{label} is not in the cache ({cache}) and HF_HUB_OFFLINE is set; run it once online "
                             "to download it, or point HF_HOME/HF_HUB_CACHE at a cache that holds it")
    if snapshot is None:
        raise ModelLoadError(f"{label}: cannot reach {hub_endpoint()} and the model is not in the cache ({cache}); "
                             "check the connection or HF_ENDPOINT")
    _check_hash(snapshot, CONFIG_NAME, label)  # before parsing it
    _verify(snapshot, [CONFIG_NAME, WEIGHTS_NAME] + _config_files(snapshot / CONFIG_NAME, label), label)
    return snapshot


def download_model(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None,
                   token: str | None = None) -> Path:
    """Download (or find in the cache) the model ``repo_id`` at ``revision``; returns its snapshot
    folder. Offline (``HF_HUB_OFFLINE``) or with the Hub unreachable, the cached snapshot is used."""
    from huggingface_hub import HfApi, hf_hub_download

    _check_names(repo_id, revision)
    cache, label, endpoint = hub_cache_dir(cache_dir), _label(repo_id, revision), hub_endpoint()
    if is_offline() or (revision and _SHA1.match(revision) and cached_model_dir(repo_id, revision, cache)):
        return _from_cache(repo_id, revision, cache, True)  # (a cached commit never changes: no need to ask)
    api = HfApi(endpoint=endpoint, token=token, library_name="mttag", library_version=__version__)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:
        if _is_connection_error(exc):
            return _from_cache(repo_id, revision, cache, False)
        raise _hub_error(exc, repo_id, revision) from None
    listing = {s.rfilename: s for s in (info.siblings or [])}
    _check_listing(label, listing)
    commit = info.sha
    if not isinstance(commit, str) or not _SHA1.fullmatch(commit):
        raise ModelLoadError(f"{label}: the Hub ({endpoint}) answered a malformed commit id {str(commit)[:60]!r} "
                             "(expected 40 hex digits); nothing was downloaded, check HF_ENDPOINT")

    def fetch(name: str) -> Path:
        # pinned to the commit checked above: the library never resolves the revision a second time
        try:
            return Path(hf_hub_download(repo_id, name, revision=commit, cache_dir=str(cache), token=token,
                                        endpoint=endpoint, library_name="mttag", library_version=__version__))
        except Exception as exc:
            raise _hub_error(exc, repo_id, revision, filename=name) from None

    snapshot = fetch(CONFIG_NAME).parent
    _check_hash(snapshot, CONFIG_NAME, label, listing)  # before parsing it
    extra = _config_files(snapshot / CONFIG_NAME, label)
    missing = [n for n in extra if n not in listing]
    if missing:
        raise ModelLoadError(f"{label}: {CONFIG_NAME} names {missing[0]!r}, which is not in the repo")
    names = [CONFIG_NAME, WEIGHTS_NAME] + extra + ([CARD_NAME] if CARD_NAME in listing else [])
    for name in names[1:]:
        fetch(name)
    ref = cache / ("models--" + repo_id.replace("/", "--")) / "refs" / (revision or "main")
    if (revision or "main") != commit and not (ref.is_file() and ref.read_text() == commit):
        try:  # so that the revision resolves offline; both names were checked above
            ref.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(ref, lambda p: Path(p).write_text(commit))
        except OSError:
            pass  # a read-only cache still works online
    _verify(snapshot, names, label, listing)
    return snapshot


# -- publish -------------------------------------------------------------------------------
def _read_card(text: str):
    """``(metadata or None, body)`` of a model card, parsed by huggingface_hub's ``ModelCard``."""
    from huggingface_hub import ModelCard

    if not re.match(r"^\ufeff?---\s*\n", text):
        return None, text
    try:
        card = ModelCard(text.lstrip("\ufeff"))
    except Exception as exc:  # yaml.YAMLError, or ValueError for a block that is not a mapping
        raise ModelLoadError(f"{CARD_NAME}: the YAML metadata block is invalid ({_first_line(exc)})") from None
    return card.data, card.text


def _card_for(model_dir: Path, config, n_params: int, metrics: dict[str, Any] | None) -> str:
    """The directory's own card when it is mttag's (and no new metrics), else a generated one that
    keeps the old card's prose and the metrics found in it, ``metrics.json`` or the provenance."""
    from .modelfile import model_card

    body, found = "", {}
    if (model_dir / CARD_NAME).is_file():
        text = (model_dir / CARD_NAME).read_text(encoding="utf-8")
        meta, rest = _read_card(text)
        if meta is not None and meta.get("library_name"):
            if not metrics:
                return text
        else:
            body = rest.strip()
            found = {str(r.metric_type): float(r.metric_value) for r in (meta and meta.eval_results or [])
                     if r.metric_type and isinstance(r.metric_value, (int, float))}
    metrics = metrics or found
    if not metrics:
        try:
            data = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))
            metrics = {k: v for k, v in data.items() if isinstance(v, (int, float))}
        except (OSError, ValueError, AttributeError):
            pass
    if not metrics and isinstance(config.provenance.get("metrics"), dict):
        metrics = config.provenance["metrics"]
    return model_card(config, n_params, metrics or None, body)


def push_model(model_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
               token: str | None = None, commit_message: str | None = None, *,
               metrics: dict[str, Any] | None = None) -> str:
    """Publish a model directory to ``repo_id`` (created if needed) in one commit of config.json,
    model.safetensors, README.md and the files the config names; returns the commit URL.

    The directory must load first. ``revision``: a branch, created from ``main`` if missing;
    ``metrics`` replaces the card's metrics (the card is then regenerated)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from ..models import count_parameters
    from .modelfile import load_config, load_local_model

    _check_names(repo_id, revision)
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: no such model directory")
    config = load_config(model_dir)
    model = load_local_model(model_dir)  # refuse to publish what would not load
    extra = _config_files(model_dir / CONFIG_NAME, str(model_dir))
    for name in extra:
        if not (model_dir / name).is_file():
            raise ModelLoadError(f"{model_dir}: {CONFIG_NAME} names {name!r}, which is not in the directory")
    card = _card_for(model_dir, config, count_parameters(model), metrics)
    _read_card(card)  # a card the Hub would reject fails here, before any upload
    if is_offline():
        raise ModelLoadError("cannot push while HF_HUB_OFFLINE is set; unset it to publish")
    files = {name: str(model_dir / name) for name in [CONFIG_NAME, WEIGHTS_NAME, *extra]} | {CARD_NAME: card.encode()}
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=src) for name, src in files.items()]
    message = commit_message or f"Upload {config.arch} music tagging model ({config.n_tags} tags) with mttag {__version__}"
    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="mttag", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id, operations=operations, commit_message=message, revision=revision,
                                 repo_type="model")
    except Exception as exc:
        raise _hub_error(exc, repo_id, revision, pushing=True) from None
    return str(info.commit_url)
