"""The scarce-label benchmark's report (benchmarks/scarce_labels.py): whether a run is flagged
as stopped by its epoch cap, judged by the cap that run itself trained with."""
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
    a.front_end = ""
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
    with pytest.raises(SystemExit, match="presets' front end"):  # runs from before the record
        scarce.check_front_end(a, old)
    scarce.check_front_end(argparse.Namespace(front_end=""), old)  # the presets' own: fine
