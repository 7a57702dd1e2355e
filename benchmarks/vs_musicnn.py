#!/usr/bin/env python3
"""Side by side on real music: the original musicnn, decoding alone, and ``mttag tag``.

For the audio files given (folders are searched), in one run and on the same files:

* ``decode``    decoding + downmix + resampling of every whole track to the model's rate, nothing else
                (mttag's decoder: soundfile + soxr HQ), one process, one track after another;
* ``original``  musicnn 0.1.0 (TensorFlow, ``MSD_musicnn``; averages every 3 s patch) through
                ``../shared/anchors/musicnn/tag.py`` (skipped when its virtualenv is absent:
                make it with ``../shared/anchors/musicnn/setup.sh``);
* ``all@fp32``  ``mttag tag --windows all --precision fp32`` (the same work as the original, in
                its precision): the whole-track reference the plans are compared with;
* ``all``       ``mttag tag --windows all`` (``--precision auto``: bf16 on a CPU with native bf16);
* ``N``         ``mttag tag --windows N`` for each plan in ``--plans`` (20 is the default);
                ``N@bf16`` / ``N@fp32`` add ``--precision bf16`` / ``fp32``.

Every entry is a whole process (start-up, model load, decoding, tagging, writing), timed by
wall clock; the entries are interleaved and repeated (``--repeats``) and the median is
reported, so a machine that gets busier affects them alike. Agreement is the number of
top-5 tags shared, averaged over the tracks (and the worst track), against the original
and against ``--windows all --precision fp32``. ``--model`` measures another model the same way (the
original is then left out).

    python benchmarks/vs_musicnn.py /usr/share/scummvm/drascula/audio /usr/share/games/frozen-bubble/snd \\
        --min-seconds 100 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHOR = HERE.parent.parent / "shared" / "anchors" / "musicnn" / "tag.py"
VENV = Path(os.environ.get("MUSICNN_VENV", Path.home() / ".cache" / "anchor-musicnn"))
EXTS = {".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".m4a", ".aif", ".aiff"}

DECODE = """
import sys
from mttag.audio.decode import load_audio
for f in sys.argv[2:]:
    load_audio(f, int(sys.argv[1]))
"""


def find_files(paths: list[str], min_seconds: float, max_seconds: float) -> list[str]:
    import soundfile as sf

    out = []
    for p in map(Path, paths):
        cands = sorted(q for q in p.rglob("*") if q.suffix.lower() in EXTS) if p.is_dir() else [p]
        for q in cands:
            try:
                d = sf.info(str(q)).duration
            except Exception:
                continue
            if min_seconds <= d <= max_seconds:
                out.append(str(q))
    return sorted(dict.fromkeys(out))


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd[:4])} ...\n{r.stderr[-2000:]}")
    return dt, r


def top_tags_mttag(jsonl: Path) -> dict[str, list[str]]:
    out = {}
    for line in jsonl.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("tags"):
            out[os.path.realpath(rec["path"])] = [t["tag"] if isinstance(t, dict) else t[0] for t in rec["tags"]][:5]
    return out


def top_tags_original(stdout: str) -> dict[str, list[str]]:
    out = {}
    for line in stdout.splitlines():
        rec = json.loads(line)
        if rec.get("tags"):
            out[os.path.realpath(rec["file"])] = [t for t, _ in rec["tags"]][:5]
    return out


def agreement(a: dict, b: dict) -> tuple[float, int]:
    shared = [len(set(a[k]) & set(b[k])) for k in a if k in b]
    return (sum(shared) / len(shared), min(shared)) if shared else (float("nan"), 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--plans", default="20,20@fp32",
                    help="plans to time besides 'all' and 'all@fp32': window counts or 'all', each optionally @bf16 or @fp32 [20,20@fp32]")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="msd-musicnn")
    ap.add_argument("--min-seconds", type=float, default=0.0)
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    ap.add_argument("--no-original", action="store_true")
    ap.add_argument("--json", type=Path, help="also write every number here")
    a = ap.parse_args()

    files = find_files(a.paths, a.min_seconds, a.max_seconds)
    if not files:
        raise SystemExit("no audio files found")
    import soundfile as sf

    minutes = sum(sf.info(f).duration for f in files) / 60
    original = (not a.no_original and a.model == "msd-musicnn" and ANCHOR.is_file()
                and (VENV / "bin" / "python").is_file())
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="vs_musicnn-"))
    import mttag

    sample_rate = mttag.load_model(a.model).config.sample_rate  # decode to the rate the model takes
    entries: dict[str, list[str]] = {"decode": [py, "-c", DECODE, str(sample_rate), *files]}
    if original:
        entries["original"] = [str(VENV / "bin" / "python"), str(ANCHOR), "-n", "5", *files]
    plans = list(dict.fromkeys(["all@fp32", "all"] + [p for p in a.plans.split(",") if p]))
    for p in plans:
        windows, _, precision = p.partition("@")
        entries[p] = [py, "-m", "mttag", "tag", *files, "--model", a.model, "--windows", windows, "--top", "5",
                      "--format", "jsonl", "--output", str(tmp / f"{p}.jsonl"), "--force", "--quiet",
                      *(["--precision", precision] if precision else [])]
    print(f"{len(files)} tracks, {minutes:.1f} min of audio; {os.cpu_count()} CPUs; model {a.model}; "
          f"original: {'yes' if original else 'skipped'}", flush=True)
    times: dict[str, list[float]] = {k: [] for k in entries}
    tags: dict[str, dict] = {}
    for rep in range(a.repeats):
        for name, cmd in entries.items():
            dt, r = timed(cmd)
            times[name].append(dt)
            if name == "original":
                tags[name] = top_tags_original(r.stdout)
            elif name != "decode":
                tags[name] = top_tags_mttag(tmp / f"{name}.jsonl")
            print(f"  repeat {rep + 1}: {name:9s} {dt:7.1f} s", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    head = "| run | wall s | × decode alone |" + (" × faster than original | top-5 shared with original (mean / worst) |" if original else "") \
        + " top-5 shared with `--windows all --precision fp32` (mean / worst) |"
    rows += [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for name in entries:
        w, _, prec = name.partition("@")
        label = {"decode": "decode + resample alone", "original": "original musicnn 0.1.0 (TensorFlow)"}.get(
            name, f"`mttag tag --windows {w}" + (f" --precision {prec}" if prec else "") + "`")
        cells = [label, f"{med[name]:.1f}", f"{med[name] / med['decode']:.2f}"]
        if original:
            if name in ("decode", "original"):
                cells += ["–", "–"]
            else:
                m, w = agreement(tags[name], tags["original"])
                cells += [f"{med['original'] / med[name]:.2f}×", f"{m:.2f} / {w}"]
        if name in ("decode", "all@fp32") or name == "original" and not tags.get("all@fp32"):
            cells.append("–")
        else:
            m, w = agreement(tags[name], tags["all@fp32"])
            cells.append(f"{m:.2f} / {w}")
        rows.append("| " + " | ".join(cells) + " |")
    print("\n".join(rows))
    if a.json:
        a.json.write_text(json.dumps({"files": files, "minutes": minutes, "times": times, "median": med,
                                      "tags": tags}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
