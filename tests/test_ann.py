"""The ANN file of an embedding index (mttag.inference.ann): recall against exact search, filters,
staleness, atomic writes, and exact search when usearch is not installed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mttag.cli import app
from mttag.inference import ann
from mttag.inference.index import EmbeddingIndex, IndexWriter

pytest.importorskip("usearch")

runner = CliRunner()
DIM = 32
TAGS = [f"tag{i}" for i in range(6)]
MODEL = {"name": "synthetic", "revision": "sha256:synthetic", "dim": DIM}


def clustered(n: int, seed: int) -> np.ndarray:
    """Vectors like a library's: a shared direction, 40 styles, per-track noise."""
    rng = np.random.default_rng(seed)
    common = np.random.default_rng(99).standard_normal(DIM)
    centres = np.random.default_rng(98).standard_normal((40, DIM))
    v = common + centres[rng.integers(0, 40, n)] + 0.7 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_index(path: Path, n: int, seed: int = 0, resume: bool = False, force: bool = False, start: int = 0) -> None:
    rng = np.random.default_rng(seed + 1)
    with IndexWriter(path, MODEL, TAGS, 4, resume=resume, force=force) as w:
        w.add_rows([f"/music/{i:05d}.flac" for i in range(start, start + n)], rng.uniform(60, 600, n),
                   clustered(n, seed), rng.random((n, len(TAGS)), dtype=np.float32), keys=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ann") / "lib.mttag"
    write_index(path, 3000)
    result = ann.build(path)
    assert result is not None and result.count == 3000 and result.rebuilt
    return path


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A copy of the built index that a test may change."""
    return Path(shutil.copytree(built, tmp_path / "lib.mttag"))


def queries(k: int = 30) -> np.ndarray:
    return clustered(k, seed=1234)


def rows(hits) -> list[int]:
    return [h.row for h in hits]


def test_recall_against_exact_and_exact_scores(built):
    idx = EmbeddingIndex(built, ann="on")
    assert idx.ann is not None and idx.ann_note is None
    recall = []
    for q in queries():
        hits = idx.search(q, 10)
        exact = idx.search(q, 10, exact=True)
        recall.append(len(set(rows(hits)) & set(rows(exact))) / 10)
        # a listed score is the exact cosine from vectors.f32, never the graph's int8 estimate
        for h in hits:
            assert h.score == pytest.approx(float(idx.vectors[h.row] @ q), abs=1e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert np.mean(recall) >= 0.9


def test_the_graph_is_used(built, monkeypatch):
    """With an ANN file, search does not read every vector: it rescores the graph's candidates only."""
    idx = EmbeddingIndex(built, ann="on")
    asked = []
    original = idx.ann.candidates
    monkeypatch.setattr(idx.ann, "candidates", lambda q, fetch: asked.append(fetch) or original(q, fetch))
    idx.search(queries(1)[0], 10)
    assert asked and max(asked) < len(idx)


def test_filters_hold_and_strict_ones_fall_back_to_exact(built):
    idx = EmbeddingIndex(built, ann="on")
    loose = {"tags": [(idx.tag_index("tag1"), 0.3)], "min_duration": 100.0, "max_duration": 500.0}
    # so strict that only a handful of tracks pass: the graph's candidates cannot hold 10 of them
    column = np.asarray(idx.scores[:, 2], dtype=np.float32)
    threshold = float(np.sort(column)[-6])
    few = np.flatnonzero(column >= threshold)
    assert 0 < len(few) < 10
    strict = {"tags": [(2, threshold)]}
    recall = []
    for q in queries(15):
        exclude = rows(idx.search(q, 1, exact=True))  # like the query track itself
        hits = idx.search(q, 10, exclude=exclude, **loose)
        assert len(hits) == 10
        for h in hits:
            assert h.row not in exclude
            assert float(idx.scores[h.row, 1]) >= 0.3 and 100 <= h.duration <= 500
        exact = idx.search(q, 10, exclude=exclude, exact=True, **loose)
        recall.append(len(set(rows(hits)) & set(rows(exact))) / 10)
        assert rows(idx.search(q, 10, **strict)) == rows(idx.search(q, 10, exact=True, **strict))
        assert sorted(rows(idx.search(q, 10, **strict))) == sorted(few.tolist())
    assert np.mean(recall) >= 0.9


def test_auto_uses_it_only_for_large_indexes(built, monkeypatch):
    assert EmbeddingIndex(built).ann is None  # 3,000 tracks: exact
    assert EmbeddingIndex(built, ann="off").ann is None
    monkeypatch.setattr(ann, "AUTO_MIN_TRACKS", 1000)
    assert EmbeddingIndex(built).ann is not None


def test_tracks_added_since_are_searched_exactly_then_the_file_is_updated(copy):
    write_index(copy, 500, seed=7, resume=True, start=3000)
    idx = EmbeddingIndex(copy, ann="on")
    assert idx.ann is not None and idx.ann.count == 3000
    assert "covers 3000 of 3500 tracks" in idx.ann_note
    for row in (3000, 3250, 3499):  # only in the index, not in the graph: found by the exact tail
        hits = idx.search(np.asarray(idx.vectors[row]), 5)
        assert hits[0].row == row and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert rows(hits) == rows(idx.search(np.asarray(idx.vectors[row]), 5, exact=True))

    result = ann.build(copy)
    assert result.added == 500 and not result.rebuilt and result.count == 3500
    assert ann.build(copy) is None  # up to date
    idx = EmbeddingIndex(copy, ann="on")
    assert idx.ann.count == 3500 and idx.ann_note is None
    assert idx.search(np.asarray(idx.vectors[3499]), 1)[0].row == 3499


def test_an_index_started_over_ignores_the_old_file(copy, tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in (ann.ANN_FILE, ann.ANN_META):
        shutil.copy(copy / name, saved / name)
    write_index(copy, 3000, seed=5, force=True)  # same size, other tracks
    assert not (copy / ann.ANN_FILE).exists() and not (copy / ann.ANN_META).exists()  # --force drops them
    for name in (ann.ANN_FILE, ann.ANN_META):  # as if a copy of the old file came back
        shutil.copy(saved / name, copy / name)
    meta = json.loads((copy / ann.ANN_META).read_text())
    meta["index_created"] = json.loads((copy / "index.json").read_text())["created"]  # same second
    (copy / ann.ANN_META).write_text(json.dumps(meta))
    idx = EmbeddingIndex(copy, ann="on")
    assert idx.ann is None and "ignored" in idx.ann_note and "does not match" in idx.ann_note
    assert ann.build(copy).rebuilt


def test_a_damaged_file_is_ignored_with_a_note(copy):
    data = (copy / ann.ANN_FILE).read_bytes()
    (copy / ann.ANN_FILE).write_bytes(data[: len(data) // 3])
    idx = EmbeddingIndex(copy, ann="on")
    assert idx.ann is None and "ignored" in idx.ann_note
    assert len(idx.search(queries(1)[0], 10)) == 10
    (copy / ann.ANN_META).write_text("{not json")
    idx = EmbeddingIndex(copy, ann="on")
    assert idx.ann is None and "damaged" in idx.ann_note
    result = ann.build(copy)  # built anew over the damage
    assert result.rebuilt and EmbeddingIndex(copy, ann="on").ann is not None



@pytest.mark.parametrize("meta", ['{"format": "mttag-ann", "format_version": "2", "count": 5}',
                                  "[" * 100_000 + "]" * 100_000, "fifo", "big"])
def test_an_ann_json_of_the_wrong_types_or_shape_is_a_note_not_a_traceback(copy, meta):
    import os

    path = copy / ann.ANN_META
    path.unlink()
    if meta == "fifo":
        os.mkfifo(path)  # would block a plain read forever
    elif meta == "big":
        path.write_bytes(b" " * (ann.MAX_META_BYTES + 10) + b"{}")
    else:
        path.write_text(meta.replace("mttag-ann", ann.ANN_FORMAT))
    idx = EmbeddingIndex(copy, ann="on")
    assert idx.ann is None and "damaged" in idx.ann_note
    assert len(idx.search(queries(1)[0], 10)) == 10

def test_writes_are_atomic(copy, monkeypatch):
    before = {name: (copy / name).read_bytes() for name in (ann.ANN_FILE, ann.ANN_META)}
    write_index(copy, 10, seed=3, resume=True, start=3000)
    from usearch.index import Index

    def broken_save(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Index, "save", broken_save)
    with pytest.raises(ann.AnnError, match="No space left"):
        ann.build(copy)
    assert {name: (copy / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in copy.iterdir() if p.name.endswith(".tmp")) == []
    monkeypatch.undo()
    assert ann.build(copy).count == 3010


def test_build_refuses_while_a_writer_holds_the_index(copy):
    with IndexWriter(copy, MODEL, TAGS, 4, resume=True):
        with pytest.raises(ann.AnnError, match="already running"):
            ann.build(copy)


def test_without_the_library_search_is_exact(copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "usearch", None)  # import usearch -> ImportError
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    assert not ann.available()
    idx = EmbeddingIndex(copy, ann="on")
    assert idx.ann is None and "pip install 'mttag[ann]'" in idx.ann_note
    q = queries(1)[0]
    assert rows(idx.search(q, 10)) == rows(idx.search(q, 10, exact=True))
    with pytest.raises(ann.AnnError, match="not installed"):
        ann.build(copy)
    result = runner.invoke(app, ["embed", "-o", str(copy), "--ann", "on"])
    assert result.exit_code == 2 and "--ann on: the ANN library is not installed" in result.output
    result = runner.invoke(app, ["similar", "/music/00001.flac", "-i", str(copy), "--ann", "on", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert "searching exactly" in result.output


def test_cli_builds_and_uses_it(tmp_path, monkeypatch):
    path = tmp_path / "lib.mttag"
    write_index(path, 2000)
    result = runner.invoke(app, ["embed", "-o", str(path)])  # no files and no --ann on: what to type
    assert result.exit_code == 2 and "missing argument 'PATHS...'" in result.output
    result = runner.invoke(app, ["embed", "-o", str(path), "--ann", "on"])
    assert result.exit_code == 0, result.output
    assert "ANN file: built over 2000 tracks" in result.output
    assert json.loads((path / ann.ANN_META).read_text())["count"] == 2000

    import mttag.inference.index

    seen = []
    real = ann.search
    monkeypatch.setattr(mttag.inference.index, "ann_search", lambda *a, **k: seen.append(1) or real(*a, **k))
    args = ["similar", "/music/00042.flac", "-i", str(path), "-k", "5", "-f", "json"]
    on = runner.invoke(app, [*args, "--ann", "on"])
    assert on.exit_code == 0, on.output
    assert seen
    seen.clear()
    off = runner.invoke(app, [*args, "--ann", "off"])
    assert off.exit_code == 0 and not seen
    results = [json.loads(r.stdout)["results"] for r in (on, off)]
    assert [r["path"] for r in results[0]] == [r["path"] for r in results[1]]
    assert all("/music/00042.flac" not in r["path"] for r in results[0])

    write_index(path, 100, seed=9, resume=True, start=2000)
    stale = runner.invoke(app, [*args, "--ann", "on"])
    assert "covers 2000 of 2100 tracks" in stale.output
    result = runner.invoke(app, ["embed", "-o", str(path), "--ann", "on"])
    assert "ANN file: 100 added, 2100 tracks" in result.output


def test_cli_build_only_names_what_is_wrong(tmp_path, copy):
    result = runner.invoke(app, ["embed", "-o", str(tmp_path / "nothing.mttag"), "--ann", "on"])
    assert result.exit_code == 2
    assert "error: --output" in result.output and "no such index" in result.output
    with IndexWriter(copy, MODEL, TAGS, 4, resume=True):
        result = runner.invoke(app, ["embed", "-o", str(copy), "--ann", "on"])
    assert result.exit_code == 2 and "already running" in result.output


def test_embed_builds_it_at_the_end_and_resume_keeps_it_up_to_date(tmp_path, tiny_model_dir):
    from conftest import synth, write_audio

    music = tmp_path / "music"
    for i in range(4):
        write_audio(music / f"{i}.flac", synth(3.0, 22050, 1, "music", freq=220.0 * (i + 1), seed=i), 22050)
    out = tmp_path / "lib.mttag"
    first = [str(music / f"{i}.flac") for i in range(3)]
    result = runner.invoke(app, ["embed", *first, "-o", str(out), "--model", str(tiny_model_dir), "--ann", "on"])
    assert result.exit_code == 0, result.output
    assert "ANN file: built over 3 tracks" in result.output
    # auto, below its size: the existing file is kept up to date all the same
    result = runner.invoke(app, ["embed", str(music), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "ANN file: 1 added, 4 tracks" in result.output
    idx = EmbeddingIndex(out, ann="on")
    assert idx.ann is not None and idx.ann.count == 4 and idx.ann_note is None
    result = runner.invoke(app, ["embed", str(music), "-o", str(out), "--resume", "--ann", "off", "-q"])
    assert result.exit_code == 0 and not result.output


def test_a_damaged_row_the_graph_proposes_is_not_ranked(copy):
    """A row whose vector was scaled on disk (not unit length) scores above 1 against its own
    direction: exact search leaves such rows out, and so must a search through the graph."""
    from mttag.inference.index import VECTORS

    idx = EmbeddingIndex(copy, ann="on")
    query = np.array(idx.vectors[7], dtype=np.float32)
    vectors = np.memmap(copy / VECTORS, dtype="<f4", mode="r+").reshape(len(idx), idx.dim)
    vectors[7] *= 3.0
    vectors.flush()
    del vectors
    idx = EmbeddingIndex(copy, ann="on")
    assert idx.ann is not None
    for exact in (False, True):
        hits = idx.search(query, 10, exact=exact)
        assert 7 not in [h.row for h in hits] and all(h.score <= 1.0 + 1e-3 for h in hits), exact
