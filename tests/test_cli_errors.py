"""Bad input gets one `error:` line (exit 2 for usage errors), never a traceback; an
interrupted train or prepare loses nothing; a run directory has one writer at a time."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mttag.cli import app
from mttag.errors import TrainingError
from mttag.training.loop import TrainConfig, train
from mttag.training.prepare import prepare_dataset
from mttag.training.sources import TrackSpec, tracks_from_folder
from mttag.training.store import PreparedDataset
from mttag.util.fileio import ExclusiveLock, LockedError

runner = CliRunner()
SR = 22050
TINY = ["--preset", "tiny", "--crop-seconds", "1", "--max-epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
        "--eval-chunks", "1", "--workers", "0", "--device", "cpu", "--no-augment", "--quiet"]


def wav(path, seconds=1.2, freq=330.0, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    sf.write(str(path), x.astype(np.float32), SR)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 short tracks, 6 train / 3 valid / 3 test, two tags."""
    root = tmp_path_factory.mktemp("audio")
    specs = []
    for i in range(12):
        split = "train" if i < 6 else "valid" if i < 9 else "test"
        tags = [["a"], ["b"], ["a", "b"]][i % 3]
        specs.append(TrackSpec(str(wav(root / f"t{i}.wav", freq=200 + 150 * (i % 3), seed=i)), tags, f"g{i}", split))
    out = tmp_path_factory.mktemp("data") / "ds"
    prepare_dataset(specs, out, min_count=1, workers=1, tags_vocab=["a", "b"])
    return out


def one_error_line(result, code=2) -> str:
    """The result exited with ``code`` and printed exactly one line, ``error: ...``, on stderr."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "╭" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


class Terminated(BaseException):
    """What SIGTERM raises in these tests when the CLI installed no handler of its own."""


@pytest.fixture
def sigterm_guard():
    """SIGTERM would kill the test run itself if the command under test did not handle it."""

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


# -- usage errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["tag", "--no-such-option"], ["no such option", "--no-such-option", "mttag tag --help"]),
    (["tag"], ["missing argument", "mttag tag --help"]),
    (["train", "only-one"], ["missing argument", "mttag train --help"]),
    (["prepare", "x", "--ratios"], ["--ratios", "requires an argument", "mttag prepare --help"]),
    (["tag", "x", "--top", "abc"], ["--top"]),
    (["tag", "x", "--format", "xml"], ["--format", "xml"]),
    (["train", "d", "o", "--arch", "lstm"], ["--arch", "lstm"]),
    (["evaluate", "m", "d", "--chunks", "0"], ["--chunks"]),
    (["distill", "out", "--teacher"], ["--teacher"]),
    (["no-such-command"], ["no such command", "mttag --help"]),
])
def test_usage_errors_are_one_line(args, words):
    line = one_error_line(runner.invoke(app, args))
    for word in words:
        assert word in line
    assert runner.invoke(app, args).stdout == ""


def test_usage_error_one_line_from_the_real_entry_point():
    proc = subprocess.run([sys.executable, "-m", "mttag", "train", "--presett", "tiny", "a", "b"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: no such option: --presett (Possible options: --precision, --preset, --resume); see 'mttag train --help'"]


def test_help_version_and_no_arguments_still_work():
    for args in (["--help"], ["-h"], ["train", "--help"], ["prepare", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, (args, result.output)
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("mttag ")
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and "Usage" in result.output and "error:" not in result.output


def _help(args):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def test_help_tells_the_truth():
    """What to type, and only that: no `<bool>` after a flag, no Python `list[...]` types,
    distill's optional DATASET before its required OUT_DIR, every train/distill option explained."""
    for command in ([], ["tag"], ["prepare"], ["train"], ["distill"], ["embed"], ["evaluate"]):
        text = _help(command)
        assert "<bool>" not in text and "list[" not in text, (command, text)
    assert "distill [OPTIONS] [DATASET] {OUT_DIR}" in _help(["distill"])
    for command in ("train", "distill"):
        rows = [line for line in _help([command]).splitlines() if line.lstrip("│ *").startswith("--")]
        assert len(rows) >= 20
        for row in rows:  # each option row carries a help text (the long ones end before the border)
            assert len(row.rstrip("│ ").split("  ")[-1].strip()) > 3, row
    assert "Print nothing but errors" in _help(["train"]) and "Print nothing but errors" in _help(["distill"])


