"""What the beets plugin (``beetsplug/mttag.py``) needs from mttag, kept apart from beets.

Every call into mttag's tagging and embedding code is in :class:`Runner` and the index
helpers below, so the plugin stays a thin shell over beets and this one place can be
re-pointed when mttag's run layer changes. Importing this module is cheap (no torch, no
numpy): beets imports its plugins on every ``beet`` command, ``beet ls`` included.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .util.display import printable

FIELD_PREFIX = "mttag_"
# flexible attributes of the plugin's own (the per-tag scores are FIELD_PREFIX + tag)
TAGS_FIELD = "mttag_tags"
MODEL_FIELD = "mttag_model"
OWN_FIELDS = (TAGS_FIELD, MODEL_FIELD)
MODES = ("no", "add", "replace")


def field_name(tag: str) -> str:
    """The flexible attribute holding a tag's score: ``Hip-Hop`` → ``mttag_hip_hop``,
    ``female vocalists`` → ``mttag_female_vocalists``. beets field names are matched in
    queries as ``name:value``, so only lower-case letters, digits and ``_`` are kept."""
    key = re.sub(r"[^a-z0-9]+", "_", " ".join(tag.lower().split())).strip("_")
    return FIELD_PREFIX + (key or "tag")


def display_tag(tag: str) -> str:
    """A tag as ``mttag_tags`` lists it: mttag's one spelling (:func:`mttag.inference.vocab.display`:
    ``msd:Progressive rock`` → ``progressive rock``), as every other output spells it."""
    from .inference.vocab import display

    return display(tag)


def model_display_name(model: str | None) -> str:
    """The name results are stored under, without loading anything: the configured name, or
    the default model's registered name."""
    if model:
        return str(model)
    from .weights.registry import default_model_name

    return default_model_name() or "default"


def _vocabulary_of_dir(directory: Path) -> list[str]:
    try:
        tags = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("tags")
    except (OSError, ValueError, AttributeError, RecursionError):
        return []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def known_vocabulary(model: str | None, index: str | os.PathLike | None = None) -> list[str]:
    """The tags whose score fields beets should know as numbers, read without torch or the
    network: the published vocabularies, every bundled model's, the configured model's when
    it is a local directory, and the vocabulary an existing index records (a Hub model); each
    also in its display spelling (a combined model's ``msd:rock`` is stored as ``rock``), and
    every display spelling of mttag's vocabulary table."""
    from .inference.vocab import VOCABULARIES, _table, display
    from .weights import registry

    tags: dict[str, None] = dict.fromkeys(_table()[0])
    for vocabulary in VOCABULARIES.values():
        tags.update(dict.fromkeys(vocabulary))
    try:
        for entry in registry.load_registry().get("models", []):
            if registry.location_kind(entry) == "bundled":
                tags.update(dict.fromkeys(_vocabulary_of_dir(registry.bundled_dir(entry))))
    except Exception:  # a broken user registry must not stop `beet ls`; tagging reports it
        pass
    if model and Path(model).expanduser().is_dir():
        tags.update(dict.fromkeys(_vocabulary_of_dir(Path(model).expanduser())))
    if index is not None:
        try:
            manifest = json.loads((Path(index) / "index.json").read_text(encoding="utf-8"))
            tags.update(dict.fromkeys(t for t in manifest.get("tags", []) if isinstance(t, str)))
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):
            pass
    for tag in list(tags):
        tags.setdefault(display(tag))
    return list(tags)


# -- merging into beets' own fields ------------------------------------------------------------


