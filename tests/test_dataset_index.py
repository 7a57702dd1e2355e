"""``mttag embed --from DATASET -o INDEX`` (mttag.engines.dataset_index): a Parquet dataset of
embeddings, as ``mttag embed --engine ray`` writes it, made into an index that ``mttag similar``
searches. The datasets are written with the engine's own part writer and description from
real embeddings of real audio; no Ray is started here (tests/test_ray_engine.py runs the
whole way through a cluster)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import synth, write_audio
from typer.testing import CliRunner

pa = pytest.importorskip("pyarrow")

from mttag.cli import app  # noqa: E402
from mttag.engines import dataset_index  # noqa: E402
from mttag.engines.ray_engine import _embedding_description  # noqa: E402
from mttag.inference.embedder import Embedder  # noqa: E402
from mttag.inference.index import EmbeddingIndex  # noqa: E402
from mttag.inference.parquet import write_part  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
WINDOWS = 2


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tracks(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("music")
    return [write_audio(root / f"{i:02d} track.flac", synth(3.0 + i % 3, 22050, 1, "music" if i < 3 else "chirp", seed=i),
                        22050) for i in range(6)]


@pytest.fixture(scope="module")
def embedded(tracks, tiny_model):
    return list(Embedder(tiny_model, "cpu", windows=WINDOWS, model_name="tiny").embed_files(tracks))


def row(result, path: str | None = None, **changes) -> dict:
    out = {"path": path or os.path.abspath(result.path), "model": "tiny", "duration": result.duration,
           "windows": result.windows, "tags": [], "scores": [float(p) for p in result.probabilities],
           "embedding": [float(v) for v in result.vector], "error": None}
    out.update(changes)
    return out


@pytest.fixture(scope="module")
def described(tiny_model, tiny_model_dir):
    """What the Ray engine writes into each part for the tiny model loaded from its folder."""
    return _embedding_description(tiny_model, tiny_model_dir, None, WINDOWS)


def write_dataset(folder: Path, parts: list[list[dict]], model, description) -> Path:
    from pyarrow import fs as pafs

    folder.mkdir(parents=True, exist_ok=True)
    for rows in parts:
        write_part(pafs.LocalFileSystem(), str(folder), rows, list(model.config.tags), "tiny", description)
    return folder


def test_the_index_of_a_dataset_is_the_index_of_its_audio(embedded, tracks, tiny_model, tiny_model_dir, described,
                                                          tmp_path):
    """The same rows, vectors and scores as `mttag embed` of the same files; failed rows and
    tracks written twice (two overlapping runs into one object-store prefix) left out."""
    broken = row(embedded[0], path=str(tmp_path / "broken.mp3"), duration=None, windows=0, scores=None,
                 embedding=None, error="not an audio file")
    ds = write_dataset(tmp_path / "ds", [[row(r) for r in embedded[:4]] + [broken], [row(embedded[3]), row(embedded[4]), row(embedded[4])],
                                         [row(embedded[5])]], tiny_model, described)
    res = run("embed", "--from", ds, "-o", tmp_path / "from.mttag")
    assert res.exit_code == 1, res.output  # a track without a vector, as mttag embed exits for a failed file
    assert "broken.mp3: no vector (not an audio file)" in res.output
    assert "6 tracks imported" in res.output and "2 already in it" in res.output

    assert run("embed", *tracks, "-m", tiny_model_dir, "-o", tmp_path / "audio.mttag", "-w", WINDOWS, "-q").exit_code == 0
    got, want = EmbeddingIndex(tmp_path / "from.mttag"), EmbeddingIndex(tmp_path / "audio.mttag")
    assert sorted(got.paths) == sorted(want.paths) and len(got) == 6
    assert got.model["revision"] == want.model["revision"] and got.manifest["windows"] == WINDOWS
    order = [got.row_of(p) for p in want.paths]
    assert np.max(np.abs(np.asarray(got.vectors)[order] - np.asarray(want.vectors))) <= 1e-6
    assert np.max(np.abs(np.asarray(got.scores, np.float32)[order] - np.asarray(want.scores, np.float32))) <= 1e-3
    assert np.allclose(got.durations[order], want.durations, atol=1e-3)

    # mttag similar: a track of the index, and an audio file embedded with the index's model
    res = run("similar", tracks[1], "--index", tmp_path / "from.mttag", "-k", 3, "-f", "csv")
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 4, res.output
    copy = tmp_path / "query.flac"
    copy.write_bytes(tracks[1].read_bytes())
    res = run("similar", copy, "--index", tmp_path / "from.mttag", "-k", 1, "-f", "csv")
    assert res.exit_code == 0 and f"1,1.0000,{embedded[1].duration}," in res.output, res.output

    # --resume adds what is new, nothing twice; without it an index that holds tracks is refused
    more = write_dataset(tmp_path / "more", [[row(embedded[0]), row(embedded[1], path=str(tmp_path / "new.flac"))]],
                         tiny_model, described)
    assert run("embed", "--from", more, "-o", tmp_path / "from.mttag", "--resume", "-q").exit_code == 0
    assert len(EmbeddingIndex(tmp_path / "from.mttag")) == 7
    res = run("embed", "--from", more, "-o", tmp_path / "from.mttag")
    assert res.exit_code == 2 and "--resume" in res.output


def test_rows_that_cannot_be_vectors_are_counted_never_indexed(embedded, tiny_model, described, tmp_path):
    dim = len(embedded[0].vector)
    bad = [
        row(embedded[0], path="/m/nan.flac", embedding=[float("nan")] * dim),
        row(embedded[0], path="/m/zero.flac", embedding=[0.0] * dim),
        row(embedded[0], path="/m/short.flac", embedding=[0.5] * (dim - 1)),
        row(embedded[0], path="/m/noscores.flac", scores=None),
        row(embedded[0], path="/m/tagonly.flac", embedding=None),  # a row of `mttag tag --engine ray`
    ]
    ds = write_dataset(tmp_path / "ds", [bad + [row(embedded[1])]], tiny_model, described)
    summary = dataset_index.import_dataset(dataset_index.open_dataset(str(ds)), tmp_path / "i.mttag")
    assert (summary.added, summary.stored, summary.rows) == (1, 1, 6)
    assert sorted(p for p, _ in summary.failed) == sorted(r["path"] for r in bad)
    idx = EmbeddingIndex(tmp_path / "i.mttag")
    assert idx.paths == [os.path.abspath(embedded[1].path)]
    assert abs(float(np.linalg.norm(idx.vectors[0])) - 1) < 1e-5


def test_refusals_write_nothing(embedded, tiny_model, described, tmp_path):
    good = [row(r) for r in embedded[:2]]
    # a dataset of tags only (mttag tag --engine ray): no embedding description
    tags_only = tmp_path / "tags"
    tags_only.mkdir()
    from pyarrow import fs as pafs

    write_part(pafs.LocalFileSystem(), str(tags_only), good, list(tiny_model.config.tags), "tiny")
    res = run("embed", "--from", tags_only, "-o", tmp_path / "a.mttag")
    assert res.exit_code == 2 and "holds no embeddings" in res.output, res.output

    # parts of two models (or windows) cannot be one index
    mixed = write_dataset(tmp_path / "mixed", [good[:1]], tiny_model, described)
    other = {**described, "windows": WINDOWS + 1}
    write_dataset(mixed, [good[1:]], tiny_model, other)
    res = run("embed", "--from", mixed, "-o", tmp_path / "b.mttag")
    assert res.exit_code == 2 and "another model, vocabulary or --windows" in res.output, res.output

    # a description that would make a damaged manifest (the dataset comes from elsewhere)
    model = described["model"]
    for forged in ({**described, "windows": "abc"}, {**described, "windows": 0},
                   {**described, "model": {**model, "dim": True}}, {**described, "model": {**model, "name": 5}},
                   {**described, "model": {k: v for k, v in model.items() if k != "revision"}}):
        forged_ds = write_dataset(tmp_path / "forged", [good], tiny_model, forged)
        res = run("embed", "--from", forged_ds, "-o", tmp_path / "f.mttag")
        assert res.exit_code == 2 and "describes its embeddings wrongly" in res.output, (forged, res.output)
        assert len(res.output.strip().splitlines()) == 1
        shutil.rmtree(forged_ds)

    # not there, not a dataset, a damaged part
    res = run("embed", "--from", tmp_path / "nowhere", "-o", tmp_path / "c.mttag")
    assert res.exit_code == 2 and "no such file or folder" in res.output
    (tmp_path / "empty").mkdir()
    res = run("embed", "--from", tmp_path / "empty", "-o", tmp_path / "c.mttag")
    assert res.exit_code == 2 and "holds no part-*.parquet" in res.output
    damaged = write_dataset(tmp_path / "damaged", [good], tiny_model, described)
    part = next(damaged.iterdir())
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    res = run("embed", "--from", damaged, "-o", tmp_path / "c.mttag")
    assert res.exit_code == 2 and "cannot read it" in res.output and part.name in res.output, res.output

    # options that would make embeddings, when they are made already
    ds = write_dataset(tmp_path / "ds", [good], tiny_model, described)
    for extra in (["-m", "tiny"], ["-w", "3"], [embedded[0].path], ["--engine", "ray"]):
        res = run("embed", "--from", ds, "-o", tmp_path / "d.mttag", *extra)
        assert res.exit_code == 2, (extra, res.output)
    assert not any((tmp_path / n).exists() for n in ("a.mttag", "b.mttag", "c.mttag", "d.mttag", "f.mttag"))


def test_a_cluster_resume_refuses_embeddings_of_another_model_or_windows(embedded, tiny_model, described, tmp_path):
    """`mttag embed --engine ray --resume` into a dataset whose parts another model (or other
    --windows) embedded: refused before any track is read, as that dataset could not become
    one index."""
    from pyarrow import fs as pafs

    from mttag.engines.ray_engine import EngineError, _existing

    ds = write_dataset(tmp_path / "ds", [[row(embedded[0])]], tiny_model, described)
    tags = list(tiny_model.config.tags)
    assert _existing(pafs.LocalFileSystem(), str(ds), True, tags, "ds", described)[1] == {row(embedded[0])["path"]}
    for other in ({**described, "windows": WINDOWS + 1}, {**described, "model": {**described["model"], "revision": "x"}}):
        with pytest.raises(EngineError, match="embeddings were made by another model or with other windows"):
            _existing(pafs.LocalFileSystem(), str(ds), True, tags, "ds", other)


def test_an_interrupted_import_keeps_what_it_added_and_resume_finishes(embedded, tiny_model, described, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(dataset_index, "BATCH_ROWS", 2)
    ds = write_dataset(tmp_path / "ds", [[row(r) for r in embedded]], tiny_model, described)
    dataset = dataset_index.open_dataset(str(ds))
    assert dataset.rows == 6

    def stop(summary, total):
        if summary.rows >= 4:
            raise KeyboardInterrupt

    first = dataset_index.import_dataset(dataset, tmp_path / "i.mttag", progress=stop)
    assert first.interrupted and first.stored == 4
    assert len(EmbeddingIndex(tmp_path / "i.mttag")) == 4
    rest = dataset_index.import_dataset(dataset, tmp_path / "i.mttag", resume=True)
    assert (rest.added, rest.already, rest.stored) == (2, 4, 6)
    idx = EmbeddingIndex(tmp_path / "i.mttag")
    assert sorted(idx.paths) == sorted(os.path.abspath(r.path) for r in embedded)


def test_a_catalogue_on_object_storage(embedded, tiny_model, described, s3, tmp_path):
    """A dataset under s3:// (moto's server on 127.0.0.1) whose tracks are s3:// URIs: the index
    keeps the URIs, and `mttag similar` takes one as the query."""
    from pyarrow import fs as pafs

    rows = [row(r, path=f"s3://catalogue/music/{Path(r.path).name}") for r in embedded[:4]]
    fs, folder = pafs.FileSystem.from_uri("s3://catalogue/emb")
    write_part(fs, folder, rows, list(tiny_model.config.tags), "tiny", described)
    res = run("embed", "--from", "s3://catalogue/emb", "-o", tmp_path / "cat.mttag")
    assert res.exit_code == 0, res.output
    idx = EmbeddingIndex(tmp_path / "cat.mttag")
    assert sorted(idx.paths) == sorted(r["path"] for r in rows)
    query = rows[2]["path"]
    res = run("similar", query, "--index", tmp_path / "cat.mttag", "-k", 2, "-f", "json")
    assert res.exit_code == 0, res.output
    assert query not in res.output.split('"results"')[1] and '"s3://catalogue/music/' in res.output
