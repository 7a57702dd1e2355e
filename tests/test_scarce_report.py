"""The scarce-label benchmark (benchmarks/scarce_labels.py): whether a run is flagged as
stopped by its epoch cap (judged by the cap that run itself trained with), its front end,
and the mttag its child processes run."""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scarce():
    spec = importlib.util.spec_from_file_location("mttag_bench_scarce", ROOT / "benchmarks" / "scarce_labels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def metrics(best: int, last: int) -> list[dict]:
    return [{"epoch": e, "valid_loss": 1.0 / min(e, best), "seconds": 1.0} for e in range(1, last + 1)]


def test_each_run_is_judged_by_the_cap_it_trained_with(scarce, tmp_path):
    a = argparse.Namespace(max_epochs=120, patience=8)  # the report is run with a higher cap
    capped = tmp_path / "kd_s1"
    capped.mkdir()
    (capped / "train_config.json").write_text(json.dumps({"max_epochs": 80, "patience": 8}))
    assert scarce.run_limits(capped, a) == (80, 8)
    stop = scarce.stopping(metrics(best=79, last=80), *scarce.run_limits(capped, a))
    assert (stop["best_epoch"], stop["epochs"], stop["hit_cap"]) == (79, 80, True)
    # judged by the invocation's cap of 120 the same run would pass as stopped by patience
    assert scarce.stopping(metrics(best=79, last=80), a.max_epochs, a.patience)["hit_cap"] is False
    extended = tmp_path / "kd_s2"
    extended.mkdir()
    (extended / "train_config.json").write_text(json.dumps({"max_epochs": 120, "patience": 8}))
    assert scarce.stopping(metrics(best=85, last=93), *scarce.run_limits(extended, a))["hit_cap"] is False


def test_a_run_without_its_config_falls_back_to_the_invocation(scarce, tmp_path):
    a = argparse.Namespace(max_epochs=80, patience=8)
    assert scarce.run_limits(tmp_path, a) == (80, 8)
    (tmp_path / "train_config.json").write_text("{not json")
    assert scarce.run_limits(tmp_path, a) == (80, 8)


def test_front_end_option_reaches_every_training_command(scarce):
    a = argparse.Namespace(max_epochs=3, patience=2, batch_size=8, lr=1e-3, eval_chunks=1, device="cpu", workers=0,
                           precision="fp32", steps=2, front_end="n_mels=64, hop-length=1024")
    args = [str(x) for x in scarce.common(a, 3.69, True, 0)]
    pairs = [args[i + 1] for i, x in enumerate(args) if x == "--param"]
    assert pairs == ["n_mels=64", "hop_length=1024"]
    for paper in ("", "paper"):  # the presets' own front end: nothing to override
        a.front_end = paper
        assert "--param" not in scarce.common(a, 3.69, False, 0)
    for bad in ("depth=2", "n_mels", "n_mels=x"):
        a.front_end = bad
        with pytest.raises(SystemExit, match="expected KEY=INTEGER"):
            scarce.front_end(a)


def test_a_work_folder_keeps_one_front_end(scarce, tmp_path):
    a = argparse.Namespace(front_end="n_mels=64")
    scarce.check_front_end(a, tmp_path)  # first: recorded
    assert json.loads((tmp_path / "front_end.json").read_text()) == {"n_mels": 64}
    scarce.check_front_end(a, tmp_path)  # the same again: fine
    with pytest.raises(SystemExit, match="was run with --front-end n_mels=64"):
        scarce.check_front_end(argparse.Namespace(front_end=""), tmp_path)
    old = tmp_path / "old"
    (old / "runs" / "transformer_s0").mkdir(parents=True)
    (old / "runs" / "transformer_s0" / "done").write_text("1\n")
    with pytest.raises(SystemExit, match="paper's front end .* give --front-end paper"):  # runs from before the record
        scarce.check_front_end(a, old)
    scarce.check_front_end(argparse.Namespace(front_end="paper"), old)  # the presets' own: fine
    assert json.loads((old / "front_end.json").read_text()) == {}
    with pytest.raises(SystemExit, match="was run with --front-end paper"):
        scarce.check_front_end(a, old)


def test_the_cpu_scale_trains_at_the_coarse_front_end_and_the_gpu_scale_at_the_papers(scarce):
    fe = {s: scarce.front_end(argparse.Namespace(front_end=v["front_end"])) for s, v in scarce.SCALES.items()}
    assert fe["cpu"] == {"n_mels": 64, "n_fft": 2048, "hop_length": 1024}
    assert fe["smoke"] == fe["cpu"]  # the smoke scale proves the CPU scale's pipeline
    assert fe["gpu"] == {}


def test_child_processes_run_this_repositorys_mttag(scarce, tmp_path):
    """``python -m mttag`` started by a benchmark from another folder finds this checkout's
    mttag even where the installed one is another checkout's (or none)."""
    import subprocess
    import sys

    # -S: without site-packages, hence without any installed (editable) mttag
    code = "import importlib.util; print(importlib.util.find_spec('mttag').origin)"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == ROOT / "mttag" / "__init__.py"
