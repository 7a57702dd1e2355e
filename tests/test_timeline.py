"""``mttag tag --timeline`` and ``--plot``: each window's tags over time, and the taggram."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CROP_SECONDS, synth, write_audio
from typer.testing import CliRunner

from mttag.cli import app

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tag(*args):
    return runner.invoke(app, ["tag", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    lib = tmp_path_factory.mktemp("timeline") / "lib"
    write_audio(lib / "a song.wav", synth(7.0, 22050, 1, "music", seed=1), 22050)  # 4.67 windows of 1.5 s
    write_audio(lib / "b song.flac", synth(4.0, 22050, 1, "music", seed=2), 22050)
    return lib


def test_timeline_windows_cover_the_track_and_average_to_the_tags(songs, tiny_model_dir):
    import mttag
    from mttag.inference.tagging import Tagger

    result = tag(songs / "a song.wav", "--model", tiny_model_dir, "-f", "json", "--all-tags", "--timeline")
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads(result.stdout)
    windows = record["timeline"]
    assert len(windows) == math.ceil(7.0 / TINY_CROP_SECONDS)  # --timeline means every window
    assert windows[0]["start"] == 0.0 and windows[-1]["end"] == pytest.approx(record["duration"], abs=1e-3)
    assert all(b["start"] <= a["end"] for a, b in zip(windows, windows[1:]))  # no gap
    assert all(w["end"] - w["start"] == pytest.approx(TINY_CROP_SECONDS, abs=1e-3) for w in windows)
    # the track's scores are the mean of its windows' scores
    mean = {}
    for w in windows:
        for t in w["tags"]:
            mean[t["tag"]] = mean.get(t["tag"], 0.0) + t["score"] / len(windows)
    for t in record["tags"]:
        assert t["score"] == pytest.approx(mean[t["tag"]], abs=2e-4)
    # and the windows differ: a timeline, not one score repeated
    first = {t["tag"]: t["score"] for t in windows[0]["tags"]}
    last = {t["tag"]: t["score"] for t in windows[-1]["tags"]}
    assert max(abs(first[k] - last[k]) for k in first) > 1e-3
    model = mttag.load_model(tiny_model_dir)
    (r,) = Tagger(model, "cpu", windows=None, keep_windows=True).tag_files([songs / "a song.wav"])
    assert r.window_probabilities.shape == (len(windows), len(model.config.tags))
    np.testing.assert_allclose(r.window_probabilities.mean(axis=0), r.probabilities, atol=1e-6)


def test_timeline_csv_rows_and_resume(songs, tiny_model_dir, tmp_path):
    out = tmp_path / "t.csv"
    assert tag(songs / "a song.wav", "--model", tiny_model_dir, "-o", out, "--timeline", "--top", "2").exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert list(rows[0]) == ["path", "model", "start", "end", "tag", "score", "error"]
    assert len(rows) == 2 * math.ceil(7.0 / TINY_CROP_SECONDS)
    assert float(rows[0]["start"]) == 0.0 and float(rows[-1]["end"]) == pytest.approx(7.0, abs=1e-3)
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--resume", "--timeline", "--top", "2")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert {Path(r["path"]).name for r in rows} == {"a song.wav", "b song.flac"}
    # the resumed file is still a timeline: no --timeline needed to go on
    assert tag(songs, "--model", tiny_model_dir, "-o", out, "--resume").exit_code == 0


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_one_track_and_a_folder(songs, tiny_model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "taggram.png"
    result = tag(songs / "a song.wav", "--model", tiny_model_dir, "--plot", png, "-q")
    assert result.exit_code == 0, result.stderr
    assert png_size(png) == (1200, 600)
    folder = tmp_path / "plots"
    assert tag(songs, "--model", tiny_model_dir, "--plot", folder, "-q").exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a song.wav.png", "b song.flac.png"]
    assert all(png_size(p) == (1200, 600) for p in folder.iterdir())
    result = tag(songs, "--model", tiny_model_dir, "--plot", tmp_path / "x.png")
    assert result.exit_code == 2 and "one track" in result.stderr


def test_plot_without_matplotlib_names_the_extra(songs, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = tag(songs, "--model", tiny_model_dir, "--plot", tmp_path / "plots")
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "mttag[plot]" in err


def test_a_refused_plot_leaves_no_lock_or_undo_log_behind(songs, tiny_model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.jsonl"
    result = tag(songs, "--model", tiny_model_dir, "-o", out, "--plot", tmp_path / "x.png", "--write")
    assert result.exit_code == 2 and "one track" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock, no results, no undo log


def test_plot_keeps_a_png_it_did_not_draw_and_names_what_it_wrote(songs, tiny_model_dir, tmp_path):
    """--plot follows -o's rule: a PNG that is not mttag's taggram (a holiday photo) is kept
    unless --force, one line naming it; mttag's own taggram is replaced; the summary names the file."""
    pytest.importorskip("matplotlib")
    photo = tmp_path / "holiday.png"
    import matplotlib.pyplot as plt

    plt.imsave(photo, np.linspace(0, 1, 64).reshape(8, 8))
    original = photo.read_bytes()
    result = tag(songs / "a song.wav", "--model", tiny_model_dir, "--plot", photo)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "holiday.png: exists and is not a taggram mttag drew" in result.stderr and "--force" in result.stderr
    assert photo.read_bytes() == original
    # a folder of plots: the one foreign PNG stops the run before any tagging
    folder = tmp_path / "plots"
    folder.mkdir()
    (folder / "b song.flac.png").write_bytes(original)
    result = tag(songs, "--model", tiny_model_dir, "--plot", folder, "-q")
    assert result.exit_code == 2 and "b song.flac.png" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["b song.flac.png"]
    # --force replaces it, and the summary names the PNG
    result = tag(songs / "a song.wav", "--model", tiny_model_dir, "--plot", photo, "--force")
    assert result.exit_code == 0, result.stderr
    assert photo.read_bytes() != original and png_size(photo) == (1200, 600)
    assert f"taggram in {photo}" in " ".join(result.stderr.split())
    # now mttag's own: replaced again without --force
    result = tag(songs / "a song.wav", "--model", tiny_model_dir, "--plot", photo)
    assert result.exit_code == 0, result.stderr
    result = tag(songs, "--model", tiny_model_dir, "--plot", folder, "--force")
    assert result.exit_code == 0, result.stderr
    assert f"2 taggrams in {folder}" in " ".join(result.stderr.split())


