"""Which windows should a bounded plan hear? Placements compared on real music.

Every window of the whole-track grid (``--windows all``) is put through the model once; each
placement then picks N of those windows, and its estimate of the whole-track probabilities is
compared with the mean over all of them (the reference): top-K tags shared (mean, worst track,
tracks below K-1) and the error near the top (the largest probability error among the
reference's top K+1 tags, median over tracks). Placements:

* ``even``     the centre window of each of N equal runs of the grid (what ``--windows N`` does);
* ``random``   N grid windows drawn at random (seed 0);
* ``blocks``   N/4 blocks of 4 consecutive windows, evenly spread;
* ``kmeans``   every window described by its log-mel statistics (mean and standard deviation of
               96 bands, 8 principal components), clustered into N groups by k-means; one
               window per group (the one nearest its centre), weighted by the group's size;
* ``regress``  the ``even`` windows, plus a ridge regression from the same statistics (4
               components) to their probabilities, predicting the windows not heard.

``kmeans`` and ``regress`` need every window decoded (not just the N heard); they are here to
answer whether a cheap look at the whole track picks better windows than spreading them evenly.

    python benchmarks/window_placement.py /usr/share/games/wesnoth/1.16/data/core/music --min-seconds 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's mttag


def log_mel_stats(wave: np.ndarray, sr: int, times: list[tuple[float, float]]) -> np.ndarray:
    """Per window: mean and standard deviation of each of 96 log-mel bands (n_fft 512, hop 256)."""
    import librosa
    import torch

    mel_fb = torch.from_numpy(librosa.filters.mel(sr=sr, n_fft=512, n_mels=96)).float()
    spec = torch.stft(torch.from_numpy(wave), 512, 256, window=torch.hann_window(512), return_complex=True).abs() ** 2
    mel = torch.log1p(10000 * (mel_fb @ spec)).T.numpy()  # frames × bands
    fps = sr / 256
    rows = []
    for a, b in times:
        seg = mel[int(a * fps): max(int(a * fps) + 1, int(b * fps))]
        rows.append(np.concatenate([seg.mean(0), seg.std(0)]))
    return np.array(rows)


def components(features: np.ndarray, dim: int) -> np.ndarray:
    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    return u[:, :dim] * s[:dim]


def even(n: int, k: int) -> np.ndarray:
    """The grid indices ``--windows k`` picks on a track of n windows, from
    ``mttag.audio.windows.window_starts`` itself (on a track of exactly n unit windows)."""
    from mttag.audio.windows import window_starts

    return np.array([round(s) for s in window_starts(float(n), 1.0, k)])


def estimate(plan: str, probs: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    n = len(probs)
    if n <= k:
        return probs.mean(0)
    if plan == "even":
        return probs[even(n, k)].mean(0)
    if plan == "random":
        return probs[np.random.default_rng(0).choice(n, k, replace=False)].mean(0)
    if plan == "blocks":
        b = max(1, k // 4)
        starts = even(n - 3, b)
        return probs[np.concatenate([np.arange(s, s + 4) for s in starts])].mean(0)
    if plan == "kmeans":
        from sklearn.cluster import KMeans

        z = components(features, 8)
        km = KMeans(k, n_init=4, random_state=0).fit(z)
        out = np.zeros(probs.shape[1])
        for c in range(k):
            members = np.flatnonzero(km.labels_ == c)
            nearest = members[np.argmin(((z[members] - km.cluster_centers_[c]) ** 2).sum(1))]
            out += len(members) / n * probs[nearest]
        return out
    if plan == "regress":
        z = components(features, 4)
        idx = even(n, k)
        x = np.c_[np.ones(k), z[idx]]
        ridge = np.eye(x.shape[1])
        ridge[0, 0] = 0  # the intercept is not shrunk
        coef = np.linalg.solve(x.T @ x + ridge, x.T @ probs[idx])
        # regression estimator: mean prediction over every window + mean residual of those heard
        return np.clip((np.c_[np.ones(n), z] @ coef).mean(0) + (probs[idx] - x @ coef).mean(0), 0, 1)
    raise ValueError(plan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--model", default=None, help="default: the bundled default model")
    ap.add_argument("--counts", default="12,20", help="windows per track")
    ap.add_argument("--plans", default="even,random,blocks,kmeans,regress")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=30.0, help="skip shorter tracks (jingles)")
    args = ap.parse_args()

    import mttag
    from mttag.audio.decode import probe, read_segment
    from mttag.audio.files import iter_audio_files
    from mttag.inference.tagging import Tagger

    model = mttag.load_model(args.model)
    sr = model.config.sample_rate
    files = [f for f in iter_audio_files(args.folders) if probe(f).duration >= args.min_seconds]
    tracks = []
    for r in Tagger(model, "cpu", windows=None, keep_windows=True, precision="fp32").tag_files(files, top=args.top):
        if not r.ok:
            sys.exit(f"{r.path}: {r.error} (remove it or raise --min-seconds)")
        wave = read_segment(probe(r.path), 0.0, None, sr)
        tracks.append((r.window_probabilities, log_mel_stats(wave, sr, r.window_times), r.probabilities))
    minutes = sum(probe(f).duration for f in files) / 60
    print(f"{len(tracks)} tracks, {minutes:.1f} min, model {args.model or 'default'}\n")
    k_top = args.top
    print(f"| plan | windows | top-{k_top} shared (mean) | worst track | tracks below {k_top - 1} | error near the top (median) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for count in (int(c) for c in args.counts.split(",")):
        for plan in args.plans.split(","):
            shared, errors = [], []
            for probs, features, ref in tracks:
                est = estimate(plan, probs, features, count)
                top_ref = np.argsort(-ref, kind="stable")
                shared.append(len(set(np.argsort(-est, kind="stable")[:k_top]) & set(top_ref[:k_top])))
                near = top_ref[: k_top + 1]
                errors.append(np.abs(est[near] - ref[near]).max())
            print(f"| {plan} | {count} | {np.mean(shared):.2f} | {min(shared)} | {sum(s < k_top - 1 for s in shared)} | "
                  f"{np.median(errors):.3f} |")


if __name__ == "__main__":
    main()
