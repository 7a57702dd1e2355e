"""Models on the Hugging Face Hub (or any Hub-compatible ``HF_ENDPOINT``): download and publish.

Downloads go through ``huggingface_hub``'s ``snapshot_download`` into its standard cache
(``HF_HOME``/``HF_HUB_CACHE``), pinned to the commit the revision pointed at when the repo was
listed, so a model's files always come from one commit. Only ``config.json``,
``model.safetensors``, ``README.md`` and files the config names (a ``"files"`` list) are fetched
(``allow_patterns``). A repo is listed before anything is downloaded, and one without
safetensors weights is refused: nothing that comes from the network is ever unpickled. The
commit the Hub names is checked (40 hex digits) before it becomes a cache path, and the
branch/tag -> commit ``refs/`` file is written only then (the library would write it from a
second, unchecked resolution).

``huggingface_hub`` checks that a downloaded file has the announced size; it does not hash the
content. Every file handed to mttag is therefore hashed here and compared with what the Hub
published for it (the sha256 of LFS files, the git blob id of the others), then the
safetensors header is checked (``safetensors.safe_open``, see :func:`mttag.weights.modelfile.safetensors_problem`) and the config
loaded. A file that fails is removed from the cache, so running the command again downloads it
afresh.

Errors are :class:`~mttag.weights.modelfile.ModelLoadError` with a one-line message saying what to do.
What remains here over the library is what it does not do: hash checks, refusal of pickle-only
repos, the pinned commit checked before it becomes a path, and one-line errors.
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
from ..util.hashing import file_sha256, git_blob_sha1
from ..util.text import one_line

# What the Hub accepts as a model id: namespace/name, letters, digits, '-', '_', '.'.
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Branch and tag names, refs like refs/pr/1, commit shas: git's rules, narrowed to the
# characters Hub revisions use. A revision becomes a path in the cache (refs/<revision>),
# so '..', empty components, leading '/', '\\' and control characters are refused.
_REVISION = re.compile(r"^[A-Za-z0-9._+\-/]{1,255}$")
# File types that are (or usually wrap) pickles; mttag never downloads them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".mar")
_TRUE = {"1", "ON", "YES", "TRUE"}


# -- settings, read when used so that changed environment variables are honoured -------------
def hub_endpoint() -> str:
    """The Hub URL: ``HF_ENDPOINT`` or huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder of huggingface_hub's model cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"])).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (now, or when huggingface_hub was imported)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


# -- names ---------------------------------------------------------------------------------
def parse_repo_ref(text: str) -> tuple[str, str | None] | None:
    """Split ``owner/name@revision`` into ``(repo_id, revision)``; None if it is not a Hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id, sep, revision = str(text).partition("@")
    if repo_id.count("/") != 1:  # the library also accepts a bare name; a model here is owner/name
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    if sep and not revision:
        return None
    return repo_id, (revision or None)


def _label(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def revision_problem(revision: object) -> str | None:
    """Why ``revision`` is not a safe Hub revision (branch, tag, ``refs/pr/N`` or commit sha), or None."""
    if not isinstance(revision, str) or not revision:
        return "a revision must be a non-empty name"
    if not _REVISION.fullmatch(revision):
        return "a revision may only hold letters, digits and . _ + - /"
    parts = revision.split("/")
    if any(p in ("", ".", "..") for p in parts) or ".." in revision:
        return "a revision may not contain '..' or empty path components"
    if any(p.startswith(".") or p.endswith(".lock") for p in parts) or revision.endswith("."):
        return "a revision component may not start with '.' or end with '.' or '.lock'"
    return None


def _check_revision(revision: str | None, repo_id: str) -> None:
    if revision is None:
        return
    problem = revision_problem(revision)
    if problem:
        raise ModelLoadError(f"{repo_id}@{revision!r:.80}: not a valid revision ({problem}); "
                             "use a branch, tag or commit sha")


def _check_repo_id(repo_id: str) -> None:
    parsed = parse_repo_ref(repo_id)
    if parsed is None or parsed[1] is not None:
        raise ModelLoadError(f"{repo_id!r} is not a Hub repo id; expected owner/name")


def _storage_folder(cache: Path, repo_id: str) -> Path:
    # huggingface_hub's layout: models--owner--name/{refs,blobs,snapshots}
    return cache / ("models--" + repo_id.replace("/", "--"))


# -- errors --------------------------------------------------------------------------------
def _is_connection_error(exc: BaseException) -> bool:
    """Network down / host unreachable, whatever the HTTP client (httpx, requests)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "ProxyError",
                         "ReadTimeout", "ConnectionError", "OfflineModeIsEnabled"})


