"""Taggrams: a track's tag probabilities over time, as a picture a person reads at a glance.

matplotlib is an optional extra (``pip install "mttag[plot]"``): nothing else in mttag
needs it, and it is imported only when a plot is asked for.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .. import __version__
from ..util.display import printable
from ..util.fileio import atomic_write

# 1200 × 600 pixels: wide enough for a 10-minute track's windows, tall enough for 12 tag names
FIGSIZE = (12.0, 6.0)
DPI = 100
DEFAULT_TAGS = 12
# The PNG "Software" text of every taggram: how a later run knows a PNG is one it drew and may
# replace (any other file at a --plot path is the user's, kept unless --force).
SOFTWARE = "mttag taggram"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_taggram(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG that :func:`plot_taggram` wrote: its ``Software`` text chunk
    (tEXt or iTXt, read chunk by chunk up to the image data, without decoding anything)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return False
            for _ in range(64):  # text chunks come before the image data; a few dozen at most
                head = f.read(8)
                if len(head) < 8:
                    return False
                size, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND") or size > 1_000_000:
                    return False
                data = f.read(size)
                f.seek(4, os.SEEK_CUR)  # CRC
                if kind in (b"tEXt", b"iTXt"):
                    key, _, value = data.partition(b"\0")
                    if kind == b"iTXt":  # compression flag, method, language, translated keyword
                        value = value[2:].split(b"\0", 2)[-1]
                    if key == b"Software" and value.startswith(SOFTWARE.encode()):
                        return True
    except OSError:
        return False
    return False


def colour_range(probs: np.ndarray) -> tuple[float, float]:
    """The colour scale of a taggram: the shown probabilities' own range, so that a model whose
    scores sit in 0.1-0.4 (musicnn) uses the whole colour map instead of its dark third."""
    low, high = float(np.min(probs)), float(np.max(probs))
    if high - low < 1e-6:  # one value everywhere: a scale around it, not a division by zero
        low, high = max(0.0, low - 0.05), min(1.0, high + 0.05)
    return low, high


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
    """Write ``result``'s taggram (a :class:`~mttag.inference.tagging.TagResult` from a Tagger with
    ``keep_windows=True``) as a PNG: time on x, its ``tags`` most probable tags on y
    (most probable at the top), probability as colour on a scale fitted to the shown
    probabilities (see :func:`colour_range`; the colour bar says so); track and model in
    the title. The PNG is marked as mttag's (:func:`is_taggram`)."""
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
    shown = probs[:, order].T
    low, high = colour_range(shown)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        mesh = ax.pcolormesh(edges, np.arange(len(order) + 1), shown, vmin=low, vmax=high,
                             cmap="magma", shading="flat")
        ax.set_yticks(np.arange(len(order)) + 0.5)
        ax.set_yticklabels([names[i] for i in order])
        ax.invert_yaxis()
        ax.set_xlabel("time (m:ss)")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{int(x) // 60}:{int(x) % 60:02d}"))
        title = printable(Path(result.path).name)
        ax.set_title(f"{title} — {printable(result.model or '')}", loc="left")
        fig.colorbar(mesh, ax=ax, label=f"probability (scale: this track's {low:.2f} to {high:.2f})",
                     fraction=0.03, pad=0.02)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI,
                                                   metadata={"Software": f"{SOFTWARE} (mttag {__version__})"}))
    finally:
        plt.close(fig)
    return path
