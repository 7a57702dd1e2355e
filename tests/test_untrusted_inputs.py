"""Input that cannot be trusted (issue 36): lengths that headers claim, index files, file names
with escape sequences, folders nested deeper than Python recurses, and JSON nested as deep.

Each case failed before with a traceback, a hang, silently wrong results or memory growing
until the kernel killed the process; each must now give a correct result or one clear line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import finishes, synth, write_audio
from typer.testing import CliRunner

from mttag.audio import decode as audio
from mttag.audio.files import iter_audio_files
from mttag.audio.windows import window_starts
from mttag.cli import app
from mttag.inference import index as embedding
from mttag.inference.index import MANIFEST, TRACKS, VECTORS, EmbeddingIndex, EmbeddingIndexError, IndexWriter
from mttag.inference.output import ResultWriter

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
posix_only = pytest.mark.skipif(os.name != "posix", reason="FIFOs, RLIMIT_AS and raw bytes in names are POSIX")


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line(text: str, *words: str) -> str:
    """The last non-empty line of ``text``, checked: an error line holding every word, no traceback."""
    assert "Traceback" not in text, text
    line = [s for s in text.splitlines() if s.strip()][-1]
    assert all(w in line for w in words), text
    return line


def mttag(*args, memory_mb: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m mttag ARGS`` in a subprocess (stdout a pipe), under an address-space limit."""
    code = "import runpy, sys\n"
    if memory_mb:
        code += f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({memory_mb << 20}, {memory_mb << 20}))\n"
    code += "sys.argv = ['mttag', *sys.argv[1:]]\nrunpy.run_module('mttag', run_name='__main__')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, timeout=timeout,
                          env=env, cwd=str(ROOT))


# -- lengths a header claims ---------------------------------------------------------------


def piped_flac(source: Path, out: Path) -> Path:
    """``source`` (a FLAC) as ``ffmpeg ... -f flac - > out`` leaves it: STREAMINFO's total
    samples (the low 36 bits of the 8 bytes at offset 18) zero, "unknown"."""
    data = bytearray(source.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    packed = int.from_bytes(data[18:26], "big")
    data[18:26] = (packed & ~((1 << 36) - 1)).to_bytes(8, "big")
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def flacs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("piped")
    good = write_audio(folder / "good.flac", synth(25.0, 22050, 1, "music", seed=3), 22050)
    return good, piped_flac(good, folder / "piped.flac")


def test_a_piped_flac_claims_2_63_frames_and_its_real_length_is_measured(flacs):
    import soundfile as sf

    good, piped = flacs
    assert sf.info(str(piped)).frames > 10**18  # what libsndfile reports: the case itself
    if not audio.ffmpeg_available():
        with pytest.raises(audio.AudioError) as exc:
            audio.probe(piped)
        assert "install ffmpeg" in str(exc.value) and "\n" not in str(exc.value)
        return
    info = audio.probe(piped)
    assert info.frames == audio.probe(good).frames == 25 * 22050
    assert np.array_equal(audio.load_audio(piped, 16000), audio.load_audio(good, 16000))
    assert np.array_equal(audio.read_segment(info, 12.3, 5.0, 16000),
                          audio.read_segment(audio.probe(good), 12.3, 5.0, 16000))


@posix_only
def test_a_piped_flac_is_tagged_and_embedded_in_bounded_memory(flacs, tiny_model_dir, tmp_path):
    """Before: window_starts built ~7e13 starts and tag/embed grew to 21.7 GB (here, under
    a 1.5 GB address-space limit: MemoryError for that track)."""
    good, piped = flacs
    tagged = mttag("tag", good, piped, "-m", tiny_model_dir, "-f", "json", "--device", "cpu", "-q", memory_mb=1536)
    if not audio.ffmpeg_available():
        assert tagged.returncode == 1
        one_line(tagged.stderr.decode(), str(piped), "install ffmpeg")
        return
    assert tagged.returncode == 0, tagged.stderr.decode()
    a, b = json.loads(tagged.stdout)
    assert b["path"].endswith("piped.flac") and "error" not in b
    assert a["duration"] == b["duration"] == 25.0 and a["tags"] == b["tags"]
    index = tmp_path / "lib.mttag"
    embedded = mttag("embed", good, piped, "-o", index, "-m", tiny_model_dir, "--device", "cpu", "-q", memory_mb=1536)
    assert embedded.returncode == 0, embedded.stderr.decode()
    idx = EmbeddingIndex(index)
    assert len(idx) == 2 and list(idx.durations) == [25.0, 25.0]
    assert np.allclose(idx.vectors[0], idx.vectors[1], atol=1e-6)


@pytest.mark.skipif(not audio.ffmpeg_available(), reason="needs ffmpeg")
def test_a_stream_without_duration_is_measured_not_refused(flacs, tmp_path):
    """ffmpeg writing Matroska to a pipe leaves no duration: refused before as "unknown duration"."""
    good, _ = flacs
    piped = tmp_path / "piped.mka"
    with open(piped, "wb") as out:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(good), "-c:a", "flac", "-f", "matroska", "-"],
                       stdout=out, check=True, timeout=60)
    info = audio.probe(piped)
    assert info.backend == "ffmpeg" and info.frames == 25 * 22050
    assert np.allclose(audio.load_audio(piped, 16000), audio.load_audio(good, 16000), atol=1e-3)