def _first_line(exc: BaseException) -> str:
    # huggingface_hub messages start with "404 Client Error." then the useful line
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not re.match(r"^\s*\d{3} (Client|Server) Error\.?\s*$", ln)]
    return one_line((useful or lines or [exc])[0], 300)


def _hub_error(exc: BaseException, repo_id: str, revision: str | None, *, pushing: bool = False,
               filename: str | None = None) -> ModelLoadError:
    """A one-line, actionable error for an exception raised by huggingface_hub."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    label = _label(repo_id, revision)
    login = "set HF_TOKEN to a token of your account or run `hf auth login`"
    if isinstance(exc, GatedRepoError):
        return ModelLoadError(
            f"{label} is gated: accept its conditions at {endpoint}/{repo_id} while logged in, then {login}"
        )
    if isinstance(exc, RepositoryNotFoundError):
        if pushing:
            return ModelLoadError(f"{repo_id}: repo not found or not writable on {endpoint}; {login} (a write token)")
        return ModelLoadError(
            f"{label}: no such model repo on {endpoint} (check the name; if it is private, {login})"
        )
    if isinstance(exc, RevisionNotFoundError):
        what = f"branch '{revision}'" if pushing else f"revision '{revision or 'main'}'"
        return ModelLoadError(
            f"{repo_id}: {what} not found; use a branch, tag or commit sha of the repo "
            f"(see {endpoint}/{repo_id}/commits/main)"
        )
    if isinstance(exc, LocalEntryNotFoundError):
        return ModelLoadError(
            f"{label}: not in the cache ({hub_cache_dir()}) and the Hub ({endpoint}) cannot be reached; "
            "connect and run once to download it, or unset HF_HUB_OFFLINE"
        )
    if isinstance(exc, EntryNotFoundError):
        return ModelLoadError(f"{label}: the repo has no {filename or 'such file'}; it is not a complete mttag model")
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        if status == 401:
            if pushing:
                return ModelLoadError(
                    f"{repo_id}: not authorised to publish (HTTP 401): set HF_TOKEN to a write token "
                    "or run `hf auth login`"
                )
            return ModelLoadError(f"{label}: unauthorised (HTTP 401): the token is missing or invalid; {login}")
        if status == 403:
            if pushing:
                return ModelLoadError(
                    f"{repo_id}: your token may not write to the '{repo_id.split('/')[0]}' namespace (HTTP 403); "
                    "use a write token of that user or organisation"
                )
            return ModelLoadError(f"{label}: access denied (HTTP 403); request access at {endpoint}/{repo_id}, then {login}")
        return ModelLoadError(f"{label}: the Hub answered HTTP {status}: {_first_line(exc)}; try again later")
    if _is_connection_error(exc):
        return ModelLoadError(f"{label}: cannot reach {endpoint} ({_first_line(exc)}); check the connection or HF_ENDPOINT")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return ModelLoadError(
            f"{label}: download of {filename or 'a file'} was incomplete (fewer bytes than the Hub announced); "
            "run the command again"
        )
    if isinstance(exc, EnvironmentError) and "token" in str(exc).lower():
        return ModelLoadError(f"{label}: {_first_line(exc)}; {login}")
    return ModelLoadError(f"{label}: {'push' if pushing else 'download'} failed: {type(exc).__name__}: {_first_line(exc)}")


# -- verification --------------------------------------------------------------------------
def _expected_hash(path: Path, sibling: Any | None) -> tuple[str, str] | None:
    """``(kind, hex)`` the file must hash to: from the repo listing, else from the cache blob's name
    (huggingface_hub names blobs by the ETag: sha256 for LFS files, the git blob id otherwise)."""
    if sibling is not None:
        lfs = getattr(sibling, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        if sha:
            return "sha256", sha.lower()
        if getattr(sibling, "blob_id", None):
            return "git", sibling.blob_id.lower()
    if path.is_symlink():
        name = Path(os.path.realpath(path)).name.lower()
        if _SHA256.match(name):
            return "sha256", name
        if _SHA1.match(name):
            return "git", name
    return None


def _evict(path: Path) -> None:
    """Remove a bad file from the cache (blob and snapshot link) so that the next run re-downloads it."""
    try:
        blob = Path(os.path.realpath(path))
        path.unlink(missing_ok=True)
        if blob != path and "blobs" in blob.parts:
            blob.unlink(missing_ok=True)
    except OSError:
        pass


def _check_hash(snapshot: Path, name: str, label: str, listing: dict[str, Any] | None = None) -> None:
    """Compare a file's hash with what the Hub published for it; evict it from the cache if it differs."""
    path = snapshot / name
    if not path.is_file():
        raise ModelLoadError(f"{label}: {name} is missing from the cached snapshot {snapshot}; run again online")
    expected = _expected_hash(path, (listing or {}).get(name))
    if expected is None:
        return
    kind, want = expected
    got = file_sha256(path) if kind == "sha256" else git_blob_sha1(path)
    if got != want:
        _evict(path)
        raise ModelLoadError(
            f"{label}: corrupted download of {name} ({kind} {got[:12]}... instead of {want[:12]}...); "
            "the bad file was removed from the cache, run the command again"
        )


