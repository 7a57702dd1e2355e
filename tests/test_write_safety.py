"""``mttag write`` against hostile or unlucky input (issue 36): forged undo logs, two writers
and an external tagger on the same files, results that describe another recording, ID3
frames mutagen cannot parse, FIFOs, results and undo records of the wrong types, and mp3s
and FLACs that only their extension identifies."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import synth, write_audio
from typer.testing import CliRunner

from mttag.cli import app
from mttag.filetags import atomic, formats
from mttag.filetags import writer as filetags

runner = CliRunner()
TAGS = [{"tag": "rock", "score": 0.81}, {"tag": "happy", "score": 0.5}, {"tag": "guitar", "score": 0.4}]
HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def undo_key_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def cli(*args):
    return runner.invoke(app, ["write", *map(str, args)], catch_exceptions=False)


def sha(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def flac(folder: Path, name: str, seed: int = 0, seconds: float = 1.0) -> Path:
    from mutagen.flac import FLAC

    path = folder / name
    write_audio(path, synth(seconds, 44100, 2, "music", seed=seed), 44100)
    audio = FLAC(path)
    audio["TITLE"], audio["GENRE"] = "Title", "Jazz"
    audio.save()
    return path


def mp3(folder: Path, name: str, sr: int = 44100, channels: int = 2, seed: int = 0) -> Path:
    path = folder / name
    write_audio(path, synth(1.0, sr, channels, "music", seed=seed), sr)
    return path


def results(path: Path, files, tags=TAGS, **extra) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for p in files:
            f.write(json.dumps({"path": str(p), "duration": 1.0, "tags": tags, **extra}) + "\n")
    return path


def lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(word)]


def genre(path: Path) -> list[str]:
    return formats.open_tags(str(path)).get("genre")


# ---------------------------------------------------------------------------- 1. undo is bound to what mttag wrote


def crafted_log(tmp_path: Path, target: Path, payload: bytes) -> Path:
    """The probe's log: an exact-restore record aimed at an empty file (whose SHA-256 is
    public), with a delta that 'rebuilds' it as ``payload``."""
    import base64
    import hashlib

    empty = hashlib.sha256(b"").hexdigest()
    record = {"path": str(target), "format": "mp3", "id3_version": 4, "fields": ["genre"],
              "before": {"genre": []}, "after": {"genre": ["Rock"]},
              "sha256_before": hashlib.sha256(payload).hexdigest(), "sha256_after": empty,
              "size_before": len(payload), "mtime_ns_before": 0, "keep_mtime": False,
              "delta": {"prefix": 0, "suffix": 0, "ops": [base64.b64encode(payload).decode()]}}
    log = tmp_path / "evil.undo.jsonl"
    log.write_text(json.dumps({"mttag_undo": 1}) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    return log


def test_crafted_undo_log_cannot_write_into_an_empty_python_file(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    init = pkg / "__init__.py"
    init.write_bytes(b"")
    log = crafted_log(tmp_path, init, b"import os; os.system('echo pwned')\n")
    r = cli("--undo", log)
    assert r.exit_code == 1
    assert init.read_bytes() == b""
    (line,) = lines(r.stdout, "error")
    assert "__init__.py" in line and "refused" in line and "not signed" in line
    # a forged signature is no better
    record = json.loads(log.read_text().splitlines()[1])
    record.update(dev=1, ino=1, mac="0" * 64)
    log.write_text(json.dumps({"mttag_undo": 1}) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    r = cli("--undo", log)
    assert r.exit_code == 1 and init.read_bytes() == b""
    assert "signature does not match" in r.stdout


def test_signed_record_pointed_at_another_file_or_from_another_key_is_refused(tmp_path):
    song, other = flac(tmp_path, "a.flac", 0), flac(tmp_path, "b.flac", 1)
    original = {p: sha(p) for p in (song, other)}
    assert cli(results(tmp_path / "r.jsonl", [song]), "--undo-log", tmp_path / "u.jsonl").exit_code == 0
    written = sha(song)
    # the record edited to name another file: its signature no longer matches
    head, rec = (tmp_path / "u.jsonl").read_text().splitlines()
    edited = json.loads(rec)
    edited["path"] = str(other)
    (tmp_path / "edited.jsonl").write_text(head + "\n" + json.dumps(edited) + "\n")
    r = cli("--undo", tmp_path / "edited.jsonl")
    assert r.exit_code == 1 and "signature does not match" in r.stdout
    assert sha(other) == original[other] and sha(song) == written
    # another user's (or machine's) key: refused too
    key = filetags.undo_key_path()
    key.write_bytes(os.urandom(32))
    r = cli("--undo", tmp_path / "u.jsonl")
    assert r.exit_code == 1 and "signature does not match" in r.stdout and sha(song) == written


def test_undo_refuses_a_signed_record_once_the_file_is_no_longer_audio(tmp_path):
    song = flac(tmp_path, "a.flac")
    assert cli(results(tmp_path / "r.jsonl", [song]), "--undo-log", tmp_path / "u.jsonl").exit_code == 0
    song.write_bytes(b"#!/bin/sh\necho hi\n")  # replaced by something else under the same name
    r = cli("--undo", tmp_path / "u.jsonl")
    assert r.exit_code == 1 and "refused" in r.stdout
    assert song.read_bytes() == b"#!/bin/sh\necho hi\n"


def test_undo_key_is_private_and_reused(tmp_path):
    song = flac(tmp_path, "a.flac")
    assert cli(results(tmp_path / "r.jsonl", [song]), "--undo-log", tmp_path / "u.jsonl").exit_code == 0
    key = filetags.undo_key_path()
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    before = key.read_bytes()
    assert cli("--undo", tmp_path / "u.jsonl").exit_code == 0
    assert key.read_bytes() == before



def test_an_undo_key_that_cannot_be_read_is_one_line(tmp_path):
    song = flac(tmp_path, "a.flac")
    assert cli(results(tmp_path / "r.jsonl", [song]), "--undo-log", tmp_path / "u.jsonl").exit_code == 0
    key = filetags.undo_key_path()
    key.unlink()
    key.mkdir()  # a folder where the key should be: reading it is an OSError, not a WriteError
    for args in (["--undo", tmp_path / "u.jsonl"], [results(tmp_path / "r2.jsonl", [song]), "--undo-log", tmp_path / "v.jsonl"]):
        r = runner.invoke(app, ["write", *map(str, args)])
        assert r.exit_code in (1, 2) and not isinstance(r.exception, OSError), r.output
        assert "undo key" in r.output


def test_results_and_undo_logs_whose_name_cannot_be_checked_are_one_line(tmp_path):
    long = tmp_path / ("x" * 300 + ".jsonl")  # stat() fails: file name too long
    for args in ([long], ["--undo", long]):
        r = runner.invoke(app, ["write", *map(str, args)])
        assert r.exit_code == 2 and "cannot read it" in r.output and not isinstance(r.exception, OSError), r.output


def test_write_reads_a_parquet_results_file(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mttag.inference import parquet as parquet_output

    song = flac(tmp_path, "a.flac")
    rows = [{"path": str(song), "model": "m", "duration": 1.0, "windows": 1, "error": None, "scores": None,
             "embedding": None, "tags": [{"tag": t["tag"], "score": t["score"], "kind": None, "confidence": None}
                                         for t in TAGS]}]
    pq.write_table(parquet_output.table(rows, [t["tag"] for t in TAGS], "m"), tmp_path / "r.parquet")
    r = cli(tmp_path / "r.parquet", "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 0 and lines(r.stdout, "written"), r.output
    assert genre(song) != ["Jazz"]


# ---------------------------------------------------------------------------- 4. concurrent writers


def _tagger(files, stop, last, errors, lost, stale):
    """An external tagger: saves TITLE=N into the files in turn until told to stop, and
    before each save checks that its previous save to that file is still there. Like any
    tagger that takes no lock, it reads, then saves what it read: when mttag replaced the file
    in between, that save writes the tags it read over mttag's (its own lost update, which no
    check of mttag's can see); such files are in ``stale``."""
    from mutagen.flac import FLAC

    n = 0
    while not stop.is_set():
        for p in files:
            n += 1
            try:
                read_from = os.stat(p).st_ino
                audio = FLAC(p)
                if p in last and audio.get("TITLE") != [last[p]]:
                    lost.append((p, last[p], audio.get("TITLE")))
                audio["TITLE"] = f"edit {n}"
                audio.save()
                last[p] = f"edit {n}"
                if os.stat(p).st_ino != read_from:  # replaced between its read and its save
                    stale.add(p)
            except Exception as exc:  # noqa: BLE001 - a file swapped mid-save is the tagger's problem
                errors.append(repr(exc))
            time.sleep(0.002)