def genre_values(tags: Sequence[Any], kind: str, threshold: float | None = None,
                 min_confidence: float | None = None) -> list[str]:
    """The chosen tags of one kind (``genre``, ``mood``) that ``mttag write`` would put into
    that field, spelled as it spells them: of a confidence of at least ``min_confidence``
    (default :data:`mttag.inference.calibration.DEFAULT_THRESHOLD`, unless ``threshold`` is given),
    at most 3 genres or 2 moods (:func:`mttag.filetags.plan.choose_tags`). ``tags``: TagScores,
    ``{"tag", "score", "confidence"}`` records or ``(tag, score)`` pairs (no confidence: all
    of that kind, capped)."""
    from .filetags.plan import WriteOptions, choose_tags, planned_values

    options = WriteOptions(fields=(kind,), threshold=threshold, min_confidence=min_confidence)
    return planned_values(choose_tags(tags, options), options)[kind]


def merge_list(before: Sequence[str], ours: Sequence[str], mode: str) -> list[str]:
    """``add``: what is there plus ours that are missing (case-insensitively); ``replace``: ours."""
    if mode == "replace" or not before:
        return list(ours)
    seen = {v.casefold() for v in before}
    return list(before) + [v for v in ours if v.casefold() not in seen]


def merge_text(before: str, ours: str, mode: str) -> str:
    """A comment: ``add`` appends ``; ours`` once, ``replace`` gives ``ours``."""
    if mode == "replace" or not before.strip():
        return ours
    if ours in before:
        return before
    return f"{before}; {ours}"


# -- running the model -----------------------------------------------------------------------


@dataclass
class Outcome:
    """One file's result: ``tags`` (best first, each with the value stored in beets: the
    calibrated confidence, or the raw probability for a model without a calibration table),
    ``scores`` (the same tags in full: :class:`mttag.inference.tagging.TagScore`; all the model's
    probabilities in ``probabilities``) and, when embeddings were asked for, the track's unit
    ``vector``; or ``error``, one line."""

    path: str
    tags: list[tuple[str, float]] = field(default_factory=list)
    scores: list[Any] = field(default_factory=list)
    error: str | None = None
    duration: float | None = None
    probabilities: Any = field(default=None, repr=False)
    vector: Any = field(default=None, repr=False)
    windows: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class Runner:
    """The model, loaded once on first use and reused (the import stage calls :meth:`run`
    once per album), and a :class:`mttag.inference.tagging.Tagger` over it. Batching across the files
    of a call, decoding ahead, device choice and windowing are the Tagger's."""

    def __init__(self, model: str | None = None, device: str = "auto", windows: int | None = None,
                 embeddings: bool = True):
        self.model = model or None
        self.device = device
        self.windows = windows
        self.embeddings = embeddings
        self.name = model_display_name(self.model)
        self._tagger = None
        self._identity: dict[str, Any] | None = None
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._tagger is not None

    def load(self):
        """Load the model (raises ``mttag.ModelLoadError`` or ``ValueError`` with one line)."""
        if self._tagger is None:
            from .device import select_device
            from .inference.tagging import Tagger
            from .weights.pretrained import load_model

            start = time.perf_counter()
            dev = select_device(self.device)
            net = load_model(self.model, device=str(dev), progress=None)
            if self.embeddings and not hasattr(net, "forward_with_embedding"):
                self.embeddings = False  # a model without embeddings still tags
            self._tagger = Tagger(net, dev, windows=self.windows, model_name=self.name,
                                  embeddings=self.embeddings)
            self.load_seconds = time.perf_counter() - start
        return self._tagger

    @property
    def tags(self) -> list[str]:
        return list(self.load().config.tags)

    @property
    def identity(self) -> dict[str, Any]:
        """What an index records about the model (as ``mttag embed`` records it)."""
        if self._identity is None:
            from .inference.embedder import _probe_dim, model_revision

            tagger = self.load()
            config = tagger.config
            self._identity = {
                "name": self.name, "revision": model_revision(tagger.model), "arch": config.arch,
                "preset": config.preset, "sample_rate": config.sample_rate,
                "crop_seconds": config.crop_seconds, "dim": _probe_dim(tagger.model),
            }
        return self._identity

    def run(self, paths: Sequence[str], top: int | None, threshold: float | None) -> Iterator[Outcome]:
        """One :class:`Outcome` per path, in order, as each file is done."""
        from .inference.embedder import pool
        from .inference.tagging import score_tags, select_scores

        tagger = self.load()
        names = list(tagger.config.tags)
        for r in tagger.tag_files(paths, top=None, threshold=None):
            if not r.ok:
                yield Outcome(r.path, error=r.error, duration=r.duration)
                continue
            # every tag, merged and best first (by confidence where the model has a table)
            scores = r.scores if r.scores is not None else score_tags(r.probabilities, names, tagger.calibration)
            chosen = select_scores(scores, top, threshold)
            out = Outcome(r.path, [(s.tag, s.probability if s.confidence is None else s.confidence) for s in chosen],
                          scores=chosen, duration=r.duration, probabilities=r.probabilities, windows=r.n_windows)
            if r.window_embeddings is not None:
                try:
                    out.vector = pool(r.window_embeddings)
                except ValueError:
                    out.vector = None  # the tags still count; the track stays out of the index
            yield out