def _verify(snapshot: Path, names: list[str], label: str, listing: dict[str, Any] | None = None) -> None:
    """Hash-check each file, then check the weights' header and load the config."""
    from ..models import ModelConfig
    from .modelfile import safetensors_problem

    for name in names:
        _check_hash(snapshot, name, label, listing)
    problem = safetensors_problem(snapshot / WEIGHTS_NAME)
    if problem:
        _evict(snapshot / WEIGHTS_NAME)
        raise ModelLoadError(
            f"{label}: {WEIGHTS_NAME} is corrupt ({problem}); it was removed from the cache, run the command again"
        )
    try:
        ModelConfig.load(snapshot / CONFIG_NAME)
    except (ValueError, TypeError, OSError) as exc:  # json.JSONDecodeError is a ValueError
        raise ModelLoadError(f"{label}: {CONFIG_NAME}: {one_line(exc)}") from None


def _config_files(config_path: Path, label: str) -> list[str]:
    """Extra files a config names (a top-level ``"files"`` list)."""
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{label}: {CONFIG_NAME} is not valid JSON ({exc})") from None
    except RecursionError:
        # a server can send arrays nested thousands deep: Python's parser recurses per level
        raise ModelLoadError(f"{label}: {CONFIG_NAME} is nested too deeply to be a model config") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{label}: {CONFIG_NAME} is not a JSON object")
    source = data.get("files")
    names: list[str] = [n for n in source if isinstance(n, str)] if isinstance(source, list) else []
    out = []
    for name in dict.fromkeys(names):
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
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
                f"from the network; it needs {WEIGHTS_NAME} (convert the checkpoint locally and publish it with `mttag push`)"
            )
        raise ModelLoadError(f"{label}: the repo has no {WEIGHTS_NAME}; it is not an mttag model")
    if CONFIG_NAME not in files:
        raise ModelLoadError(f"{label}: the repo has no {CONFIG_NAME}; it is not an mttag model (publish one with `mttag push`)")


