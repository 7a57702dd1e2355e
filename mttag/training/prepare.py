"""``mttag prepare``: every source track decoded once (22,050 Hz mono, all cores) into the
prepared store (:mod:`mttag.training.store`), with the tag vocabulary and leak-free splits.

``prepare_dataset(tracks, out_dir, top_tags=50, min_count=10, ratios=(0.8, 0.1, 0.1), seed=0,
workers=os.cpu_count(), tags_vocab=None, ...) -> PreparedDataset`` takes any iterable of
:class:`~mttag.training.sources.TrackSpec`. A completion journal makes it resumable: an
interrupted run (:class:`PrepareInterrupted`) goes on where it stopped when called again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.decode import AudioError, check_decoded, check_duration, probe, read_segment
from ..filetags.reader import clean_tags
from ..util.fileio import ExclusiveLock, atomic_write
from .sources import TrackSpec
from .splits import (
    _SPLIT_NAMES,
    EXCLUDED,
    FAILED,
    SPLITS,
    TEST,
    TRAIN,
    UNLABELED,
    VALID,
    choose_vocabulary,
    parse_split,
    stratified_group_split,
)
from .store import (
    _FAILED_REC,
    _INDEX,
    _JREC,
    _OK,
    DEFAULT_SHARD_BYTES,
    FORMAT,
    FORMAT_VERSION,
    INT16_SCALE,
    SAMPLE_RATE,
    PreparedDataset,
    _latest_records,
    _Store,
)

SEGMENT_SECONDS = 300.0  # longer tracks are decoded in segments and spilled to a temp file


@dataclass
class PrepareProgress:
    """Passed to ``on_progress``: ``stage`` is ``"scan"`` (reading the source; ``total`` None),
    ``"decode"`` or ``"finalize"``."""

    stage: str
    done: int
    total: int | None
    failed: int = 0
    seconds: float = 0.0  # audio decoded so far in this run


class PrepareInterrupted(Exception):
    """The run stopped before every track was decoded (Ctrl-C or ``stop_after``); what was
    written is consistent, and calling :func:`prepare_dataset` again resumes."""

    def __init__(self, done: int, remaining: int):
        self.done, self.remaining = done, remaining
        super().__init__(f"interrupted after {done} tracks, {remaining} left; run again to resume")


# ---------------------------------------------------------------------------------------------
# Catalog: the source tracks, columnar (no per-track Python objects)
# ---------------------------------------------------------------------------------------------


def _file_key(file: str) -> int:
    data = os.path.abspath(file).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class _Catalog:
    def __init__(self) -> None:
        self.paths = bytearray()
        self.path_end = array("q")
        self.roots: dict[str, int] = {}
        self.root_ids = array("h")
        self.groups: dict[str, int] = {}
        self.group_ids = array("i")
        self.given = array("b")
        self.has_tags = array("b")
        self.tag_names: dict[str, int] = {}
        self.tag_ids = array("i")
        self.tag_end = array("q")
        self.keys = array("Q")

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, spec: TrackSpec) -> None:
        path = os.fspath(spec.path)
        root = os.fspath(spec.root) if spec.root else ""
        self.paths += path.encode("utf-8", "surrogateescape")
        self.path_end.append(len(self.paths))
        rid = self.roots.setdefault(root, len(self.roots))
        if rid > 32767:
            raise ValueError("more than 32768 distinct audio roots")
        self.root_ids.append(rid)
        self.keys.append(_file_key(os.path.join(root, path) if root else path))
        group = spec.group.strip() if isinstance(spec.group, str) else None
        self.group_ids.append(self.groups.setdefault(group, len(self.groups)) if group else -1)
        code = parse_split(spec.split)
        self.given.append(-1 if code is None else code)
        if spec.tags is None:
            self.has_tags.append(0)
        else:
            self.has_tags.append(1)
            for tag in clean_tags(spec.tags, normalize=False):  # sources may hand over raw lists
                self.tag_ids.append(self.tag_names.setdefault(tag, len(self.tag_names)))
        self.tag_end.append(len(self.tag_ids))

    def path(self, i: int) -> str:
        start = self.path_end[i - 1] if i else 0
        return bytes(self.paths[start : self.path_end[i]]).decode("utf-8", "surrogateescape")

    def root_names(self) -> list[str]:
        return list(self.roots)

    def group_names(self) -> list[str]:
        return list(self.groups)


# ---------------------------------------------------------------------------------------------
# Decoding (worker side)
# ---------------------------------------------------------------------------------------------


def _to_int16(x: np.ndarray) -> tuple[np.ndarray, int]:
    clipped = int(np.count_nonzero(np.abs(x) > 1.0))
    y = np.rint(x * np.float32(INT16_SCALE))
    np.clip(y, -32768, 32767, out=y)
    return y.astype("<i2"), clipped


def _decode_track(key: int, file: str, sample_rate: int, max_seconds: float | None, spill_dir: str):
    info = probe(file)
    check_duration(info)
    start, total, limited = 0.0, info.duration, False
    if max_seconds and info.duration > max_seconds:
        start, total, limited = (info.duration - max_seconds) / 2, float(max_seconds), True
    if total <= SEGMENT_SECONDS + 1:
        x = read_segment(info, start, total if limited else None, sample_rate)
        check_decoded(info, x.size, sample_rate)
        y, clipped = _to_int16(x)
        return y, len(y), clipped
    spill = os.path.join(spill_dir, f"{key:016x}.i16")
    n = clipped = 0
    try:
        with open(spill, "wb") as f:
            t, end = start, start + total
            while True:
                last = end - t <= SEGMENT_SECONDS + 1
                x = read_segment(info, t, (end - t if limited else None) if last else SEGMENT_SECONDS, sample_rate)
                if x.size == 0:
                    break
                y, c = _to_int16(x)
                f.write(y.tobytes())
                n, clipped = n + len(y), clipped + c
                if last:
                    break
                t += SEGMENT_SECONDS
        check_decoded(info, n, sample_rate)
    except BaseException:
        if os.path.exists(spill):
            os.remove(spill)
        raise
    return spill, n, clipped


def _decode_job(job: tuple) -> tuple:
    """Worker entry point: ``(row, key, file, sample_rate, max_seconds, spill_dir)`` →
    ``(row, key, ok, payload, samples, clipped, reason)``; never raises for a bad file."""
    row, key, file, sample_rate, max_seconds, spill_dir = job
    try:
        payload, n, clipped = _decode_track(key, file, sample_rate, max_seconds, spill_dir)
        return row, key, True, payload, n, clipped, ""
    except AudioError as exc:
        return row, key, False, None, 0, 0, exc.reason
    except MemoryError:
        return row, key, False, None, 0, 0, "out of memory while decoding"
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
        return row, key, False, None, 0, 0, f"unexpected error ({type(exc).__name__}: {str(exc)[:200]})"


def _worker_init() -> None:
    import signal
    import sys
    import threading

    # the parent handles Ctrl-C and SIGTERM (as an interruption) and drains the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # If the parent is killed (SIGKILL, OOM killer) the workers must not linger forever
    # waiting for work: the kernel kills them on Linux, a watchdog elsewhere.
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="mttag-parent-watch", daemon=True).start()


# ---------------------------------------------------------------------------------------------
# prepare_dataset
# ---------------------------------------------------------------------------------------------


def _check_state(out_dir: Path, state: dict, create: bool) -> None:
    """Refuse an ``out_dir`` holding something else, or a dataset made with settings that
    change the stored audio; with ``create``, make the directory and record the settings."""
    path = out_dir / "state.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a directory")
    if path.exists():
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        for key in ("format", "version", "sample_rate", "max_seconds"):
            if old.get(key) != state.get(key):
                raise ValueError(f"{out_dir} holds a dataset prepared with {key}={old.get(key)!r}, not "
                                 f"{state.get(key)!r}; use the same settings to resume, or another directory")
        return
    if out_dir.exists() and any(p.name not in (".DS_Store", ".lock") for p in out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and holds no mttag dataset; choose a new or empty directory")
    if not create:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(state, indent=1), encoding="utf-8"))


def _lock(out_dir: Path) -> ExclusiveLock:
    """An exclusive lock on ``out_dir`` so that two runs never write one store; a second run
    is refused with :class:`mttag.util.fileio.LockedError` naming the first (pid, command)."""
    return ExclusiveLock(out_dir / ".lock", f"another mttag prepare into {out_dir}")


def _save_npy(path: Path, array_: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array_)


def prepare_dataset(
    tracks: Iterable[TrackSpec],
    out_dir: str | os.PathLike,
    top_tags: int = 50,
    min_count: int = 10,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    workers: int | None = None,
    tags_vocab: Sequence[str] | None = None,
    *,
    max_seconds: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    retry_failed: bool = False,
    exclude_unlabeled_from: Sequence[str] = ("valid", "test"),
    on_progress: Callable[[PrepareProgress], None] | None = None,
    stop_after: int | None = None,
) -> PreparedDataset:
    """Decode ``tracks`` into ``out_dir`` and build vocabulary and splits; return the dataset.

    Vocabulary: ``tags_vocab`` if given (kept whole, in order; source tags are matched to it
    case-insensitively), else the ``top_tags`` most frequent tags with at least ``min_count``
    labelled tracks; other tags are dropped and counted. A track is labelled when its
    source gives tags (``tags`` not None) and, after dropping, at least one tag remains or
    its given split is train/valid/test; otherwise it joins the unlabelled pool.

    Splits: given splits are kept; labelled tracks without one are split at the group level
    by iterative stratification with ``ratios`` (train, valid, test) and ``seed``; a group
    that has given-split tracks goes where those are. Unlabelled tracks whose group is in
    one of ``exclude_unlabeled_from`` are excluded (not decoded), as CALS did.

    Decoding runs in ``workers`` processes (default: all cores; 1: in this process), at most
    a few tracks in flight, tracks longer than 5 minutes decoded in segments.
    ``max_seconds`` keeps only that many seconds from the middle of longer tracks.
    A bad file is recorded (``failures.csv``) and never stops the run. Re-running on the
    same ``out_dir`` resumes: tracks already journaled are not decoded again (failed ones
    neither, unless ``retry_failed``); vocabulary and splits are recomputed, so they may be
    changed on a re-run without decoding again. ``stop_after``: stop (raising
    :class:`PrepareInterrupted`) after that many tracks were decoded in this call.
    """
    started = time.time()
    out_dir = Path(out_dir)
    settings = _Settings.check(top_tags, min_count, ratios, seed, workers, tags_vocab, max_seconds, sample_rate,
                               shard_bytes, retry_failed, exclude_unlabeled_from, on_progress, stop_after, started)
    _check_state(out_dir, settings.state, create=False)  # fail before a long scan of the sources
    with contextlib.ExitStack() as lock:
        locked = out_dir.is_dir()
        if locked:  # a run into it may be going on: refuse before a long scan, too
            lock.enter_context(_lock(out_dir))
        # out_dir is created only after planning, so a bad source leaves no empty dataset behind
        plan = _make_plan(_scan(tracks, settings.notify), out_dir, settings)
        store, journal = _open_store(plan, lock, locked)
        decoder = _Decoder(plan, store, _rows_to_decode(plan, journal))
        decoder.run()
        settings.notify(PrepareProgress("finalize", decoder.done, decoder.total, decoder.failed, decoder.seconds))
        _finalize(plan, _collect(plan, decoder))
        return PreparedDataset(out_dir)


@dataclass(frozen=True)
class _Settings:
    """The arguments of :func:`prepare_dataset`, checked before any source is read, so that a
    mistake is reported at once and not after a long scan."""

    top_tags: int
    min_count: int
    ratios: tuple[float, ...]  # normalised to sum 1
    seed: int
    workers: int
    tags_vocab: Sequence[str] | None
    max_seconds: float | None
    sample_rate: int
    shard_bytes: int
    retry_failed: bool
    exclude_unlabeled_from: Sequence[str]
    exclude_codes: frozenset
    notify: Callable[[PrepareProgress], None]
    stop_after: int | None
    started: float
    state: dict  # what must match to resume (state.json)

    @classmethod
    def check(cls, top_tags, min_count, ratios, seed, workers, tags_vocab, max_seconds, sample_rate, shard_bytes,
              retry_failed, exclude_unlabeled_from, on_progress, stop_after, started) -> _Settings:
        workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
        if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0 or ratios[0] <= 0:
            raise ValueError("ratios must be three non-negative numbers (train, valid, test) with train > 0, "
                             f"got {tuple(ratios)}")
        ratios = tuple(float(r) / sum(ratios) for r in ratios)
        exclude_codes = frozenset(parse_split(s) for s in exclude_unlabeled_from)
        state = {"format": FORMAT, "version": FORMAT_VERSION, "sample_rate": int(sample_rate),
                 "max_seconds": float(max_seconds) if max_seconds else None}
        return cls(top_tags, min_count, ratios, seed, workers, tags_vocab, max_seconds, sample_rate, shard_bytes,
                   retry_failed, exclude_unlabeled_from, exclude_codes, on_progress or (lambda p: None), stop_after,
                   started, state)

    def params(self) -> dict:  # recorded in dataset.json
        return dict(top_tags=self.top_tags, min_count=self.min_count, ratios=list(self.ratios), seed=self.seed,
                    max_seconds=self.max_seconds, tags_vocab=self.tags_vocab is not None,
                    exclude_unlabeled_from=list(self.exclude_unlabeled_from), sample_rate=self.sample_rate,
                    shard_bytes=self.shard_bytes)


@dataclass
class _Plan:
    """Every source row's fate, decided before any audio is decoded: its labels and its split.

    Arrays are per catalog row (source order, duplicates included). The plan is recomputed
    on every run, also on a resume, so vocabulary and splits can change without decoding
    again; only the audio comes from the journal.
    """

    out_dir: Path
    settings: _Settings
    cat: _Catalog
    keys: np.ndarray  # file key (journal identity) per row
    group_ids: np.ndarray  # -1: no group
    roots: list[str]
    root_ids: np.ndarray
    unique: np.ndarray  # False for a later row naming an earlier row's file
    vocab: list[str]
    labels: np.ndarray  # rows × tags, uint8; all zero for unlabelled rows
    dropped: dict[str, int]  # source tags outside the vocabulary → occurrences
    lost_labels: int  # rows labelled in the source that kept no vocabulary tag
    split: np.ndarray  # split code; EXCLUDED rows are never decoded
    conflicts: int  # groups whose given splits disagree
    split_source: str
    excluded: int  # unique rows excluded by the unlabelled-group rule

    def file(self, i: int) -> str:
        root = self.roots[self.root_ids[i]]
        p = self.cat.path(i)
        return os.path.join(root, p) if root else p

    def wanted(self) -> np.ndarray:
        return self.split <= UNLABELED


def _scan(tracks: Iterable[TrackSpec], notify: Callable[[PrepareProgress], None]) -> _Catalog:
    cat = _Catalog()
    for spec in tracks:
        cat.add(spec)
        if len(cat) % 1000 == 0:
            notify(PrepareProgress("scan", len(cat), None))
    notify(PrepareProgress("scan", len(cat), len(cat)))
    if len(cat) == 0:
        raise ValueError("no tracks found in the given sources")
    return cat


def _make_plan(cat: _Catalog, out_dir: Path, settings: _Settings) -> _Plan:
    n_src = len(cat)
    keys = np.frombuffer(cat.keys, dtype=np.uint64)
    given = np.frombuffer(cat.given, dtype=np.int8).astype(np.int64)
    group_ids = np.frombuffer(cat.group_ids, dtype=np.int32).astype(np.int64)
    _, first = np.unique(keys, return_index=True)
    unique = np.zeros(n_src, dtype=bool)
    unique[first] = True
    vocab, labels, labeled, dropped, lost_labels = _label_rows(cat, given, unique, settings)
    split, conflicts, split_source = _split_rows(labels, labeled, given, group_ids, len(cat.groups), unique, settings)
    return _Plan(out_dir=out_dir, settings=settings, cat=cat, keys=keys, group_ids=group_ids,
                 roots=cat.root_names(), root_ids=np.frombuffer(cat.root_ids, dtype=np.int16), unique=unique,
                 vocab=vocab, labels=labels, dropped=dropped, lost_labels=lost_labels, split=split,
                 conflicts=conflicts, split_source=split_source, excluded=int(((split == EXCLUDED) & unique).sum()))


def _label_rows(cat: _Catalog, given: np.ndarray, unique: np.ndarray, settings: _Settings):
    """Choose the vocabulary and label every row: ``(vocab, labels, labeled, dropped, lost_labels)``.

    Only the first row of a file and rows not given as unlabelled count towards the
    vocabulary, so a duplicate or a student track cannot push a tag into it."""
    n_src = len(cat)
    has_tags = np.frombuffer(cat.has_tags, dtype=np.int8).astype(bool)
    tag_ids = np.frombuffer(cat.tag_ids, dtype=np.int32).astype(np.int64) if len(cat.tag_ids) else np.zeros(0, np.int64)
    tag_end = np.frombuffer(cat.tag_end, dtype=np.int64)
    tag_start = np.concatenate([[0], tag_end[:-1]])
    tag_owner = np.repeat(np.arange(n_src), tag_end - tag_start)
    source_labeled = has_tags & unique & (given != UNLABELED)
    counted = source_labeled[tag_owner]
    raw_names = list(cat.tag_names)
    raw_counts = np.bincount(tag_ids[counted], minlength=len(raw_names))
    if settings.tags_vocab is not None:
        from ..filetags.reader import normalize_tag

        vocab = list(settings.tags_vocab)
        lookup = {normalize_tag(t): i for i, t in enumerate(vocab)}
        raw_to_vocab = np.array([lookup.get(normalize_tag(t), -1) for t in raw_names], dtype=np.int64)
    else:
        vocab = choose_vocabulary({t: int(c) for t, c in zip(raw_names, raw_counts) if c > 0}, settings.top_tags,
                                  settings.min_count)
        position = {t: i for i, t in enumerate(vocab)}
        raw_to_vocab = np.array([position.get(t, -1) for t in raw_names], dtype=np.int64)
    mapped = raw_to_vocab[tag_ids] if len(tag_ids) else np.zeros(0, np.int64)
    keep = counted & (mapped >= 0)
    labels = np.zeros((n_src, len(vocab)), dtype=np.uint8)
    labels[tag_owner[keep], mapped[keep]] = 1
    dropped_counts = np.bincount(tag_ids[counted & (mapped < 0)], minlength=len(raw_names))
    dropped = {raw_names[i]: int(dropped_counts[i]) for i in np.flatnonzero(dropped_counts)}
    # a track given a labelled split stays labelled without tags: the split was chosen for it
    labeled = source_labeled & (labels.any(axis=1) | ((given >= 0) & (given < UNLABELED)))
    lost_labels = int((source_labeled & ~labeled).sum())
    labels[~labeled] = 0
    return vocab, labels, labeled, dropped, lost_labels


def _split_rows(labels: np.ndarray, labeled: np.ndarray, given: np.ndarray, group_ids: np.ndarray, n_named: int,
                unique: np.ndarray, settings: _Settings) -> tuple[np.ndarray, int, str]:
    """Every row's split code, the number of groups with conflicting given splits, and
    where the labelled splits came from. Splits are per group so that no artist leaks
    between train and test."""
    n_src = len(given)
    gkey = np.where(group_ids >= 0, group_ids, n_named + np.arange(n_src))  # no group: own group
    split = np.full(n_src, UNLABELED, dtype=np.int64)
    lab_idx = np.flatnonzero(labeled)
    conflicts = 0
    split_source = "none"
    if len(lab_idx):
        groups_l, inv = np.unique(gkey[lab_idx], return_inverse=True)
        split[lab_idx], conflicts, split_source = _split_labeled(inv, len(groups_l), labels[lab_idx], given[lab_idx],
                                                                 settings)
        split[_unlabeled_to_exclude(split, labeled, unique, gkey, groups_l, inv, settings.exclude_codes)] = EXCLUDED
    split[~unique] = EXCLUDED
    return split, conflicts, split_source


def _split_labeled(inv: np.ndarray, n_g: int, labels: np.ndarray, given: np.ndarray,
                   settings: _Settings) -> tuple[np.ndarray, int, str]:
    """Splits of the labelled rows, ``inv`` being each row's group (0..n_g-1). A given split
    wins for its row and pulls the rest of its group along; groups with none are stratified."""
    counts = np.zeros((n_g, labels.shape[1]), dtype=np.int64)
    np.add.at(counts, inv, labels.astype(np.int64))
    sizes = np.bincount(inv, minlength=n_g)
    bits = np.zeros(n_g, dtype=np.int64)
    has_given = (given >= 0) & (given < UNLABELED)
    np.bitwise_or.at(bits, inv[has_given], 1 << given[has_given])
    pre = np.full(n_g, -1, dtype=np.int64)
    single = (bits == 1) | (bits == 2) | (bits == 4)
    pre[single] = np.log2(bits[single]).astype(np.int64)
    multi = (bits > 0) & ~single
    conflicts = int(multi.sum())
    pre[multi] = np.where(bits[multi] & 1, TRAIN, np.where(bits[multi] & 2, VALID, TEST))
    free = pre < 0
    assigned = stratified_group_split(counts, sizes, settings.ratios, settings.seed, pre) if free.any() else pre
    split_source = "given" if not free.any() else ("stratified" if not has_given.any() else "given+stratified")
    return np.where(has_given, given, assigned[inv]), conflicts, split_source


def _unlabeled_to_exclude(split: np.ndarray, labeled: np.ndarray, unique: np.ndarray, gkey: np.ndarray,
                          groups_l: np.ndarray, inv: np.ndarray, exclude_codes: frozenset) -> np.ndarray:
    """Unlabelled rows whose group has labelled tracks in an excluded split (valid/test by
    default): as in CALS, a student track by a test artist would leak that artist."""
    n_g = len(groups_l)
    group_split_bits = np.zeros(n_g, dtype=np.int64)
    np.bitwise_or.at(group_split_bits, inv, 1 << split[labeled])
    excl_mask = sum(1 << c for c in exclude_codes if c is not None and c < UNLABELED)
    unl = np.flatnonzero(~labeled & unique)
    pos = np.searchsorted(groups_l, gkey[unl])
    pos_ok = pos < n_g
    hit = np.zeros(len(unl), dtype=bool)
    hit[pos_ok] = groups_l[pos[pos_ok]] == gkey[unl][pos_ok]
    bad = np.zeros(len(unl), dtype=bool)
    bad[hit] = (group_split_bits[pos[hit]] & excl_mask) != 0
    return unl[bad]


def _open_store(plan: _Plan, lock: contextlib.ExitStack, locked: bool) -> tuple[_Store, np.ndarray]:
    """Claim ``out_dir`` for writing and open the store; return it with the journal's records
    (empty for a new directory)."""
    out_dir = plan.out_dir
    _check_state(out_dir, plan.settings.state, create=True)
    if not locked:  # the directory is new: lock it now
        lock.enter_context(_lock(out_dir))
    for stale in ("dataset.json",):  # its presence means complete: not while the store changes
        if (out_dir / stale).exists():
            (out_dir / stale).unlink()
    store = _Store(out_dir, plan.settings.shard_bytes)
    return store, store.open()


def _journal_lookup(keys: np.ndarray, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key: whether the journal has it, and its latest record (zeros where not)."""
    rkeys, rlast = _latest_records(records)
    pos = np.searchsorted(rkeys, keys)
    pos = np.minimum(pos, max(len(rkeys) - 1, 0))
    found = (rkeys[pos] == keys) if len(rkeys) else np.zeros(len(keys), dtype=bool)
    return found, (rlast[pos] if len(rlast) else np.zeros(len(keys), dtype=_JREC))


