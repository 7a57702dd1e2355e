"""Taggrams: a track's tag probabilities over time, as a picture a person reads at a glance.

matplotlib is an optional extra (``pip install "mttag[plot]"``): nothing else in mttag
needs it, and it is imported only when a plot is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .display import printable
from .fileio import atomic_write

# 1200 × 600 pixels: wide enough for a 10-minute track's windows, tall enough for 12 tag names
FIGSIZE = (12.0, 6.0)
DPI = 100
DEFAULT_TAGS = 12


class PlotUnavailable(Exception):
    """matplotlib is not installed; the message says how to get it."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window, works without a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable('plotting needs matplotlib: pip install "mttag[plot]"') from None
    return plt


def plot_taggram(result, path: str | os.PathLike, tags: int = DEFAULT_TAGS) -> Path:
    """Write ``result``'s taggram (a :class:`~mttag.tagging.TagResult` from a Tagger with
    ``keep_windows=True``) as a PNG: time on x, its ``tags`` most probable tags on y
    (most probable at the top), probability as colour; track and model in the title."""
    if result.window_probabilities is None or not result.window_times:
        raise ValueError("no per-window probabilities: tag with keep_windows=True (mttag tag --timeline)")
    plt = _pyplot()
    probs = np.asarray(result.window_probabilities, dtype=np.float32)  # windows × tags
    names = result.tag_names or [str(i) for i in range(probs.shape[1])]
    order = np.argsort(-probs.mean(axis=0), kind="stable")[:tags]
    starts = np.array([a for a, _ in result.window_times])
    ends = np.array([b for _, b in result.window_times])
    # window edges on the time axis: each column spans its own window (the last may overlap the one before)
    edges = np.concatenate([starts, ends[-1:]])
    edges = np.maximum.accumulate(edges)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        mesh = ax.pcolormesh(edges, np.arange(len(order) + 1), probs[:, order].T, vmin=0.0, vmax=1.0,
                             cmap="magma", shading="flat")
        ax.set_yticks(np.arange(len(order)) + 0.5)
        ax.set_yticklabels([names[i] for i in order])
        ax.invert_yaxis()
        ax.set_xlabel("time (m:ss)")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{int(x) // 60}:{int(x) % 60:02d}"))
        title = printable(Path(result.path).name)
        ax.set_title(f"{title} — {printable(result.model or '')}", loc="left")
        fig.colorbar(mesh, ax=ax, label="probability", fraction=0.03, pad=0.02)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return path
