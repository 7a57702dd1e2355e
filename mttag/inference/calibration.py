"""Calibrated confidence: one threshold that means the same for every tag of every model.

A model's raw probabilities are not comparable from tag to tag (musicnn's frequent MSD tags such
as ``rock`` score higher on everything than rare ones) nor from model to model. Without labelled
audio to fit a calibration to, mttag compares each tag's probability with what the same model
gives that tag on a reference collection of real music (``benchmarks/manifests/reference.tsv``:
recordings from Debian game-music packages, every track tagged with the default window plan):

    confidence = Φ((logit p − μ_tag) / σ_tag)

where μ_tag and σ_tag are the mean and standard deviation of ``logit p`` for that tag over the
reference tracks, and Φ the standard normal distribution function. A confidence is thus the
share of reference music (in a logistic-normal fit of it) on which the tag scores *lower*
than on this track: 0.5 is a typical score for that tag, 0.99 one that only the top 1 % of the
reference reaches. It does not depend on how often a tag fires for a model, nor on the scale of
a model's outputs, so one threshold (:data:`DEFAULT_THRESHOLD`) serves every tag and model.
The raw probability stays available next to it.

The tables (``mttag/data/calibration.json``) are keyed by model name and revision (the first 12
hex digits of :func:`mttag.inference.embedder.model_revision`: a hash of the config, less its
provenance, and of every weight); a model without a table, or whose weights differ from the
revision a table was measured on, has no confidence (``None``).
Made by ``benchmarks/calibrate.py``; docs/tagging.md has the method and the measurements.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import DATA_DIR

CALIBRATION_PATH = DATA_DIR / "calibration.json"
# Chosen on the reference (tuning) set, see docs/tagging.md: above it a tag scores higher than on
# 90 % of the reference music. There 9 of 10 tracks get at least one genre above it and a track
# has ~7 of musicnn's 72 merged tags above it; at 0.95 a third of the tracks get no genre.
DEFAULT_THRESHOLD = 0.9
# probabilities are clipped here before the logit (a float32 sigmoid saturates at 1)
_EPS = 1e-6


class Table:
    """One model's calibration: ``tag -> (μ, σ)`` of ``logit p`` on the reference set."""

    def __init__(self, model: str, revision: str, tags: dict[str, tuple[float, float]], info: dict[str, Any]):
        self.model = model
        self.revision = revision
        self.tags = tags
        self.info = info

    def confidence(self, tag: str, probability: float) -> float | None:
        """The calibrated confidence of the model's tag ``tag`` (its own name), or None if the
        table does not know the tag."""
        stats = self.tags.get(tag)
        if stats is None:
            return None
        return _confidence(float(probability), *stats)

    def confidences(self, names: list[str], probabilities: np.ndarray) -> np.ndarray:
        """Confidences for a model's outputs ``names`` (NaN where a tag has no entry)."""
        out = np.full(len(names), np.nan)
        for i, (name, p) in enumerate(zip(names, np.asarray(probabilities, dtype=np.float64))):
            stats = self.tags.get(name)
            if stats is not None:
                out[i] = _confidence(float(p), *stats)
        return out


def _confidence(p: float, mu: float, sigma: float) -> float:
    p = min(max(p, _EPS), 1.0 - _EPS)
    z = (math.log(p / (1.0 - p)) - mu) / sigma
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def revision_of(model) -> str:
    """The revision a calibration table is keyed by: the first 12 hex digits of the loaded
    model's :func:`mttag.inference.embedder.model_revision` (the same weights loaded any way give the
    same revision; a retrained model under the same name does not)."""
    from .embedder import model_revision, short_revision

    return short_revision(model_revision(model))


def table(model: str, revision: str | None = None, path: str | Path | None = None) -> Table | None:
    """The table of the model called ``model`` (at ``revision``, when given), or None."""
    data = _load(str(path or CALIBRATION_PATH))
    entry = data.get("models", {}).get(model)
    if not isinstance(entry, dict):
        return None
    if revision is not None and entry.get("revision") != revision:
        return None
    tags = {str(k): (float(v[0]), float(v[1])) for k, v in entry.get("tags", {}).items() if float(v[1]) > 0}
    info = {k: v for k, v in entry.items() if k != "tags"}
    return Table(model, str(entry.get("revision")), tags, info)


def table_for(model, path: str | Path | None = None) -> Table | None:
    """The table of a loaded model: by its provenance name and its revision."""
    prov = getattr(getattr(model, "config", None), "provenance", None)
    name = prov.get("name") if isinstance(prov, dict) else None
    if not name or not hasattr(model, "state_dict"):
        return None
    if table(str(name), None, path) is None:  # no table under that name: no need to hash the weights
        return None
    return table(str(name), revision_of(model), path)


def confidence(model, tag: str, probability: float) -> float | None:
    """Calibrated confidence of ``tag`` (the model's own name, e.g. ``msd:rock`` for ``musicnn``)
    at raw ``probability``; ``model`` is a registered name or a loaded model. None when the
    model or the tag has no calibration."""
    t = table(model) if isinstance(model, str) else table_for(model)
    return None if t is None else t.confidence(tag, probability)


def fit(names: list[str], probabilities: np.ndarray) -> dict[str, list[float]]:
    """``tag -> [μ, σ]`` of ``logit p`` over reference tracks (``probabilities``: tracks × tags),
    as the tables store it (σ floored at 0.05 so a tag that hardly moves cannot turn noise
    into certainty)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    logits = np.log(p / (1.0 - p))
    mu = logits.mean(axis=0)
    sigma = np.maximum(logits.std(axis=0, ddof=1), 0.05)
    return {name: [round(float(m), 5), round(float(s), 5)] for name, m, s in zip(names, mu, sigma)}