def test_lengths_no_file_of_that_size_could_hold_are_not_believed():
    assert audio.plausible_length(44100 * 3600, 44100, 30_000_000, "FLAC")  # an hour in 30 MB
    assert audio.plausible_length(44100 * 600, 44100, 5_000_000, "MP3")
    assert not audio.plausible_length(2**63 - 1, 22050, 400_000, "FLAC")  # the piped FLAC
    assert not audio.plausible_length(10**9, 44100, 100_000, "MP3")  # a Xing count that lies
    assert not audio.plausible_length(10**6, 1, 1_000, "FLAC")  # 11 days claimed at 1 Hz from 1 kB
    assert not audio.plausible_length(math.inf, 44100, 10**9)
    assert not audio.plausible_length(math.nan, 44100, 10**9)


def test_a_bounded_window_plan_is_computed_without_the_whole_grid():
    """``--windows 20`` on a track claiming 2**63 frames planned every grid window first."""
    starts = finishes(lambda: window_starts(4e14, 10.0, 20), timeout=5)
    assert len(starts) == 20 and starts[0] < starts[-1] < 4e14


# -- folders deeper than Python recurses ---------------------------------------------------


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A track 1,100 folders down (Python's recursion limit is 1,000). Made and removed a
    level at a time: os.makedirs, Path.mkdir(parents=True) and shutil.rmtree recurse per level."""
    root = tmp_path_factory.mktemp("deep")
    folders = [str(root)]
    track = root.joinpath(*["d"] * 1100, "deep.wav")
    try:
        for _ in range(1100):
            folders.append(os.path.join(folders[-1], "d"))
            os.mkdir(folders[-1])
        # written at a short path and moved: libsndfile refuses to open a path over ~1 kB
        os.rename(write_audio(root / "deep.wav", synth(3.0, 22050, 1, "music", seed=1), 22050), track)
        write_audio(root / "top.wav", synth(3.0, 22050, 1, "music", seed=2), 22050)
        yield root, track
    finally:  # always: pytest's own clean-up of old temporary folders would hit RecursionError
        track.unlink(missing_ok=True)
        for folder in reversed(folders[1:]):
            os.rmdir(folder)


def test_a_folder_1100_deep_is_searched_without_recursion(deep):
    root, track = deep
    assert list(iter_audio_files([root])) == [root / "top.wav", track]


def test_tag_and_embed_a_folder_1100_deep(deep, tiny_model_dir, tmp_path):
    root, track = deep
    result = run("tag", root, "-m", tiny_model_dir, "-f", "jsonl", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert paths == [str(root / "top.wav"), str(track)]
    result = run("embed", root, "-o", tmp_path / "deep.mttag", "-m", tiny_model_dir, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert len(EmbeddingIndex(tmp_path / "deep.mttag")) == 2


def test_walk_order_and_loops_are_as_os_walk_gave(tmp_path):
    for name in ("b/y", "a/x", "a/w"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("z.wav", "b/y/2.flac", "a/1.mp3", "a/x/3.ogg", "a/w/4.wav"):
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "x" / "loop")  # a link back to the top
    expected = []
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        dirnames.sort()
        expected += [Path(dirpath) / f for f in sorted(filenames)]
    assert list(iter_audio_files([tmp_path])) == expected


# -- escape sequences in file names and index paths ----------------------------------------

ESC_NAME = "evil \x1b]0;owned\x07\x1b[2J \x9b31m.wav"


@pytest.fixture(scope="module")
def evil(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path, Path]:
    """A track whose name holds escape sequences (OSC retitle, clear screen, C1 CSI), another
    good one, and an index of both."""
    folder = tmp_path_factory.mktemp("evil")
    bad = write_audio(folder / ESC_NAME, synth(3.0, 22050, 1, "music", seed=4), 22050)
    good = write_audio(folder / "good.wav", synth(3.0, 22050, 1, "chirp", seed=5), 22050)
    index = folder / "lib.mttag"
    assert run("embed", folder, "-o", index, "-m", tiny_model_dir, "--device", "cpu", "-q").exit_code == 0
    return bad, good, index


def no_controls(text: str) -> None:
    assert not any(ord(c) < 32 and c not in "\n\t" or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)


@posix_only
def test_tag_csv_on_a_pipe_shows_escape_sequences_escaped(evil, tiny_model_dir):
    bad, good, _ = evil
    result = mttag("tag", bad, good, "-m", tiny_model_dir, "-f", "csv", "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    no_controls(text)
    assert next(csv.DictReader(io.StringIO(text)))["path"] == str(bad.parent / "evil \\x1b]0;owned\\x07\\x1b[2J \\x9b31m.wav")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_escapes_the_controls_json_leaves_raw_and_reads_back_exactly(fmt):
    """JSON escapes C0 controls itself, but wrote DEL, C1 (U+009B: CSI) and bidi overrides raw."""
    name = "/m/a\x1b[2J\x7f\x9b31m\u202eb.wav"
    out = io.StringIO()
    writer = ResultWriter(out, fmt)
    writer.write_record({"path": name, "model": "m", "duration": 3.0, "tags": [{"tag": "r\x9bock", "score": 0.5}]})
    writer.close()
    no_controls(out.getvalue())
    assert "\u202e" not in out.getvalue()
    record = json.loads(out.getvalue())[0] if fmt == "json" else json.loads(out.getvalue())
    assert record["path"] == name and record["tags"][0]["tag"] == "r\x9bock"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_tag_output_to_a_file_keeps_the_exact_path(evil, tiny_model_dir, tmp_path, fmt):
    """A results file is no terminal: --resume finds the track by its exact name."""
    bad, good, _ = evil
    out = tmp_path / f"tags.{fmt}"
    assert run("tag", bad, good, "-m", tiny_model_dir, "-o", out, "--device", "cpu", "-q").exit_code == 0
    text = out.read_text(encoding="utf-8")
    if fmt == "csv":
        assert next(csv.DictReader(io.StringIO(text)))["path"] == str(bad)
    else:  # JSON escapes control characters its own way, which reads back exactly
        assert json.loads(text)[0]["path"] == str(bad)
    result = run("tag", bad, good, "-m", tiny_model_dir, "-o", out, "--resume", "--device", "cpu")
    assert result.exit_code == 0 and "2 tracks already tagged" in result.output, result.output


def test_result_writer_escapes_csv_cells_only_when_asked_or_not_a_file():
    record = {"path": "/m/a\x1b[2Jb.wav", "model": "m", "duration": 3.0,
              "tags": [{"tag": "r\x9bock", "score": 0.5}]}
    exact, shown = io.StringIO(), io.StringIO()
    ResultWriter(exact, "csv").write_record(record)  # no file descriptor: kept exact, as a file
    ResultWriter(shown, "csv", escape=True).write_record(record)
    assert "/m/a\x1b[2Jb.wav" in exact.getvalue()
    assert list(csv.reader(io.StringIO(shown.getvalue())))[1][:4] == ["/m/a\\x1b[2Jb.wav", "m", "3.0", "r\\x9bock"]


@posix_only
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_similar_output_on_a_pipe_shows_escape_sequences_escaped(evil, fmt):
    bad, good, index = evil
    result = mttag("similar", good, "-i", index, "-f", fmt)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    no_controls(text)
    assert "owned" in text
    if fmt == "json":
        assert json.loads(text)["results"][0]["path"] == str(bad)


# -- index files -----------------------------------------------------------------------------


def make_index(path: Path, n: int = 3, dim: int = 4) -> Path:
    model = {"name": "m", "revision": "sha256:1", "dim": dim}
    rng = np.random.default_rng(0)
    with IndexWriter(path, model, ["rock", "jazz"]) as w:
        w.add_rows([f"/music/{i}.wav" for i in range(n)], [60.0 + i for i in range(n)],
                   rng.normal(size=(n, dim)), rng.uniform(size=(n, 2)))
    return path


def edit_manifest(path: Path, **changes) -> None:
    data = json.loads((path / MANIFEST).read_text())
    for key, value in changes.items():
        if key == "model_name":
            data["model"]["name"] = value
        else:
            data[key] = value
    (path / MANIFEST).write_text(json.dumps(data))


def similar_error(index: Path, query: str = "/music/0.wav") -> str:
    result = run("similar", query, "-i", index, "-f", "json")
    assert result.exit_code in (1, 2), result.output
    return one_line(result.output, str(index))


@posix_only
@pytest.mark.parametrize("name", [TRACKS, VECTORS, MANIFEST])
def test_an_index_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path, name):
    index = make_index(tmp_path / "fifo.mttag")
    (index / name).unlink()
    os.mkfifo(index / name)
    with pytest.raises(EmbeddingIndexError) as exc:
        finishes(lambda: EmbeddingIndex(index), timeout=10)
    assert f"{name} is a FIFO" in str(exc.value) and "\n" not in str(exc.value)
    assert "FIFO" in finishes(lambda: similar_error(index), timeout=20)


def test_vectors_as_a_folder_is_one_line(tmp_path):
    index = make_index(tmp_path / "dir.mttag")
    (index / VECTORS).unlink()
    (index / VECTORS).mkdir()
    assert "vectors.f32 is a folder" in similar_error(index)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "-5"])
def test_a_duration_that_is_no_length_is_damage(tmp_path, value):
    index = make_index(tmp_path / "nan.mttag")
    lines = (index / TRACKS).read_bytes().splitlines(keepends=True)
    bad = [line.replace(b'"duration": 6%d.0' % i, b'"duration": ' + value.encode()) for i, line in enumerate(lines)]
    assert bad[1] != lines[1]
    (index / TRACKS).write_bytes(lines[0] + bad[1] + lines[2])
    assert "tracks.jsonl line 2 is damaged" in similar_error(index)
    (index / TRACKS).write_bytes(lines[0] + lines[1] + bad[2])  # damage on the last line only: dropped
    assert EmbeddingIndex(index).paths == ["/music/0.wav", "/music/1.wav"]


@pytest.mark.parametrize("damage", ["nan", "zero"])
def test_a_damaged_vector_is_left_out_and_refused_as_a_query(tmp_path, damage):
    index = make_index(tmp_path / "vec.mttag", n=4)
    vectors = np.fromfile(index / VECTORS, dtype="<f4").reshape(4, 4)
    vectors[2] = np.nan if damage == "nan" else 0.0
    vectors.tofile(index / VECTORS)
    result = run("similar", "/music/0.wav", "-i", index, "-f", "json")
    assert result.exit_code == 0, result.output
    assert [h["path"] for h in json.loads(result.stdout)["results"]] != []
    assert "/music/2.wav" not in result.stdout and "NaN" not in result.stdout
    assert "(row 2) is damaged" in similar_error(index, "/music/2.wav")


@pytest.mark.parametrize("changes, words", [
    ({"windows": "abc"}, "windows is"),
    ({"windows": 0}, "windows is"),
    ({"windows": True}, "windows is"),
    ({"model_name": 123}, "name is not text"),
    ({"dim": True}, "dim"),
])
def test_manifest_fields_of_the_wrong_type_are_one_line(tmp_path, changes, words):
    index = make_index(tmp_path / "m.mttag")
    edit_manifest(index, **changes)
    assert words in similar_error(index)
    with pytest.raises(EmbeddingIndexError):
        embedding.read_manifest(index)


def test_a_dim_the_vectors_do_not_have_is_refused(tmp_path):
    """Read as 2-d, each 4-d unit row is two rows of half of it: every track query answered
    wrong, silently, before."""
    index = make_index(tmp_path / "dim.mttag", n=3, dim=4)
    data = json.loads((index / MANIFEST).read_text())
    data["dim"] = data["model"]["dim"] = 2
    (index / MANIFEST).write_text(json.dumps(data))
    assert "does not hold unit vectors of 2 values" in similar_error(index)
    data["dim"] = 3  # and a dim its own model contradicts
    (index / MANIFEST).write_text(json.dumps(data))
    assert "dim 3" in similar_error(index)


def test_a_manifest_nested_too_deep_or_too_large_is_one_line(tmp_path):
    index = make_index(tmp_path / "deep.mttag")
    (index / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    assert "index.json cannot be read" in similar_error(index)
    with open(index / MANIFEST, "wb") as f:
        f.truncate(embedding.MAX_MANIFEST_BYTES + 10)
    assert "larger than" in similar_error(index)


def test_a_tracks_line_without_end_is_read_to_a_bound(tmp_path):
    index = make_index(tmp_path / "long.mttag")
    with open(index / TRACKS, "r+b") as f:
        f.seek(0)
        f.write(b'{"row": 0, "path": "' + b"x" * (embedding.MAX_TRACK_LINE_BYTES + 10))
    assert "longer than" in similar_error(index)


def test_a_query_of_another_size_is_one_line(tmp_path, monkeypatch):
    """An audio query embedded by a model whose size the index does not have."""
    import mttag.runs.similar as similar_run

    index = make_index(tmp_path / "q.mttag")
    query = write_audio(tmp_path / "q.wav", synth(2.0, 22050, 1, "music"), 22050)
    monkeypatch.setattr(similar_run, "embed_query", lambda *a: (np.ones(7, np.float32), 2.0))
    result = run("similar", query, "-i", index)
    assert result.exit_code == 1
    one_line(result.output, "q.wav", "7 dimensions", "the index 4")


# -- other files that drive a reader -------------------------------------------------------


def test_annotation_csv_with_a_field_over_the_csv_limit_is_one_line(tmp_path):
    from mttag.training.sources import tracks_from_annotations

    ann = tmp_path / "ann.csv"
    ann.write_text('path,tags\na.wav,rock\n"b.wav' + "x" * 140_000 + "\nc.wav,jazz\n", encoding="utf-8")
    with pytest.raises(ValueError) as exc:
        list(tracks_from_annotations(ann))
    assert str(exc.value).startswith(f"{ann}:3: field larger than field limit") and "\n" not in str(exc.value)


@posix_only
def test_annotations_or_kinds_that_are_a_fifo_are_refused(tmp_path):
    from mttag.filetags.writer import load_kinds
    from mttag.training.sources import tracks_from_annotations

    fifo = tmp_path / "ann.csv"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        finishes(lambda: list(tracks_from_annotations(fifo)), timeout=10)
    with pytest.raises(ValueError, match="not a regular file"):
        finishes(lambda: load_kinds(fifo), timeout=10)


def test_kinds_with_a_field_over_the_csv_limit_is_one_line(tmp_path):
    results = tmp_path / "tags.jsonl"
    results.write_text(json.dumps({"path": str(tmp_path / "a.flac"), "model": "m", "duration": 3.0,
                                   "tags": [{"tag": "rock", "score": 0.9}]}) + "\n")
    kinds = tmp_path / "kinds.csv"
    kinds.write_text('rock,genre\n"' + "x" * 140_000 + '",mood\n')
    result = run("write", results, "--kinds", kinds, "--dry-run")
    assert result.exit_code == 2, result.output
    one_line(result.output, "--kinds", "line 2", "field larger than field limit")


def test_a_hub_config_nested_too_deep_is_one_line(tmp_path):
    from mttag.errors import ModelLoadError
    from mttag.weights import hub

    config = tmp_path / "config.json"
    config.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError) as exc:
        hub._config_files(config, "alice/deep")
    assert str(exc.value) == "alice/deep: config.json is nested too deeply to be a model config"
    config.write_text('{"files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ModelLoadError, match="nested too deeply"):
        hub._config_files(config, "alice/deep")


@pytest.mark.skipif(not audio.ffmpeg_available(), reason="needs ffmpeg")
def test_a_length_count_cut_short_by_the_timeout_is_refused_not_believed(flacs, monkeypatch):
    """ffmpeg killed at its time limit has counted part of the file: that is no length to plan
    windows on (it used to be taken as the track's length whenever some frames were read)."""
    _, piped = flacs
    real_run = audio.subprocess.Popen

    def slow_ffmpeg(cmd, *args, **kwargs):  # counts a few frames, then hangs past the limit
        if cmd and cmd[0] == "ffmpeg":
            cmd = ["bash", "-c", 'head -c 4096 /dev/zero; exec sleep 5', "--"]
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(audio.subprocess, "Popen", slow_ffmpeg)
    monkeypatch.setattr(audio, "FFMPEG_TIMEOUT", 0.5)
    with pytest.raises(audio.AudioError, match="did not finish"):
        audio.probe(piped)
