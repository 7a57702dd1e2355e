"""Helpers the rendered-music benchmarks share (table4.py, scarce_labels.py): logging,
running a command into a log file, rendering, preparing and evaluating through the
``mttag`` CLI.

The helpers that log are methods of :class:`Bench`, whose name starts every log line
(``[table4 12:34:56] ...``); each script makes one and binds its methods to module
names: ``log, run, ... = B.log, B.run, ...``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RENDER = Path(__file__).resolve().parent / "rendered" / "render.py"
REPO = Path(__file__).resolve().parents[1]

# The benchmarks run ``python -m mttag`` and themselves in child processes; those must use
# this repository's mttag, like the parent does, whatever the working directory or the
# installed copy (an editable install of another checkout, or none).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))


def mttag(*args) -> list[str]:
    """The command line of ``mttag ARGS`` with this interpreter (strings only)."""
    return [sys.executable, "-m", "mttag", *map(str, args)]


def n_params(model: Path) -> int | None:
    """The parameter count of a trained model folder, None if it cannot be loaded."""
    try:
        from mttag.models import count_parameters  # type: ignore
        from mttag.weights.modelfile import load_local_model  # type: ignore
        return count_parameters(load_local_model(model))
    except Exception:
        return None


class Bench:
    """``log``, ``run``, ``render``, ``prepare`` and ``evaluate`` for the benchmark ``name``."""

    def __init__(self, name: str):
        self.name = name

    def log(self, msg: str) -> None:
        print(f"[{self.name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def run(self, cmd: list, logfile: Path | None = None) -> None:
        """Run ``cmd``; its output goes to the terminal (``logfile`` None: a failure raises
        CalledProcessError) or is appended to ``logfile`` (a failure exits with its tail)."""
        cmd = [str(c) for c in cmd]
        self.log(" ".join(cmd))
        if logfile is None:
            subprocess.run(cmd, check=True)
            return
        with open(logfile, "a") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{logfile.read_text()[-3000:]}")

    def render(self, out: Path, n: int, seed: int, extra: list, jobs: int, logfile: Path | None = None) -> None:
        """``n`` renderings into ``out`` with render.py, unless ``out`` holds a finished one."""
        if (out / "annotations.csv").is_file():
            self.log(f"reusing {out}")
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        self.run([sys.executable, RENDER, out, "--n", n, "--seed", seed, "--jobs", jobs, *extra], logfile)

    def prepare(self, dataset: Path, annotations: Path, audio_root: Path, vocab: Path, workers: int,
                logfile: Path) -> None:
        """``mttag prepare`` into ``dataset``, unless it is done."""
        if (dataset / "done").is_file():
            return
        self.run(mttag("prepare", dataset, "--annotations", annotations, "--audio-root", audio_root,
                       "--vocab", vocab, "--min-count", 1, "--workers", workers, "--quiet"), logfile)
        (dataset / "done").write_text("ok\n")

    def evaluate(self, a, model: Path, dataset: Path, out_json: Path, logfile: Path) -> dict:
        """``mttag evaluate`` of ``model`` on ``dataset``'s test split (``a.eval_chunks_test``
        crops, ``a.device``), kept in ``out_json``; its output goes to ``logfile`` on failure."""
        if not out_json.is_file():
            cmd = mttag("evaluate", model, dataset, "--split", "test", "--format", "json",
                        "--eval-chunks", a.eval_chunks_test, "--device", a.device)
            self.log(" ".join(cmd))
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                with open(logfile, "a") as f:
                    f.write(r.stdout + r.stderr)
                raise SystemExit(f"evaluate failed: {r.stderr[-2000:]}")
            out_json.write_text(r.stdout)
        return json.loads(out_json.read_text())

    def run_processes(self, jobs: list, parallel: int, command, logfile, label, ready=None) -> tuple[list, list]:
        """Run ``command(job)`` for every job in its own process, ``parallel`` at a time, the
        cores shared out between them (OMP/MKL threads); output goes to ``logfile(job)``. A
        job starts once ``ready(job, failed)`` says so (default: at once). Returns the jobs
        that failed and those never started (they waited on a failed one)."""
        threads = max(1, (os.cpu_count() or 1) // parallel)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        pending, running, failed = list(jobs), [], []
        while pending or running:
            while len(running) < parallel:
                job = next((j for j in pending if ready is None or ready(j, failed)), None)
                if job is None:
                    break
                pending.remove(job)
                log = logfile(job)
                self.log(f"{label(job)}: own process ({threads} thread{'s' * (threads > 1)}), log {log}")
                with open(log, "a") as out:  # the child keeps its own copy of the descriptor
                    running.append((job, subprocess.Popen([str(c) for c in command(job)], env=env, stdout=out,
                                                          stderr=subprocess.STDOUT), log))
            if not running:
                break  # what is left waits on a job that failed
            time.sleep(2)
            for item in list(running):
                job, proc, log = item
                if proc.poll() is not None:
                    running.remove(item)
                    if proc.returncode != 0:
                        failed.append(job)
                        self.log(f"{label(job)} failed ({proc.returncode}):\n{log.read_text()[-2000:]}")
                    else:
                        self.log(f"{label(job)} done")
        return failed, pending