def _rows_to_decode(plan: _Plan, journal: np.ndarray) -> np.ndarray:
    """The wanted rows the journal has no record of (or only a failure, with ``retry_failed``)."""
    found, rec_of = _journal_lookup(plan.keys, journal)
    status = np.zeros(len(plan.keys), dtype=np.int64)
    status[found] = rec_of["status"][found]
    if plan.settings.retry_failed:
        return np.flatnonzero(plan.wanted() & (status != _OK))
    return np.flatnonzero(plan.wanted() & (status == 0))


class _Decoder:
    """Decodes the given rows into the store, in this process or a pool. Each result is
    journaled as it arrives, so an interruption at any point loses at most the tracks in
    flight, and the next run resumes from the journal."""

    def __init__(self, plan: _Plan, store: _Store, rows: np.ndarray):
        self.plan, self.store, self.rows = plan, store, rows
        self.total = len(rows)
        self.done = self.failed = 0
        self.seconds = 0.0  # audio decoded in this run

    def jobs(self) -> Iterator[tuple]:
        s, spill_dir = self.plan.settings, str(self.store.spill_dir)
        return ((int(i), int(self.plan.keys[i]), self.plan.file(int(i)), int(s.sample_rate), s.max_seconds, spill_dir)
                for i in self.rows)

    def handle(self, result: tuple) -> None:
        s = self.plan.settings
        row, key, ok, payload, n, clipped, reason = result
        if ok:
            self.store.append_ok(key, payload, n, clipped)
            self.seconds += n / s.sample_rate
        else:
            self.store.append_failed(key, self.plan.file(row), reason)
            self.failed += 1
        self.done += 1
        s.notify(PrepareProgress("decode", self.done, self.total, self.failed, self.seconds))
        if s.stop_after is not None and self.done >= s.stop_after and self.done < self.total:
            raise PrepareInterrupted(self.done, self.total - self.done)

    def run(self) -> None:
        jobs = self.jobs()
        self.plan.settings.notify(PrepareProgress("decode", 0, self.total))
        try:
            if self.plan.settings.workers <= 1 or self.total <= 1:
                for job in jobs:
                    self.handle(_decode_job(job))
            else:
                _run_pool(jobs, self.plan.settings.workers, self.handle)
        except KeyboardInterrupt:
            self.store.close()
            raise PrepareInterrupted(self.done, self.total - self.done) from None
        except BaseException:
            self.store.close()
            raise
        self.store.close()


