"""Tagging metrics: macro and per-tag ROC-AUC and PR-AUC (average precision)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def tagging_metrics(labels: np.ndarray, probs: np.ndarray, tags: list[str] | None = None) -> dict:
    """``labels`` N×T (0/1), ``probs`` N×T. Tags whose column is all 0 or all 1 have
    no defined AUC; they are left out of the macro averages and reported as ``None``."""
    labels = np.asarray(labels).astype(bool)
    per_tag = {}
    rocs, prs = [], []
    for j in range(labels.shape[1]):
        y = labels[:, j]
        name = tags[j] if tags else str(j)
        if y.all() or not y.any():
            per_tag[name] = {"roc_auc": None, "pr_auc": None, "positives": int(y.sum())}
            continue
        roc = float(roc_auc_score(y, probs[:, j]))
        pr = float(average_precision_score(y, probs[:, j]))
        rocs.append(roc)
        prs.append(pr)
        per_tag[name] = {"roc_auc": roc, "pr_auc": pr, "positives": int(y.sum())}
    return {
        "roc_auc": float(np.mean(rocs)) if rocs else None,
        "pr_auc": float(np.mean(prs)) if prs else None,
        "n_tracks": int(labels.shape[0]),
        "n_tags_scored": len(rocs),
        "per_tag": per_tag,
    }
