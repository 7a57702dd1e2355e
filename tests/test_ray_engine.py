"""``--engine ray`` on a real Ray started by this module on 127.0.0.1 (2 CPUs): the same
numbers as the single-machine engine, a bad file among good ones, a model actor and a
writer killed mid-run with nothing lost or twice, --resume adding no rows, manifests, and
object-store input and output against moto's S3 server. One cluster for the module: Ray
takes ~10 s to start on two cores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.dataset as pads  # noqa: E402
from conftest import synth, write_audio  # noqa: E402

from mttag.engines import dataset_index, ray_engine  # noqa: E402
from mttag.inference.embedder import Embedder  # noqa: E402
from mttag.inference.index import EmbeddingIndex  # noqa: E402
from mttag.inference.tagging import Tagger  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRACKS = 4


@pytest.fixture(scope="module")
def cluster():
    # Ray gives its GCS ~20 s to come up, then aborts the whole interpreter (a C++ check): on
    # two busy cores that took the test run down with it. 180 s is Ray's own knob for this.
    saved = os.environ.get("RAY_gcs_server_port_wait_time_s")
    os.environ["RAY_gcs_server_port_wait_time_s"] = "180"
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_gcs_server_port_wait_time_s", None)
        else:
            os.environ["RAY_gcs_server_port_wait_time_s"] = saved


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    good = [write_audio(root / "music" / f"t{i}.wav", synth(4.0 + i, sr=22050, seed=i), 22050) for i in range(TRACKS)]
    bad = root / "music" / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 4)
    return root, good, bad


def dataset_rows(folder) -> list[dict]:
    return pads.dataset(str(folder), format="parquet").to_table().to_pylist()


def local_results(model, paths, windows):
    tagger = Tagger(model, "cpu", windows=windows, precision="fp32", model_threads=1)
    return {os.path.abspath(r.path): r for r in tagger.tag_files(paths, top=5)}


def test_same_numbers_as_one_machine_a_bad_file_and_resume(cluster, library, tiny_model, tmp_path):
    root, good, bad = library
    out = tmp_path / "tags.parquet"
    summary = ray_engine.run([root / "music"], out, model=tiny_model, model_name="tiny", windows=None,
                             precision="fp32", rows_per_part=2, tracks_per_call=3, embeddings=True)
    assert (summary.tagged, summary.failed) == (TRACKS, 1)
    rows = dataset_rows(out)
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(os.path.abspath(p) for p in [*good, bad])  # each track once
    by_path = {r["path"]: r for r in rows}
    assert by_path[str(bad)]["error"] and by_path[str(bad)]["scores"] is None

    expected = local_results(tiny_model, good, windows=None)
    worst = 0.0
    for p, r in expected.items():
        row = by_path[p]
        assert row["error"] is None and row["windows"] == r.n_windows > 1
        worst = max(worst, float(np.max(np.abs(np.asarray(row["scores"], np.float32) - r.probabilities))))
        assert [t["tag"] for t in row["tags"]] == [t for t, _ in r.tags]
        assert row["duration"] == pytest.approx(r.duration)
    print(f"ray vs one machine: largest score difference {worst:.3g} over {len(expected)} tracks")
    assert worst <= 1e-4, worst

    # the dataset made into an index (mttag embed --from): the single-machine embedder's vectors
    summary = dataset_index.import_dataset(dataset_index.open_dataset(str(out)), tmp_path / "idx.mttag")
    assert (summary.added, [os.path.basename(p) for p, _ in summary.failed]) == (TRACKS, ["broken.wav"])
    idx = EmbeddingIndex(tmp_path / "idx.mttag")
    local = Embedder(tiny_model, "cpu", windows=None, model_name="tiny")
    worst = max(float(np.max(np.abs(idx.vector(idx.row_of(r.path)) - r.vector))) for r in local.embed_files(good))
    assert idx.model == local.identity and worst <= 1e-4, worst

    # --resume: nothing new, nothing rewritten
    parts = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = ray_engine.run([root / "music"], out, model=tiny_model, model_name="tiny", windows=None,
                           precision="fp32", resume=True)
    assert (again.skipped, again.tagged, again.failed, again.parts) == (TRACKS + 1, 0, 0, [])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == parts
    assert len(dataset_rows(out)) == TRACKS + 1

    # without --resume an existing dataset is refused, not added to
    with pytest.raises(ray_engine.EngineError, match="--resume"):
        ray_engine.run([root / "music"], out, model=tiny_model, windows=None, precision="fp32")


def test_killed_actor_and_writer_lose_nothing_and_write_nothing_twice(cluster, library, tiny_model, tmp_path):
    root, good, bad = library
    out = tmp_path / "ds"
    markers = {"model": str(tmp_path / "model-died"), "write": str(tmp_path / "writer-died")}
    summary = ray_engine.run([root / "music"], out, model=tiny_model, windows=2, precision="fp32",
                             rows_per_part=2, tracks_per_call=2, _faults=markers)
    assert all(os.path.exists(m) for m in markers.values())  # both processes really died
    rows = dataset_rows(out)
    assert len(rows) == TRACKS + 1 == len({r["path"] for r in rows})
    assert summary.tagged + summary.failed == TRACKS + 1
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no half-written part left
    expected = local_results(tiny_model, good, windows=2)
    for r in rows:
        if r["path"] in expected:
            assert np.allclose(r["scores"], expected[r["path"]].probabilities, atol=1e-4)


def test_cli_manifest_embeddings_and_refusals(cluster, library, tiny_model, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from mttag.cli import app

    root, good, bad = library
    manifest = root / "list.txt"
    manifest.write_text("# two tracks and a missing one\nmusic/t0.wav\nmusic/t1.wav\nmusic/gone.wav\n")
    runner = CliRunner()
    out = tmp_path / "emb"
    res = runner.invoke(app, ["embed", str(manifest), "--engine", "ray", "-o", str(out), "-m", str(tiny_model_dir), "-q"])
    assert res.exit_code == 1, res.output  # gone.wav fails; the others are embedded
    rows = {Path(r["path"]).name: r for r in dataset_rows(out)}
    assert set(rows) == {"t0.wav", "t1.wav", "gone.wav"}
    assert "no such file" in rows["gone.wav"]["error"]
    assert np.linalg.norm(rows["t0.wav"]["embedding"]) == pytest.approx(1.0, abs=1e-5)

    # the dataset made into an index for mttag similar, by the model's folder and windows
    from mttag.constants import DEFAULT_WINDOWS

    res = runner.invoke(app, ["embed", "--from", str(out), "-o", str(tmp_path / "idx.mttag"), "-q"])
    assert res.exit_code == 1, res.output  # gone.wav has no vector
    idx = EmbeddingIndex(tmp_path / "idx.mttag")
    assert sorted(Path(p).name for p in idx.paths) == ["t0.wav", "t1.wav"]
    assert idx.model["name"] == str(tiny_model_dir) and idx.manifest["windows"] == DEFAULT_WINDOWS
    # (the vectors are compared with the single-machine engine's in fp32 above: this run's
    # workers may take bf16 on a CPU that has it, which the test process's patch cannot reach)
    assert idx.model["revision"] == Embedder(tiny_model, "cpu", model_name="x").identity["revision"]

    res = runner.invoke(app, ["tag", str(root / "music"), "--engine", "ray", "-o", str(tmp_path / "x"), "--write"])
    assert res.exit_code == 2 and "--write is not available with --engine ray" in res.output
    res = runner.invoke(app, ["tag", str(root / "music"), "--address", "auto", "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "--engine ray" in res.output


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_writes(library, tiny_model_dir, tmp_path):
    """Each run removes the parts it did not report: two runs into one folder would remove
    each other's. The second is refused, as on one machine (same line, exit code 2)."""
    from typer.testing import CliRunner

    from mttag.cli import app
    from mttag.util.fileio import ExclusiveLock

    root, good, bad = library
    out = tmp_path / "busy"
    out.mkdir()
    with ExclusiveLock(out / ray_engine.LOCK_NAME, "the first run", remove=True):  # as the first run's driver holds it
        res = CliRunner().invoke(app, ["tag", str(root / "music"), "--engine", "ray", "-o", str(out),
                                       "-m", str(tiny_model_dir), "-q"])
    assert res.exit_code == 2, res.output
    assert f"another mttag tag writing {out} is already running (pid {os.getpid()}" in " ".join(res.output.split())
    assert list(out.iterdir()) == []  # nothing written, the lock file gone with its holder


