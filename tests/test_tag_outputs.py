"""Spreadsheet layouts (track / long / wide, csv and tsv), the model field, tag spelling."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_TAGS, synth, write_audio
from typer.testing import CliRunner

from mttag.cli import app
from mttag.inference.output import ResultWriter, display_tag, read_done

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tag(*args):
    return runner.invoke(app, ["tag", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    lib = tmp_path_factory.mktemp("outputs") / "lib"
    for i in range(3):
        write_audio(lib / f"{i} song.wav", synth(3.0, 22050, 1, "music", seed=i), 22050)
    (lib / "9 broken.mp3").write_text("not audio")
    return lib


def rows(text: str, delimiter: str = ",") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def test_long_layout_one_row_per_tag(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "long.csv"
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--layout", "long", "--top", "3")
    assert result.exit_code == 1  # the broken file
    table = rows(out.read_text(encoding="utf-8"))
    assert list(table[0]) == ["path", "model", "duration", "rank", "tag", "score", "error", "fingerprint", "kind", "confidence"]
    good = [r for r in table if not r["error"]]
    assert len(good) == 3 * 3
    for r in good:
        assert r["tag"] in TEST_TAGS and r["model"] == str(tiny_model_dir) and r["rank"] in ("1", "2", "3")
    (bad,) = [r for r in table if r["error"]]
    assert bad["path"].endswith("9 broken.mp3") and bad["tag"] == ""
    # a spreadsheet user filters by one tag and sorts by score
    by_track = {}
    for r in good:
        by_track.setdefault(r["path"], []).append(float(r["score"]))
    assert all(s == sorted(s, reverse=True) for s in by_track.values())


def test_wide_layout_one_column_per_tag_and_tsv(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "wide.tsv"
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--layout", "wide")
    assert result.exit_code == 1
    text = out.read_text(encoding="utf-8")
    assert "\t" in text.splitlines()[0]
    table = rows(text, "\t")
    assert list(table[0]) == ["path", "model", "duration", "error"] + TEST_TAGS
    good = [r for r in table if not r["error"]]
    assert len(good) == 3
    for r in good:  # every tag has a score, not only the top 5
        assert all(0.0 <= float(r[t]) <= 1.0 for t in TEST_TAGS)


@pytest.mark.parametrize("fmt, layout", [("csv", "long"), ("tsv", "wide"), ("tsv", "track"), ("csv", "wide")])
def test_every_layout_resumes(songs, tiny_model_dir, tmp_path, fmt, layout):
    out = tmp_path / f"r.{fmt}"
    first = sorted(songs.glob("*.wav"))[:2]
    assert tag(*first, "--model", tiny_model_dir, "-o", out, "--layout", layout).exit_code == 0
    kept, done = read_done(out, fmt)
    expected = 1 if layout == "long" else 2  # long: the last track may be cut between rows: done again
    assert len(done) == expected
    # no --format, no --layout: the file says what it is
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--resume")
    assert result.exit_code == 1, result.stderr
    assert f"{expected} tracks already tagged" in result.stderr
    text = out.read_text(encoding="utf-8")
    delimiter = "\t" if fmt == "tsv" else ","
    paths = {r["path"] for r in rows(text, delimiter)}
    assert len(paths) == 4
    before = out.read_bytes()
    other = {"long": "wide", "wide": "track", "track": "long"}[layout]
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--resume", "--layout", other)
    assert result.exit_code == 2 and f"holds the {layout} layout" in result.stderr
    assert out.read_bytes() == before


def test_wide_resume_refuses_another_vocabulary(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "w.csv"
    header = ["path", "model", "duration", "error", "a", "b"]
    out.write_text(",".join(header) + "\nx.wav,m,3.0,,0.1,0.2\n", encoding="utf-8")
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--resume")
    assert result.exit_code == 2 and "another model's tags" in result.stderr


def test_layout_needs_csv(songs, tiny_model_dir, tmp_path):
    result = tag(songs, "--model", tiny_model_dir, "-o", tmp_path / "x.json", "--layout", "long")
    assert result.exit_code == 2 and "csv and tsv" in result.stderr


def test_display_names_are_normalised_json_keeps_the_models():
    record = {"path": "a.wav", "model": "msd-musicnn", "duration": 3.0,
              "tags": [{"tag": "Hip-Hop", "score": 0.5}, {"tag": "female  vocalists", "score": 0.25}]}
    out = io.StringIO()
    ResultWriter(out, "csv").write_record(record)
    row = rows(out.getvalue())[0]
    # the vocabulary table's spelling: near-duplicates are one tag
    assert row["tags"] == "hip-hop;female vocals" and row["model"] == "msd-musicnn"
    out = io.StringIO()
    ResultWriter(out, "jsonl").write_record(record)
    assert json.loads(out.getvalue())["tags"][0]["tag"] == "Hip-Hop"  # a record read back is kept as it was
    out = io.StringIO()
    ResultWriter(out, "csv", layout="wide", vocabulary=["House", "Hip-Hop"]).write_record(record)
    assert out.getvalue().splitlines()[0].endswith(",house,hip-hop")
    assert display_tag("Progressive rock") == "progressive rock"


def test_one_spelling_in_every_format():
    """A tag the vocabulary table does not know (a custom model's) is spelled the same in
    JSON, CSV (both layouts) and the table: the CSV used to lowercase it on its own."""
    from mttag.inference.tagging import TagResult

    result = TagResult("a.wav", 3.0, [("Hip-Hop Fusion", 0.5), ("msd:Progressive rock", 0.25)], model="custom")
    spelled = {}
    for fmt, layout in (("jsonl", "track"), ("csv", "track"), ("csv", "long"), ("table", "track")):
        out = io.StringIO()
        writer = ResultWriter(out, fmt, layout=layout)
        writer.write(result)
        writer.close()
        text = out.getvalue()
        if fmt == "jsonl":
            spelled[fmt] = [t["tag"] for t in json.loads(text)["tags"]]
        elif layout == "long":
            spelled["long"] = [r["tag"] for r in rows(text)]
        elif fmt == "csv":
            spelled[fmt] = rows(text)[0]["tags"].split(";")
        else:
            spelled[fmt] = ["Hip-Hop Fusion" if "Hip-Hop Fusion 0.50" in text else None,
                            "progressive rock" if "progressive rock 0.25" in text else None]
    assert all(v == ["Hip-Hop Fusion", "progressive rock"] for v in spelled.values()), spelled


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fd-level capture is POSIX")
def test_decoder_chatter_becomes_one_warning_per_file(tmp_path, tiny_model_dir):
    """libmpg123 prints its own lines on fd 2; they become one warning for the file (none with -q)."""
    import numpy as np
    import soundfile as sf

    clean = tmp_path / "clean.mp3"
    sf.write(clean, (0.3 * np.sin(np.arange(22050 * 12) / 10)).astype("float32"), 22050, format="MP3")
    data = clean.read_bytes()
    cut = len(data) * 3 // 4
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "damaged.mp3").write_bytes(data[:cut] + b"\0" * 600 + data[cut:])
    cmd = [sys.executable, "-m", "mttag", "tag", str(lib), "--model", str(tiny_model_dir), "-o", str(tmp_path / "o.jsonl")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    loud = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert loud.returncode == 0, loud.stderr
    lines = loud.stderr.strip().splitlines()
    assert not any(line.startswith(("Note:", "Warning:", "[src/")) for line in lines), loud.stderr
    assert sum("warning:" in line and "damaged.mp3" in line for line in lines) == 1, loud.stderr
    quiet = subprocess.run(cmd + ["-q", "--force"], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_tag_write_puts_tags_in_the_files_and_undo_restores_them(tmp_path, tiny_model_dir):
    import hashlib

    import mutagen
    import soundfile as sf

    lib = tmp_path / "lib"
    write_audio(lib / "a.flac", synth(3.0, 22050, 1, "music", seed=1), 22050)
    write_audio(lib / "b.wav", synth(3.0, 22050, 1, "music", seed=2), 22050)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in lib.iterdir()}
    samples = {p.name: sf.read(p)[0] for p in lib.iterdir()}
    log = tmp_path / "undo.jsonl"
    result = tag(lib, "--model", tiny_model_dir, "-o", tmp_path / "r.jsonl", "--write", "--undo-log", log, "--top", "3")
    assert result.exit_code == 0, result.stderr
    assert "2 written" in result.stderr and "mttag write --undo" in result.stderr
    records = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    flac = mutagen.File(lib / "a.flac")
    expected = "; ".join(f"{t['tag']} {t['score']:.2f}" for t in records["a.flac"]["tags"])
    assert flac["MTTAG"] == [expected]
    assert "MTTAG" in str(mutagen.File(lib / "b.wav").tags)
    for p in lib.iterdir():  # the audio itself is untouched
        np.testing.assert_array_equal(sf.read(p)[0], samples[p.name])
    undo = runner.invoke(app, ["write", "--undo", str(log)], catch_exceptions=False)
    assert undo.exit_code == 0, undo.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in lib.iterdir()} == before


def test_verbose_gives_windows_and_timing_per_track(songs, tiny_model_dir):
    result = tag(songs, "--model", tiny_model_dir, "-f", "jsonl", "-v")
    lines = [line for line in result.stderr.splitlines() if "decode" in line]
    assert len(lines) == 4  # every track, the failed one too
    good = [line for line in lines if "song.wav" in line]
    assert len(good) == 3 and all("2 windows" in line and "model" in line for line in good)
    quiet = tag(songs, "--model", tiny_model_dir, "-f", "jsonl", "-v", "-q")
    assert "decode" not in quiet.stderr