def test_distill_paths():
    line = one_error_line(runner.invoke(app, ["distill", "--teacher", "m"]))
    assert line == "error: missing argument 'OUT_DIR'; see 'mttag distill --help'"
    line = one_error_line(runner.invoke(app, ["distill", "a", "b", "c", "--teacher", "m"]))
    assert "unexpected extra argument" in line


def test_shell_completion_is_offered():
    assert "--install-completion" in _help([]) and "--show-completion" in _help([])
    env = {**os.environ, "_MTTAG_COMPLETE": "complete_bash", "COMP_WORDS": "mttag dis", "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-c", "from mttag.cli import app; app(prog_name='mttag')"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["distill"], proc


def test_demo_command_and_example_write_the_same_tracks(tmp_path, monkeypatch):
    import runpy

    import mttag.audio.demo

    # the real tracks are 25-40 s; 2 s each make the same files in a fraction of the time
    monkeypatch.setattr(mttag.audio.demo, "TRACKS", tuple((name, 2, *rest) for name, _, *rest in mttag.audio.demo.TRACKS))
    result = runner.invoke(app, ["demo", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    names = ("slow minor piano.flac", "upbeat major band.mp3", "mid tempo groove.ogg", "quiet chords.wav")
    assert result.stdout.splitlines() == [str(tmp_path / "a" / n) for n in names]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(names)
    info = sf.info(str(tmp_path / "a" / "quiet chords.wav"))
    assert (info.samplerate, info.channels) == (44100, 2) and info.duration == pytest.approx(2.0)
    # the example script is a thin wrapper over the same generator: identical audio
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "make_demo_audio.py")
    if os.path.exists(example):  # (an installed wheel has no examples/)
        monkeypatch.setattr(sys, "argv", [example, str(tmp_path / "b")])
        runpy.run_path(example, run_name="__main__")
        assert (tmp_path / "b" / "quiet chords.wav").read_bytes() == (tmp_path / "a" / "quiet chords.wav").read_bytes()
    (tmp_path / "file").write_text("x")
    assert one_error_line(runner.invoke(app, ["demo", str(tmp_path / "file")])).endswith("exists and is not a directory")


def test_bad_preset_and_missing_devices(dataset, tmp_path, monkeypatch):
    from mttag.models import presets

    line = one_error_line(runner.invoke(app, ["train", str(dataset), str(tmp_path / "r"), "--preset", "bogus"]))
    assert "--preset bogus" in line and all(name in line for name in presets("transformer"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device, why in (("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
                        ("mps", "MPS is not available"), ("tpu", "expected auto, cpu")):
        line = one_error_line(runner.invoke(app, ["train", str(dataset), str(tmp_path / "r"), "--device", device]))
        assert f"--device {device}" in line and why in line
        line = one_error_line(runner.invoke(app, ["distill", str(dataset), str(tmp_path / "r"), "--teacher", "x",
                                                  "--device", device]))
        assert why in line
    assert not (tmp_path / "r").exists()


def test_file_names_are_printed_safely(tmp_path):
    evil = tmp_path / "evil\x1b]0;pwned\x07[bold]x.csv"
    result = runner.invoke(app, ["prepare", str(tmp_path / "ds"), "--annotations", str(evil)])
    line = one_error_line(result)
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "evil\\x1b]0;pwned\\x07[bold]x.csv" in line  # escaped, and not taken for rich markup


# -- one writer per run directory --------------------------------------------------------------


def test_a_lock_is_exclusive_within_one_process_too(tmp_path):
    with ExclusiveLock(tmp_path / ".lock", "the first"):
        with pytest.raises(LockedError, match=f"the second is already running \\(pid {os.getpid()}"):
            with ExclusiveLock(tmp_path / ".lock", "the second"):
                pass
    with ExclusiveLock(tmp_path / ".lock", "the second"):  # free again
        pass


def test_acquire_and_release_without_a_with_block(tmp_path):
    path = tmp_path / ".lock"
    first = ExclusiveLock(path, "the first", remove=True)
    first.release()  # never acquired: nothing to do
    assert first.acquire() is first
    assert f"pid {os.getpid()}:" in path.read_text()  # the holder's note
    second = ExclusiveLock(path, "the second")
    with pytest.raises(LockedError, match=f"the second is already running \\(pid {os.getpid()}"):
        second.acquire()
    assert second.fd is None
    first.release()
    assert not path.exists()  # remove=True
    first.release()  # twice is fine
    assert second.acquire() is second  # free again
    second.release()
    assert path.read_text() == ""  # kept, the note cleared


def test_second_run_into_the_same_dir_is_refused(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with ExclusiveLock(run / ".lock", "a test"):  # another train/distill is writing into run/
        line = one_error_line(runner.invoke(app, ["train", str(dataset), str(run), *TINY]))
        assert "already running" in line and f"pid {os.getpid()}" in line and str(run) in line
        line = one_error_line(runner.invoke(app, ["distill", str(dataset), str(run), "--teacher", str(tmp_path / "m"),
                                                  "--device", "cpu"]))
        assert "already running" in line
        with pytest.raises(TrainingError, match="already running"):  # the library refuses too
            train(dataset, run, TrainConfig(preset="tiny", crop_seconds=1.0, batch_size=2, max_epochs=1,
                                            steps_per_epoch=1, eval_chunks=1, augment=False, workers=0, device="cpu"))
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written, no metrics.jsonl
    result = runner.invoke(app, ["train", str(dataset), str(run), *TINY])  # once free, it goes ahead
    assert result.exit_code == 0, result.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_second_prepare_into_the_same_dir_is_refused_before_reading_sources(tmp_path, monkeypatch):
    import mttag.training.sources as dsmod

    csv_path = annotations(tmp_path, 2)
    out = tmp_path / "ds"
    out.mkdir()
    read = []
    monkeypatch.setattr(dsmod, "_read_annotations", lambda *a: read.append(a) or iter(()))
    with ExclusiveLock(out / ".lock", "a test"):
        line = one_error_line(runner.invoke(app, ["prepare", str(out), "--annotations", str(csv_path)]))
    assert f"another mttag prepare into {out} is already running (pid {os.getpid()}" in line
    assert read == []


# -- resume ------------------------------------------------------------------------------------


@pytest.fixture
def one_epoch_run(dataset, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(dataset), str(run), *TINY])
    assert result.exit_code == 0, result.output
    (run / "finished.json").unlink()  # as if stopped after epoch 1
    return run


def test_resume_with_another_preset(dataset, one_epoch_run):
    args = ["train", str(dataset), str(one_epoch_run), *TINY, "--max-epochs", "2", "--resume"]
    line = one_error_line(runner.invoke(app, [*args, "--preset", "small"]), 1)
    assert "--preset tiny" in line and "different architecture" in line and "checkpoint.pt" in line
    # a checkpoint written before the architecture was stored in it
    ckpt = one_epoch_run / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["architecture"]
    torch.save(state, ckpt)
    line = one_error_line(runner.invoke(app, [*args, "--preset", "small"]), 1)
    assert "does not fit this model" in line and "--preset tiny" in line
    result = runner.invoke(app, args)  # the run's own settings still resume
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["epoch"] for x in (one_epoch_run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled code", "not a checkpoint"])
def test_resume_on_a_damaged_checkpoint(dataset, one_epoch_run, damage):
    ckpt = one_epoch_run / "checkpoint.pt"
    if damage == "garbage":
        ckpt.write_bytes(os.urandom(3000))
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    elif damage == "pickled code":
        torch.save({"model": Payload()}, ckpt)
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    result = runner.invoke(app, ["train", str(dataset), str(one_epoch_run), *TINY, "--resume"])
    line = one_error_line(result, 1)
    assert str(ckpt) in line and "not an mttag checkpoint" in line
    assert "weights_only" not in result.output and "pwned" not in result.output


def test_resume_does_not_log_an_epoch_twice(dataset, one_epoch_run):
    """Killed after an epoch's log line but before its checkpoint: the epoch runs again
    on --resume and is logged once."""
    log = one_epoch_run / "metrics.jsonl"
    first = log.read_text()
    log.write_text(first + first.replace('"epoch": 1', '"epoch": 2') + '{"epoch": 3, "trunc')
    result = runner.invoke(app, ["train", str(dataset), str(one_epoch_run), *TINY, "--max-epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [1, 2]


# -- interruptions -----------------------------------------------------------------------------


def test_sigterm_stops_train_like_ctrl_c(dataset, tmp_path, monkeypatch, sigterm_guard):
    import mttag.training.loop as training

    real = training.atomic_write
    writes = []

    def atomic_write(path, write):
        real(path, write)
        writes.append(path)
        if len(writes) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # `kill` right after the first checkpoint

    monkeypatch.setattr(training, "atomic_write", atomic_write)
    run = tmp_path / "run"
    args = ["train", str(dataset), str(run), *TINY, "--max-epochs", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130, (result.output, result.exception)
    assert "interrupted" in result.stderr and "--resume" in result.stderr
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard  # restored
    monkeypatch.setattr(training, "atomic_write", real)
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_sigterm_stops_prepare_like_ctrl_c(tmp_path, monkeypatch, sigterm_guard):
    import mttag.training.prepare as dsmod

    csv_path = annotations(tmp_path, 8)
    real = dsmod._decode_track
    calls, killed = [], []

    def decode(*args):
        calls.append(args[1])
        if len(calls) == 3 and not killed:
            killed.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(dsmod, "_decode_track", decode)
    out = tmp_path / "ds"
    args = ["prepare", str(out), "--annotations", str(csv_path), "--min-count", "1", "-j", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130, (result.output, result.exception)
    assert "interrupted" in result.stderr and "resume" in result.stderr
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard
    assert not (out / "dataset.json").exists()
    calls.clear()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 8 - 2 and len(PreparedDataset(out)) == 8  # the two stored tracks were kept


# -- prepare: sources --------------------------------------------------------------------------


def annotations(root, n, artist="Beyoncé", encoding="utf-8", delimiter=","):
    """n tracks under root/audio (one of them in a folder with an accented name) and an annotations file."""
    rows = [["path", "tags", "artist"]]
    for i in range(n):
        rel = f"Beyoncé/{i}.wav" if i == 0 else f"{i}.wav"
        wav(root / "audio" / rel, seed=i, freq=200 + 30 * i)
        rows.append([rel, ["rock", "pop"][i % 2], f"{artist} {i % 4}"])
    path = root / "audio" / ("ann.tsv" if delimiter == "\t" else "ann.csv")
    text = "".join(delimiter.join(r) + "\n" for r in rows)
    path.write_bytes(text.encode(encoding))
    return path


def test_prepare_reads_a_cp1252_annotations_file_with_a_warning(tmp_path):
    csv_path = annotations(tmp_path, 6, encoding="cp1252")
    out = tmp_path / "ds"
    result = runner.invoke(app, ["prepare", str(out), "--annotations", str(csv_path), "--min-count", "1", "-j", "1"])
    assert result.exit_code == 0, result.output
    warning = [x for x in result.stderr.splitlines() if x.startswith("warning:") and "UTF-8" in x]
    assert len(warning) == 1 and f"{csv_path}:2: not UTF-8" in warning[0] and "cp1252" in warning[0]
    ds = PreparedDataset(out)
    assert len(ds) == 6 and ds.summary["failed"] == 0  # Beyoncé/0.wav was found
    assert {ds.track_info(i).group for i in range(len(ds))} >= {"beyoncé 0"}
    # told to read it as UTF-8, prepare names the file and the line
    line = one_error_line(runner.invoke(app, ["prepare", str(tmp_path / "ds2"), "--annotations", str(csv_path),
                                              "--encoding", "utf-8"]))
    assert f"{csv_path}:2: not valid utf-8 text (byte 0xe9" in line
    line = one_error_line(runner.invoke(app, ["prepare", str(tmp_path / "ds2"), "--annotations", str(csv_path),
                                              "--encoding", "klingon"]))
    assert "--encoding klingon: unknown encoding" in line


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_prepare_reads_unicode_text_with_a_byte_order_mark(tmp_path, encoding):
    tsv = annotations(tmp_path, 4, encoding=encoding, delimiter="\t")  # Excel's "Unicode text" is UTF-16 + tabs
    result = runner.invoke(app, ["prepare", str(tmp_path / "ds"), "--annotations", str(tsv), "--min-count", "1",
                                 "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "UTF-8" not in result.output
    assert len(PreparedDataset(tmp_path / "ds")) == 4


@pytest.fixture
def locked_folder(monkeypatch):
    """Folders named ``locked...`` cannot be listed (as chmod 000 does, but for root too)."""
    real = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and os.path.basename(os.fspath(path)).startswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_prepare_reports_a_folder_it_cannot_list(tmp_path, locked_folder):
    csv_path = annotations(tmp_path, 4)
    more = tmp_path / "more"
    wav(more / "a" / "x.wav")
    wav(more / "locked\x1b[2J" / "y.wav")
    out = tmp_path / "ds"
    result = runner.invoke(app, ["prepare", str(out), "--annotations", str(csv_path), "--min-count", "1",
                                 "--unlabeled", str(more), "-j", "1"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert "Traceback" not in result.output and "\x1b[2J" not in result.output
    warnings = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
    locked = str(more / "locked\\x1b[2J")
    assert any(locked in w and "permission denied" in w for w in warnings), result.stderr
    assert "warning:" not in result.stdout
    assert len(PreparedDataset(out)) == 5  # the readable files are in


def test_prepare_source_readers_never_skip_a_folder_silently(tmp_path, locked_folder):
    from mttag.audio.files import UnlistableFolder

    wav(tmp_path / "lib" / "a.wav")
    wav(tmp_path / "lib" / "locked" / "b.wav")
    seen = []
    assert len(list(tracks_from_folder(tmp_path / "lib", read_artist=False, on_error=seen.append))) == 1
    assert [p.path for p in seen] == [str(tmp_path / "lib" / "locked")]
    with pytest.raises(UnlistableFolder, match="locked"):
        list(tracks_from_folder(tmp_path / "lib", read_artist=False))


def test_train_refuses_unlabeled_audio_it_cannot_list(dataset, tmp_path, locked_folder):
    wav(tmp_path / "lib" / "a.wav")
    wav(tmp_path / "lib" / "locked" / "b.wav")
    line = one_error_line(runner.invoke(app, ["train", str(dataset), str(tmp_path / "r"), *TINY, "--teacher", "x",
                                              "--unlabeled", str(tmp_path / "lib")]))
    assert "--unlabeled: cannot list" in line and str(tmp_path / "lib" / "locked") in line


def test_prepare_warnings_go_to_stderr(tmp_path):
    csv_path = tmp_path / "ann.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "tags", "artist"])
        for i in range(3):
            w.writerow([str(wav(tmp_path / f"{i}.wav", seed=i)), "rock", "the only artist"])
    result = runner.invoke(app, ["prepare", str(tmp_path / "ds"), "--annotations", str(csv_path), "--min-count", "1",
                                 "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "warning: the valid split is empty" in result.stderr and "warning: the test split is empty" in result.stderr
    assert "warning:" not in result.stdout and "3 tracks" in result.stdout