# -- the similarity index ----------------------------------------------------------------------


def default_index_path(library_db: str | os.PathLike, model: str, config_dir: str | os.PathLike) -> Path:
    """``<library folder>/<library name>.<model>.mttag``: one index per model (embeddings of
    different models cannot be compared), beside the library database; in beets' config
    folder for an in-memory library."""
    db = os.fsdecode(library_db)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "model"
    if db in ("", ":memory:"):
        return Path(config_dir) / f"library.{safe}.mttag"
    p = Path(db).expanduser()
    return p.with_name(f"{p.stem}.{safe}.mttag")


def path_key(path: str) -> str:
    """How the index names a file (absolute, as ``mttag embed`` writes it)."""
    from .inference.output import path_key as key

    return key(path)


def indexed_paths(index: str | os.PathLike) -> set[str]:
    """The files an index holds (empty when there is none yet). Raises
    ``mttag.inference.index.EmbeddingIndexError`` for a damaged one."""
    from .inference.index import EmbeddingIndex, read_manifest

    recover_index(index)
    if read_manifest(index) is None:
        return set()
    return set(EmbeddingIndex(index).paths)


_OLD = ".old-"  # a swapped-out index being deleted: <parent>/.<name>.old-<pid>
_NEW = ".new-"  # a rewritten index being made: <parent>/.<name>.new-<pid>


def recover_index(index: str | os.PathLike) -> None:
    """Finish a :func:`drop_rows` swap a crash interrupted: put the old index back where the
    new one never arrived, and delete leftovers."""
    import shutil

    index = Path(index)
    parent = index.parent
    if not parent.is_dir():
        return
    for name in os.listdir(parent):
        if not name.startswith(f".{index.name}{_OLD}") and not name.startswith(f".{index.name}{_NEW}"):
            continue
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)):
            continue  # another process is swapping right now: its files, not leftovers
        leftover = parent / name
        if _OLD in name[len(index.name) + 1:] and not index.exists():
            os.rename(leftover, index)  # the rewrite never replaced it: the old one is whole
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, someone else's (or cannot tell: leave it)
    return True