def _mp_context():
    """``fork`` on Linux: workers start instantly, need no re-import of ``__main__`` and
    only run numpy/libsndfile/soxr code, which is fork-safe. ``spawn`` elsewhere (macOS and
    Windows cannot fork safely); there, call prepare from under ``if __name__ == "__main__":``."""
    import multiprocessing as mp
    import sys

    method = os.environ.get("MTTAG_MP_START") or ("fork" if sys.platform.startswith("linux") else "spawn")
    return mp.get_context(method)


def _run_pool(jobs: Iterator[tuple], workers: int, handle: Callable[[tuple], None]) -> None:
    """Decode in a process pool with a bounded number of tracks in flight. A worker that
    dies (decoder crash, out-of-memory kill) breaks the pool; the tracks that were in flight
    are then retried one by one in a fresh process, so only the culprit is marked failed."""
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    ctx = _mp_context()

    def new_pool(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init)

    max_inflight = 2 * workers + 2
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() in a process with threads (a progress bar); the
        # children only decode audio and never touch the locks those threads hold.
        warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks.*", category=DeprecationWarning)
        _pool_loop(jobs, workers, handle, new_pool, max_inflight)


def _pool_loop(jobs: Iterator[tuple], workers: int, handle: Callable[[tuple], None], new_pool, max_inflight: int) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = new_pool(workers)
    pending: dict = {}
    source = iter(jobs)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < max_inflight:
                job = next(source, None)
                if job is None:
                    exhausted = True
                    break
                pending[pool.submit(_decode_job, job)] = job
            if not pending:
                break
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            broken: list[tuple] = []
            for fut in sorted(finished, key=lambda f: pending[f][0]):
                job = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken.append(job)
                    continue
                handle(result)
            if broken:
                broken += list(pending.values())
                pending.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                _isolate(sorted(broken), new_pool, handle)
                pool = new_pool(workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate(jobs: list[tuple], new_pool, handle) -> None:
    from concurrent.futures.process import BrokenProcessPool

    pool = new_pool(1)
    crashes = successes = 0
    try:
        for job in jobs:
            try:
                result = pool.submit(_decode_job, job).result()
                successes += 1
            except BrokenProcessPool:
                crashes += 1
                if crashes >= 3 and successes == 0:
                    raise RuntimeError("decoder worker processes die on every file (not a problem of the files; "
                                       "try workers=1 / --workers 1 to see why)") from None
                row, key = job[0], job[1]
                result = (row, key, False, None, 0, 0, "the decoder crashed on this file (worker process died)")
                pool.shutdown(wait=False)
                pool = new_pool(1)
            handle(result)
    finally:
        pool.shutdown(wait=True)


@dataclass
class _Decoded:
    """What the journal holds for the plan's rows after decoding, as of the end of this run."""

    store: _Store  # closed; read for the failure reasons
    rec_of: np.ndarray  # latest journal record per row (zeros where none)
    stored: np.ndarray  # rows with audio, ascending: dataset index j is row stored[j]
    failed: np.ndarray  # bool per row: wanted but failed to decode
    split: np.ndarray  # the plan's split with FAILED for those
    run: dict  # dataset.json's last_run


def _collect(plan: _Plan, decoder: _Decoder) -> _Decoded:
    # Read back from the journal rather than from this run's results: earlier, interrupted
    # runs decoded tracks too.
    found, rec_of = _journal_lookup(plan.keys, np.fromfile(decoder.store.journal_path, dtype=_JREC))
    wanted = plan.wanted()
    ok_mask = found & (rec_of["status"] == _OK) & wanted
    fail_mask = found & (rec_of["status"] == _FAILED_REC) & wanted
    split = plan.split.copy()
    split[fail_mask] = FAILED
    s = plan.settings
    run = dict(processed=decoder.done, failed=decoder.failed, seconds=round(decoder.seconds, 2),
               wall=round(time.time() - s.started, 2), workers=s.workers)
    return _Decoded(decoder.store, rec_of, np.flatnonzero(ok_mask), fail_mask, split, run)


def _finalize(plan: _Plan, decoded: _Decoded) -> None:
    """Write the dataset's files, each atomically. ``dataset.json`` comes last: its presence
    is what marks the directory complete, so a run stopped in here is simply resumed."""
    out_dir, vocab = plan.out_dir, plan.vocab
    index, paths = _index(plan, decoded)
    labels = plan.labels[decoded.stored]
    atomic_write(out_dir / "index.npy", lambda p: _save_npy(p, index))
    atomic_write(out_dir / "labels.npy", lambda p: _save_npy(p, labels))
    atomic_write(out_dir / "paths.bin", lambda p: p.write_bytes(paths))
    group_names = plan.cat.group_names()
    atomic_write(out_dir / "groups.json", lambda p: p.write_text(json.dumps(group_names, ensure_ascii=False),
                                                                   encoding="utf-8", errors="surrogateescape"))
    reasons = decoded.store.failure_reasons()
    params = plan.settings.params()
    atomic_write(out_dir / "manifest.csv",
                 lambda p: _write_manifest(p, plan, decoded, index, group_names, reasons, params))
    atomic_write(out_dir / "failures.csv", lambda p: _write_failures(p, plan, decoded, reasons))
    tag_counts, total_tag, balance = _tag_balance(index, labels, len(vocab), plan.settings.ratios)
    atomic_write(out_dir / "tag_counts.csv", lambda p: _write_tag_counts(p, vocab, tag_counts, total_tag))
    meta = _summary(plan, decoded, index, tag_counts, balance, params)
    atomic_write(out_dir / "dataset.json", lambda p: p.write_text(json.dumps(meta, indent=1, ensure_ascii=False),
                                                                    encoding="utf-8"))


def _index(plan: _Plan, decoded: _Decoded) -> tuple[np.ndarray, bytes]:
    """The index rows of the stored tracks and the path bytes they point into."""
    cat, stored, rec_of = plan.cat, decoded.stored, decoded.rec_of
    index = np.zeros(len(stored), dtype=_INDEX)
    path_end = np.frombuffer(cat.path_end, dtype=np.int64)
    path_start_src = np.concatenate([[0], path_end[:-1]])
    blob = bytearray()
    path_start = np.zeros(len(stored), dtype=np.int64)
    for j, i in enumerate(stored):
        path_start[j] = len(blob)
        blob += cat.paths[path_start_src[i] : path_end[i]]
    index["shard"] = rec_of["shard"][stored]
    index["offset"] = rec_of["offset"][stored]
    index["length"] = rec_of["length"][stored]
    index["split"] = decoded.split[stored]
    index["group"] = plan.group_ids[stored]
    index["root"] = plan.root_ids[stored]
    index["path_start"] = path_start
    index["path_len"] = (path_end - path_start_src)[stored]
    index["row"] = stored
    return index, bytes(blob)


def _write_manifest(p: Path, plan: _Plan, decoded: _Decoded, index: np.ndarray, group_names: list[str],
                    reasons: dict[int, str], params: dict) -> None:
    """One line per source row, in source order, saying what became of it and why."""
    final_split, stored, vocab = decoded.split, decoded.stored, plan.vocab
    dataset_index = np.full(len(final_split), -1, dtype=np.int64)
    dataset_index[stored] = np.arange(len(stored))
    lengths_all = np.zeros(len(final_split), dtype=np.int64)
    lengths_all[stored] = index["length"]
    sample_rate = plan.settings.sample_rate
    with open(p, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "group", "tags", "index", "seconds", "reason"])
        excluded_reason = "unlabelled, and its artist/group is in " + "/".join(params["exclude_unlabeled_from"])
        for i in range(len(final_split)):
            code = int(final_split[i])
            g = int(plan.group_ids[i])
            reason = ""
            if code == FAILED:
                reason = reasons.get(int(plan.keys[i]), "failed")
            elif code == EXCLUDED:
                reason = excluded_reason if plan.unique[i] else "duplicate of an earlier row (same file)"
            tags = "|".join(vocab[t] for t in np.flatnonzero(plan.labels[i])) if len(vocab) else ""
            w.writerow([plan.cat.path(i), _SPLIT_NAMES[code], group_names[g] if g >= 0 else "", tags,
                        int(dataset_index[i]) if dataset_index[i] >= 0 else "",
                        f"{lengths_all[i] / sample_rate:.2f}" if dataset_index[i] >= 0 else "", reason])


