"""Peak memory (max RSS) of ``mttag tag`` on a 60-minute track.

Writes a 60-minute 44.1 kHz stereo track per format into a temporary folder,
block by block so that generating it is itself memory-bounded (flac and mp3
through soundfile, m4a by piping the blocks into ffmpeg), saves a teacher-sized
Music Tagging Transformer with random weights, and runs

    /usr/bin/time -v mttag tag FILE --model DIR [--windows all] --format jsonl

for each format and windows setting, printing the peak RSS and the wall time.
A "decode" row runs the same windows through :func:`mttag.audio.windows.iter_windows`
without a model: what the audio side alone holds.

    python benchmarks/long_track.py                       # flac + mp3, default and all windows
    python benchmarks/long_track.py --formats flac,mp3,m4a --minutes 60 --keep /tmp/long
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tag import write_track  # noqa: E402  (benchmarks/tag.py: the block-wise synthesiser)

LIMIT_MB = 1536

_DECODE_ONLY = """
import sys
from mttag.audio.decode import iter_windows
windows = None if sys.argv[2] == "all" else int(sys.argv[2])
info, gen = iter_windows(sys.argv[1], 22050, 10.0, windows)
print(sum(1 for _ in gen), "windows")
"""


def _time_v(cmd: list[str]) -> tuple[float, float, int, str]:
    """(max RSS in MB, wall seconds, exit code, stdout) of ``cmd`` under /usr/bin/time -v."""
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if m is None:
        raise SystemExit(f"no /usr/bin/time output for {cmd}:\n{proc.stderr[-2000:]}")
    return int(m.group(1)) / 1024, wall, proc.returncode, proc.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--formats", default="flac,mp3", help="comma-separated: flac, mp3, m4a, ogg, opus, wav")
    ap.add_argument("--windows", default="default,all", help="comma-separated: default, all, or a number")
    ap.add_argument("--preset", default="teacher")
    ap.add_argument("--batch-size", type=int, default=None, help="passed to mttag tag (default: its own)")
    ap.add_argument("--no-decode-only", action="store_true", help="skip the audio-only rows")
    ap.add_argument("--keep", help="generate/keep the tracks and model in this folder (reused when present)")
    args = ap.parse_args(argv)

    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs GNU time at /usr/bin/time (apt-get install time)")
    mttag = shutil.which("mttag")
    tag_cmd = [mttag] if mttag else [sys.executable, "-m", "mttag"]

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mttag-long-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = work / f"transformer-{args.preset}"
        if not (model_dir / "model.safetensors").exists():
            import torch

            from mttag import save_model
            from mttag.inference.vocab import CALS_TAGS
            from mttag.models import build_model, make_config

            torch.manual_seed(0)
            save_model(build_model(make_config("transformer", CALS_TAGS, args.preset)), model_dir)

        print(f"{args.minutes:g}-minute 44.1 kHz stereo tracks in {work}; model transformer/{args.preset}; "
              f"limit {LIMIT_MB} MB\n")
        print(f"{'format':6}  {'windows':8}  {'what':6}  {'max RSS':>9}  {'wall':>8}  result")
        worst = 0.0
        for fmt in args.formats.split(","):
            path = work / f"long track {args.minutes:g} min.{fmt}"
            if not path.exists():
                t = time.perf_counter()
                write_track(path, args.minutes * 60, seed=1)
                print(f"(wrote {path.name}: {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s)")
            for windows in args.windows.split(","):
                if not args.no_decode_only:
                    rss, wall, rc, out = _time_v([sys.executable, "-c", _DECODE_ONLY, str(path),
                                                  "8" if windows == "default" else windows])
                    print(f"{fmt:6}  {windows:8}  {'decode':6}  {rss:7.0f} MB  {wall:6.1f} s  "
                          f"{out.strip() if rc == 0 else f'exit {rc}'}", flush=True)
                cmd = [*tag_cmd, "tag", str(path), "--model", str(model_dir), "--format", "jsonl", "-q"]
                if windows != "default":
                    cmd += ["--windows", windows]
                if args.batch_size:
                    cmd += ["--batch-size", str(args.batch_size)]
                rss, wall, rc, out = _time_v(cmd)
                worst = max(worst, rss)
                try:
                    record = json.loads(out.strip().splitlines()[-1])
                    result = record.get("error") or f"{record['duration']:.0f} s, top tag {record['tags'][0]['tag']}"
                except (ValueError, IndexError, KeyError):
                    result = f"exit {rc}: {out[-200:]!r}"
                print(f"{fmt:6}  {windows:8}  {'tag':6}  {rss:7.0f} MB  {wall:6.1f} s  {result}", flush=True)
        print(f"\npeak RSS {worst:.0f} MB: {'within' if worst < LIMIT_MB else 'OVER'} the {LIMIT_MB} MB limit")
        return 0 if worst < LIMIT_MB else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