# -- download ------------------------------------------------------------------------------
def cached_model_dir(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path | None:
    """The cached snapshot of ``repo_id`` at ``revision`` if its config and weights are there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    if revision is not None and revision_problem(revision):
        return None
    cache = hub_cache_dir(cache_dir)
    found = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            path = try_to_load_from_cache(repo_id, name, cache_dir=str(cache), revision=revision)
        except (ValueError, OSError):
            return None
        if not isinstance(path, str):
            return None
        found.append(Path(path).parent)
    return found[0] if found[0] == found[1] else None


def _from_cache(repo_id: str, revision: str | None, cache: Path, why: str) -> Path:
    label = _label(repo_id, revision)
    snapshot = cached_model_dir(repo_id, revision, cache)
    if snapshot is None:
        if why == "offline":
            raise ModelLoadError(
                f"{label} is not in the cache ({cache}) and HF_HUB_OFFLINE is set; run it once online to "
                "download it, or point HF_HOME/HF_HUB_CACHE at a cache that holds it"
            )
        raise ModelLoadError(
            f"{label}: cannot reach {hub_endpoint()} and the model is not in the cache ({cache}); "
            "check the connection or HF_ENDPOINT"
        )
    _check_hash(snapshot, CONFIG_NAME, label)  # before parsing it
    names = [CONFIG_NAME, WEIGHTS_NAME] + _config_files(snapshot / CONFIG_NAME, label)
    _verify(snapshot, names, label)
    return snapshot


def _write_ref(cache: Path, repo_id: str, ref: str, commit: str) -> None:
    """Record that branch/tag ``ref`` points at ``commit`` (the cache's ``refs/`` files), so that
    the unpinned name resolves offline; downloads are pinned to the commit itself."""
    if ref == commit:
        return
    if revision_problem(ref) or not _SHA1.fullmatch(commit):
        return  # never reached (both are checked before any download); never write outside refs/
    path = _storage_folder(cache, repo_id) / "refs" / ref
    try:
        if path.is_file() and path.read_text() == commit:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache still works online


def download_model(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> Path:
    """Download (or find in the cache) the model ``repo_id`` at ``revision`` and return its snapshot
    folder, ready for :func:`mttag.weights.modelfile.load_local_model`.

    With ``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached, the cached snapshot is used.
    ``token`` defaults to ``HF_TOKEN`` / the token saved by ``hf auth login``.
    """
    from huggingface_hub import HfApi, snapshot_download

    _check_repo_id(repo_id)
    _check_revision(revision, repo_id)
    cache = hub_cache_dir(cache_dir)
    label = _label(repo_id, revision)
    if is_offline():
        return _from_cache(repo_id, revision, cache, "offline")
    if revision and _SHA1.match(revision) and cached_model_dir(repo_id, revision, cache) is not None:
        return _from_cache(repo_id, revision, cache, "offline")  # a commit never changes: no need to ask

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token, library_name="mttag", library_version=__version__)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:
        if _is_connection_error(exc):
            return _from_cache(repo_id, revision, cache, "unreachable")
        raise _hub_error(exc, repo_id, revision) from None
    listing = {s.rfilename: s for s in (info.siblings or [])}
    _check_listing(label, listing)
    commit = info.sha
    if not commit:
        raise ModelLoadError(f"{label}: the Hub did not say which commit {revision or 'main'} is; cannot pin the download")
    if not isinstance(commit, str) or not _SHA1.fullmatch(commit):
        raise ModelLoadError(
            f"{label}: the Hub ({endpoint}) answered a malformed commit id {str(commit)[:60]!r} (expected 40 hex "
            "digits); nothing was downloaded, check HF_ENDPOINT"
        )

    def fetch(names: list[str]) -> Path:
        # pinned to the commit checked above: no second resolution, so a hostile endpoint cannot
        # name another commit (the library would use it as a cache path unchecked)
        try:
            # allow_patterns are fnmatch patterns: a name from the config is matched literally
            patterns = [re.sub(r"([*?\[])", r"[\1]", n) for n in names]
            return Path(snapshot_download(
                repo_id, revision=commit, allow_patterns=patterns, cache_dir=str(cache), token=token,
                endpoint=endpoint, library_name="mttag", library_version=__version__,
            ))
        except Exception as exc:
            raise _hub_error(exc, repo_id, revision, filename=_failed_file(exc, names, listing)) from None

    snapshot = fetch([CONFIG_NAME])
    _check_hash(snapshot, CONFIG_NAME, label, listing)  # before parsing it
    extra = _config_files(snapshot / CONFIG_NAME, label)
    missing = [n for n in extra if n not in listing]
    if missing:
        raise ModelLoadError(f"{label}: {CONFIG_NAME} names {missing[0]!r}, which is not in the repo")
    names = [CONFIG_NAME, WEIGHTS_NAME] + extra + ([CARD_NAME] if CARD_NAME in listing else [])
    fetch(names)
    _write_ref(cache, repo_id, revision or "main", commit)
    _verify(snapshot, names, label, listing)
    return snapshot


def _failed_file(exc: BaseException, names: list[str], listing: dict[str, Any]) -> str | None:
    """Which of ``names`` a download error is about: the library names the file, or for LFS files
    the end of its CDN URL (the sha256)."""
    text = str(exc)
    for name in sorted(names, key=len, reverse=True):
        sha = getattr(getattr(listing.get(name), "lfs", None), "sha256", None)
        if name in text or (sha and sha[-32:] in text):
            return name
    return None


# -- publish -------------------------------------------------------------------------------
def _read_card(text: str):
    """``(metadata, body)`` of a model card, parsed by huggingface_hub's ``ModelCard``;
    metadata (a ``ModelCardData``) is None without a YAML block."""
    from huggingface_hub import ModelCard

    if not re.match(r"^\ufeff?---\s*\n", text):
        return None, text  # (the library would log that it found no metadata)
    try:
        card = ModelCard(text.lstrip("\ufeff"))
    except Exception as exc:  # yaml.YAMLError, or ValueError for a block that is not a mapping
        raise ModelLoadError(f"{CARD_NAME}: the YAML metadata block is invalid ({_first_line(exc)})") from None
    return card.data, card.text


def _card_metrics(data) -> dict[str, float]:
    """Metrics in a card's ``model-index`` block."""
    return {str(r.metric_type): float(r.metric_value) for r in (data.eval_results or [])
            if r.metric_type and isinstance(r.metric_value, (int, float))}


def _card_for(model_dir: Path, config, n_params: int, metrics: dict[str, Any] | None) -> str:
    """The README to publish: the directory's own card when it carries mttag metadata, else one
    generated by :func:`mttag.weights.modelfile.model_card`, keeping known metrics and the card's prose."""
    from .modelfile import model_card

    card_path = model_dir / CARD_NAME
    body = ""
    found: dict[str, Any] = {}
    if card_path.is_file():
        text = card_path.read_text(encoding="utf-8")
        meta, rest = _read_card(text)
        if meta is not None and meta.get("library_name"):
            if not metrics:
                return text
            # new metrics for an mttag card: regenerate it whole rather than repeat its generated text
        else:
            body = rest.strip()
            found = _card_metrics(meta) if meta is not None else {}
    if not metrics:
        metrics = found
    if not metrics:
        metrics_file = model_dir / "metrics.json"
        if metrics_file.is_file():
            try:
                data = json.loads(metrics_file.read_text(encoding="utf-8"))
                metrics = {k: v for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}
            except ValueError:
                metrics = {}
    if not metrics and isinstance(config.provenance.get("metrics"), dict):
        metrics = config.provenance["metrics"]
    return model_card(config, n_params, metrics or None, body)


def push_model(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    *,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Publish a model directory to the Hub repo ``repo_id`` (created if needed) in one commit of
    exactly ``config.json``, ``model.safetensors``, ``README.md`` (and files the config names).

    The directory must load (config, weights, tag count); a model card with Hub metadata is
    generated when the directory has none. ``revision`` is a branch, created from ``main`` if
    missing. ``metrics`` replaces the card's metrics (the card is then regenerated). Returns the
    URL of the commit (its last part is the sha to pin with ``@``).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from ..models import count_parameters
    from .modelfile import load_config, load_local_model

    _check_repo_id(repo_id)
    _check_revision(revision, repo_id)
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

    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="mttag", library_version=__version__)
    operations = [
        CommitOperationAdd(path_in_repo=CONFIG_NAME, path_or_fileobj=str(model_dir / CONFIG_NAME)),
        CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=str(model_dir / WEIGHTS_NAME)),
        CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode("utf-8")),
    ] + [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(model_dir / name)) for name in extra]
    message = commit_message or f"Upload {config.arch} music tagging model ({config.n_tags} tags) with mttag {__version__}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.create_commit(
            repo_id, operations=operations, commit_message=message, revision=revision, repo_type="model"
        )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _hub_error(exc, repo_id, revision, pushing=True) from None
    return str(info.commit_url)
