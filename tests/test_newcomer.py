"""What a new user met on real music (issue 35): a typo'd path, a results file replaced by a
re-run, an interruption that did not say how to go on, and a table that was hard to read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import synth, write_audio
from typer.testing import CliRunner

from mttag.cli import app
from mttag.inference.tagging import Tagger
from mttag.runs.common import RunError
from mttag.runs.tag import TagRequest, run_tag

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tag(*args):
    return runner.invoke(app, ["tag", *map(str, args)], catch_exceptions=False)


@pytest.fixture
def music(tmp_path) -> Path:
    root = tmp_path / "Music" / "Artist"
    for i, name in enumerate(["one song.wav", "two.wav"]):
        write_audio(root / name, synth(2.0, 22050, 1, "music", seed=i), 22050)
    return tmp_path / "Music"


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the paths were checked")

    monkeypatch.setattr("mttag.runs.tag.load", refuse)


# -- a typo'd path --------------------------------------------------------------------------


def test_typo_in_a_path_is_refused_before_the_model_loads(music, tiny_model_dir, no_model_load):
    typo = music.parent / "Musik" / "Artst" / "one song.wav"
    result = tag(music / "Artist" / "two.wav", typo, "--model", tiny_model_dir)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert f"{typo}: no such file or folder" in lines[0]
    assert f"did you mean {music / 'Artist' / 'one song.wav'}?" in lines[0]
    assert result.stdout == ""


def test_missing_path_without_a_near_name_has_no_guess(music, tiny_model_dir, no_model_load, monkeypatch):
    monkeypatch.chdir(music.parent)
    result = tag("Music/Artist/zzzz qqq.flac", "--model", tiny_model_dir)
    assert result.exit_code == 2
    assert "Music/Artist/zzzz qqq.flac: no such file or folder" in result.stderr
    assert "did you mean" not in result.stderr


def test_broken_link_is_named_as_such(music, tiny_model_dir, no_model_load):
    link = music / "gone.wav"
    link.symlink_to(music / "deleted.wav")
    result = tag(link, "--model", tiny_model_dir)
    assert result.exit_code == 2 and "broken symbolic link" in result.stderr


def test_run_layer_refuses_a_missing_path_with_exit_2(music, no_model_load):
    with pytest.raises(RunError) as caught:
        run_tag(TagRequest([music / "Artist" / "tow.wav"]))
    assert caught.value.exit_code == 2
    assert "did you mean" in caught.value.message and "two.wav" in caught.value.message


# -- an existing results file ----------------------------------------------------------------


def test_rerun_without_resume_keeps_the_results_file(music, tiny_model_dir, tmp_path):
    out = tmp_path / "tags.jsonl"
    assert tag(music, "--model", tiny_model_dir, "-o", out).exit_code == 0
    before = out.read_bytes()
    result = tag(music, "--model", tiny_model_dir, "-o", out)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "already holds mttag jsonl results" in result.stderr
    assert "--resume" in result.stderr and "--force" in result.stderr
    assert out.read_bytes() == before
    assert tag(music, "--model", tiny_model_dir, "-o", out, "--resume").exit_code == 0
    assert out.read_bytes() == before  # everything was done already
    assert tag(music / "Artist" / "two.wav", "--model", tiny_model_dir, "-o", out, "--force").exit_code == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1


# -- an interruption says how to go on -------------------------------------------------------


@pytest.fixture
def interrupt_first_batch(monkeypatch):
    def interrupting(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Tagger, "_predict", interrupting)


def test_interruption_names_the_resume_command(music, tiny_model_dir, tmp_path, interrupt_first_batch):
    out = tmp_path / "tags.json"
    result = tag(music, "--model", tiny_model_dir, "-o", out)
    assert result.exit_code == 130
    assert f"mttag tag {music} … -o {out} --resume" in result.stderr
    assert json.loads(out.read_text(encoding="utf-8")) == []  # closed, resumable


def test_interruption_without_an_output_says_to_use_one(music, tiny_model_dir, interrupt_first_batch):
    result = tag(music, "--model", tiny_model_dir)
    assert result.exit_code == 130
    assert "-o FILE" in result.stderr and "--resume" in result.stderr


# -- the table -------------------------------------------------------------------------------

SCORE = re.compile(r"\d\.\d\d\b")


def test_table_paths_are_relative_to_the_current_folder(music, tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(music.parent)
    result = tag(music / "Artist" / "two.wav", "--model", tiny_model_dir)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("Music/Artist/two.wav  [0:02]")
    assert str(tmp_path) not in result.stdout
    # json and csv keep each path exactly as given: --resume and other programs read them
    song = music / "Artist" / "two.wav"
    assert json.loads(tag(song, "--model", tiny_model_dir, "-f", "jsonl").stdout)["path"] == str(song)
    rows = tag(song, "--model", tiny_model_dir, "-f", "csv").stdout.splitlines()
    assert rows[0].startswith("path,model,duration,tags,scores,error") and rows[1].startswith(f"{song},")
    # a path outside the current folder is shown as given
    monkeypatch.chdir(music / "Artist")
    result = tag(music.parent / "Music" / "Artist" / ".." / "Artist" / "two.wav", "--model", tiny_model_dir)
    assert result.stdout.splitlines()[0].startswith("two.wav")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.wav"
    write_audio(elsewhere, synth(2.0, 22050, 1, "music", seed=3), 22050)
    result = tag(elsewhere, "--model", tiny_model_dir)
    assert result.stdout.splitlines()[0].startswith(str(elsewhere))


def test_table_columns_line_up_from_track_to_track(music, tiny_model_dir):
    result = tag(music, "--model", tiny_model_dir, "--all-tags")
    tag_lines = [line for line in result.stdout.splitlines() if line.startswith("  ") and SCORE.search(line)]
    assert len(tag_lines) >= 4  # 8 tags: several lines per track
    columns = [[m.start() for m in SCORE.finditer(line)] for line in tag_lines]
    widest = max(columns, key=len)
    assert len(widest) >= 2
    for found in columns:
        assert found == widest[:len(found)], result.stdout
    # nothing wider than the console (80 columns under the test runner)
    assert max(len(line) for line in tag_lines) <= 80


def test_table_keeps_control_characters_escaped(music, tiny_model_dir, monkeypatch):
    odd = music / "Artist" / "odd\x1b[2Jname.wav"
    write_audio(odd, synth(2.0, 22050, 1, "music", seed=5), 22050)
    monkeypatch.chdir(music)
    result = tag(odd, "--model", tiny_model_dir)
    assert "\x1b" not in result.stdout
    assert result.stdout.startswith("Artist/odd\\x1b[2Jname.wav  [0:02]")



def test_embed_too_refuses_a_typo_before_the_model_loads(music, tmp_path, monkeypatch):
    import mttag.runs.embed as embed_run

    monkeypatch.setattr(embed_run, "load", lambda *a, **k: pytest.fail("the model loaded before the paths were checked"))
    result = runner.invoke(app, ["embed", str(music / "Artst"), "-o", str(tmp_path / "idx")])
    assert result.exit_code == 2 and "did you mean" in result.output and "Artist" in result.output