def drop_rows(index: str | os.PathLike, keep) -> int:
    """Rewrite an index without the rows whose file ``keep(key)`` refuses (items removed from
    the library, moved, or to be embedded again); returns how many went. The new index is
    written beside the old one and swapped in by renames, under the index's lock, so a reader
    sees one or the other and a crash leaves one whole (:func:`recover_index`)."""
    import shutil

    import numpy as np

    from .inference.index import LOCK, TRACKS, EmbeddingIndex, EmbeddingIndexError, IndexWriter, read_manifest
    from .util.fileio import ExclusiveLock, LockedError

    index = Path(index)
    recover_index(index)
    if read_manifest(index) is None:
        return 0
    try:
        lock = ExclusiveLock(index / LOCK, f"another mttag writing {printable(index)}").acquire()
    except LockedError as exc:
        raise EmbeddingIndexError(str(exc)) from None
    old = index.with_name(f".{index.name}{_OLD}{os.getpid()}")
    new = index.with_name(f".{index.name}{_NEW}{os.getpid()}")
    try:
        idx = EmbeddingIndex(index)
        rows = [i for i, p in enumerate(idx.paths) if keep(p)]
        if len(rows) == len(idx):
            return 0
        windows = []
        with open(index / TRACKS, "rb") as f:  # the committed lines come first, in row order
            for _, line in zip(range(len(idx)), f):
                windows.append(int(json.loads(line).get("windows") or 0))
        shutil.rmtree(new, ignore_errors=True)
        with IndexWriter(new, idx.model, idx.tags, idx.manifest.get("windows")) as writer:
            for a in range(0, len(rows), 4096):
                chunk = rows[a:a + 4096]
                writer.add_rows([idx.paths[i] for i in chunk], [float(idx.durations[i]) for i in chunk],
                                np.asarray(idx.vectors[chunk]), np.asarray(idx.scores[chunk], dtype=np.float32),
                                [windows[i] for i in chunk], keys=True)
        del idx  # its memory maps, before the files move
        os.rename(index, old)
        os.rename(new, index)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    finally:
        lock.release()
    shutil.rmtree(old, ignore_errors=True)
    return len(windows) - len(rows)


def index_model(index: str | os.PathLike) -> str | None:
    """The name of the model an index was made with (None: no index yet)."""
    from .inference.index import read_manifest

    manifest = read_manifest(index)
    return None if manifest is None else str(manifest["model"].get("name"))


class IndexAppender:
    """Adds results to an index, each as it arrives: opened per call and closed at once, so
    the lock is held only while this process writes (two ``beet`` commands can take turns)."""

    def __init__(self, index: str | os.PathLike, runner: Runner):
        from .inference.index import IndexWriter

        self.writer = IndexWriter(index, runner.identity, runner.tags, runner.windows, resume=True)

    def __enter__(self) -> "IndexAppender":
        self.writer.open()
        return self

    def __exit__(self, *exc) -> bool:
        self.writer.close()
        return False

    def add(self, path: str, outcome: Outcome) -> bool:
        if outcome.vector is None or outcome.probabilities is None:
            return False
        return self.writer.add_track(path, outcome.duration, outcome.vector, outcome.probabilities,
                                     outcome.windows)


@dataclass
class Neighbour:
    path: str  # as the index names it
    score: float  # cosine similarity
    duration: float


def similar(index: str | os.PathLike, seed: str, live: Iterable[str], count: int) -> list[Neighbour]:
    """The ``count`` files of ``live`` (index keys) most like ``seed`` (an index key), best
    first; the seed and rows of files no longer in ``live`` (removed from the library, or
    moved: their new path is embedded again) are left out. Raises ``KeyError`` when the
    seed is not in the index."""
    from .inference.index import EmbeddingIndex

    idx = EmbeddingIndex(index)
    row = idx.row_of(seed)
    if row is None:
        raise KeyError(seed)
    wanted = set(live)
    gone = [i for i, p in enumerate(idx.paths) if p not in wanted]
    hits = idx.search(idx.vectors[row], max(1, count), exclude=[row, *gone])
    return [Neighbour(h.path, h.score, h.duration) for h in hits]


def file_of(key: str) -> str:
    """A file name from an index key (undecodable bytes restored)."""
    from .inference.output import path_from_text

    return path_from_text(key)


def write_playlist(path: str | os.PathLike, entries: Sequence[tuple[str, float]]) -> list[str]:
    """An .m3u8 playlist of ``entries`` (file, seconds), as ``mttag similar --playlist`` writes
    it; returns warnings. Raises ``mttag.inference.index.EmbeddingIndexError`` with one line."""
    from .inference.index import write_playlist as write

    return write(path, entries)


def describe(path: str | os.PathLike) -> str:
    return printable(os.fsdecode(path))
