"""Window plans and reading them: where the model's windows sit in a track (:func:`window_starts`,
:func:`even_starts`), and :func:`iter_windows`, which decodes close windows as one stretch of at most
20 s, so memory stays bounded for hour-long files."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

from .decode import AudioError, AudioInfo, check_decoded, check_duration, probe, read_segment


def even_starts(total: float, window: float, count: int) -> list[float]:
    """``count`` window starts spread evenly from the first possible start (0) to the last
    (``total - window``: the last window ends with the track); one window sits in the
    middle, and a track shorter than a window has every window at 0.

    The planner behind the evenly spaced crops of training: validation crops of a prepared
    dataset and the teacher's windows over a longer crop (tagging picks from the
    whole-track grid instead: :func:`window_starts`). Units are the caller's (seconds or samples); callers
    in samples round the starts."""
    last = max(0.0, total - window)
    if count == 1:
        return [last / 2]
    return [last * i / (count - 1) for i in range(count)]


def window_starts(duration: float, window: float, n_windows: int | None) -> list[float]:
    """Start times (s) of the windows a track is cut into.

    ``n_windows=None``: consecutive windows covering the whole track, the last one
    aligned to the end (the whole-track grid). Otherwise ``n_windows`` windows of that
    grid, spread evenly: the centre window of each of ``n_windows`` equal runs of the
    grid (all of it when the track holds no more windows than that).

    Taking the windows from the whole-track grid, not from arbitrary offsets, makes a
    bounded plan a sample of the very windows ``--windows all`` averages: its tags
    converge to the whole track's as the count grows, and on real music agree with them
    more closely at the same count (docs/tagging.md, "Choosing the default windows").
    """
    if duration <= window:
        return [0.0]
    # windows needed to cover the track without gaps (the epsilon absorbs float error in 30.0/10.0)
    covering = math.ceil(duration / window - 1e-9)

    def grid(i: int) -> float:
        return min(i * window, duration - window)

    if n_windows is None or n_windows >= covering:
        return [grid(i) for i in range(covering)]
    n = max(1, n_windows)
    # run j holds grid windows [j*covering/n, (j+1)*covering/n); take its centre (an
    # index, rounded half down), in integers so no float error moves it. Only the n
    # windows taken are computed: the plan's size follows the count asked for, not the
    # length the file claims.
    return [grid(((2 * j + 1) * covering - 1) // (2 * n)) for j in range(n)]


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` samples: longer input is cut, shorter input is repeated
    (a loop sounds like music to the model; zero padding sounds like silence)."""
    if x.size >= n:
        return x[:n]
    reps = math.ceil(n / max(1, x.size))
    return np.tile(x, reps)[:n]


def is_silent(x: np.ndarray, threshold_db: float = -90.0) -> bool:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return peak <= 10 ** (threshold_db / 20)


def _runs(starts: list[float], window: float, max_span: float, max_gap: float) -> list[list[float]]:
    """Group window starts into runs read with one decode each: consecutive windows whose
    gap is at most ``max_gap`` s, spanning at most ``max_span`` s (memory stays bounded)."""
    runs: list[list[float]] = []
    for s in starts:
        if runs and s - (runs[-1][-1] + window) <= max_gap and s + window - runs[-1][0] <= max_span:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


# Windows that lie close together are decoded as one stretch of audio and cut apart:
# one seek and one resampler start-up per stretch instead of per window, and no margin
# decoded twice. A stretch of 20 s at 44.1 kHz peaks at ~14 MB (mono float32 blocks, their
# concatenation, the resampled copy), whatever the track length.
_RUN_SECONDS = 20.0
_RUN_GAP_SECONDS = 1.0


def iter_windows(path: str | os.PathLike, sample_rate: int, window_seconds: float,
                 n_windows: int | None) -> tuple[AudioInfo, Iterator[np.ndarray]]:
    """Probe ``path`` and return its info plus a generator of fixed-length windows
    (``window_seconds`` at ``sample_rate``). Windows that follow each other closely
    (``n_windows=None``: all of them) are decoded in stretches of at most 20 s and
    cut apart; isolated ones are read on their own. Memory stays bounded by one stretch
    whatever the track length, and a window is the same samples either way: output
    sample ``k`` is at ``k / sample_rate`` s of the file (up to resampler rounding)."""
    info = probe(path)
    check_duration(info)
    n = int(round(window_seconds * sample_rate))
    starts = window_starts(info.duration, window_seconds, n_windows)

    def read_one(start: float) -> np.ndarray:
        x = read_segment(info, start, window_seconds, sample_rate)
        check_decoded(info, x.size, sample_rate)
        return x

    def read_run(run: list[float]) -> Iterator[np.ndarray]:
        if len(run) == 1:
            yield read_one(run[0])
            return
        # Damage inside the stretch ends the block where it starts (both decoders keep what
        # came before); an AudioError here means nothing decoded from the stretch's start,
        # which its first window read alone would hit too.
        block = read_segment(info, run[0], run[-1] + window_seconds - run[0], sample_rate)
        first = int(round(run[0] * sample_rate))
        for start in run:
            lo = int(round(start * sample_rate)) - first
            x = block[lo : lo + n]
            check_decoded(info, x.size, sample_rate)
            yield x

    def generate() -> Iterator[np.ndarray]:
        first = True
        for run in _runs(starts, window_seconds, _RUN_SECONDS, _RUN_GAP_SECONDS):
            windows = read_run(run)
            while True:
                try:
                    x = next(windows, None)
                except AudioError:
                    # The header promised more than the file holds (a truncated download) or
                    # the audio is damaged from here on: the track is tagged from the windows
                    # that could be read; only a first window that fails is an error.
                    if first:
                        raise
                    return
                if x is None:
                    break
                first = False
                yield fit_length(x, n)

    return info, generate()