def test_two_writers_and_an_external_tagger_lose_no_edit(tmp_path):
    files = [flac(tmp_path, f"s{i:02d}.flac", i, seconds=0.5) for i in range(16)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    runs = {
        "a": ["--fields", "genre", "--undo-log", tmp_path / "ua.jsonl"],
        "b": ["--fields", "comment", "--mode", "replace", "--undo-log", tmp_path / "ub.jsonl"],
    }
    stop, last, errors, lost, stale = threading.Event(), {}, [], [], set()
    tagger = threading.Thread(target=_tagger, args=(files, stop, last, errors, lost, stale))
    tagger.start()
    try:
        procs = {name: subprocess.Popen([sys.executable, "-m", "mttag", "write", str(results(tmp_path / f"r{name}.jsonl", files)),
                                         "--json", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env, cwd=tmp_path)
                 for name, args in runs.items()}
        outs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    finally:
        stop.set()
        tagger.join()
    status = {name: {json.loads(line)["path"]: json.loads(line) for line in out.splitlines()} for name, (out, _) in outs.items()}
    for p in files:
        from mutagen.flac import FLAC

        audio = FLAC(p)
        a, b = status["a"][str(p)], status["b"][str(p)]
        # every run's "written" is in the file: no run silently undid another's fields
        # (an error is reported, not silent: usually "another program changed the file", or
        # tags read while the tagger was half-way through a save) -- unless the lockless
        # tagger itself saved a stale read over the file mttag had just replaced
        assert a["status"] in ("written", "error") and b["status"] in ("written", "error"), (a, b)
        if a["status"] == "written" and p not in stale:
            assert "Rock" in audio.get("GENRE", []), (p, a, b)
        if b["status"] == "written" and p not in stale:
            assert audio.get("COMMENT") == ["rock, happy, guitar"], (p, a, b)
        # and the tagger's last save survived (mttag either saw it and stopped, or wrote before it)
        assert audio["TITLE"] == [last[p]], (p, a, b)
    assert any(s["status"] == "written" for run in status.values() for s in run.values())
    assert not lost  # no save of the tagger was undone by a write


@pytest.mark.parametrize("when", ["verify", "delta", "log"])
def test_an_edit_saved_during_the_write_survives_and_the_file_is_reported(tmp_path, monkeypatch, when):
    from mutagen.flac import FLAC

    song = flac(tmp_path, "a.flac")

    def edit():
        audio = FLAC(song)
        audio["TITLE"] = "theirs"
        audio.save()

    if when == "verify":
        real = filetags._verify_copy

        def hooked(*args, **kwargs):
            edit()
            return real(*args, **kwargs)

        monkeypatch.setattr(filetags, "_verify_copy", hooked)
    elif when == "delta":
        real_delta = filetags.make_delta

        def hooked(old, new):
            edit()
            return real_delta(old, new)

        monkeypatch.setattr(filetags, "make_delta", hooked)
    else:
        real_write = filetags.UndoLog.write

        def hooked(self, record):
            real_write(self, record)
            edit()

        monkeypatch.setattr(filetags.UndoLog, "write", hooked)
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    outcome = filetags.write_tags(song, TAGS, filetags.WriteOptions(), log)
    log.close()
    assert outcome.status == "error" and "another program changed the file" in outcome.error
    audio = FLAC(song)
    assert audio["TITLE"] == ["theirs"] and audio["GENRE"] == ["Jazz"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a.flac")]  # no copy, no lock left


def test_a_second_mttag_run_waits_for_the_file_lock(tmp_path, monkeypatch):
    song = flac(tmp_path, "a.flac")
    monkeypatch.setattr(atomic, "LOCK_WAIT", 0.2)
    with filetags.file_lock(os.path.realpath(song)):
        log = filetags.UndoLog(tmp_path / "u.jsonl")
        outcome = filetags.write_tags(song, TAGS, filetags.WriteOptions(), log)
    assert outcome.status == "error" and "another mttag run" in outcome.error
    assert genre(song) == ["Jazz"]
    outcome = filetags.write_tags(song, TAGS, filetags.WriteOptions(), log)
    log.close()
    assert outcome.status == "written" and genre(song) == ["Jazz", "Rock"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------- 5. stale tags


def test_results_for_a_replaced_recording_are_refused(tmp_path):
    song = flac(tmp_path, "song.flac", seed=0)
    fp = filetags.audio_fingerprint(song)
    res = results(tmp_path / "r.jsonl", [song], fingerprint=fp)
    flac(tmp_path, "other.flac", seed=5).replace(song)  # another recording under the same name
    before = sha(song)
    for args in ([], ["--dry-run"]):
        r = cli(res, "--undo-log", tmp_path / "u.jsonl", *args)
        assert r.exit_code == 1
        (line,) = lines(r.stdout, "error")
        assert "song.flac" in line and "audio changed since it was tagged" in line
    assert sha(song) == before


@pytest.mark.parametrize("name", ["song.flac", "song.mp3", "song.ogg", "song.wav"])
def test_fingerprint_survives_tag_writes_and_old_results_still_work(tmp_path, name):
    song = flac(tmp_path, name) if name.endswith(".flac") else tmp_path / name
    if not name.endswith(".flac"):
        write_audio(song, synth(1.0, 44100, 2, "music", seed=2), 44100)
    fp = filetags.audio_fingerprint(song)
    assert filetags.parse_fingerprint(fp)[0] == Path(name).suffix[1:]
    assert cli(results(tmp_path / "r.jsonl", [song], fingerprint=fp), "--undo-log", tmp_path / "u.jsonl").exit_code == 0
    assert filetags.parse_fingerprint(filetags.audio_fingerprint(song)) == filetags.parse_fingerprint(fp)
    # a second write from the same results: the audio is the same, nothing to do
    r = cli(tmp_path / "r.jsonl", "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 0 and lines(r.stdout, "unchanged")
    # results without a fingerprint (older mttag) are written as before
    r = cli(results(tmp_path / "old.jsonl", [song], tags=[{"tag": "jazz", "score": 0.9}]), "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 0 and lines(r.stdout, "written")


def test_tag_outputs_carry_the_fingerprint_and_write_checks_it(tmp_path, tiny_model_dir):
    song = tmp_path / "song.wav"
    write_audio(song, synth(4.0, 16000, 1, "music", seed=1), 16000)
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"r.{fmt}"
        r = runner.invoke(app, ["tag", str(song), "--model", str(tiny_model_dir), "-o", str(out)])
        assert r.exit_code == 0, r.output
        from mttag.inference.output import read_records

        (record,) = read_records(out, fmt)
        assert filetags.parse_fingerprint(record["fingerprint"]) == filetags.parse_fingerprint(filetags.audio_fingerprint(song))
    write_audio(song, synth(4.0, 16000, 1, "music", seed=9), 16000)  # re-recorded
    for fmt in ("jsonl", "csv"):
        r = cli(tmp_path / f"r.{fmt}", "--undo-log", tmp_path / "u.jsonl")
        assert r.exit_code == 1 and "audio changed since it was tagged" in r.stdout


# ---------------------------------------------------------------------------- 8. frames mutagen cannot parse


def _bad_frame_mp3(tmp_path: Path, how: str) -> Path:
    """An mp3 whose ID3v2.4 tag holds a good TIT2 and a TPE1 that mutagen cannot parse."""
    song = mp3(tmp_path, f"{how}.mp3")

    def frame(name: bytes, body: bytes, flags: bytes = b"\x00\x00") -> bytes:
        return name + len(body).to_bytes(4, "big") + flags + body  # sizes < 128: syncsafe as is

    if how == "encoding":
        bad = frame(b"TPE1", b"\x09Artist")  # text encoding 9 does not exist
    else:  # compressed + data length indicator, but not zlib data
        bad = frame(b"TPE1", b"\x00\x00\x00\x20" + b"not zlib data at all", b"\x00\x09")
    tag = frame(b"TIT2", b"\x03Title") + bad + b"\x00" * 32
    header = b"ID3\x04\x00\x00" + bytes((len(tag) >> s) & 0x7F for s in (21, 14, 7, 0))
    song.write_bytes(header + tag + song.read_bytes())
    return song


@pytest.mark.parametrize("how", ["encoding", "zlib"])
def test_a_frame_mutagen_cannot_parse_is_never_dropped(tmp_path, how):
    song = _bad_frame_mp3(tmp_path, how)
    before = sha(song)
    assert b"TPE1" in song.read_bytes()
    for args in (["--dry-run"], []):
        r = cli(results(tmp_path / "r.jsonl", [song]), "--undo-log", tmp_path / "u.jsonl", *args)
        assert r.exit_code == 1
        (line,) = lines(r.stdout, "error")
        assert "TPE1 cannot be parsed" in line
    assert sha(song) == before


# ---------------------------------------------------------------------------- 9. FIFOs


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
@pytest.mark.parametrize("where", ["undo-log", "undo", "results"])
def test_a_fifo_is_refused_in_one_line_not_waited_on(tmp_path, where):
    song = flac(tmp_path, "a.flac")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    res = results(tmp_path / "r.jsonl", [song])
    args = {"undo-log": [res, "--undo-log", fifo], "undo": ["--undo", fifo], "results": [fifo]}[where]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mttag", "write", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file" in proc.stderr and "Traceback" not in proc.stderr
    assert genre(song) == ["Jazz"]


# ---------------------------------------------------------------------------- 10. bad records


def test_results_records_of_the_wrong_types_get_one_line_each_and_the_good_ones_are_written(tmp_path):
    good = [flac(tmp_path, f"g{i}.flac", i) for i in range(2)]
    bad = flac(tmp_path, "b.flac", 3)
    rows = [{"path": str(good[0]), "duration": 1.0, "tags": TAGS},
            {"path": str(bad), "duration": 1.0, "tags": "rock"},
            {"path": 5, "duration": 1.0, "tags": TAGS},
            {"path": str(bad), "duration": 1.0, "tags": [{"tag": "rock", "score": "high"}]},
            {"path": str(bad), "duration": 1.0, "tags": [{"tag": "rock"}]},
            {"path": str(bad), "duration": "long", "tags": TAGS},
            {"path": str(bad), "duration": 1.0, "tags": TAGS, "fingerprint": 7},
            {"path": str(good[1]), "duration": 1.0, "tags": TAGS}]
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = cli(res, "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 1
    errors = lines(r.stdout, "error")
    assert len(errors) == 6 and all("record" in e for e in errors)
    assert "'tags' is not a list" in errors[0] and "'path'" in errors[1] and "between 0 and 1" in errors[2]
    assert len(lines(r.stdout, "written")) == 2 and genre(bad) == ["Jazz"]
    assert all("Rock" in genre(p) for p in good)


def test_csv_results_with_a_bad_number_or_a_huge_field(tmp_path):
    good, bad = flac(tmp_path, "g.flac", 0), flac(tmp_path, "b.flac", 1)
    res = tmp_path / "r.csv"
    res.write_text("path,model,duration,tags,scores,error\n"
                   f"{bad},m,abc,rock,0.9,\n"
                   f"{tmp_path / ('x' * 140000)},m,1.0,rock,0.9,\n"
                   f"{good},m,1.0,rock;happy,0.9;0.5,\n", encoding="utf-8")
    r = cli(res, "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 1, r.output
    errors = lines(r.stdout, "error")
    assert len(errors) == 2 and "duration 'abc' is not a number" in errors[0]
    assert lines(r.stdout, "written") and "Rock" in genre(good) and genre(bad) == ["Jazz"]


@pytest.mark.parametrize("damage", ["missing sha256_before", "before is a list", "bad delta"])
def test_hand_edited_undo_records_are_refused_one_by_one(tmp_path, damage):
    files = [flac(tmp_path, f"s{i}.flac", i) for i in range(3)]
    original = {p: sha(p) for p in files}
    assert cli(results(tmp_path / "r.jsonl", files), "--undo-log", tmp_path / "u.jsonl").exit_code == 0
    head, *recs = (tmp_path / "u.jsonl").read_text(encoding="utf-8").splitlines()
    middle = json.loads(recs[1])
    if damage == "missing sha256_before":
        del middle["sha256_before"]
    elif damage == "before is a list":
        middle["before"] = ["genre"]
    else:
        middle["delta"] = {"prefix": "x", "ops": 5}
    recs[1] = json.dumps(middle)
    (tmp_path / "u.jsonl").write_text("\n".join([head, *recs]) + "\n", encoding="utf-8")
    r = cli("--undo", tmp_path / "u.jsonl")
    assert r.exit_code == 1
    (line,) = lines(r.stdout, "error")
    assert "s1.flac" in line and "record 2" in line and "refused" in line
    assert len(lines(r.stdout, "restored")) == 2
    assert sha(files[0]) == original[files[0]] and sha(files[2]) == original[files[2]]
    assert "Rock" in genre(files[1])


def test_a_full_disk_when_the_undo_log_closes_is_one_line(tmp_path, monkeypatch):
    song = flac(tmp_path, "a.flac")
    real_close = filetags.UndoLog.close

    class Full:
        """The log's stream, whose final close hits a full disk."""

        def __init__(self, stream):
            self.stream = stream

        def close(self):
            self.stream.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.stream = Full(self.stream)
        real_close(self)

    monkeypatch.setattr(filetags.UndoLog, "close", close)
    r = cli(results(tmp_path / "r.jsonl", [song]), "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 1 and "no space left on device" in r.stderr and lines(r.stdout, "written")
    assert "Rock" in genre(song) and len(filetags.read_undo_log(tmp_path / "u.jsonl")) == 1



def test_tag_write_too_closes_its_undo_log_in_one_line_on_a_full_disk(tmp_path, monkeypatch, tiny_model_dir):
    """`mttag tag --write` shares write's closing of the undo log: a full disk at its final sync
    is one error line (was a traceback), the lock is released, the log names what was written."""
    song = flac(tmp_path, "a.flac", seconds=3.0)
    real_close = filetags.UndoLog.close

    def close(self):
        real_close(self)
        raise filetags.WriteError("cannot close u.jsonl (No space left on device)")

    monkeypatch.setattr(filetags.UndoLog, "close", close)
    r = runner.invoke(app, ["tag", str(song), "--model", str(tiny_model_dir), "-o", str(tmp_path / "r.jsonl"),
                            "--write", "--threshold", "0", "--undo-log", str(tmp_path / "u.jsonl")])
    assert r.exit_code == 1 and "No space left on device" in r.stderr and r.exception is None or \
        isinstance(r.exception, SystemExit), r.output
    assert not (tmp_path / ".u.jsonl.lock").exists()

def test_a_record_cut_by_a_full_disk_is_removed_from_the_log(tmp_path, monkeypatch):
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    size = (tmp_path / "u.jsonl").stat().st_size
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        log.write({"path": "x", "before": {}})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / "u.jsonl").stat().st_size == size
    log.write({"path": "y", "before": {}})
    log.close()
    assert [r["path"] for r in filetags.read_undo_log(tmp_path / "u.jsonl")] == ["y"]


# ---------------------------------------------------------------------------- 11. files only their extension identifies


def _id3_front(data: bytes) -> bytes:
    import io

    from mutagen.id3 import ID3, TIT2

    tags = ID3()
    tags.add(TIT2(encoding=3, text="in front"))
    buf = io.BytesIO()
    tags.save(buf, v2_version=4, padding=lambda info: 0)
    return buf.getvalue() + data


@pytest.mark.parametrize("kind", ["mpeg-2.5", "leading-zeros", "flac-with-id3"])
def test_files_mutagen_knows_by_extension_are_written_and_undone(tmp_path, kind):
    if kind == "mpeg-2.5":
        song = mp3(tmp_path, "m25.mp3", sr=8000, channels=1)  # untagged, 8 kHz: MPEG-2.5
    elif kind == "leading-zeros":
        src = mp3(tmp_path, "src.mp3")
        song = tmp_path / "zeros.mp3"
        song.write_bytes(b"\x00" * 2048 + src.read_bytes())
        src.unlink()
    else:
        src = flac(tmp_path, "src.flac")
        song = tmp_path / "front.flac"
        song.write_bytes(_id3_front(src.read_bytes()))
        src.unlink()
    before = sha(song)
    r = cli(results(tmp_path / "r.jsonl", [song]), "--dry-run")
    assert r.exit_code == 0 and lines(r.stdout, "would write"), r.stdout
    r = cli(tmp_path / "r.jsonl", "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 0 and lines(r.stdout, "written"), r.stdout
    assert "Rock" in genre(song)
    assert cli("--undo", tmp_path / "u.jsonl").exit_code == 0 and sha(song) == before


def test_temporary_copy_keeps_the_extension(tmp_path, monkeypatch):
    song = flac(tmp_path, "a.flac")
    seen = []
    real_open = formats.open_tags

    def spy(path):
        seen.append(os.path.basename(path))
        return real_open(path)

    monkeypatch.setattr(formats, "open_tags", spy)
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    assert filetags.write_tags(song, TAGS, filetags.WriteOptions(), log).status == "written"
    log.close()
    copies = [n for n in seen if n != "a.flac"]
    assert copies and all(n.startswith(".a.flac.") and n.endswith(filetags.TMP_SUFFIX + ".flac") for n in copies)


def test_dry_run_does_not_promise_to_write_a_program_named_mp3(tmp_path):
    import random

    rng = random.Random(0)
    noise = lambda n: bytes(rng.choice(range(255)) for _ in range(n))  # noqa: E731 - never 0xff
    # an ELF program whose tables hold, far into the file, words that look like MPEG frame
    # headers 64 bytes apart (as in /bin/ls): mutagen takes it for an mp3
    fake = tmp_path / "song.mp3"
    fake.write_bytes(b"\x7fELF\x02\x01\x01\x00" + noise(16_000)
                     + b"".join(b"\xff\xff\x25\xc2" + noise(60) for _ in range(40)) + noise(2000))
    import mutagen

    assert type(mutagen.File(fake)).__name__ == "MP3"
    r = cli(results(tmp_path / "r.jsonl", [fake]), "--dry-run")
    assert r.exit_code == 1 and not lines(r.stdout, "would write")
    (line,) = lines(r.stdout, "error")
    assert "song.mp3" in line


def _id3_header(body: int) -> bytes:
    return b"ID3\x04\x00\x00" + bytes((body >> s) & 0x7F for s in (21, 14, 7, 0))


def test_an_mp3_with_stacked_id3_tags_is_written_not_refused(tmp_path):
    """Two ID3v2 tags one after the other (some writers add one instead of updating the
    first): players skip both; the audio check looked for frames only 4 KiB past the first."""
    song = mp3(tmp_path, "a.mp3")
    data = song.read_bytes()
    song.write_bytes(_id3_header(100) + b"\0" * 100 + _id3_header(20_000) + b"\0" * 20_000 + data)
    r = cli(results(tmp_path / "r.jsonl", [song]), "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 0 and lines(r.stdout, "written"), r.output