def _write_failures(p: Path, plan: _Plan, decoded: _Decoded, reasons: dict[int, str]) -> None:
    with open(p, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "file", "reason"])
        for i in np.flatnonzero(decoded.failed):
            w.writerow([plan.cat.path(int(i)), plan.file(int(i)), reasons.get(int(plan.keys[i]), "failed")])


def _tag_balance(index: np.ndarray, labels: np.ndarray, n_tags: int, ratios: Sequence[float]):
    """Per-split tag counts, per-tag totals, and how far each split's tag shares are from
    its target ratio (over tags with at least 10 tracks: rarer ones cannot be balanced)."""
    splits = index["split"]
    tag_counts = {name: labels[splits == code].sum(0).astype(int).tolist() for code, name in enumerate(SPLITS[:3])}
    balance: dict[str, dict] = {}
    total_tag = np.array([sum(tag_counts[s][t] for s in SPLITS[:3]) for t in range(n_tags)], dtype=np.float64)
    usable = total_tag >= 10
    for k, name in enumerate(SPLITS[:3]):
        if usable.any() and ratios[k] > 0:
            share = np.array(tag_counts[name], dtype=np.float64)[usable] / total_tag[usable]
            dev = np.abs(share - ratios[k])
            balance[name] = {"target": round(ratios[k], 4), "mean_abs_dev": round(float(dev.mean()), 4),
                             "max_abs_dev": round(float(dev.max()), 4)}
    return tag_counts, total_tag, balance