def test_resume_lists_the_folder_once_and_opens_each_part_once(tmp_path):
    from collections import Counter

    from pyarrow import fs as pafs

    from mttag.inference import parquet

    local, tags = pafs.LocalFileSystem(), ["rock", "jazz"]
    for i in range(3):
        parquet.write_part(local, str(tmp_path), [{"path": f"/m/{i}.wav", "model": "m", "duration": 1.0, "windows": 1,
                                                   "tags": [], "scores": [0.1, 0.2], "embedding": None, "error": None}],
                           tags, "m")

    class Counting:  # the output's filesystem, counting what the run asks of it
        calls: Counter = Counter()

        def __getattr__(self, name):
            method = getattr(local, name)

            def counted(*args, **kwargs):
                self.calls[name] += 1
                return method(*args, **kwargs)

            return counted

    fs = Counting()
    parts, done = ray_engine._existing(fs, str(tmp_path), True, tags, "out")
    assert len(parts) == 3 and done == {"/m/0.wav", "/m/1.wav", "/m/2.wav"}
    assert (fs.calls["get_file_info"], fs.calls["open_input_file"]) == (1, 3)


@pytest.mark.parametrize("cpus, gpus, actors, expected", [
    (2, 0, None, (1, 0.0, 1.0, 1, 1.0)),
    (2, 0, 2, (1, 0.0, 1.0, 1, 1.0)),  # two actors on two cores would leave decoding none
    (1, 0, None, (1, 0.0, 0.5, 1, 0.5)),
    (16, 0, None, (8, 0.0, 1.0, 1, 1.0)),
    (16, 2, None, (2, 1.0, 1.0, 1, 1.0)),
])
def test_the_cluster_plan_always_leaves_cores_for_decoding(cpus, gpus, actors, expected):
    class FakeRay:
        @staticmethod
        def cluster_resources():
            return {"CPU": float(cpus), "GPU": float(gpus)}

    assert ray_engine._cluster_plan(FakeRay, "auto", actors, None) == expected


