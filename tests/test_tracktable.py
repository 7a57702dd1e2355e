"""The index's track table (``tracks.idx``, mttag.inference.tracktable): opening an index reads
no line of ``tracks.jsonl``, a track is found by path through the hashes, rows committed
after the table are read from the file's tail, and a table that does not describe the file
is ignored, never trusted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mttag.inference import index as index_mod
from mttag.inference import tracktable
from mttag.inference.index import TRACKS, EmbeddingIndex, IndexWriter
from mttag.inference.tracktable import TABLE

MODEL = {"name": "m", "revision": "sha256:1", "dim": 4}


def rows(a: int, b: int):
    rng = np.random.default_rng(a)
    paths = [f"/music/{i:03d} track é.flac" for i in range(a, b)]
    return paths, [10.0 + i for i in range(a, b)], rng.standard_normal((b - a, 4)), rng.random((b - a, 2))


def write(path, a: int, b: int, **kw) -> None:
    with IndexWriter(path, MODEL, ["x", "y"], **kw) as w:
        w.add_rows(*rows(a, b))


@pytest.fixture
def parsed(monkeypatch):
    """Counts the tracks.jsonl lines parsed."""
    calls = []
    real = index_mod._parse_track

    def counting(line, row):
        calls.append(row)
        return real(line, row)

    monkeypatch.setattr(index_mod, "_parse_track", counting)
    return calls


def test_opening_reads_no_line_and_a_path_is_found_by_its_hash(tmp_path, parsed):
    path = tmp_path / "i.mttag"
    write(path, 0, 50)
    assert (path / TABLE).is_file()
    parsed.clear()
    idx = EmbeddingIndex(path)
    assert parsed == [] and len(idx) == 50
    assert idx.row_of("/music/037 track é.flac") == 37 and parsed == [37]
    assert idx.row_of("/music/not there.flac") is None
    assert idx.paths[12] == "/music/012 track é.flac" and idx.paths[-1] == "/music/049 track é.flac"
    assert np.allclose(idx.durations, [10.0 + i for i in range(50)])
    hits = idx.search(idx.vectors[3], 3)
    assert hits[0].row == 3 and hits[0].path == "/music/003 track é.flac"
    assert list(idx.paths) == rows(0, 50)[0]


def test_rows_after_the_table_are_read_from_the_tail(tmp_path, parsed, monkeypatch):
    path = tmp_path / "i.mttag"
    write(path, 0, 30)
    # a run that adds rows but dies before it closes leaves the table of the first 30
    monkeypatch.setattr(index_mod, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    write(path, 30, 34, resume=True)
    monkeypatch.undo()
    monkeypatch.setattr(index_mod, "_parse_track", lambda line, row: parsed.append(row) or _real_parse(line, row))
    parsed.clear()
    idx = EmbeddingIndex(path)
    assert len(idx) == 34 and parsed == [30, 31, 32, 33]  # the tail only
    assert idx.row_of("/music/032 track é.flac") == 32 and idx.row_of("/music/005 track é.flac") == 5
    assert idx.durations[33] == 43.0 and idx.durations[2] == 12.0

    # the next writer reads the tail only too, skips what is in, and leaves a table of every row
    parsed.clear()
    with IndexWriter(path, MODEL, ["x", "y"], resume=True) as w:
        assert w.existing == 34 and parsed == [30, 31, 32, 33]
        assert "/music/010 track é.flac" in w.done and "/music/033 track é.flac" in w.done
        assert not w.add_track("/music/020 track é.flac", 1.0, np.ones(4), np.zeros(2))
        asked = ["/music/010 track é.flac", "/music/new.flac", "/music/032 track é.flac", "/music/010 track e.flac"]
        assert w.done.missing(asked).tolist() == [False, True, False, True]
        w.add_rows(*rows(34, 36))
    parsed.clear()
    idx = EmbeddingIndex(path)
    assert len(idx) == 36 and parsed == []
    assert idx.row_of("/music/035 track é.flac") == 35 and list(idx.paths) == rows(0, 36)[0]


_real_parse = index_mod._parse_track


def test_colliding_hashes_are_told_apart_by_their_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "key_hashes", lambda keys: np.zeros(len(keys), dtype=np.uint64))
    monkeypatch.setattr(tracktable, "key_hashes", lambda keys: np.zeros(len(keys), dtype=np.uint64))
    path = tmp_path / "i.mttag"
    write(path, 0, 20)
    idx = EmbeddingIndex(path)
    assert idx.paths.table is not None
    assert [idx.row_of(p) for p in rows(0, 20)[0]] == list(range(20))
    assert idx.row_of("/music/elsewhere.flac") is None


def test_a_table_that_does_not_describe_the_file_is_ignored(tmp_path):
    path, other = tmp_path / "i.mttag", tmp_path / "o.mttag"
    write(path, 0, 10)
    want = list(EmbeddingIndex(path).paths)

    # another index's table (another created time, other lines)
    write(other, 100, 110)
    shutil.copy(other / TABLE, path / TABLE)
    idx = EmbeddingIndex(path)
    assert idx.paths.table is None and list(idx.paths) == want

    # tracks.jsonl rewritten after the table (same length, another last line)
    write(path, 0, 10, force=True)
    lines = (path / TRACKS).read_bytes().splitlines(keepends=True)
    record = json.loads(lines[-1])
    record["path"] = record["path"].replace("009", "990")
    (path / TRACKS).write_bytes(b"".join(lines[:-1]) + (json.dumps(record, ensure_ascii=False) + "\n").encode())
    idx = EmbeddingIndex(path)
    assert idx.paths.table is None and idx.paths[9] == "/music/990 track é.flac"

    # damaged: cut short, or not a table at all
    write(path, 0, 10, force=True)
    table = (path / TABLE).read_bytes()
    header, count = tracktable.HEADER_BYTES, 10
    arrays = bytearray(table)
    arrays[header + 8 * 3: header + 8 * 4] = (10 ** 6).to_bytes(8, "little")  # an offset out of order
    swapped = bytearray(table)  # two hashes out of order
    at = header + 8 * (2 * count + 1)
    swapped[at: at + 16] = table[at + 8: at + 16] + table[at: at + 8]
    negative = bytearray(table)  # a negative duration
    at = header + 8 * (count + 1)
    negative[at: at + 8] = np.float64(-1.0).tobytes()
    for damaged in (table[: len(table) - 8], b"garbage" * 1000, table[:100], bytes(arrays), bytes(swapped),
                    bytes(negative)):
        (path / TABLE).write_bytes(damaged)
        idx = EmbeddingIndex(path)
        assert idx.paths.table is None and list(idx.paths) == want and idx.row_of(want[4]) == 4


def test_starting_over_removes_the_table(tmp_path):
    path = tmp_path / "i.mttag"
    write(path, 0, 10)
    write(path, 50, 53, force=True)
    idx = EmbeddingIndex(path)
    assert idx.paths.table is not None and idx.paths.table.count == 3
    assert list(idx.paths) == rows(50, 53)[0] and idx.row_of("/music/005 track é.flac") is None


def test_a_line_damaged_after_the_table_is_one_line_from_mttag_similar(tmp_path):
    """The table is checked when the index opens; a line it points at that is damaged later
    (same length, so the table still matches the file's end) is a one-line error, no traceback."""
    from typer.testing import CliRunner

    from mttag.cli import app

    path = tmp_path / "i.mttag"
    write(path, 0, 10)
    data = bytearray((path / TRACKS).read_bytes())
    start = data.index(b'{"row": 3,')
    data[start:start + 1] = b"X"
    (path / TRACKS).write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["similar", "/music/003 track é.flac", "-i", str(path)])
    assert result.exit_code == 1 and "line 4 is damaged" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and isinstance(result.exception, SystemExit)
