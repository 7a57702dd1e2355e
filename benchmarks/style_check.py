#!/usr/bin/env python3
"""Does the default model name a track's style? Old default (``msd-musicnn``) against the new (``musicnn``).

The labelled check set (``benchmarks/manifests/check.tsv``: package, path, style family) is real
music from Debian packages whose files carry a genre tag or whose package and file names
establish the style; it is never used for tuning (the calibration and the threshold come from
``benchmarks/calibrate.py``'s reference set). Each track is tagged by each model with its
default window plan (20 windows for ``msd-musicnn``, 12 for ``musicnn``) and precision:

* old default: top 5 by raw probability; would-be GENRE: the genres among those 5 (what
  ``mttag write`` puts in GENRE from a ``mttag tag`` results file today);
* new default: top 5 by calibrated confidence, near-duplicates merged; would-be GENRE: up to 3
  genres with a confidence of at least ``mttag.inference.calibration.DEFAULT_THRESHOLD`` (``--threshold``).

Per style family: how often the top 5 (the GENRE) name the family, and how often they name another
family (tags of no family, e.g. ``ambient`` or ``experimental``, count as neither).

    apt-get install fretsonfire-songs-sectoid fretsonfire-songs-muldjord hedgewars-data openclonk-data \\
        megaglest-data lincity-ng-data warzone2100-music flare-game widelands-data freecol lugaru-data
    python benchmarks/style_check.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate import MANIFESTS, read_manifest  # noqa: E402

CHECK = MANIFESTS / "check.tsv"
# display spellings (mttag.inference.vocab) that name each family
FAMILIES = {
    "classical/orchestral": {"classical", "opera", "choir", "harpsichord", "strings", "violin", "cello", "harp"},
    "electronic": {"electronic", "electro", "techno", "house", "trance", "dance", "synth"},
    "metal/rock": {"metal", "heavy metal", "death metal", "metalcore", "progressive metal", "rock", "hard rock",
                   "classic rock", "alternative rock", "progressive rock", "punk", "punk rock", "hardcore",
                   "indie rock"},
    "world/Indian": {"indian", "sitar", "world", "latin"},
    "folk": {"folk", "country"},
    "jazz/blues": {"jazz", "blues", "soul", "funk", "rnb"},
    "hip-hop": {"hip-hop"},
    "pop": {"pop", "indie pop"},
}


def families_named(tags: list[str]) -> set[str]:
    return {f for f, names in FAMILIES.items() if any(t in names for t in tags)}


def old_default(names: list[str], probs: np.ndarray) -> tuple[list[str], list[str]]:
    from mttag.inference import vocab

    order = sorted(range(len(names)), key=lambda i: -probs[i])[:5]
    top = [vocab.display(names[i]) for i in order]
    return top, [t for t in top if vocab.kind(t) == "genre"]


def new_default(names: list[str], probs: np.ndarray, table, threshold: float) -> tuple[list[str], list[str]]:
    from mttag.inference.tagging import score_tags

    scores = score_tags(probs, names, table)
    genres = [s.tag for s in scores if s.kind == "genre" and s.confidence is not None and s.confidence >= threshold]
    return [s.tag for s in scores[:5]], genres[:3]


def cost(files: list[str], repeats: int, runs: list[str]) -> int:
    """Whole processes, as benchmarks/vs_musicnn.py measures them: decoding alone against
    ``mttag tag`` (default precision) for each run ``MODEL`` or ``MODEL@WINDOWS``, interleaved,
    medians. Wall seconds, and CPU seconds (user + system of the process and its threads), which a
    machine shared with other work disturbs far less than wall time."""
    import resource
    import statistics
    import tempfile

    from vs_musicnn import DECODE

    def timed(cmd: list[str]) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd[:4])} ...\n{r.stderr[-2000:]}")
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    tmp = Path(tempfile.mkdtemp(prefix="style_check-"))
    entries = {"decode": [sys.executable, "-c", DECODE, "16000", *files]}
    for run in runs:
        model, _, windows = run.partition("@")
        entries[run] = [sys.executable, "-m", "mttag", "tag", *files, "--model", model, "--format", "jsonl",
                        "--output", str(tmp / f"{run}.jsonl"), "--force", "--quiet",
                        *(["--windows", windows] if windows else [])]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in entries}
    for rep in range(repeats):
        for name, cmd in entries.items():
            times[name].append(timed(cmd))
            print(f"  repeat {rep + 1}: {name:14s} {times[name][-1][0]:6.1f} s wall {times[name][-1][1]:6.1f} s CPU",
                  flush=True)
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print("| run | wall s | × decode alone (wall) | CPU s | × decode alone (CPU) |\n|---|---|---|---|---|")
    for name in entries:
        label = "decode + resample alone" if name == "decode" else f"`mttag tag --model {name.replace('@', ' --windows ')}`"
        print(f"| {label} | {wall[name]:.1f} | {wall[name] / wall['decode']:.2f} | {cpu[name]:.1f} | "
              f"{cpu[name] / cpu['decode']:.2f} |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", nargs="*", metavar="AUDIO",
                    help="instead: time decoding alone against `mttag tag` with the old and the new default on these files")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", default="msd-musicnn,musicnn", help="with --cost: models to time, MODEL or MODEL@WINDOWS")
    ap.add_argument("--manifest", type=Path, default=CHECK)
    ap.add_argument("--threshold", type=float, default=None, help="confidence for GENRE [mttag.inference.calibration.DEFAULT_THRESHOLD]")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", type=Path, help="also write every track's tags here")
    a = ap.parse_args()
    if a.cost is not None:
        return cost(a.cost or [r["path"] for r in read_manifest(a.manifest)], a.repeats, a.runs.split(","))

    from calibrate import tag_tracks

    import mttag
    from mttag.inference import calibration

    threshold = calibration.DEFAULT_THRESHOLD if a.threshold is None else a.threshold
    rows = read_manifest(a.manifest)
    style = {r["path"]: r["style"] for r in rows}
    # each model with its own default window plan (mttag.inference.tagging.default_windows: 20 and 12)
    old_names, old_probs, old_ok = tag_tracks([r["path"] for r in rows], model="msd-musicnn", precision=a.precision)
    names, probs, ok = tag_tracks([r["path"] for r in rows], precision=a.precision)
    assert old_ok == ok, "a track failed with one model only"
    table = calibration.table_for(mttag.load_model("musicnn"))
    if table is None:
        raise SystemExit("musicnn has no calibration table (run benchmarks/calibrate.py)")
    counts: dict[str, dict[str, int]] = {}
    tracks = []
    for path, p, old_p in zip(ok, probs, old_probs):
        fam = style[path]
        old_top, old_genre = old_default(old_names, old_p)
        new_top, new_genre = new_default(names, p, table, threshold)
        c = counts.setdefault(fam, {})
        for key, tags in (("old_top", old_top), ("old_genre", old_genre), ("new_top", new_top), ("new_genre", new_genre)):
            named = families_named(tags)
            c[key + "_right"] = c.get(key + "_right", 0) + (fam in named)
            c[key + "_wrong"] = c.get(key + "_wrong", 0) + bool(named - {fam})
        c["n"] = c.get("n", 0) + 1
        tracks.append({"path": path, "style": fam, "old_top5": old_top, "old_genre": old_genre,
                       "new_top5": new_top, "new_genre": new_genre})
        print(f"  {fam:20s} {Path(path).name[:28]:28s} old: {', '.join(old_top)} | new: {', '.join(new_top)} "
              f"| GENRE {'; '.join(new_genre) or '-'}", flush=True)

    print(f"\n{len(ok)} tracks from {len({r['package'] for r in rows})} packages; GENRE threshold {threshold:g}\n")
    head = ("| style family | tracks | old top-5 names it | old top-5 names another | old GENRE names it | "
            "old GENRE names another | new top-5 names it | new top-5 names another | new GENRE names it | "
            "new GENRE names another |")
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    total: dict[str, int] = {}
    for fam in sorted(counts, key=lambda f: -counts[f]["n"]):
        c = counts[fam]
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    for fam, c in [*sorted(counts.items(), key=lambda kv: -kv[1]["n"]), ("all", total)]:
        n = c["n"]
        cells = [f"{c[k]}/{n}" for k in ("old_top_right", "old_top_wrong", "old_genre_right", "old_genre_wrong",
                                          "new_top_right", "new_top_wrong", "new_genre_right", "new_genre_wrong")]
        label = f"**{fam}**" if fam == "all" else fam
        print(f"| {label} | {n} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps({"threshold": threshold, "counts": counts, "tracks": tracks}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
