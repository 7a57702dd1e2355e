"""Training, evaluation and noisy student on a small generated dataset (CPU, tiny models)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mttag import load_model
from mttag.cli import app
from mttag.errors import TrainingError
from mttag.training.evaluation import evaluate
from mttag.training.loop import TrainConfig, teacher_probabilities, train
from mttag.training.prepare import prepare_dataset
from mttag.training.sources import TrackSpec
from mttag.training.store import PreparedDataset

SR = 22050
TAGS = ["low", "high", "noisy"]


def _clip(rng, low, high, noisy, seconds=2.0):
    t = np.arange(int(seconds * SR)) / SR
    x = np.zeros_like(t)
    if low:
        x += 0.3 * np.sin(2 * np.pi * rng.uniform(150, 250) * t)
    if high:
        x += 0.3 * np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
    x += (0.2 if noisy else 0.005) * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """60 labelled tracks (40/10/10) and 60 unlabelled; tags follow the audio."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    specs = []
    for i in range(120):
        low, high, noisy = rng.random(3) < [0.5, 0.4, 0.3]
        path = root / f"t{i:03d}.wav"
        sf.write(path, _clip(rng, low, high, noisy), SR)
        tags = [t for t, on in zip(TAGS, (low, high, noisy)) if on]
        split = "train" if i < 40 else "valid" if i < 50 else "test" if i < 60 else "unlabeled"
        specs.append(TrackSpec(path=str(path), tags=None if split == "unlabeled" else tags, group=f"g{i}", split=split))
    out = tmp_path_factory.mktemp("data") / "ds"
    prepare_dataset(specs, out, min_count=1, workers=1, tags_vocab=TAGS)
    return out


# The tiny preset with half its convolution channels and width: its front end is most of
# the cost of a step on CPU, and the three-tag task is learnt as well at half the size.
SMALL = {"conv_channels": 8, "dim": 32}


def _config(**kw):
    base = dict(arch="transformer", preset="tiny", model_params=SMALL, crop_seconds=1.0, batch_size=8, lr=3e-3,
                max_epochs=6, patience=10, steps_per_epoch=8, eval_chunks=2, augment=False, workers=0, seed=0,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def teacher_dir(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "teacher"
    return train(dataset, run, _config(max_epochs=10)), run


def test_supervised_training_learns(teacher_dir, dataset):
    model_dir, run = teacher_dir
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 10 and log[-1]["train_loss"] < log[0]["train_loss"]
    result = evaluate(load_model(model_dir), dataset, "test", chunks=2, device="cpu")
    assert result["roc_auc"] > 0.85, result
    assert set(result["per_tag"]) == set(TAGS)
    card = (model_dir / "README.md").read_text()
    assert "valid_loss" in card and (run / "finished.json").exists()


def test_resume_matches_uninterrupted(dataset, tmp_path):
    # every epoch draws new crops, dropout masks and augmentations: two steps an epoch
    # are as many random draws to restore as eight
    cfg = _config(max_epochs=3, steps_per_epoch=2, augment=True)
    full = train(dataset, tmp_path / "full", cfg)
    train(dataset, tmp_path / "part", _config(max_epochs=2, steps_per_epoch=2, augment=True))
    (tmp_path / "part" / "finished.json").unlink()  # as if killed after epoch 2
    resumed = train(dataset, tmp_path / "part", cfg, resume=True)
    a, b = load_model(full).state_dict(), load_model(resumed).state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_early_stopping_records_the_epochs_it_ran(dataset, tmp_path):
    # a learning rate too small to move the validation loss: epoch 1 is the best, epoch 2 is
    # one bad epoch, and patience 1 stops the run there
    train(dataset, tmp_path / "r", _config(max_epochs=6, patience=1, steps_per_epoch=1, lr=1e-12))
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "r" / "finished.json").read_text())["epochs"] == 2