def test_uris_survive_the_command_line(tmp_path):
    from mttag.cli._ray import as_source

    # typer hands PATHS over as Path objects, which fold the double slash of a URI
    assert as_source(Path("s3://bucket/music")) == "s3://bucket/music"
    assert as_source(Path("gs://b/x.mp3")) == "gs://b/x.mp3"
    local = tmp_path / "a:" / "b"
    local.mkdir(parents=True)
    assert as_source(local) == str(local)


def test_object_store_in_and_out(cluster, library, tiny_model, s3, tmp_path):
    from pyarrow import fs as pafs

    root, good, bad = library
    for p in good[:2]:
        s3.upload_file(str(p), "catalogue", f"in/{p.name}")
    s3.put_object(Bucket="catalogue", Key="in/deep/broken.wav", Body=bad.read_bytes())
    summary = ray_engine.run(["s3://catalogue/in"], "s3://catalogue/out/tags", model=tiny_model, windows=None,
                             precision="fp32")
    assert (summary.tagged, summary.failed) == (2, 1)
    fs, _ = pafs.FileSystem.from_uri("s3://catalogue/out/tags")
    rows = pads.dataset("catalogue/out/tags", filesystem=fs, format="parquet").to_table().to_pylist()
    by_path = {r["path"]: r for r in rows}
    assert set(by_path) == {"s3://catalogue/in/t0.wav", "s3://catalogue/in/t1.wav", "s3://catalogue/in/deep/broken.wav"}
    assert by_path["s3://catalogue/in/deep/broken.wav"]["error"]
    expected = local_results(tiny_model, good[:2], windows=None)
    for p in good[:2]:
        got = np.asarray(by_path[f"s3://catalogue/in/{p.name}"]["scores"], np.float32)
        assert np.max(np.abs(got - expected[os.path.abspath(p)].probabilities)) <= 1e-4


def test_usearch_loaded_before_ray_is_one_line_not_an_abort(monkeypatch):
    """usearch's native library loaded before Ray's makes ray.init() abort the process
    (std::regex_error): the engine refuses that order instead of starting Ray."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "usearch.compiled", types.ModuleType("usearch.compiled"))
    monkeypatch.delitem(sys.modules, "ray._raylet", raising=False)
    with pytest.raises(ray_engine.EngineError, match="usearch"):
        ray_engine._ray()


def test_embed_on_ray_without_paths_is_one_line():
    """PATHS is optional for `mttag embed --ann on` alone; the Ray engine has no such use."""
    from typer.testing import CliRunner

    from mttag.cli import app

    res = CliRunner().invoke(app, ["embed", "--engine", "ray", "-o", "x"])
    assert res.exit_code == 2 and "missing argument 'PATHS...'" in res.output and res.exception is None or \
        isinstance(res.exception, SystemExit)


def test_a_failed_object_store_copy_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A read that fails part-way (network, missing object): __exit__ never runs for a failed
    __enter__, so the partial copy used to stay in the temp folder, once per failed track."""
    import tempfile

    from mttag.engines import sources

    class Broken:
        def read(self, n):
            raise OSError("connection reset")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class FS:
        def open_input_stream(self, inner):
            return Broken()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(OSError, match="connection reset"):
        with sources.LocalCopy("s3://bucket/a.flac", {"s3://bucket": FS()}):
            pass
    assert list(tmp_path.iterdir()) == []
