"""``mttag tag`` end to end (in-process through Typer's CliRunner) and ``mttag.tag``."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_FFMPEG, TEST_TAGS, synth, write_audio
from typer.testing import CliRunner

import mttag
from mttag.cli import app
from mttag.inference.tagging import Tagger

runner = CliRunner()

GOOD = ["01 wav song.wav", "02 flac song.flac", "03 ogg song.ogg", "04 opus song.opus", "05 mp3 song.mp3",
        "06 ünïcödé 曲.flac"] + (["07 aac song.m4a"] if HAS_FFMPEG else [])
# bad file -> a word its error reason must contain
BAD = {
    "90 empty.wav": "empty file",
    "91 not audio.mp3": "not a decodable audio file",
    "92 blip.wav": "too short",
    "93 silence.flac": "silent",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tag(*args, **kwargs):
    return runner.invoke(app, ["tag", *map(str, args)], catch_exceptions=False, **kwargs)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A folder with spaces and non-ASCII names: one 3 s clip per format, bad files, non-audio files."""
    root = tmp_path_factory.mktemp("lib") / "My Music ♫"
    sub = root / "Ärtist – Album"
    for i, name in enumerate(GOOD):
        sr = 48000 if name.endswith(".opus") else 44100
        write_audio(sub / name, synth(3.0, sr, 2, "music", seed=i), sr)
    (sub / "90 empty.wav").touch()
    (sub / "91 not audio.mp3").write_text("definitely not an mp3\n" * 40)
    write_audio(sub / "92 blip.wav", synth(0.3, 44100, 1, "music"))
    write_audio(sub / "93 silence.flac", synth(2.0, 44100, 2, "silence"))
    (sub / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0not really")
    (root / "notes.txt").write_text("not audio")
    (root / ".DS_Store").write_bytes(b"\0" * 10)
    return root


def audio_paths(library: Path) -> list[str]:
    sub = library / "Ärtist – Album"
    return sorted(str(sub / n) for n in GOOD + list(BAD))


@pytest.fixture
def windows_seen(monkeypatch) -> list[int]:
    """Records the number of windows in every forward pass of any Tagger."""
    seen: list[int] = []
    original = Tagger._predict

    def counting(self, batch):
        seen.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(Tagger, "_predict", counting)
    return seen


def parse(text: str, fmt: str) -> list[dict]:
    if fmt == "json":
        return json.loads(text)
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and list(rows[0]) == ["path", "model", "duration", "tags", "scores", "error", "fingerprint", "kinds", "confidences"]
    return rows


# -- formats and records ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_one_record_per_audio_file(library, tiny_model_dir, fmt):
    result = tag(library, "--model", tiny_model_dir, "--format", fmt, "--batch-size", "3")
    assert result.exit_code == 1, result.stderr  # some files failed
    records = parse(result.stdout, fmt)
    assert [r["path"] for r in records] == audio_paths(library)  # input order, nothing else
    by_name = {Path(r["path"]).name: r for r in records}
    for name in GOOD:
        r = by_name[name]
        if fmt == "csv":
            assert r["error"] == ""
            assert float(r["duration"]) == pytest.approx(3.0, abs=0.1)
            tags, scores = r["tags"].split(";"), [float(s) for s in r["scores"].split(";")]
        else:
            assert set(r) == {"path", "model", "duration", "tags", "fingerprint"}
            assert r["model"] == str(tiny_model_dir)
            assert r["duration"] == pytest.approx(3.0, abs=0.1)
            tags, scores = [t["tag"] for t in r["tags"]], [t["score"] for t in r["tags"]]
        assert len(tags) == 5 and set(tags) <= set(TEST_TAGS)
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for name, reason in BAD.items():
        r = by_name[name]
        assert reason in r["error"], r
        if fmt != "csv":
            assert set(r) == {"path", "model", "error"}
        else:
            assert r["tags"] == "" and r["duration"] == ""
    # the summary names each failed file on stderr
    for name in BAD:
        assert name in result.stderr
    assert f"{len(GOOD)} tagged, {len(BAD)} failed" in result.stderr


def test_all_good_exits_0_and_formats_agree(library, tiny_model_dir):
    good = [library / "Ärtist – Album" / n for n in GOOD[:3]]
    outs = {fmt: tag(*good, "--model", tiny_model_dir, "-f", fmt) for fmt in ("json", "jsonl", "csv")}
    assert all(r.exit_code == 0 for r in outs.values())
    js, jl = parse(outs["json"].stdout, "json"), parse(outs["jsonl"].stdout, "jsonl")
    assert js == jl
    rows = parse(outs["csv"].stdout, "csv")
    assert [r["tags"].split(";") for r in rows] == [[t["tag"] for t in r["tags"]] for r in js]


def test_table_output(library, tiny_model_dir):
    result = tag(library, "--model", tiny_model_dir)
    assert result.exit_code == 1
    for path in audio_paths(library):
        assert path in result.stdout
    assert result.stdout.count("error:") == len(BAD)
    assert "0:03]" in result.stdout  # duration as m:ss
    assert any(t in result.stdout for t in TEST_TAGS)
    # a table can also go to a file
    out = library.parent / "table out.txt"
    result = tag(library / "Ärtist – Album" / GOOD[0], "--model", tiny_model_dir, "-o", out)
    assert result.exit_code == 0 and GOOD[0] in out.read_text(encoding="utf-8")


def test_duplicate_and_overlapping_paths_give_one_record(library, tiny_model_dir):
    song = library / "Ärtist – Album" / GOOD[1]
    result = tag(song, song, song.parent, "--model", tiny_model_dir, "-f", "jsonl")
    records = parse(result.stdout, "jsonl")
    assert len(records) == len(GOOD) + len(BAD)
    assert [r["path"] for r in records].count(str(song)) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a filesystem that takes any bytes")
def test_file_name_that_is_not_utf8(library, tiny_model_dir, tmp_path):
    """A Latin-1 name on Linux: written as \\xNN (valid UTF-8 output), and resumable."""
    folder = tmp_path / "latin1"
    folder.mkdir()
    data = (library / "Ärtist – Album" / GOOD[0]).read_bytes()
    with open(os.fsencode(folder) + b"/caf\xe9.wav", "wb") as f:
        f.write(data)
    table = tmp_path / "out.txt"
    result = tag(folder, "--model", tiny_model_dir, "-o", table)
    assert result.exit_code == 0, result.stderr
    assert "caf\\xe9.wav" in table.read_text(encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert tag(folder, "--model", tiny_model_dir, "-f", "jsonl", "-o", out).exit_code == 0
    (record,) = parse(out.read_text(encoding="utf-8"), "jsonl")
    assert record["path"].endswith("caf\\xe9.wav") and "tags" in record
    result = tag(folder, "--model", tiny_model_dir, "-f", "jsonl", "-o", out, "--resume")
    assert "1 tracks already tagged" in result.stderr and "0 to go" in result.stderr


def test_no_audio_found_exits_1(tmp_path, tiny_model_dir):
    (tmp_path / "readme.txt").write_text("x")
    result = tag(tmp_path, "--model", tiny_model_dir)
    assert result.exit_code == 1 and "no audio files found" in result.stderr


def test_missing_ffmpeg_is_an_error_record(library, tiny_model_dir, tmp_path, monkeypatch):
    m4a = tmp_path / "song.m4a"
    m4a.write_bytes(b"\0\0\0\x20ftypM4A " + bytes(3000))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    result = tag(m4a, library / "Ärtist – Album" / GOOD[0], "--model", tiny_model_dir, "-f", "jsonl")
    assert result.exit_code == 1
    bad, good = parse(result.stdout, "jsonl")
    assert "ffmpeg" in bad["error"] and "tags" in good


# -- tag selection and windows ------------------------------------------------------------


def test_top_threshold_all_tags(library, tiny_model_dir):
    song = library / "Ärtist – Album" / GOOD[0]

    def tags(*opts):
        result = tag(song, "--model", tiny_model_dir, "-f", "jsonl", *opts)
        assert result.exit_code == 0, result.stderr
        return parse(result.stdout, "jsonl")[0]["tags"]

    everything = tags("--all-tags")
    assert [t["tag"] for t in everything] != [] and sorted(t["tag"] for t in everything) == sorted(TEST_TAGS)
    assert tags() == everything[:5]
    assert tags("--top", "2") == everything[:2]
    cut = everything[3]["score"]
    assert tags("--all-tags", "--threshold", str(cut)) == [t for t in everything if t["score"] >= cut]
    assert tags("--threshold", "1.0") == []


def test_windows_all_vs_two(tmp_path, tiny_model_dir, windows_seen):
    song = write_audio(tmp_path / "six seconds.flac", synth(6.0, 44100, 2, "music", seed=3))  # 4 windows of 1.5 s
    all_ = tag(song, "--model", tiny_model_dir, "-f", "jsonl", "--windows", "all", "--all-tags")
    assert all_.exit_code == 0 and sum(windows_seen) == 4
    windows_seen.clear()
    two = tag(song, "--model", tiny_model_dir, "-f", "jsonl", "--windows", "2", "--all-tags")
    assert two.exit_code == 0 and sum(windows_seen) == 2
    windows_seen.clear()
    default = tag(song, "--model", tiny_model_dir, "-f", "jsonl", "--all-tags")
    assert sum(windows_seen) == 4  # the default (12) is capped by what the track holds
    score = {r: {t["tag"]: t["score"] for t in parse(x.stdout, "jsonl")[0]["tags"]}
             for r, x in (("all", all_), ("two", two), ("default", default))}
    assert score["all"] == score["default"] and score["all"] != score["two"]


def test_batch_size_does_not_change_results(library, tiny_model_dir, windows_seen):
    args = [library / "Ärtist – Album", "--model", tiny_model_dir, "-f", "jsonl", "--all-tags"]
    one = parse(tag(*args, "--batch-size", "1").stdout, "jsonl")
    assert max(windows_seen) == 1
    windows_seen.clear()
    many = parse(tag(*args, "--batch-size", "64").stdout, "jsonl")
    assert max(windows_seen) > 2  # windows from several tracks share a batch
    for a, b in zip(one, many):
        assert a.get("error") == b.get("error")
        for x, y in zip(a.get("tags", []), b.get("tags", [])):
            assert x["tag"] == y["tag"] and x["score"] == pytest.approx(y["score"], abs=2e-4)


def test_streamed_and_prefetched_tracks_agree(library, tiny_model, monkeypatch):
    """Long tracks are streamed window by window instead of decoded ahead: same results."""
    from mttag.inference import tagging

    files = audio_paths(library)
    prefetched = list(Tagger(tiny_model, "cpu", batch_size=3, windows=None).tag_files(files, top=None))
    monkeypatch.setattr(tagging, "_MAX_PREFETCHED_SECONDS", 1.0)  # every track streamed
    streamed = list(Tagger(tiny_model, "cpu", batch_size=3, windows=None).tag_files(files, top=None))
    for a, b in zip(prefetched, streamed, strict=True):
        assert (a.path, a.error) == (b.path, b.error)
        if a.ok:
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


def test_windows_decoded_in_stretches_tag_like_windows_read_alone(library, tiny_model, monkeypatch):
    """The stretch decoder (consecutive windows decoded together and cut apart) is a fast
    path that claims exactness: probabilities within 1e-3 of every window read on its own."""
    from mttag.audio import windows as audio

    files = audio_paths(library)
    together = list(Tagger(tiny_model, "cpu", windows=None).tag_files(files, top=None))
    monkeypatch.setattr(audio, "_RUN_SECONDS", 0.0)
    alone = list(Tagger(tiny_model, "cpu", windows=None).tag_files(files, top=None))
    assert sum(r.ok for r in together) >= 3
    for a, b in zip(together, alone, strict=True):
        assert (a.path, a.error, a.n_windows) == (b.path, b.error, b.n_windows)
        if a.ok:
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-3)


def test_batches_in_flight_on_several_threads_give_the_same_results(library, tiny_model):
    """model_threads > 1 (a CPU's default with several cores): batches run side by side, each
    on one intra-op thread, and are collected in order: bit-identical results, failed tracks
    included, and torch's thread count is back when the generator is done."""
    import torch

    files = audio_paths(library)
    one = list(Tagger(tiny_model, "cpu", batch_size=2, windows=None, model_threads=1).tag_files(files, top=None))
    torch.set_num_threads(2)  # the one_torch_thread fixture restores its own value afterwards
    gen = Tagger(tiny_model, "cpu", batch_size=2, windows=None, model_threads=3).tag_files(files, top=None)
    many = [next(gen)]
    assert torch.get_num_threads() == 1  # while batches run side by side
    many += list(gen)
    assert torch.get_num_threads() == 2
    assert any(not r.ok for r in one) and any(r.ok for r in one)
    for a, b in zip(one, many, strict=True):
        assert (a.path, a.error, a.n_windows) == (b.path, b.error, b.n_windows)
        if a.ok:
            np.testing.assert_array_equal(a.probabilities, b.probabilities)


# -- output file, interruption, resume ----------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_resume_after_partial_run(library, tiny_model_dir, tmp_path, windows_seen, fmt):
    sub = library / "Ärtist – Album"
    out = tmp_path / f"résultats ü.{fmt}"
    first = [sub / n for n in GOOD[:3]]
    assert tag(*first, "--model", tiny_model_dir, "-f", fmt, "-o", out).exit_code == 0
    before = {r["path"]: r for r in parse(out.read_text(encoding="utf-8"), fmt)}
    windows_seen.clear()
    result = tag(library, "--model", tiny_model_dir, "-f", fmt, "-o", out, "--resume")
    assert result.exit_code == 1
    assert "3 tracks already tagged" in result.stderr
    records = parse(out.read_text(encoding="utf-8"), fmt)
    assert sorted(r["path"] for r in records) == audio_paths(library)
    for r in records:  # the earlier records are kept as they were
        if r["path"] in before:
            assert r == before[r["path"]]
    # only the other tracks went through the model: 2 windows (of 1.5 s) per 3 s clip and
    # for the silent 2 s one; the empty, non-audio and too-short files never reach it
    assert sum(windows_seen) == 2 * (len(GOOD) - 3) + 2


def test_resume_after_a_record_cut_in_half(library, tiny_model_dir, tmp_path, windows_seen):
    sub = library / "Ärtist – Album"
    out = tmp_path / "out.jsonl"
    songs = [sub / n for n in GOOD[:4]]
    assert tag(*songs, "--model", tiny_model_dir, "-f", "jsonl", "-o", out).exit_code == 0
    text = out.read_text(encoding="utf-8")
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    out.write_text(text[: len(text) - len(last) // 2 - 1], encoding="utf-8")  # killed mid-write
    windows_seen.clear()
    assert tag(*songs, "--model", tiny_model_dir, "-f", "jsonl", "-o", out, "--resume").exit_code == 0
    records = parse(out.read_text(encoding="utf-8"), "jsonl")
    assert [r["path"] for r in records] == [str(s) for s in songs]
    assert sum(windows_seen) == 2  # only the cut record's track was tagged again


def test_resume_csv_row_cut_mid_score(library, tiny_model_dir, tmp_path):
    sub = library / "Ärtist – Album"
    out = tmp_path / "out.csv"
    songs = [sub / n for n in GOOD[:2]]
    assert tag(*songs, "--model", tiny_model_dir, "-f", "csv", "-o", out).exit_code == 0
    text = out.read_text(encoding="utf-8")
    out.write_text(text[: text.rindex(";") + 3], encoding="utf-8")  # inside the last row's scores
    assert tag(*songs, "--model", tiny_model_dir, "-f", "csv", "-o", out, "--resume").exit_code == 0
    rows = parse(out.read_text(encoding="utf-8"), "csv")
    assert [r["path"] for r in rows] == [str(s) for s in songs]
    assert all(len(r["scores"].split(";")) == 5 and r["error"] == "" for r in rows)


def test_resume_retries_failed_tracks(library, tiny_model_dir, tmp_path):
    out = tmp_path / "out.json"
    assert tag(library, "--model", tiny_model_dir, "-f", "json", "-o", out).exit_code == 1
    result = tag(library, "--model", tiny_model_dir, "-f", "json", "-o", out, "--resume")
    assert f"{len(GOOD)} tracks already tagged" in result.stderr
    assert result.exit_code == 1  # the bad files were tried again, and failed again
    records = json.loads(out.read_text(encoding="utf-8"))
    assert len(records) == len(GOOD) + len(BAD)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_run_keeps_its_results_and_resumes(library, tiny_model_dir, tmp_path, monkeypatch, how):
    """Interrupt during the third forward pass: the output holds the finished tracks
    and is valid JSON; --resume finishes the rest."""
    out = tmp_path / "interrupted.json"
    original = Tagger._predict
    calls = []

    def interrupting(self, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # the CLI turns it into an interruption
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Tagger, "_predict", interrupting)
    previous = signal.getsignal(signal.SIGTERM)
    result = tag(library, "--model", tiny_model_dir, "-f", "json", "-o", out, "--batch-size", "2")
    assert signal.getsignal(signal.SIGTERM) == previous  # restored
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    partial = json.loads(out.read_text(encoding="utf-8"))  # closed properly
    assert 1 <= len(partial) < len(GOOD) + len(BAD)
    monkeypatch.setattr(Tagger, "_predict", original)
    result = tag(library, "--model", tiny_model_dir, "-f", "json", "-o", out, "--resume")
    assert result.exit_code == 1
    records = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(r["path"] for r in records) == audio_paths(library)


def test_output_is_written_as_each_track_finishes(library, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "live.jsonl"
    seen_on_disk: list[int] = []
    original = Tagger._predict

    def peeking(self, batch):
        seen_on_disk.append(len(_lines(out)) if out.exists() else 0)
        return original(self, batch)

    monkeypatch.setattr(Tagger, "_predict", peeking)
    tag(library, "--model", tiny_model_dir, "-f", "jsonl", "-o", out, "--batch-size", "2")
    assert seen_on_disk[0] == 0 and seen_on_disk[-1] >= len(GOOD) - 2
    assert seen_on_disk == sorted(seen_on_disk)


# -- usage errors (exit 2) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--windows", "0"], "--windows"),
        (["--windows", "some"], "--windows"),
        (["--resume"], "--resume needs --output"),
        (["--resume", "-o", "{tmp}/out.txt", "-f", "table"], "--resume needs --format"),
        (["--top", "0"], "--top"),
        (["--threshold", "1.5"], "--threshold"),
        (["--format", "xml"], "--format"),
        (["--device", "tpu"], "--device"),
        (["--batch-size", "0"], "--batch-size"),
        (["--force"], "--force"),
        (["--undo-log", "{tmp}/undo.jsonl"], "--undo-log needs --write"),
        (["-o", "{tmp}"], "is a directory"),
    ],
)
def test_usage_errors_exit_2(library, tiny_model_dir, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--resume" in args and "-o" in args:
        (tmp_path / "out.txt").write_text("")
    result = tag(library, "--model", tiny_model_dir, *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


def test_missing_model_dir_exits_2(library, tmp_path):
    result = tag(library, "--model", tmp_path / "no such model")
    assert result.exit_code == 2
    assert "error:" in result.stderr and "no such model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_not_a_model_dir_exits_2(library, tmp_path):
    result = tag(library, "--model", tmp_path)
    assert result.exit_code == 2 and "config.json" in result.stderr


# -- progress, version, API ----------------------------------------------------------------


def test_progress_bar_on_a_terminal_only(library, tiny_model_dir):
    plain = tag(library, "--model", tiny_model_dir, "-f", "jsonl")
    assert "tracks/s" not in plain.stderr and "\x1b[" not in plain.stderr  # not a terminal: no bar


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty test written for Linux")
def test_progress_bar_shows_rate_and_eta_on_a_tty(library, tiny_model_dir):
    """A real pseudo-terminal on stderr (stdout stays a pipe): the bar with tracks/s
    and ETA is drawn there, and stdout holds only the results."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "mttag", "tag", str(library), "--model", str(tiny_model_dir), "-f", "jsonl",
           "--batch-size", "1", "--windows", "all"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    stdout = proc.stdout.read()
    proc.wait(timeout=120)
    os.close(master)
    text = screen.decode(errors="replace")
    assert proc.returncode == 1
    assert "tracks/s" in text and "tagging" in text
    assert f"/{len(GOOD) + len(BAD)}" in text  # tracks done / total
    assert "0:00:" in text or "-:--:--" in text  # the ETA column
    assert len(parse(stdout.decode(), "jsonl")) == len(GOOD) + len(BAD)


def test_version_subprocess():
    result = subprocess.run([sys.executable, "-m", "mttag", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.strip() == f"mttag {mttag.__version__}"


def test_python_api(library, tiny_model_dir, tiny_model):
    results = list(mttag.tag(library, model=tiny_model_dir, top=3))
    assert [r.path for r in results] == audio_paths(library)
    ok = [r for r in results if r.ok]
    assert len(ok) == len(GOOD)
    for r in ok:
        assert len(r.tags) == 3 and r.duration == pytest.approx(3.0, abs=0.1)
        assert r.probabilities.shape == (len(TEST_TAGS),)
        d = r.to_dict()
        assert set(d) == {"path", "model", "duration", "tags", "fingerprint"} and list(d["tags"][0]) == ["tag", "score", "kind", "confidence", "name"]
        assert r.model == str(tiny_model_dir)
    for r in results:
        if not r.ok:
            assert r.to_dict() == {"path": r.path, "model": str(tiny_model_dir), "error": r.error}
    # "~" is the user's home, and any os.PathLike is a path
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(library.parent))
        assert [r.path for r in mttag.tag(f"~/{library.name}", model=tiny_model_dir)] == audio_paths(library)
    # a loaded model, a single path, every window and a threshold
    song = library / "Ärtist – Album" / GOOD[0]
    (one,) = mttag.tag(song, model=tiny_model, top=None, threshold=0.0, windows=None, device="cpu")
    assert [t for t, _ in one.tags] == [t for t, _ in sorted(one.tags, key=lambda x: -x[1])]
    assert len(one.tags) == len(TEST_TAGS)
    np.testing.assert_allclose(sorted(one.probabilities), sorted(s for _, s in one.tags), rtol=1e-6)
    cli = parse(tag(song, "--model", tiny_model_dir, "-f", "jsonl", "--windows", "all", "--all-tags").stdout, "jsonl")
    assert [(t["tag"], t["score"]) for t in cli[0]["tags"]] == [(t, round(s, 4)) for t, s in one.tags]


def test_api_is_lazy_and_ordered(library, tiny_model):
    """Results come out one by one, in input order, before later tracks are decoded."""
    gen = mttag.tag(library, model=tiny_model, batch_size=1)
    first = next(gen)
    assert first.path == audio_paths(library)[0]
    gen.close()  # stops early without hanging on the tracks still queued


def test_precision_option(tiny_model_dir, tmp_path, monkeypatch):
    """--precision bf16 tags like fp32 to within bf16's resolution; on a CPU without native
    bf16 it says that it will be slower; a bad value is a usage error."""
    from mttag import device as device_mod
    from mttag.inference.tagging import resolve_precision

    clip = tmp_path / "clip.wav"
    write_audio(clip, synth(4.0, 22050, 1, "music"), 22050)
    out = {}
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    for precision in ("fp32", "bf16"):
        res = tag(clip, "--model", tiny_model_dir, "--precision", precision, "--all-tags", "--format", "json",
                  "-o", tmp_path / f"{precision}.json")
        assert res.exit_code == 0, res.output
        assert ("no native bf16" in res.output) == (precision == "bf16")
        [record] = json.loads((tmp_path / f"{precision}.json").read_text())
        out[precision] = {t["tag"]: t["score"] for t in record["tags"]}
    assert out["fp32"].keys() == out["bf16"].keys()
    assert max(abs(out["fp32"][t] - out["bf16"][t]) for t in out["fp32"]) < 0.05
    res = tag(clip, "--model", tiny_model_dir, "--precision", "fp16")
    assert res.exit_code == 2
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", mttag.device.select_device("cpu"), None)


def test_summary_says_when_auto_ran_in_bf16(tiny_model_dir, tmp_path, monkeypatch):
    """auto is bf16 on a CPU with native bf16 only: the summary says which one ran."""
    from mttag import device as device_mod

    clip = tmp_path / "clip.wav"
    write_audio(clip, synth(2.0, 22050, 1, "music"), 22050)
    res = tag(clip, "--model", tiny_model_dir, "-o", tmp_path / "a.csv")
    assert res.exit_code == 0 and "on cpu with" in res.output
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    res = tag(clip, "--model", tiny_model_dir, "-o", tmp_path / "b.csv")
    assert res.exit_code == 0 and "on cpu (bf16) with" in res.output
    res = tag(clip, "--model", tiny_model_dir, "-o", tmp_path / "c.csv", "--precision", "fp32")
    assert res.exit_code == 0 and "on cpu with" in res.output