def test_existing_run_needs_resume_and_nan_stops(dataset, tmp_path, monkeypatch):
    train(dataset, tmp_path / "r", _config(max_epochs=1))
    with pytest.raises(TrainingError, match="--resume"):
        train(dataset, tmp_path / "r", _config(max_epochs=1))
    import mttag.training.loop as training

    real = training.F.binary_cross_entropy_with_logits
    monkeypatch.setattr(training.F, "binary_cross_entropy_with_logits", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match="loss became nan"):
        train(dataset, tmp_path / "nan", _config(max_epochs=1))
    assert not (tmp_path / "nan" / "model").exists()


def test_noisy_student_pseudo_label_path(dataset, teacher_dir, tmp_path, monkeypatch):
    """Teacher frozen and fed clean crops; the student sees the augmented ones."""
    model_dir, _ = teacher_dir
    before = {k: v.clone() for k, v in load_model(model_dir).state_dict().items()}
    seen = {}
    import mttag.training.loop as training

    real_tp = training.teacher_probabilities

    def spy(teacher, z, sr):
        seen["teacher_in"] = z.clone()
        seen["teacher_training"] = teacher.training
        seen["teacher_grad"] = any(p.requires_grad for p in teacher.parameters())
        return real_tp(teacher, z, sr)

    monkeypatch.setattr(training, "teacher_probabilities", spy)
    from mttag.models.transformer import MusicTaggingTransformer

    real_forward = MusicTaggingTransformer.forward

    def forward(self, x):
        if self.training:
            seen["student_in"] = x.clone()
        return real_forward(self, x)

    monkeypatch.setattr(MusicTaggingTransformer, "forward", forward)
    only_polarity = {"polarity": 1.0, "noise": 0, "gain": 0, "filter": 0, "delay": 0, "pitch_shift": 0, "reverb": 0}
    cfg = _config(max_epochs=1, steps_per_epoch=2, augment=True, augment_probabilities=only_polarity,
                  teacher=str(model_dir))
    train(dataset, tmp_path / "ke", cfg)
    z = seen["teacher_in"]
    student_unlabelled = seen["student_in"][-z.shape[0]:]
    assert torch.allclose(student_unlabelled, -z)  # augmented (polarity) for the student, clean for the teacher
    assert seen["teacher_training"] is False and seen["teacher_grad"] is False
    after = load_model(model_dir).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    log = json.loads((tmp_path / "ke" / "metrics.jsonl").read_text().splitlines()[0])
    assert log["train_pseudo_loss"] is not None


def test_distilled_student_close_to_teacher(dataset, teacher_dir, tmp_path):
    model_dir, _ = teacher_dir
    teacher_auc = evaluate(load_model(model_dir), dataset, "test", chunks=2, device="cpu")["roc_auc"]
    student_cfg = {"arch": "transformer", "params": {"conv_channels": 8, "dim": 32, "depth": 1, "heads": 4}, "crop_seconds": 1.0}
    res = CliRunner().invoke(app, [
        "distill", str(dataset), str(tmp_path / "kd"), "--teacher", str(model_dir),
        "--student", _write_json(tmp_path / "student.json", student_cfg), "--no-augment", "--max-epochs", "10",
        "--steps-per-epoch", "8", "--batch-size", "8", "--lr", "3e-3", "--eval-chunks", "2", "--workers", "0",
        "--device", "cpu", "--quiet",
    ])
    assert res.exit_code == 0, res.output
    student = load_model(tmp_path / "kd" / "model")
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in load_model(model_dir).parameters())
    student_auc = evaluate(student, dataset, "test", chunks=2, device="cpu")["roc_auc"]
    assert student_auc > teacher_auc - 0.08, (student_auc, teacher_auc)


def test_student_config_crop_length(dataset, teacher_dir, tmp_path):
    """--crop-seconds overrides a student CONFIG.json; a file without one gets the architecture's default."""
    model_dir, _ = teacher_dir
    student = _write_json(tmp_path / "s.json", {"arch": "transformer", "params": {"conv_channels": 4, "dim": 16, "depth": 1, "heads": 2}})
    common = ["--teacher", str(model_dir), "--student", student, "--no-augment", "--max-epochs", "1", "--steps-per-epoch", "1",
              "--batch-size", "4", "--eval-chunks", "1", "--workers", "0", "--device", "cpu", "--quiet"]
    res = CliRunner().invoke(app, ["distill", str(dataset), str(tmp_path / "a"), "--crop-seconds", "1.5", *common])
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "a" / "model").config.crop_seconds == 1.5
    res = CliRunner().invoke(app, ["distill", str(dataset), str(tmp_path / "b"), *common])
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "b" / "model").config.crop_seconds == 10.0