def test_plot_colour_scale_fits_the_scores(tmp_path):
    """Scores that sit in 0.1-0.4 (musicnn's) span the whole colour map, up to its brightest
    colour, instead of its dark lower part; the colour bar says the scale is the track's."""
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from mttag.inference.plot import colour_range, plot_taggram
    from mttag.inference.tagging import TagResult

    probs = np.random.default_rng(0).uniform(0.1, 0.4, (10, 6)).astype(np.float32)
    result = TagResult("song.wav", window_times=[(1.5 * i, 1.5 * (i + 1)) for i in range(10)],
                       window_probabilities=probs, tag_names=list("abcdef"), model="musicnn")
    png = plot_taggram(result, tmp_path / "t.png")
    assert colour_range(probs) == (pytest.approx(probs.min()), pytest.approx(probs.max()))
    pixels = matplotlib.image.imread(png)[:, :1000, :3]  # the taggram, left of the colour bar
    # magma's top colour, pale yellow (0.99, 0.99, 0.75), fills the top-scoring cell (~100 × 80
    # pixels); on a fixed 0-1 scale 0.4 is magenta (0.72, 0.21, 0.47) and nothing is near the top
    top = np.array(matplotlib.colormaps["magma"](1.0)[:3])
    assert (np.abs(pixels - top).max(axis=2) < 0.04).sum() > 2000
    assert colour_range(np.full((3, 2), 0.3)) == pytest.approx((0.25, 0.35))
