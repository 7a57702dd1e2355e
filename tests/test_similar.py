"""``mttag embed`` / ``mttag similar`` and the embedding index (mttag.inference.embedder, mttag.inference.index)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_TAGS, save_tiny_model, synth, write_audio
from typer.testing import CliRunner

import mttag
from mttag.cli import app
from mttag.inference.embedder import Embedder, model_revision, pool
from mttag.inference.index import TRACKS, VECTORS, EmbeddingIndex, EmbeddingIndexError, IndexWriter, playlist_path
from mttag.util.fileio import ExclusiveLock

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    """Six 3 s clips (two timbres, three pitches) in a folder with a sub-folder, plus a bad file."""
    root = tmp_path_factory.mktemp("music") / "My Music"
    for i in range(6):
        kind = "music" if i < 3 else "chirp"
        write_audio(root / ("a" if i % 2 else "b") / f"{i:02d} track.flac", synth(3.0, 22050, 1, kind, seed=i), 22050)
    (root / "b" / "99 broken.wav").write_bytes(b"not audio at all")
    return root


def good_files(music: Path) -> list[Path]:
    return sorted(music.rglob("*.flac"), key=lambda p: p.name)  # 00, 01, ... across the two folders


@pytest.fixture(scope="module")
def index(music, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "library.mttag"
    result = runner.invoke(app, ["embed", str(music), "-o", str(out), "--model", str(tiny_model_dir), "-q"])
    assert result.exit_code == 1, result.output  # the broken file
    return out


# -- pooling and the Python API ----------------------------------------------------------------


def test_pool_is_mean_of_normalised_windows():
    w = np.array([[3.0, 0.0], [0.0, 0.5]])
    v = pool(w)
    assert np.allclose(v, [np.sqrt(0.5), np.sqrt(0.5)])  # each window counts once, whatever its norm
    assert v.dtype == np.float32
    with pytest.raises(ValueError, match="all-zero"):
        pool(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        pool(np.array([[np.nan, 1.0]]))


def test_embed_is_deterministic_and_per_window(music, tiny_model):
    path = good_files(music)[0]
    a = next(mttag.embed(path, model=tiny_model, device="cpu"))
    b = next(mttag.embed(path, model=tiny_model, device="cpu", per_window=True))
    assert a.ok and b.ok
    assert np.array_equal(a.vector, b.vector)  # the same file, the same bytes
    assert a.vector.shape == (64,) and abs(np.linalg.norm(a.vector) - 1) < 1e-5
    assert a.window_vectors is None
    assert b.window_vectors.shape == (2, 64) and len(b.window_times) == 2  # 3 s in 1.5 s windows
    assert np.allclose(np.linalg.norm(b.window_vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(pool(b.window_vectors), b.vector, atol=1e-6)
    assert b.probabilities.shape == (len(TEST_TAGS),)


@pytest.mark.parametrize("arch,preset", [("resnet", "tiny"), ("musicnn", "msd")])
def test_every_architecture_embeds(music, arch, preset):
    """One interface (forward_with_embedding) for every model kind: no per-model code."""
    import torch

    from mttag.models import build_model, make_config

    torch.manual_seed(0)
    net = build_model(make_config(arch, TEST_TAGS, preset)).eval()
    e = Embedder(net, "cpu", windows=1)
    r = next(e.embed_files([good_files(music)[0]]))
    assert r.ok, r.error
    assert r.vector.shape == (e.identity["dim"],)
    assert e.identity["arch"] == arch and e.identity["revision"].startswith("sha256:")


def test_revision_follows_the_weights(tiny_model, tmp_path):
    from mttag.weights.modelfile import load_local_model

    same = load_local_model(save_tiny_model(tmp_path / "again", seed=0))
    other = load_local_model(save_tiny_model(tmp_path / "other", seed=1))
    assert model_revision(same) == model_revision(tiny_model)
    assert model_revision(other) != model_revision(tiny_model)


# -- mttag embed ------------------------------------------------------------------------------------


def test_embed_writes_an_index(index, music, tiny_model):
    idx = EmbeddingIndex(index)
    files = good_files(music)
    assert len(idx) == len(files)
    assert sorted(idx.paths) == sorted(os.path.abspath(p) for p in files)
    assert idx.model["revision"] == model_revision(tiny_model)
    assert idx.dim == 64 and idx.tags == TEST_TAGS
    assert isinstance(idx.vectors, np.memmap)
    assert np.allclose(np.linalg.norm(idx.vectors, axis=1), 1, atol=1e-5)
    # stored vectors are exactly what mttag.embed gives for the file
    row = idx.row_of(files[0])
    direct = next(mttag.embed(files[0], model=tiny_model, device="cpu"))
    assert np.array_equal(idx.vectors[row], direct.vector)
    assert np.allclose(idx.scores[row], direct.probabilities, atol=1e-3)  # float16
    assert idx.durations[row] == pytest.approx(3.0)


def test_embed_twice_gives_identical_bytes(index, music, tiny_model_dir, tmp_path):
    out = tmp_path / "again.mttag"
    assert run("embed", music, "-o", out, "-m", tiny_model_dir, "-q").exit_code == 1
    assert (out / VECTORS).read_bytes() == (index / VECTORS).read_bytes()


def test_existing_index_is_refused_without_resume_or_force(index, music, tiny_model_dir, tmp_path):
    result = run("embed", music, "-o", index, "-m", tiny_model_dir)
    assert result.exit_code == 2
    assert "already holds 6 tracks; add --resume" in result.output
    assert len(EmbeddingIndex(index)) == 6
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "me.jpg").write_bytes(b"\xff\xd8\xff")
    result = run("embed", music, "-o", foreign, "-m", tiny_model_dir, "--force")
    assert result.exit_code == 2 and "is not an mttag index" in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["me.jpg"]


def test_resume_after_interruption_loses_nothing_and_repeats_nothing(music, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "lib.mttag"
    files = good_files(music)
    real = Embedder.embed_files

    def interrupted(self, paths):
        for i, r in enumerate(real(self, paths)):
            if i == 3:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(Embedder, "embed_files", interrupted)
    result = run("embed", *files, "-o", out, "-m", tiny_model_dir)
    assert result.exit_code == 130 and "interrupted" in result.output
    assert len(EmbeddingIndex(out)) == 3
    monkeypatch.setattr(Embedder, "embed_files", real)

    # a kill mid-write leaves half a line and a stray half vector: cut away on the next run
    with open(out / TRACKS, "ab") as f:
        f.write(b'{"row": 3, "path": "/half')
    with open(out / VECTORS, "ab") as f:
        f.write(b"\0" * 100)
    assert len(EmbeddingIndex(out)) == 3  # a reader ignores the tail

    seen = []
    monkeypatch.setattr(Embedder, "embed_files", lambda self, paths: (seen.extend(paths), real(self, paths))[1])
    result = run("embed", *files, "-o", out, "--resume")  # the index's own model
    assert result.exit_code == 0, result.output
    assert "3 tracks already in" in result.output
    assert [Path(p) for p in seen] == files[3:]  # nothing done twice
    idx = EmbeddingIndex(out)
    assert sorted(idx.paths) == sorted(os.path.abspath(p) for p in files)  # nothing lost
    lines = (out / TRACKS).read_text().splitlines()
    assert [json.loads(x)["row"] for x in lines] == list(range(6))
    assert (out / VECTORS).stat().st_size == 6 * 64 * 4
    full = EmbeddingIndex(out)
    for p in files:  # the resumed rows are the vectors a single run gives: windows of
        # consecutive tracks share batches, and on some CPUs (AVX-512 kernels) a window's
        # position in its batch moves the last bits (~3e-8), hence a tolerance, not equality
        one = next(mttag.embed(p, model=str(tiny_model_dir), device="cpu"))
        np.testing.assert_allclose(full.vectors[full.row_of(p)], one.vector, rtol=0, atol=1e-6)


def test_resume_keeps_the_index_windows_unless_given(music, tiny_model_dir, tmp_path):
    """An index made with another --windows (or another default) is continued alike."""
    out = tmp_path / "lib.mttag"
    files = good_files(music)
    assert run("embed", *files[:2], "-o", out, "-m", tiny_model_dir, "--windows", "1", "-q").exit_code == 0
    assert run("embed", *files[2:4], "-o", out, "--resume", "-q").exit_code == 0
    assert run("embed", *files[4:], "-o", out, "--resume", "--windows", "all", "-q").exit_code == 0
    pooled = [json.loads(x)["windows"] for x in (out / TRACKS).read_text().splitlines()]
    assert pooled[:4] == [1, 1, 1, 1]
    assert min(pooled[4:]) > 1  # 3 s clips hold more than one window of the tiny model


def test_summary_says_when_auto_ran_in_bf16(music, tiny_model_dir, tmp_path, monkeypatch):
    from mttag import device

    files = good_files(music)[:1]
    result = run("embed", *files, "-o", tmp_path / "a.mttag", "-m", tiny_model_dir)
    assert result.exit_code == 0 and "on cpu with" in result.output
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    result = run("embed", *files, "-o", tmp_path / "b.mttag", "-m", tiny_model_dir)
    assert result.exit_code == 0 and "on cpu (bf16) with" in result.output


def test_the_ann_decision_takes_the_run_s_count_without_opening_the_index(music, tiny_model_dir, tmp_path, monkeypatch):
    """--ann auto decides by the tracks the index holds: the run's summary has that count,
    so the index (its paths, its vectors) is not opened again just to count them."""
    from mttag.inference import ann
    from mttag.inference import index as embedding

    opened = []
    real = embedding.EmbeddingIndex
    monkeypatch.setattr(embedding, "EmbeddingIndex", lambda *a, **k: opened.append(a) or real(*a, **k))
    monkeypatch.setattr(ann, "AUTO_MIN_TRACKS", 2)
    monkeypatch.setattr(ann, "available", lambda: False)
    result = run("embed", *good_files(music)[:2], "-o", tmp_path / "a.mttag", "-m", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "holds 2 tracks: mttag similar would be faster with an ANN file" in " ".join(result.output.split())
    assert opened == []


def test_auto_builds_no_ann_file_past_the_size_where_its_recall_was_measured(music, tiny_model_dir, tmp_path,
                                                                            monkeypatch):
    """Past AUTO_MAX_TRACKS --ann auto keeps similar exact (the graph's recall falls with size) and
    says how to ask for one; --ann on still builds it, and auto then keeps it up to date."""
    from mttag.inference import ann

    monkeypatch.setattr(ann, "AUTO_MIN_TRACKS", 1)
    monkeypatch.setattr(ann, "AUTO_MAX_TRACKS", 1)
    out = tmp_path / "a.mttag"
    result = run("embed", *good_files(music)[:2], "-o", out, "-m", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "searches it exactly" in " ".join(result.output.split()) and ann.read_meta(out) is None
    if not ann.available():
        return
    result = run("embed", "-o", out, "--resume", "--ann", "on")
    assert result.exit_code == 0 and ann.read_meta(out)["count"] == 2, result.output
    result = run("embed", *good_files(music)[2:3], "-o", out, "--resume", "-m", tiny_model_dir)
    assert result.exit_code == 0 and ann.read_meta(out)["count"] == 3, result.output
    assert mttag.inference.index.EmbeddingIndex(out).ann is not None  # requested: searched through it


def test_auto_neither_updates_nor_searches_its_own_ann_file_past_the_bound(music, tiny_model_dir, tmp_path,
                                                                            monkeypatch):
    """A graph that "auto" built while the index was small is not trusted once the index grows
    past AUTO_MAX_TRACKS (its recall falls with size): similar searches exactly, and the file is
    not updated; --ann on (at build or at query time) still uses it."""
    from mttag.inference import ann
    from mttag.inference.index import EmbeddingIndex

    if not ann.available():
        pytest.skip("usearch is not installed")
    monkeypatch.setattr(ann, "AUTO_MIN_TRACKS", 1)
    monkeypatch.setattr(ann, "AUTO_MAX_TRACKS", 2)
    out = tmp_path / "a.mttag"
    assert run("embed", *good_files(music)[:2], "-o", out, "-m", tiny_model_dir).exit_code == 0
    meta = ann.read_meta(out)
    assert meta["count"] == 2 and meta["requested"] == "auto"
    assert EmbeddingIndex(out).ann is not None
    result = run("embed", *good_files(music)[2:3], "-o", out, "--resume", "-m", tiny_model_dir)
    assert result.exit_code == 0 and "searches it exactly" in " ".join(result.output.split()), result.output
    assert ann.read_meta(out)["count"] == 2  # not updated
    assert EmbeddingIndex(out).ann is None and EmbeddingIndex(out, ann="on").ann is not None
    result = run("embed", "-o", out, "--resume", "--ann", "on")
    assert result.exit_code == 0 and ann.read_meta(out) == {**ann.read_meta(out), "count": 3, "requested": "on"}
    assert "note:" in result.output and "0.93 at 3 M" in " ".join(result.output.split())
    assert EmbeddingIndex(out).ann is not None
    # an up-to-date graph "auto" built, asked for now: only its description changes (a 10 M graph is 3.5 GB)
    (out / ann.ANN_META).write_text(json.dumps({**ann.read_meta(out), "requested": "auto"}))
    graph = (out / ann.ANN_FILE).stat().st_mtime_ns
    assert EmbeddingIndex(out).ann is None
    assert run("embed", "-o", out, "--resume", "--ann", "on", "-q").exit_code == 0
    assert ann.read_meta(out)["requested"] == "on" and (out / ann.ANN_FILE).stat().st_mtime_ns == graph
    assert EmbeddingIndex(out).ann is not None


def test_another_model_is_refused(index, music, tmp_path):
    other = save_tiny_model(tmp_path / "other", seed=1)
    before = (index / VECTORS).read_bytes()
    result = run("embed", music, "-o", index, "-m", other, "--resume")
    assert result.exit_code == 2
    assert "holds embeddings of" in result.output and "cannot be compared" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (index / VECTORS).read_bytes() == before
    query = tmp_path / "new.wav"
    write_audio(query, synth(3.0, 22050, 1, "music", seed=7), 22050)
    result = run("similar", query, "-i", index, "-m", other)
    assert result.exit_code == 2 and "is not the model" in result.output


def test_a_locked_index_is_refused(index, music, tiny_model_dir):
    with ExclusiveLock(index / ".lock", "another mttag embed writing x"):
        result = run("embed", music, "-o", index, "-m", tiny_model_dir, "--resume")
    assert result.exit_code == 2 and "already running" in result.output


# -- search ----------------------------------------------------------------------------------------


def test_search_is_exact_across_chunks(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 1000, 16
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    probs = rng.random((n, 3)).astype(np.float32)
    durations = rng.uniform(60, 400, n)
    model = {"name": "synthetic", "revision": "sha256:0", "dim": dim}
    with IndexWriter(tmp_path / "s.mttag", model, ["a", "b", "c"]) as w:
        w.add_rows([f"/m/{i}.flac" for i in range(n)], durations, vectors, probs)
    idx = EmbeddingIndex(tmp_path / "s.mttag")
    q = rng.standard_normal(dim)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = unit @ (q / np.linalg.norm(q))
    hits = idx.search(q, 25, chunk=97, exclude=[int(np.argmax(cos))])
    assert [h.row for h in hits] == list(np.argsort(-cos)[1:26])
    assert [h.rank for h in hits] == list(range(1, 26))
    assert np.allclose([h.score for h in hits], np.sort(cos)[::-1][1:26], atol=1e-5)
    # filters: tag score (stored as float16) and duration
    p16 = probs.astype(np.float16).astype(np.float32)
    ok = (p16[:, 1] >= 0.5) & (p16[:, 2] >= 0.2) & (durations >= 100) & (durations <= 300)
    hits = idx.search(q, 10, chunk=97, tags=[(1, 0.5), (2, 0.2)], min_duration=100, max_duration=300)
    want = np.flatnonzero(ok)[np.argsort(-cos[ok])][:10]
    assert [h.row for h in hits] == list(want)
    assert idx.search(q, 10, tags=[(0, 2.0)]) == []


def test_similar_by_index_track(index, music):
    files = good_files(music)
    result = run("similar", files[0], "-i", index, "-f", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    paths = [r["path"] for r in doc["results"]]
    assert os.path.abspath(files[0]) not in paths and len(paths) == 5  # the query itself left out
    scores = [r["score"] for r in doc["results"]]
    assert scores == sorted(scores, reverse=True)
    idx = EmbeddingIndex(index)
    q = idx.vectors[idx.row_of(files[0])]
    assert scores[0] == pytest.approx(float(idx.vectors[idx.row_of(paths[0])] @ q), abs=1e-4)

    result = run("similar", files[0], "-i", index, "-f", "csv", "--top", "2", "--include-query")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert rows[0]["path"] == os.path.abspath(files[0]) and float(rows[0]["score"]) == pytest.approx(1, abs=1e-4)

    result = run("similar", files[0], "-i", index)  # table
    assert result.exit_code == 0
    assert "score" in result.stdout and str(files[1].name) in result.stdout


def test_similar_with_an_audio_query_and_filters(index, music, tmp_path):
    idx = EmbeddingIndex(index)
    query = tmp_path / "query.wav"
    write_audio(query, synth(3.0, 22050, 1, "music", seed=0), 22050)  # the same audio as track 00
    result = run("similar", query, "-i", index, "-f", "json", "--top", "3")
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["results"][0]
    assert top["path"] == os.path.abspath(good_files(music)[0]) and top["score"] > 0.999

    column = idx.tag_index("JAZZ")  # matched as tables spell tags
    threshold = float(np.median(idx.scores[:, column].astype(np.float32)))
    result = run("similar", query, "-i", index, "-f", "json", "--tag", "jazz", "--min-score", threshold)
    got = {r["path"] for r in json.loads(result.stdout)["results"]}
    want = {p for p, s in zip(idx.paths, idx.scores[:, column]) if float(s) >= threshold}
    assert got == want and 0 < len(got) < len(idx)

    result = run("similar", query, "-i", index, "--max-duration", 1)
    assert result.exit_code == 1 and "no track" in result.output
    result = run("similar", query, "-i", index, "--tag", "polka")
    assert result.exit_code == 2 and "--tag 'polka': not a tag" in result.output
    result = run("similar", tmp_path / "missing.wav", "-i", index)
    assert result.exit_code == 2 and "no such file, and not a track" in result.output
    result = run("similar", query, "-i", tmp_path / "nowhere.mttag")
    assert result.exit_code == 2 and "no such index" in result.output


def test_playlist_relative_paths_in_similarity_order(index, music, tmp_path):
    files = good_files(music)
    playlist = music / "lists" / "like 00.m3u8"
    result = run("similar", files[0], "-i", index, "-f", "json", "--top", "3", "--playlist", playlist)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["results"]
    lines = playlist.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#EXTM3U"
    entries = lines[2::2]
    assert lines[1] == "#EXTINF:3,00 track"
    assert entries[0] == os.path.join("..", "b", "00 track.flac")  # the query first
    want = [os.path.relpath(h["path"], playlist.parent) for h in hits]
    assert entries[1:] == want and all(not os.path.isabs(e) for e in entries)
    for e in entries:  # every entry opens from the playlist's folder
        assert (playlist.parent / e).is_file()
    # a file that is not a playlist is not replaced
    notes = tmp_path / "notes.m3u8"
    notes.write_text("my notes\n")
    result = run("similar", files[0], "-i", index, "--playlist", notes)
    assert result.exit_code == 2 and "not an M3U playlist" in result.output
    assert notes.read_text() == "my notes\n"


def test_playlist_path_rules():
    assert playlist_path("/music/a/b.flac", "/music/lists") == os.path.join("..", "a", "b.flac")
    assert playlist_path("/mnt/x.flac", "/home/me") == "/mnt/x.flac"  # nothing but / in common


def test_writer_refuses_mismatch_in_python(tmp_path):
    model = {"name": "m", "revision": "sha256:1", "dim": 4}
    with IndexWriter(tmp_path / "p.mttag", model, ["a"]) as w:
        w.add_rows(["/x.wav"], [10.0], np.ones((1, 4)), np.zeros((1, 1)))
    with pytest.raises(EmbeddingIndexError, match="holds embeddings of m"):
        IndexWriter(tmp_path / "p.mttag", {**model, "revision": "sha256:2"}, ["a"], resume=True).open()
    with IndexWriter(tmp_path / "p.mttag", model, ["a"], resume=True) as w:
        assert w.existing == 1 and not w.add_track("/x.wav", 10.0, np.ones(4), np.zeros(1))


def test_damage_only_at_the_end_is_tolerated(tmp_path):
    model = {"name": "m", "revision": "sha256:1", "dim": 2}
    path = tmp_path / "d.mttag"
    with IndexWriter(path, model, ["a"]) as w:
        w.add_rows(["/1.wav", "/2.wav", "/3.wav"], [1, 2, 3], np.eye(3, 2) + 0.1, np.zeros((3, 1)))
    lines = (path / TRACKS).read_bytes().splitlines(keepends=True)
    (path / TRACKS).write_bytes(b"".join(lines[:2]) + b'{"row": 2, "pa\n')  # a last line garbled
    assert EmbeddingIndex(path).paths == ["/1.wav", "/2.wav"]
    (path / TRACKS).write_bytes(lines[0] + b"garbage\n" + lines[2])  # damage in the middle
    with pytest.raises(EmbeddingIndexError, match="line 2 is damaged"):
        EmbeddingIndex(path)


def test_the_commands_load_without_torch():
    """`mttag --help` must not wait for torch: embed and similar import it only when they run."""
    import subprocess
    import sys

    code = "import sys, mttag.cli.embed, mttag.cli.similar; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