def test_distill_without_labels_from_folder(teacher_dir, tmp_path):
    model_dir, _ = teacher_dir
    folder = tmp_path / "library"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(12):
        sf.write(folder / f"song {i}.flac", _clip(rng, i % 2, i % 3 == 0, i % 4 == 0), SR)
    args = ["distill", str(tmp_path / "kd"), "--teacher", str(model_dir), "--unlabeled", str(folder),
            "--student", "tiny", "--crop-seconds", "1", "--max-epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "4", "--eval-chunks", "1", "--workers", "0", "--device", "cpu", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "kd" / "model").config.tags == TAGS
    assert len(PreparedDataset(tmp_path / "kd" / "unlabeled")) == 12


def test_teacher_with_other_rate_and_window():
    """A 16 kHz teacher with 0.5 s windows labels 22.05 kHz crops of 1.3 s by averaging its windows."""
    from mttag.models import build_model, make_config

    torch.manual_seed(0)
    cfg = make_config("transformer", TAGS, "tiny", crop_seconds=0.5)
    cfg.sample_rate = 16000
    cfg.arch = "resnet"
    cfg.params = {"channels": 4}
    teacher = build_model(cfg).eval()
    with torch.no_grad():  # a random network scores every window alike; sharpen its output layer
        [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(300)
    n = int(1.3 * SR)
    wave = torch.randn(3, n) * torch.linspace(0.001, 1, n) ** 3  # quiet at the start, loud at the end
    psi = teacher_probabilities(teacher, wave, SR)
    # 28,665 samples at 22.05 kHz are 20,800 at 16 kHz: three 8,000-sample windows at 0, 6,400
    # and 12,800 (first at the start, last at the end), each scored alone, then averaged
    import julius

    at_16k = julius.resample_frac(wave, 441, 320)
    assert at_16k.shape[-1] == 20800
    with torch.no_grad():
        each = [torch.sigmoid(teacher(at_16k[:, s : s + 8000])) for s in (0, 6400, 12800)]
    torch.testing.assert_close(psi, torch.stack(each).mean(0), rtol=0, atol=1e-5)
    assert (each[0] - each[2]).abs().max() > 1e-2  # the windows differ, so only their mean matches


def test_evaluate_cli_json(teacher_dir, dataset):
    model_dir, _ = teacher_dir
    res = CliRunner().invoke(app, ["evaluate", str(model_dir), str(dataset), "--split", "test", "--format", "json", "--chunks", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    ref = evaluate(load_model(model_dir), dataset, "test", chunks=2, device="cpu")
    assert out["roc_auc"] == pytest.approx(ref["roc_auc"]) and out["pr_auc"] == pytest.approx(ref["pr_auc"])
    assert out["roc_auc"] > 0.85 and set(out["per_tag"]) == set(TAGS)
    assert out["per_tag"]["low"]["positives"] == int(PreparedDataset(dataset).labels[PreparedDataset(dataset).split("test"), 0].sum())


def test_ddp_two_cpu_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mttag", "train", str(dataset), str(out), "--preset", "tiny", "--crop-seconds", "1",
           "--max-epochs", "2", "--steps-per-epoch", "3", "--batch-size", "4", "--eval-chunks", "2",
           "--workers", "0", "--device", "cpu", "--no-augment", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written by rank 0 only
    assert (out / "model" / "model.safetensors").exists()


def _ddp_rank(rank, port, dataset, out, result):
    """One of two gloo ranks (torch.multiprocessing): the project's own set-up (process group,
    DistributedDataParallel, sharded sampler) and one training step, then the same step from
    the same weights, batch and random state without DDP, i.e. without the all-reduce."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    import mttag.training.loop as training

    cfg = _config(max_epochs=1, steps_per_epoch=1, batch_size=4, lr=1e-2)
    run = training._setup(dataset, out, cfg, None)
    assert dist.is_initialized() and dist.get_world_size() == 2 and run.rank == rank
    sampler = run.plan.labeled.sampler
    sampler.set_epoch(0)
    tracks = run.plan.labeled.dataset.indices[list(sampler)].tolist()  # the dataset's track numbers
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    rng = torch.get_rng_state()
    training._train_epoch(run, 0, None)
    with_ddp = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    run.model.load_state_dict(start)
    torch.set_rng_state(rng)
    run.optimizer = torch.optim.Adam(run.model.parameters(), lr=cfg.lr)
    run.ddp_model = run.model
    training._train_epoch(run, 0, None)
    alone = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    torch.save({"tracks": tracks, "ddp": with_ddp, "alone": alone,
                "start": {k: start[k] for k in with_ddp}}, os.path.join(result, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_train_disjoint_shards_and_all_reduce_gradients(dataset, tmp_path):
    """Two gloo ranks on 127.0.0.1: their shards of an epoch are disjoint, and after one step
    their weights are equal (the gradients were averaged) and differ from what each rank's
    own gradient alone gives. Fails if the process group is not set up, if both ranks draw
    the same shard, or if the model is not wrapped for the all-reduce."""
    import torch.multiprocessing as mp

    result = tmp_path / "ranks"
    result.mkdir()
    from mttag.models import build_model, make_config

    # fork where there is one, after building the model and its optimiser once here: the ranks
    # then start at once, without importing torch, librosa's mel filters (numba) and
    # torch._dynamo (the first Adam) again, seconds each
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    torch.optim.Adam(build_model(make_config("transformer", TAGS, "tiny", 1.0, **SMALL)).parameters())
    mp.start_processes(_ddp_rank, args=(_free_port(), str(dataset), str(tmp_path / "run"), str(result)), nprocs=2,
                       join=True, start_method=method)
    r0, r1 = (torch.load(result / f"{r}.pt", weights_only=True) for r in (0, 1))
    train_tracks = set(PreparedDataset(dataset).split("train").tolist())
    assert len(r0["tracks"]) == len(r1["tracks"]) == 4
    assert set(r0["tracks"]).isdisjoint(r1["tracks"]) and set(r0["tracks"]) | set(r1["tracks"]) <= train_tracks
    names = list(r0["ddp"])
    assert all(torch.equal(r0["start"][k], r1["start"][k]) for k in names)  # rank 0's weights broadcast
    assert all(torch.allclose(r0["ddp"][k], r1["ddp"][k], rtol=0, atol=1e-7) for k in names)
    assert max((r0["ddp"][k] - r0["start"][k]).abs().max().item() for k in names) > 1e-3  # a step was taken
    for r in (r0, r1):  # each rank's own gradient leads elsewhere: the averaged one was applied
        assert max((r["ddp"][k] - r["alone"][k]).abs().max().item() for k in names) > 1e-3
    assert max((r0["alone"][k] - r1["alone"][k]).abs().max().item() for k in names) > 1e-3


def _write_json(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_split_cals_refuses_other_datasets(dataset, tmp_path):
    res = CliRunner().invoke(app, ["train", str(dataset), str(tmp_path / "r"), "--split", "cals"])
    assert res.exit_code == 2 and "not prepared from the CALS split" in res.output
    assert not (tmp_path / "r").exists()


def test_rounds_chain_teachers(dataset, teacher_dir, tmp_path):
    model_dir, _ = teacher_dir
    args = ["train", str(dataset), str(tmp_path / "ke"), "--teacher", str(model_dir), "--rounds", "2",
            "--preset", "tiny", "--crop-seconds", "1", "--max-epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "4", "--eval-chunks", "1", "--workers", "0", "--device", "cpu", "--no-augment", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    first = load_model(tmp_path / "ke" / "round1" / "model").config.provenance["teacher"]
    second = load_model(tmp_path / "ke" / "round2" / "model").config.provenance["teacher"]
    assert first == str(model_dir) and second == str(tmp_path / "ke" / "round1" / "model")
    # --resume on finished rounds does nothing more and succeeds
    assert CliRunner().invoke(app, args + ["--resume"]).exit_code == 0


def test_evaluate_matches_tags_by_name(teacher_dir, tmp_path):
    """A dataset with the model's tags in another order, plus a tag the model lacks,
    scores the shared tags exactly as a dataset in the model's own order does."""
    model_dir, _ = teacher_dir
    rng = np.random.default_rng(5)
    specs_same, specs_other = [], []
    for i in range(24):
        low, high, noisy, extra = rng.random(4) < [0.5, 0.4, 0.3, 0.5]
        path = tmp_path / f"e{i:02d}.wav"
        sf.write(path, _clip(rng, low, high, noisy), SR)
        same = [t for t, on in zip(TAGS, (low, high, noisy)) if on]
        other = [t for t, on in zip(("noisy", "extra", "low"), (noisy, extra, low)) if on]
        specs_same.append(TrackSpec(path=str(path), tags=same, group=f"e{i}", split="test"))
        specs_other.append(TrackSpec(path=str(path), tags=other, group=f"e{i}", split="test"))
    prepare_dataset(specs_same, tmp_path / "same", min_count=1, workers=1, tags_vocab=TAGS)
    prepare_dataset(specs_other, tmp_path / "other", min_count=1, workers=1, tags_vocab=["noisy", "extra", "low"])
    model = load_model(model_dir)
    ref = evaluate(model, tmp_path / "same", "test", chunks=2, device="cpu")
    got = evaluate(model, tmp_path / "other", "test", chunks=2, device="cpu")
    assert got["tags_not_in_model"] == ["extra"] and "extra" not in got["per_tag"]
    assert set(got["per_tag"]) == {"noisy", "low"}
    for tag in ("noisy", "low"):
        assert got["per_tag"][tag] == pytest.approx(ref["per_tag"][tag], abs=1e-6)
    assert got["roc_auc"] == pytest.approx(np.mean([ref["per_tag"][t]["roc_auc"] for t in ("noisy", "low")]))


def test_augment_probabilities_option(dataset, tmp_path):
    args = ["train", str(dataset), str(tmp_path / "r"), "--preset", "tiny", "--crop-seconds", "1", "--max-epochs", "1",
            "--steps-per-epoch", "1", "--batch-size", "4", "--eval-chunks", "1", "--workers", "0", "--device", "cpu",
            "--quiet", "--augment-p", "reverb=0", "--augment-p", "pitch-shift=0.5"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert cfg["augment_probabilities"] == {"reverb": 0.0, "pitch_shift": 0.5}
    bad_args = [str(tmp_path / "r2") if a == str(tmp_path / "r") else a for a in args[:-4]]
    bad = CliRunner().invoke(app, bad_args + ["--augment-p", "echo=1"])
    assert bad.exit_code == 2 and "expected NAME=P" in bad.output and not (tmp_path / "r2").exists()


def test_progress_shows_epoch_of_total_and_run_time_left(dataset, tmp_path, monkeypatch):
    """On a terminal: a "starting" line at once, then "epoch k/N" and the run's time left;
    redirected: one unwrapped line per epoch with k/N."""
    import io

    from rich.console import Console

    import mttag.cli.train as cli_train

    args = ["train", str(dataset), str(tmp_path / "a"), "--preset", "tiny", "--crop-seconds", "1", "--max-epochs", "2",
            "--steps-per-epoch", "2", "--batch-size", "4", "--eval-chunks", "1", "--workers", "0", "--device", "cpu",
            "--no-augment"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "run ≤ 0:" in lines[0] and "left" not in lines[1]  # nothing left after the last epoch
    assert all("valid" in line and "samples/s" in line for line in lines)  # never wrapped onto a second line

    screen = io.StringIO()
    monkeypatch.setattr(cli_train, "console", Console(file=screen, force_terminal=True, width=200))
    args[2] = str(tmp_path / "b")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    shown = screen.getvalue()
    assert "starting: loading the data and the model" in shown
    assert "epoch 1/2" in shown and "epoch 2/2" in shown and "run ≤ 0:00:" in shown


def test_run_clock_counts_the_epochs_left():
    from mttag.cli.train import RunClock, clock_text

    t = [0.0]
    clock = RunClock(now=lambda: t[0])
    step = dict(epoch=1, epochs=10, steps=5)
    assert clock.step({**step, "step": 1}) is None  # no pace yet
    t[0] = 2.0
    assert clock.step({**step, "step": 2}) == pytest.approx(2 * 3 + 9 * 2 * 5)  # 2 s a step
    assert clock.epoch_done(12.0, 1, 10) == pytest.approx(9 * 12)  # measured epochs, validation included
    t[0] = 20.0
    clock.step({**step, "epoch": 2, "step": 1})
    t[0] = 21.0
    assert clock.step({**step, "epoch": 2, "step": 2}) == pytest.approx(1 * 3 + 8 * 12)
    assert clock_text(3723.4) == "1:02:03" and clock_text(None) == "-:--:--"


class _FirstStep(Exception):
    pass


@pytest.mark.parametrize("epoch_over, expected", [("unlabeled", 30), ("labeled", 7)])
def test_knowledge_expansion_epoch_is_a_pass_over_the_unlabelled_tracks(dataset, teacher_dir, tmp_path,
                                                                         epoch_over, expected):
    """The authors' noisy student epoch runs over the unlabelled loader (60 tracks, 2 per step:
    30 steps) while the labelled one cycles; 'labeled' keeps one pass over the 40 labelled
    tracks (6 per step: 7 steps)."""
    model_dir, _ = teacher_dir
    seen = {}

    def first_step(report):
        seen.update(report)
        raise _FirstStep

    cfg = _config(max_epochs=1, steps_per_epoch=None, teacher=str(model_dir), unlabeled_fraction=0.25,
                  epoch_over=epoch_over)
    with pytest.raises(_FirstStep):
        train(dataset, tmp_path / epoch_over, cfg, on_step=first_step)
    assert seen["steps"] == expected


def test_bf16_training_on_cpu_learns_and_precision_is_checked(dataset, teacher_dir, tmp_path):
    """--precision bf16 trains under bf16 autocast on any device (fast on CPUs with native
    bf16); it learns like float32 and is a different computation, not float32 relabelled."""
    model_dir = train(dataset, tmp_path / "bf16", _config(max_epochs=10, precision="bf16"))
    result = evaluate(load_model(model_dir), dataset, "test", chunks=2, device="cpu")
    assert result["roc_auc"] > 0.85, result
    fp32 = [json.loads(x)["train_loss"] for x in (teacher_dir[1] / "metrics.jsonl").read_text().splitlines()]
    bf16 = [json.loads(x)["train_loss"] for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert bf16 != fp32 and abs(bf16[-1] - fp32[-1]) < 0.1
    res = CliRunner().invoke(app, ["train", str(dataset), str(tmp_path / "r"), "--precision", "fp16", "--device", "cpu"])
    assert res.exit_code == 2 and "--precision fp16: expected auto, fp32 or bf16" in res.output
    assert not (tmp_path / "r").exists()


def test_bf16_on_a_cpu_without_native_bf16_warns(dataset, tmp_path, monkeypatch):
    from mttag import device as device_mod

    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    for precision in ("fp32", "bf16"):
        args = ["train", str(dataset), str(tmp_path / precision), "--preset", "tiny", "--crop-seconds", "1",
                "--max-epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--eval-chunks", "1",
                "--workers", "0", "--device", "cpu", "--no-augment", "--precision", precision]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert ("no native bf16" in res.output) == (precision == "bf16")


def test_param_option_changes_the_architecture_and_is_checked(dataset, teacher_dir, tmp_path):
    """--param KEY=VALUE overrides the preset's parameters (train) or the student's (distill,
    preset or CONFIG.json); bad names and values are one-line usage errors before anything is
    written, and --resume with other parameters says which ones differ."""
    common = ["--crop-seconds", "1", "--max-epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4",
              "--eval-chunks", "1", "--workers", "0", "--device", "cpu", "--quiet", "--no-augment"]
    res = CliRunner().invoke(app, ["train", str(dataset), str(tmp_path / "t"), "--preset", "tiny",
                                   "--param", "hop_length=1024", "--param", "n-fft=2048", *common])
    assert res.exit_code == 0, res.output
    params = load_model(tmp_path / "t" / "model").config.params
    assert (params["hop_length"], params["n_fft"], params["conv_channels"]) == (1024, 2048, 16)  # the rest: tiny's
    assert json.loads((tmp_path / "t" / "train_config.json").read_text())["model_params"] == {"hop_length": 1024, "n_fft": 2048}

    (tmp_path / "t" / "finished.json").unlink()
    res = CliRunner().invoke(app, ["train", str(dataset), str(tmp_path / "t"), "--preset", "tiny", "--resume", *common])
    assert res.exit_code == 1 and "parameters differ: n_fft 2048 → 1024, hop_length 1024 → 512" in res.output

    for bad, says in [("dept=3", "unknown parameter 'dept'"), ("n_mels=4", "from 8 to 512"),
                      ("heads=3", "not divisible"), ("depth", "expected KEY=VALUE"), ("depth=two", "an integer")]:
        res = CliRunner().invoke(app, ["train", str(dataset), str(tmp_path / "bad"), "--preset", "tiny", "--param", bad, *common])
        assert res.exit_code == 2 and says in res.output, (bad, res.output)
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()

    model_dir, _ = teacher_dir
    student = _write_json(tmp_path / "s.json", {"arch": "transformer", "params": {"conv_channels": 4, "dim": 16, "depth": 1, "heads": 2}})
    for name, student_opt, want in [("p", "tiny", {"depth": 1, "dim": 64}), ("f", student, {"depth": 1, "dim": 16, "n_mels": 64})]:
        extra = ["--param", "depth=1"] if name == "p" else ["--param", "n_mels=64"]
        res = CliRunner().invoke(app, ["distill", str(dataset), str(tmp_path / name), "--teacher", str(model_dir),
                                       "--student", student_opt, *extra, *common])
        assert res.exit_code == 0, res.output
        got = load_model(tmp_path / name / "model").config.params
        assert {k: got[k] for k in want} == want


QUICK = ["--preset", "tiny", "--crop-seconds", "1", "--max-epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4",
         "--eval-chunks", "1", "--workers", "0", "--device", "cpu", "--no-augment", "--quiet"]


def test_train_and_distill_keep_files_they_did_not_write(dataset, teacher_dir, tmp_path):
    """A folder's own model/README.md and metrics.jsonl are neither replaced nor appended to
    without --force: one line names the file, before anything is written."""
    folder = tmp_path / "notes"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "README.md").write_text("# my model notes\n")
    (folder / "metrics.jsonl").write_text('{"run": "mine"}\n')
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    model_dir, _ = teacher_dir
    for args in (["train", str(dataset), str(folder), *QUICK],
                 ["distill", str(dataset), str(folder), "--teacher", str(model_dir), "--student", "tiny", *QUICK[2:]]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and "--force" in res.output
        assert "metrics.jsonl (and 1 more): exists and was not written by mttag" in res.output
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # no lock, no checkpoint
        assert (folder / "metrics.jsonl").read_text() == '{"run": "mine"}\n'
    (folder / "metrics.jsonl").unlink()
    res = CliRunner().invoke(app, ["train", str(dataset), str(folder), *QUICK])
    assert res.exit_code == 2 and f"{folder / 'model' / 'README.md'}: exists" in res.output, res.output
    with pytest.raises(TrainingError, match="README.md: exists and was not written by mttag"):
        train(dataset, folder, _config(max_epochs=1, steps_per_epoch=1))
    assert (folder / "model" / "README.md").read_text() == "# my model notes\n"
    # --force replaces them; the log holds this run's epochs only
    (folder / "metrics.jsonl").write_text('{"run": "mine"}\n')
    res = CliRunner().invoke(app, ["train", str(dataset), str(folder), *QUICK, "--force"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["epoch"] for x in (folder / "metrics.jsonl").read_text().splitlines()] == [1]
    assert "library_name: mttag" in (folder / "model" / "README.md").read_text()
    # the folder is mttag's now: --resume (and a later run's lock) find only mttag's files
    (folder / "finished.json").unlink()
    res = CliRunner().invoke(app, ["train", str(dataset), str(folder), *QUICK, "--max-epochs", "2", "--resume"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["epoch"] for x in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_fresh_run_starts_its_own_log(dataset, tmp_path):
    """A run killed before its first checkpoint leaves an epoch line: the next run into the
    folder starts the log again rather than appending a second epoch 1."""
    run = tmp_path / "r"
    train(dataset, run, _config(max_epochs=1, steps_per_epoch=1))
    (run / "checkpoint.pt").unlink()
    (run / "finished.json").unlink()
    train(dataset, run, _config(max_epochs=1, steps_per_epoch=1))
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def _prepare_like(dataset, out, vocab, keep=lambda i: True):
    """The dataset's tracks (those ``keep`` accepts), prepared again with ``vocab``'s order."""
    data = PreparedDataset(dataset)
    specs = []
    for i in range(len(data)):
        info = data.track_info(i)
        if keep(i):
            specs.append(TrackSpec(path=info.file, tags=None if info.split == "unlabeled" else list(info.tags),
                                   group=f"g{i}", split=info.split))
    prepare_dataset(specs, out, min_count=1, workers=1, tags_vocab=vocab)
    return out


def test_resume_refuses_another_vocabulary_order_or_dataset(dataset, tmp_path):
    """The checkpoint keeps its tags in order and its dataset's identity: the same tags in
    another order, or other tracks, are refused in one line instead of training output units
    on the wrong tags."""
    run = tmp_path / "r"
    train(dataset, run, _config(max_epochs=1, steps_per_epoch=1))
    (run / "finished.json").unlink()
    reordered = _prepare_like(dataset, tmp_path / "reordered", ["noisy", "high", "low"], keep=lambda i: i < 60)
    assert sorted(PreparedDataset(reordered).tags) == sorted(TAGS)
    with pytest.raises(TrainingError, match=r"same 3 tags in another order \(output 1 is 'low' there, 'noisy'"):
        train(reordered, run, _config(max_epochs=2, steps_per_epoch=1), resume=True)
    fewer = _prepare_like(dataset, tmp_path / "fewer", TAGS, keep=lambda i: i % 10 != 3)
    res = CliRunner().invoke(app, ["train", str(fewer), str(run), *QUICK, "--max-epochs", "2", "--resume",
                                   "--param", "conv_channels=8", "--param", "dim=32", "--batch-size", "8"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "was trained on another dataset" in res.output and "120 tracks" in res.output and "has 108" in res.output
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    # the same tracks prepared again (another folder, same content) are the same dataset
    again = _prepare_like(dataset, tmp_path / "again", TAGS)
    train(again, run, _config(max_epochs=2, steps_per_epoch=1), resume=True)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_help_lists_every_preset_and_opens_with_an_example():
    """Every preset --preset/--student accepts is in the help, from the presets themselves;
    `train --help` shows an example before its 40 options."""
    from mttag.models.params import PRESETS

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for arch in ("transformer", "resnet"):
        assert f"--arch {arch}: {', '.join(PRESETS[arch])}" in text
    assert "large" in PRESETS["transformer"]
    assert -1 < text.find("Example: mttag train ") < text.find("Arguments")
    res = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "400"})
    assert f"{', '.join(PRESETS['transformer'])} (the Transformer's presets)" in " ".join(res.output.split())


def test_a_file_where_the_model_goes_is_refused_even_with_force(tmp_path):
    """OUT/model as a file is in the way of the export whatever else is foreign there: refused
    before training (with --force it used to train a whole epoch, then fail to save)."""
    from mttag.training.rundir import check_run_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("my own settings, not mttag's")
    (out / "model").write_text("not a folder")
    with pytest.raises(TrainingError, match="is not a directory"):
        check_run_dir(out, force=True)
