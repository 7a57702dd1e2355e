"""``mttag tag -o tags.parquet`` on one machine, and the Parquet parts the Ray engine writes:
the same numbers as JSON, --resume adding nothing, a file mttag did not write refused, an
interrupted or failed write never replacing a good file, parts named by their tracks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mttag.cli import app  # noqa: E402
from mttag.inference import parquet as parquet_output  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture
def music(tmp_path, make_audio):
    folder = tmp_path / "music"
    for i in range(3):
        make_audio(folder / f"t{i}.wav", seconds=3.0 + i, sr=22050, seed=i)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file" * 4)
    return folder


def tag(*args):
    return runner.invoke(app, ["tag", *map(str, args), "--precision", "fp32", "-q"])


def test_parquet_holds_what_json_holds_plus_every_score(music, tiny_model_dir, tmp_path):
    out, ref = tmp_path / "tags.parquet", tmp_path / "tags.jsonl"
    assert tag(music, "-m", tiny_model_dir, "-o", out).exit_code == 1  # broken.wav fails
    assert tag(music, "-m", tiny_model_dir, "-o", ref).exit_code == 1
    table = pq.read_table(out)
    assert table.column_names == parquet_output.COLUMNS
    meta = parquet_output.describe(table.schema)
    assert meta["model"] == str(tiny_model_dir) and len(meta["tags"]) == 8
    rows = {r["path"]: r for r in table.to_pylist()}
    expected = [json.loads(line) for line in ref.read_text().splitlines()]
    assert set(rows) == {r["path"] for r in expected}
    for record in expected:
        row = rows[record["path"]]
        if "error" in record:
            assert row["error"] == record["error"] and row["scores"] is None
            continue
        assert [t["tag"] for t in row["tags"]] == [t["tag"] for t in record["tags"]]
        assert np.allclose([t["score"] for t in row["tags"]], [t["score"] for t in record["tags"]], atol=1e-4)
        assert len(row["scores"]) == 8 and row["windows"] >= 1 and row["error"] is None
        by_tag = dict(zip(meta["tags"], row["scores"]))
        assert all(abs(by_tag[t["tag"]] - t["score"]) < 1e-4 for t in record["tags"])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tags.parquet")]  # no temporary file left


def test_resume_adds_nothing_and_keeps_every_row(music, tiny_model_dir, tmp_path):
    out = tmp_path / "tags.parquet"
    tag(music, "-m", tiny_model_dir, "-o", out)
    before = pq.read_table(out).to_pylist()
    res = tag(music, "-m", tiny_model_dir, "-o", out, "--resume")
    after = pq.read_table(out).to_pylist()
    ok = lambda rows: sorted((r["path"], r["scores"]) for r in rows if r["error"] is None)  # noqa: E731
    assert ok(after) == ok(before) and len(ok(after)) == 3
    assert len(after) == 4 and res.exit_code == 1  # the broken file is tried again, and fails again


def test_a_parquet_file_mttag_did_not_write_is_refused(music, tiny_model_dir, tmp_path):
    foreign = tmp_path / "sales.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    data = foreign.read_bytes()
    res = tag(music, "-m", tiny_model_dir, "-o", foreign)
    assert res.exit_code == 2 and "not an mttag results file" in res.output
    assert foreign.read_bytes() == data



def test_rows_of_the_wrong_types_are_tagged_again_not_a_traceback(music, tiny_model_dir, tmp_path):
    """A Parquet file that says it is mttag's (its metadata) but holds a number as a path and a
    text score: --resume keeps no such row and tags those tracks again."""
    out = tmp_path / "tags.parquet"
    meta = parquet_output.schema(["rock"], "m").metadata
    bad = pa.table({"path": [5], "model": ["m"], "duration": [1.0], "windows": [1],
                    "tags": [[{"tag": "rock", "score": "high"}]], "scores": [None], "embedding": [None],
                    "error": [None]}).replace_schema_metadata(meta)
    pq.write_table(bad, out)
    res = tag(music, "-m", tiny_model_dir, "-o", out, "--resume")
    assert res.exit_code == 1 and not isinstance(res.exception, TypeError), res.output  # broken.wav fails
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 4 and all(isinstance(r["path"], str) for r in rows)

def test_a_write_that_fails_before_its_footer_keeps_the_old_file(tmp_path):
    from mttag.inference.output import OutputFile

    out = tmp_path / "tags.parquet"
    rows = [{"path": "/a.wav", "model": "m", "duration": 1.0, "windows": 1, "tags": [{"tag": "rock", "score": 0.5}],
             "scores": [0.5], "embedding": None, "error": None}]
    pq.write_table(parquet_output.table(rows, ["rock"], "m"), out)
    good = out.read_bytes()
    target = OutputFile(out, None, resume=True)
    assert target.check([]) == "parquet"
    stream = target.open()
    stream.write(b"PAR1 and then the process is cut off")  # no footer: not a readable file
    target.close()
    assert out.read_bytes() == good
    assert not [p for p in os.listdir(tmp_path) if p != "tags.parquet"]


def test_parquet_needs_an_output_file_and_keeps_no_timeline(music, tiny_model_dir, tmp_path):
    res = tag(music, "-m", tiny_model_dir, "-f", "parquet")
    assert res.exit_code == 2 and "--output" in res.output
    res = tag(music, "-m", tiny_model_dir, "-o", tmp_path / "t.parquet", "--timeline")
    assert res.exit_code == 2 and "not stored in Parquet" in res.output


def test_parts_are_named_by_their_tracks_and_written_whole(tmp_path):
    from pyarrow import fs as pafs

    fs = pafs.LocalFileSystem()
    rows = [{"path": f"/m/{i}.wav", "model": "m", "duration": 2.0, "windows": 1, "tags": [], "scores": [0.1],
             "embedding": None, "error": None} for i in range(3)]
    name = parquet_output.write_part(fs, str(tmp_path), rows, ["rock"], "m")
    assert name == parquet_output.write_part(fs, str(tmp_path), rows[::-1], ["rock"], "m")  # a retry: same file
    assert name != parquet_output.part_name(r["path"] for r in rows[:2])
    (tmp_path / f".{name}.dead.tmp").write_bytes(b"PAR1 half")  # a writer killed mid-file
    assert parquet_output.list_parts(fs, str(tmp_path)) == [name]
    assert len(pq.read_table(tmp_path / name)) == 3
