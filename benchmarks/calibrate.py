#!/usr/bin/env python3
"""Make mttag's calibration tables (``mttag/data/calibration.json``) from a reference set of real music.

Every track of the reference manifest (``benchmarks/manifests/reference.tsv``: package, path,
style) is tagged by the bundled ``musicnn`` model (the MSD and MTT networks on one front end,
whose outputs are exactly those of ``msd-musicnn`` and ``mtt-musicnn``) with its default window
plan (12 windows, see ``mttag.inference.tagging.default_windows``) in float32; for each tag the mean and standard deviation of ``logit p`` over the tracks are
stored for all three models (see :mod:`mttag.inference.calibration` for what a confidence is). Then, on
the same reference set, for a few thresholds: how many tags and genres a track gets above it.

The reference set is recordings from Debian game-music packages (the tuning set; never the
labelled check set of ``benchmarks/style_check.py``):

    apt-get install drascula-music fb-music-high xblast-tnt-musics neverball-data extremetuxracer-data \\
        pingus-data ri-li-data trigger-rally-data scorched3d-data frozen-bubble-data
    python benchmarks/calibrate.py --make-manifest       # lists the packages' music (>= 30 s) once
    python benchmarks/calibrate.py                       # writes mttag/data/calibration.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFESTS = HERE / "manifests"
REFERENCE = MANIFESTS / "reference.tsv"
REFERENCE_PACKAGES = ["drascula-music", "fb-music-high", "xblast-tnt-musics", "neverball-data", "extremetuxracer-data",
                      "pingus-data", "ri-li-data", "trigger-rally-data", "scorched3d-data", "frozen-bubble-data"]
AUDIO = (".ogg", ".oga", ".mp3", ".flac", ".wav", ".opus", ".it", ".xm", ".s3m", ".mod")
THRESHOLDS = (0.8, 0.9, 0.95, 0.98, 0.99)


def duration(path: str) -> float:
    import soundfile as sf

    try:
        return sf.info(path).duration
    except Exception:
        r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                           capture_output=True, text=True)
        try:
            return float(r.stdout.strip())
        except ValueError:
            return 0.0


def package_music(packages: list[str], min_seconds: float, per_package: int) -> list[tuple[str, str]]:
    """``(package, path)`` of each package's audio files of at least ``min_seconds`` (music, not
    sound effects), the same content once (localised copies share bytes)."""
    out, seen = [], set()
    for package in packages:
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout.split("\n")
        # scorched3d keeps its sound effects (birds, waves: long, but not music) under wav/
        files = sorted(f for f in listed if f.lower().endswith(AUDIO) and Path(f).is_file() and "/wav/" not in f)
        n = 0
        for f in files:
            digest = hashlib.sha1(Path(f).read_bytes()).hexdigest()
            if digest in seen or duration(f) < min_seconds:
                continue
            seen.add(digest)
            out.append((package, f))
            n += 1
            if n >= per_package:
                break
    return out


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")]
    return [r for r in rows if Path(r["path"]).is_file()]


def tag_tracks(files: list[str], model: str = "musicnn", precision: str = "fp32") -> tuple[list[str], np.ndarray, list[str]]:
    """The model's raw outputs' names, tracks × tags probabilities (default window plan), and the
    files that gave a result (a file that fails is reported and left out)."""
    import mttag
    from mttag.inference.tagging import Tagger

    net = mttag.load_model(model)
    tagger = Tagger(net, "cpu", precision=precision)
    tag_tracks.windows = tagger.windows
    probs, ok = [], []
    for r in tagger.tag_files(files, top=None):
        if r.ok:
            probs.append(r.probabilities)
            ok.append(r.path)
        else:
            print(f"  {r.path}: {r.error}", file=sys.stderr)
    return list(net.config.tags), np.stack(probs), ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-manifest", action="store_true", help="list the reference packages' music into the manifest")
    ap.add_argument("--per-package", type=int, default=30)
    ap.add_argument("--min-seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=HERE.parent / "mttag" / "data" / "calibration.json")
    a = ap.parse_args()
    if a.make_manifest:
        MANIFESTS.mkdir(exist_ok=True)
        rows = package_music(REFERENCE_PACKAGES, a.min_seconds, a.per_package)
        with open(REFERENCE, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["package", "path", "style"])
            w.writerows([(p, path, "-") for p, path in rows])
        print(f"{REFERENCE}: {len(rows)} tracks")
        return 0

    import mttag
    from mttag.inference import calibration, vocab

    rows = read_manifest(REFERENCE)
    names, probs, ok = tag_tracks([r["path"] for r in rows])
    print(f"{len(ok)} reference tracks from {len({r['package'] for r in rows})} packages")
    models = {}
    models["musicnn"] = {"revision": calibration.revision_of(mttag.load_model("musicnn")),
                         "tags": calibration.fit(names, probs)}
    for source, single in (("msd", "msd-musicnn"), ("mtt", "mtt-musicnn")):
        cols = [i for i, n in enumerate(names) if n.startswith(source + ":")]
        model = mttag.load_model(single)
        config = model.config
        assert [names[i].split(":", 1)[1] for i in cols] == list(config.tags), single
        models[single] = {"revision": calibration.revision_of(model),
                          "tags": calibration.fit(list(config.tags), probs[:, cols])}
    for entry in models.values():
        entry.update(n_tracks=len(ok), windows=tag_tracks.windows, precision="fp32",
                     reference="benchmarks/manifests/reference.tsv")
    data = {
        "calibration_version": 1,
        "method": "confidence = Phi((logit p - mu) / sigma), mu and sigma of logit p for the tag over the reference "
                  "tracks (each tagged with the default window plan, float32); see mttag/inference/calibration.py",
        "models": models,
    }
    a.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {a.out}")

    # what a threshold means on the reference set (merged display tags, as results show them)
    t = calibration.table("musicnn", models["musicnn"]["revision"], a.out)
    groups = vocab.merge_groups(names)
    print("| threshold | tags above it per track (mean) | genres above it (mean) | tracks with a genre above it |")
    print("|---|---|---|---|")
    conf = np.stack([t.confidences(names, p) for p in probs])
    merged = np.stack([conf[:, idx].max(axis=1) for idx in groups.values()], axis=1)
    genre = np.array([vocab.kind(d) == "genre" for d in groups])
    for th in THRESHOLDS:
        above = merged >= th
        print(f"| {th:g} | {above.sum(1).mean():.1f} | {above[:, genre].sum(1).mean():.2f} | "
              f"{(above[:, genre].any(1)).mean() * 100:.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