def _write_tag_counts(p: Path, vocab: list[str], tag_counts: dict[str, list[int]], total_tag: np.ndarray) -> None:
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag", "total", *SPLITS[:3], *(f"{s}_share" for s in SPLITS[:3])])
        for t, tag in enumerate(vocab):
            tot = int(total_tag[t])
            cs = [tag_counts[s][t] for s in SPLITS[:3]]
            w.writerow([tag, tot, *cs, *(f"{c / tot:.3f}" if tot else "" for c in cs)])


def _summary(plan: _Plan, decoded: _Decoded, index: np.ndarray, tag_counts: dict, balance: dict, params: dict) -> dict:
    """The content of ``dataset.json``."""
    sample_rate, stored, dropped = plan.settings.sample_rate, decoded.stored, plan.dropped
    n = len(stored)
    splits = index["split"]
    lengths = index["length"]
    per_split = {name: int((splits == code).sum()) for code, name in enumerate(SPLITS)}
    hours = {name: round(float(lengths[splits == code].sum()) / sample_rate / 3600, 4) for code, name in enumerate(SPLITS)}
    top_dropped = dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))[:50])
    group_used = np.unique(index["group"][index["group"] >= 0])
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sample_rate": int(sample_rate), "dtype": "int16", "int16_scale": INT16_SCALE,
        "tags": plan.vocab, "num_tracks": n,
        "hours": round(float(lengths.sum()) / sample_rate / 3600, 4),
        "splits": per_split, "hours_per_split": hours,
        "labeled": int((splits < UNLABELED).sum()), "unlabeled": per_split["unlabeled"],
        "source_tracks": len(plan.cat), "failed": int(decoded.failed.sum()),
        "excluded": plan.excluded, "duplicates": int((~plan.unique).sum()),
        "groups": int(len(group_used)), "split_source": plan.split_source,
        "groups_spanning_given_splits": plan.conflicts,
        "tag_counts": tag_counts, "tag_balance": balance,
        "dropped_tags": {"distinct": len(dropped), "occurrences": int(sum(dropped.values())), "top": top_dropped},
        "labeled_tracks_left_without_vocabulary_tags": plan.lost_labels,
        "clipped_tracks": int((decoded.rec_of["clipped"][stored] > 0).sum()) if n else 0,
        "shards": [_Store.shard_name(s) for s in range(int(index["shard"].max()) + 1 if n else 0)],
        "roots": plan.roots, "params": params, "last_run": decoded.run,
    }
