"""Split names and the leak-free split itself: the tag vocabulary chosen from the counts, and
artist-grouped splits stratified by tag (:func:`stratified_group_split`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "valid", "test", "unlabeled")
TRAIN, VALID, TEST, UNLABELED, EXCLUDED, FAILED = 0, 1, 2, 3, 4, 5
_SPLIT_NAMES = ("train", "valid", "test", "unlabeled", "excluded", "failed")
_SPLIT_ALIASES = {
    "train": TRAIN, "training": TRAIN, "valid": VALID, "val": VALID, "validation": VALID, "dev": VALID,
    "test": TEST, "testing": TEST, "eval": TEST, "unlabeled": UNLABELED, "unlabelled": UNLABELED,
    "student": UNLABELED,
}


def parse_split(name: str | None) -> int | None:
    """Split name (with aliases such as ``val``, ``student``) → code; ``None``/empty → ``None``."""
    if name is None:
        return None
    key = str(name).strip().lower()
    if not key:
        return None
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"unknown split {name!r} (expected train, valid, test or unlabeled)")
    return _SPLIT_ALIASES[key]


# ---------------------------------------------------------------------------------------------
# Vocabulary and splits
# ---------------------------------------------------------------------------------------------


def choose_vocabulary(counts: dict[str, int], top_tags: int, min_count: int) -> list[str]:
    """The ``top_tags`` most frequent tags with at least ``min_count`` tracks (ties by name)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [tag for tag, n in ranked if n >= min_count][:top_tags]


def stratified_group_split(counts: np.ndarray, sizes: np.ndarray, ratios: Sequence[float], seed: int = 0,
                           preassigned: np.ndarray | None = None) -> np.ndarray:
    """Iterative stratification (Sechidis et al., 2011) over groups.

    ``counts``: G×T, how many of the group's tracks carry each tag; ``sizes``: tracks per
    group; ``ratios``: target share of each subset; ``preassigned``: subset per group or -1
    (pre-assigned groups count towards the targets). Returns the subset of every group.
    The rarest remaining tag is handled first; its groups (largest first, ties in a
    seed-determined order) go to the subset that still most wants that tag, then the one
    most short of tracks overall. Deterministic for a given seed.
    """
    counts = np.asarray(counts, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    ratios = np.asarray(ratios, dtype=np.float64)
    ratios = ratios / ratios.sum()
    n_groups, n_tags = counts.shape
    rng = np.random.default_rng(seed)
    out = np.full(n_groups, -1, dtype=np.int64) if preassigned is None else np.asarray(preassigned, np.int64).copy()
    desired = ratios[:, None] * counts.sum(0)[None, :]
    desired_n = ratios * sizes.sum()
    fixed = out >= 0
    for k in range(len(ratios)):
        desired[k] -= counts[out == k].sum(0)
        desired_n[k] -= sizes[out == k].sum()
    allowed = ratios > 0
    has = counts > 0
    free = ~fixed
    remaining = has[free].sum(0).astype(np.int64)
    # a fixed random order breaks ties between equal groups reproducibly
    tiebreak = rng.permutation(n_groups)

    def assign(g: int, want: np.ndarray) -> None:
        best = np.flatnonzero(allowed & (want == want[allowed].max()))
        if len(best) > 1:
            sub = desired_n[best]
            best = best[sub == sub.max()]
        k = int(best[0] if len(best) == 1 else rng.choice(best))
        out[g] = k
        desired[k] -= counts[g]
        desired_n[k] -= sizes[g]

    while True:
        live = np.flatnonzero(remaining > 0)
        if len(live) == 0:
            break
        t = int(live[np.argmin(remaining[live])])
        members = np.flatnonzero(free & has[:, t])
        order = np.lexsort((tiebreak[members], -sizes[members]))
        for g in members[order]:
            assign(int(g), desired[:, t])
            free[g] = False
            remaining -= has[g]
    for g in np.flatnonzero(free):  # groups without any tag: balance track counts
        assign(int(g), desired_n)
        free[g] = False
    return out
