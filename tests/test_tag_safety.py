"""``mttag tag`` never loses a user's data and never trusts bad input blindly (issue 17).

Each test reproduces a case a probe found: the output naming an input, two runs on one
output, a format mismatch on resume, an unlistable folder, ambiguous file names, a
resumed file losing its mode or its symbolic link, NaN samples, NaN scores, write
failures and terminal escape sequences in file names.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import synth, write_audio
from typer.testing import CliRunner

from mttag.audio.decode import load_audio
from mttag.cli import app
from mttag.util.fileio import ExclusiveLock

runner = CliRunner()
LINUX = sys.platform.startswith("linux")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tag(*args):
    return runner.invoke(app, ["tag", *map(str, args)], catch_exceptions=False)


def one_line_error(result, *words):
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:"), err
    for w in words:
        assert w in err, err
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def songs(tmp_path) -> Path:
    lib = tmp_path / "lib"
    write_audio(lib / "a song.wav", synth(3.0, 22050, 1, "music", seed=1), 22050)
    write_audio(lib / "b song.mp3", synth(3.0, 22050, 1, "music", seed=2), 22050)
    write_audio(lib / "quiet chords.wav", synth(3.0, 22050, 1, "music", seed=3), 22050)
    return lib


# -- 1. the output never replaces an input, an audio file or a file mttag did not write ----


def test_output_naming_an_input_is_refused(songs, tiny_model_dir):
    mp3 = songs / "b song.mp3"
    before = mp3.read_bytes()
    result = tag(mp3, "--model", tiny_model_dir, "-o", mp3, "-f", "csv")
    assert result.exit_code == 2
    one_line_error(result, "b song.mp3", "audio file")
    assert mp3.read_bytes() == before


def test_output_over_an_audio_file_in_the_folder_is_refused(songs, tiny_model_dir):
    wav = songs / "quiet chords.wav"
    before = wav.read_bytes()
    result = tag(songs, "--model", tiny_model_dir, "-f", "jsonl", "-o", wav, "--force")
    assert result.exit_code == 2
    one_line_error(result, "quiet chords.wav")
    assert wav.read_bytes() == before


def test_output_that_is_an_input_under_another_name_is_refused(songs, tiny_model_dir, tmp_path):
    odd = tmp_path / "tracklist.csv"  # an input whatever its name, reached through a link
    odd.symlink_to(songs / "a song.wav")
    before = (songs / "a song.wav").read_bytes()
    result = tag(songs, odd, "--model", tiny_model_dir, "-o", odd)
    assert result.exit_code == 2
    one_line_error(result, "is one of the files to tag")
    assert (songs / "a song.wav").read_bytes() == before


def test_existing_file_mttag_did_not_write_needs_force(songs, tiny_model_dir, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("artist,title\nsomeone,something\n", encoding="utf-8")
    result = tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", notes)
    assert result.exit_code == 2
    one_line_error(result, "not an mttag results file", "--force")
    assert notes.read_text(encoding="utf-8").startswith("artist,title")
    result = tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", notes, "--force")
    assert result.exit_code == 0, result.stderr
    assert notes.read_text(encoding="utf-8").startswith("path,model,duration,tags")


def test_binary_file_is_never_replaced_even_with_force(songs, tiny_model_dir, tmp_path):
    disguised = tmp_path / "results.json"
    data = (songs / "a song.wav").read_bytes()
    disguised.write_bytes(data)
    result = tag(songs / "b song.mp3", "--model", tiny_model_dir, "-o", disguised, "--force")
    assert result.exit_code == 2
    one_line_error(result, "refusing to overwrite")
    assert disguised.read_bytes() == data


def test_own_results_file_is_replaced_only_with_force(songs, tiny_model_dir, tmp_path):
    for name in ("out.csv", "out.json", "out.jsonl", "out.txt"):
        out = tmp_path / name
        assert tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", out).exit_code == 0
        before = out.read_bytes()
        result = tag(songs / "b song.mp3", "--model", tiny_model_dir, "-o", out)
        assert result.exit_code == 2
        # a table cannot be resumed: only --force is offered for it
        one_line_error(result, "already holds mttag", "--force", *(() if name == "out.txt" else ("--resume",)))
        assert out.read_bytes() == before
        result = tag(songs / "b song.mp3", "--model", tiny_model_dir, "-o", out, "--force")
        assert result.exit_code == 0, result.stderr
        assert "b song.mp3" in out.read_text(encoding="utf-8")
        assert "a song.wav" not in out.read_text(encoding="utf-8")


def test_empty_output_file_is_replaced_without_force(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "made-by-touch.jsonl"
    out.touch()  # nothing in it to lose
    assert tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", out).exit_code == 0
    assert "a song.wav" in out.read_text(encoding="utf-8")


def test_format_follows_the_output_name(songs, tiny_model_dir, tmp_path):
    for name, check in (("x.json", json.loads), ("x.csv", lambda t: t.startswith("path,")),
                        ("x.jsonl", lambda t: [json.loads(line) for line in t.splitlines()])):
        out = tmp_path / name
        assert tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", out).exit_code == 0
        assert check(out.read_text(encoding="utf-8"))
    result = tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", tmp_path / "y.json", "-f", "table")
    assert result.exit_code == 2
    one_line_error(result, "table")


# -- 2. one run per output file ------------------------------------------------------------


def test_second_run_on_the_same_output_is_refused(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "shared.jsonl"
    assert tag(songs, "--model", tiny_model_dir, "-o", out).exit_code == 0
    before = out.read_bytes()
    with ExclusiveLock(tmp_path / ".shared.jsonl.lock", "another mttag tag writing shared.jsonl", remove=True):
        for extra in (["--force"], ["--resume"]):  # (without either: refused as mttag's results, before the lock)
            result = tag(songs, "--model", tiny_model_dir, "-o", out, *extra)
            assert result.exit_code == 2
            one_line_error(result, "already running", f"pid {os.getpid()}")
    assert out.read_bytes() == before
    assert not (tmp_path / ".shared.jsonl.lock").exists()  # released and removed
    assert tag(songs, "--model", tiny_model_dir, "-o", out, "--resume").exit_code == 0


@pytest.mark.skipif(not LINUX, reason="flock semantics")
def test_two_processes_at_once_one_wins_and_nothing_is_interleaved(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "both.jsonl"
    cmd = [sys.executable, "-m", "mttag", "tag", str(songs), "--model", str(tiny_model_dir), "-o", str(out), "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    errors = [p.stderr.read().decode() for p in procs]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3 and len({r["path"] for r in records}) == 3
    if sorted(codes) == [0, 2]:  # overlapped: the second was refused
        assert "already running" in errors[codes.index(2)]
    else:  # one finished before the other began: the second refused to replace its results
        assert sorted(codes) == [0, 2] and "--resume" in errors[codes.index(2)]


# -- 3. resume reads what the file really holds ---------------------------------------------


def test_resume_with_another_format_refuses_to_replace(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "tags.jsonl"
    assert tag(songs, "--model", tiny_model_dir, "-o", out).exit_code == 0
    before = out.read_bytes()
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--resume", "-f", "csv")
    assert result.exit_code == 2
    one_line_error(result, "holds jsonl results, not csv")
    assert out.read_bytes() == before


def test_resume_follows_the_content_not_the_name(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "tags.csv"
    assert tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", out, "-f", "jsonl").exit_code == 0
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--resume")
    assert result.exit_code == 0, result.stderr
    assert "1 tracks already tagged" in result.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3


# -- 4. a folder that cannot be listed is an error, not a silent gap -------------------------


def test_unlistable_folder_gets_an_error_record(songs, tiny_model_dir, monkeypatch):
    locked = songs / "locked"
    write_audio(locked / "hidden.wav", synth(3.0, 22050, 1, "music"), 22050)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):  # as root, chmod 000 would not stop us: fail like it
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = tag(songs, "--model", tiny_model_dir, "-f", "jsonl")
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    bad = [r for r in records if "error" in r]
    assert [r["path"] for r in bad] == [str(locked)]
    assert "cannot list" in bad[0]["error"] and "permission denied" in bad[0]["error"]
    assert len(records) == 4
    assert "locked" in result.stderr  # and a warning

    import mttag

    results = list(mttag.tag(songs, model=tiny_model_dir))
    assert [r.path for r in results if not r.ok] == [str(locked)]


# -- 5. every file has its own output path ----------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="needs a filesystem that takes any bytes")
def test_undecodable_name_and_its_lookalike_stay_apart(songs, tiny_model_dir, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    data = (songs / "a song.wav").read_bytes()
    with open(os.fsencode(folder) + b"/caf\xe9.wav", "wb") as f:  # Latin-1 é
        f.write(data)
    (folder / "caf\\xe9.wav").write_bytes(data)  # a real backslash in the name
    out = tmp_path / "out.jsonl"
    assert tag(folder, "--model", tiny_model_dir, "-o", out).exit_code == 0
    paths = [json.loads(line)["path"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(set(paths)) == 2
    result = tag(folder, "--model", tiny_model_dir, "-o", out, "--resume")
    assert "2 tracks already tagged" in result.stderr and "0 to go" in result.stderr


# -- 6. resume keeps the file's mode and writes through a symbolic link -----------------------


def test_resume_keeps_mode_and_symlink(songs, tiny_model_dir, tmp_path):
    real = tmp_path / "shared" / "tags.jsonl"
    real.parent.mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", link).exit_code == 0
    os.chmod(real, 0o644)
    assert tag(songs, "--model", tiny_model_dir, "-o", link, "--resume").exit_code == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert oct(real.stat().st_mode & 0o777) == oct(0o644)
    assert len(real.read_text(encoding="utf-8").splitlines()) == 3
    assert sorted(p.name for p in real.parent.iterdir()) == ["tags.jsonl"]  # no temporary or lock left


# -- 8. NaN samples cost only themselves -------------------------------------------------------


def test_nan_samples_are_replaced_before_resampling(tmp_path):
    sr = 44100
    clean = synth(12.0, sr, 1, "tone", freq=440.0)[:, 0]
    broken = clean.copy()
    broken[::1000] = np.nan  # one every 1,000 samples
    broken[500::sr] = np.inf
    sf.write(tmp_path / "clean.wav", clean, sr, subtype="FLOAT")
    sf.write(tmp_path / "broken.wav", broken, sr, subtype="FLOAT")
    a = load_audio(tmp_path / "clean.wav", 22050)
    b = load_audio(tmp_path / "broken.wav", 22050)
    assert np.isfinite(b).all()
    # each bad sample only touches the resampler's neighbourhood of itself, at 1/1000 of the energy
    assert np.sqrt(np.mean((a - b) ** 2)) < 0.05 * np.sqrt(np.mean(a**2))
    assert np.max(np.abs(b)) > 0.2  # far from "silent"


# -- 9. NaN scores are an error, never invalid JSON --------------------------------------------


def test_model_with_nan_weights_gives_error_records(songs, tiny_model, tmp_path):
    import copy

    import torch

    from mttag import save_model

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    model_dir = save_model(broken, tmp_path / "broken-model")
    out = tmp_path / "out.json"
    result = tag(songs, "--model", model_dir, "-o", out)
    assert result.exit_code == 1
    records = json.loads(out.read_text(encoding="utf-8"))  # valid JSON: no NaN literal
    assert len(records) == 3 and all("non-finite" in r["error"] for r in records)


# -- clear errors when the output cannot be written --------------------------------------------


def test_output_under_a_file(songs, tiny_model_dir, tmp_path):
    (tmp_path / "plain").write_text("x")
    result = tag(songs, "--model", tiny_model_dir, "-o", tmp_path / "plain" / "out.csv")
    assert result.exit_code == 2
    one_line_error(result, "plain")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk(songs, tiny_model_dir):
    result = tag(songs, "--model", tiny_model_dir, "-o", "/dev/full", "-f", "jsonl")
    assert result.exit_code in (1, 2)
    one_line_error(result, "/dev/full", "No space left on device")


@pytest.mark.skipif(not LINUX, reason="RLIMIT_FSIZE")
def test_file_size_limit_keeps_old_results_and_leaves_no_temporary(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    assert tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", out).exit_code == 0
    before = out.read_bytes()
    limit = len(before) - 10  # too small for the earlier record: the temporary file fails

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "mttag", "tag", str(songs), "--model", str(tiny_model_dir), "-o", str(out),
           "--resume", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_files, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr  # before any track was tagged
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "too large" in err.lower(), err
    assert out.read_bytes() == before  # the resumed file never replaced the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib", "out.jsonl"]  # no temporary, no lock


# -- terminal escape sequences in file names --------------------------------------------------


def test_control_characters_in_names_are_escaped(songs, tiny_model_dir, tmp_path):
    folder = tmp_path / "evil"
    evil = folder / "clear\x1b[2J\x1b]0;pwned\x07.wav"
    write_audio(evil, synth(3.0, 22050, 1, "music"), 22050)
    (folder / "bad\x1b[31m.mp3").write_text("not audio")
    result = tag(folder, "--model", tiny_model_dir)
    assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout
    assert "\\x1b[2J" in result.stdout
    assert "\\x1b[31m" in result.stdout
    result = tag(folder, "--model", tiny_model_dir, "-f", "jsonl")
    assert "\x1b" not in result.stderr
    # machine-readable output keeps the real name (JSON escapes it)
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert str(evil) in paths
