"""How many windows does a track need? Agreement of window plans with whole-track tags.

For each track in FOLDERS, the tags of every consecutive window averaged (``--windows all``,
the reference) are compared with the tags of ``--windows N`` (N windows of that grid, spread
evenly; ``benchmarks/window_placement.py`` compares other placements), for several N: top-K
overlap (mean, worst track, share of tracks below K-1), windows per track, share of the
audio heard, and wall time of the plan next to decoding + resampling the whole tracks
alone (same run, so the ratio survives a noisy machine).

    python benchmarks/window_plans.py /path/to/music --model msd-musicnn --plans 1,4,8,12,16,20,24,32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's mttag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--model", default=None, help="default: the bundled default model")
    ap.add_argument("--plans", default="1,4,8,12,16,20,24,32", help="window counts to compare with 'all'")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=30.0, help="skip shorter tracks (jingles)")
    ap.add_argument("--precision", default="fp32", help="of the reference and the plans alike (fp32: the "
                    "plans' own error, not bf16's; vs_musicnn.py measures what --precision auto gives)")
    args = ap.parse_args()

    import numpy as np

    import mttag
    from mttag.audio.decode import probe, read_segment
    from mttag.audio.files import iter_audio_files
    from mttag.inference.tagging import Tagger

    model = mttag.load_model(args.model)
    sr, window = model.config.sample_rate, model.config.crop_seconds
    files = [f for f in iter_audio_files(args.folders) if probe(f).duration >= args.min_seconds]
    total = sum(probe(f).duration for f in files)
    print(f"{len(files)} tracks, {total / 60:.1f} min, model {args.model or 'default'} "
          f"({window:.3f} s windows at {sr} Hz)")

    start = time.perf_counter()
    for f in files:  # decode + resample alone: the floor any plan is measured against
        read_segment(probe(f), 0.0, None, sr)
    decode = time.perf_counter() - start

    def run(windows):
        start = time.perf_counter()
        results = list(Tagger(model, "cpu", windows=windows, precision=args.precision).tag_files(files, top=args.top))
        return results, time.perf_counter() - start

    reference, ref_time = run(None)
    for r in reference:
        if not r.ok:
            sys.exit(f"{r.path}: {r.error} (remove it or raise --min-seconds)")
    ref_tags = [{t for t, _ in r.tags} for r in reference]
    ref_probs = [r.probabilities for r in reference]
    # the tags a plan must rank like the whole track: the reference's top K+1
    near_top = [np.argsort(-p, kind="stable")[: args.top + 1] for p in ref_probs]
    # how far apart the K-th and (K+1)-th whole-track tags are: a plan whose probabilities
    # are off by more than this will swap them
    gaps = np.array([p[i[args.top - 1]] - p[i[args.top]] for p, i in zip(ref_probs, near_top)])
    print(f"decode + resample alone: {decode:.1f} s\n")
    print(f"| plan | windows/track | audio heard | top-{args.top} agreement (mean) | worst track | "
          f"tracks below {args.top - 1} | error near the top (median) | time | × decode |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for plan in [int(p) for p in args.plans.split(",")]:
        results, seconds = run(plan)
        agree = [len({t for t, _ in r.tags} & ref) for r, ref in zip(results, ref_tags)]
        per_track = [min(plan, int(np.ceil(probe(f).duration / window - 1e-9))) for f in files]
        heard = sum(n * window for n in per_track) / total
        # largest probability error among the whole track's top K+1 tags, median over tracks
        err = np.median([np.abs(r.probabilities[i] - p[i]).max() for r, p, i in zip(results, ref_probs, near_top)])
        print(f"| {plan} | {np.mean(per_track):.1f} | {100 * min(1.0, heard):.0f} % | {np.mean(agree):.2f} | "
              f"{min(agree)} | {sum(a < args.top - 1 for a in agree)} | {err:.3f} | {seconds:.1f} s | {seconds / decode:.2f} |")
    per_track_all = [int(np.ceil(probe(f).duration / window - 1e-9)) for f in files]
    print(f"| all | {np.mean(per_track_all):.1f} | 100 % | {args.top:.2f} | {args.top} | 0 | 0 | {ref_time:.1f} s | "
          f"{ref_time / decode:.2f} |")
    print(f"\nwhole track: gap between the {args.top}th and {args.top + 1}th tag's probability: median "
          f"{np.median(gaps):.3f}, below 0.01 in {int((gaps < 0.01).sum())} of {len(gaps)} tracks "
          f"(a plan agrees only where its error near the top is smaller than this gap)")


if __name__ == "__main__":
    main()
