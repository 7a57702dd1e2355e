"""The run layer (mttag.runs): the runs of ``tag``, ``embed``, ``write`` and ``similar`` as
plain Python, without Typer or rich: events as callbacks, the summary as data, refusals as
a RunError with one line and an exit code; and the command line and the Python API on the
same calls."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import synth, write_audio
from typer.testing import CliRunner

import mttag
from mttag.cli import app
from mttag.runs import (
    EXIT_INTERRUPTED,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    EmbedRequest,
    RunError,
    RunEvents,
    SimilarRequest,
    TagRequest,
    WriteRequest,
    find_similar,
    run_embed,
    run_tag,
    run_undo,
    run_write,
)
from mttag.runs.common import interruptible

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs") / "songs"
    for i in range(3):
        write_audio(root / f"{i} song.wav", synth(3.0, 22050, 1, "music", seed=i), 22050)
    (root / "9 empty.wav").touch()
    return root


class Recorder(RunEvents):
    def __init__(self, stop_after: int | None = None):
        self.calls: list[tuple] = []
        self.stop_after = stop_after

    def warning(self, path, message):
        self.calls.append(("warning", path, message))

    def resuming(self, already, to_go, skipped=None):
        self.calls.append(("resuming", already, to_go, skipped))

    def started(self, total):
        self.calls.append(("started", total))

    def result(self, result):
        self.calls.append(("result", result.path, result.ok))
        if self.stop_after is not None and sum(c[0] == "result" for c in self.calls) >= self.stop_after:
            raise KeyboardInterrupt

    def finished(self):
        self.calls.append(("finished",))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_tag_run_reports_events_and_a_summary(songs, tiny_model, tmp_path):
    out = tmp_path / "tags.jsonl"
    events = Recorder()
    summary = run_tag(TagRequest([songs], model=tiny_model, output=out, device="cpu", precision="fp32"), events)
    assert events.kinds() == ["started", "result", "result", "result", "result", "finished"]
    assert events.calls[0] == ("started", 4)
    assert [c[2] for c in events.calls if c[0] == "result"] == [True, True, True, False]
    assert (summary.command, summary.done, summary.failed, summary.exit_code) == ("tag", 3, 1, EXIT_SOME_FAILED)
    assert (summary.device, summary.precision, summary.output, summary.interrupted) == ("cpu", "fp32", out, False)
    assert summary.model == mttag.inference.tagging.model_label(tiny_model) and summary.elapsed > 0
    records = jsonl(out)
    # the Python API and the run give the same tags: one code path
    api = {r.path: r.to_dict() for r in mttag.tag(songs, model=tiny_model, device="cpu", precision="fp32")}
    assert records == [api[r["path"]] for r in records]


def test_tag_run_without_an_output_file_writes_to_the_stream_given(songs, tiny_model, capsys):
    stream, events = io.StringIO(), Recorder()
    summary = run_tag(TagRequest([songs], model=tiny_model, format="jsonl", stream=stream), events)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["path"] for r in records] == [c[1] for c in events.calls if c[0] == "result"]
    assert len(records) == 4 and summary.output is None and capsys.readouterr().out == ""


@pytest.mark.parametrize("request_kwargs, message", [
    ({"resume": True}, "--resume needs --output FILE"),
    ({"undo_log": Path("u.jsonl")}, "--undo-log needs --write"),
    ({"windows": "0"}, "--windows 0: expected a positive number or 'all'"),
    ({"device": "tpu"}, None),
])
def test_tag_refusals_are_run_errors_with_one_line(songs, tiny_model, request_kwargs, message):
    events = Recorder()
    with pytest.raises(RunError) as caught:
        run_tag(TagRequest([songs], model=tiny_model, **request_kwargs), events)
    assert caught.value.exit_code == EXIT_USAGE and "\n" not in caught.value.message
    assert message is None or caught.value.message == message
    assert "started" not in events.kinds()


def test_a_run_error_is_one_line_whatever_it_names():
    assert RunError("bad\nname.wav: no such file").message == "bad\\x0aname.wav: no such file"


def test_no_files_is_a_run_error_with_exit_code_1(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError) as caught:
        run_tag(TagRequest([tmp_path / "empty"], model=tiny_model, output=tmp_path / "t.jsonl"))
    assert caught.value.exit_code == EXIT_SOME_FAILED and caught.value.message.startswith("no audio files found in")
    assert not (tmp_path / "t.jsonl").exists()


def test_interrupting_from_a_callback_stops_cleanly_and_resumes(songs, tiny_model, tmp_path):
    out = tmp_path / "tags.json"
    summary = run_tag(TagRequest([songs], model=tiny_model, output=out, format="json"), Recorder(stop_after=2))
    assert (summary.interrupted, summary.exit_code, summary.done) == (True, EXIT_INTERRUPTED, 2)
    assert len(json.loads(out.read_text())) == 2  # a closed, valid JSON array
    events = Recorder()
    summary = run_tag(TagRequest([songs], model=tiny_model, output=out, resume=True), events)
    assert events.calls[0] == ("resuming", 2, 2, None)
    assert (summary.done, summary.failed, summary.exit_code) == (1, 1, EXIT_SOME_FAILED)
    assert len(json.loads(out.read_text())) == 4


def test_cli_and_api_give_an_unlistable_folder_the_same_record(songs, tiny_model_dir, tmp_path, monkeypatch):
    """Before the run layer, the command line's record of a folder it could not list had no
    model, the API's had one: now both come from runs.tag.tag_results."""
    locked = songs / "locked"
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    locked.mkdir(exist_ok=True)
    try:
        monkeypatch.setattr(os, "scandir", scandir)
        result = CliRunner().invoke(app, ["tag", str(songs), "--model", str(tiny_model_dir), "-f", "jsonl"])
        cli = [r for r in map(json.loads, result.stdout.splitlines()) if r["path"] == str(locked)]
        api = [r.to_dict() for r in mttag.tag(songs, model=tiny_model_dir) if r.path == str(locked)]
    finally:
        locked.rmdir()
    assert result.exit_code == 1
    assert cli == api and cli[0]["model"] == str(tiny_model_dir)


def test_tag_write_summary_counts_files_and_names_the_undo_log(songs, tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(songs, copy)
    log = tmp_path / "undo.jsonl"
    summary = run_tag(TagRequest([copy], model=tiny_model, output=tmp_path / "t.jsonl", write=True, undo_log=log))
    assert summary.undo_log == log and summary.counts == {"written": 3}
    assert not (log.parent / f".{log.name}.lock").exists()  # released


def test_embed_run_and_similar_without_the_command_line(songs, tiny_model, tmp_path):
    index = tmp_path / "lib.mttag"
    events = Recorder()
    summary = run_embed(EmbedRequest([songs], index, model=tiny_model), events)
    assert (summary.command, summary.done, summary.failed, summary.stored) == ("embed", 3, 1, 3)
    assert ("warning", str(songs / "9 empty.wav"), "empty file (0 bytes)") in events.calls
    events = Recorder()
    summary = run_embed(EmbedRequest([songs], index, model=tiny_model, resume=True), events)
    assert events.calls[0] == ("resuming", 3, 1, 3)
    assert (summary.done, summary.stored, summary.exit_code) == (0, 3, EXIT_SOME_FAILED)

    found = find_similar(SimilarRequest(songs / "0 song.wav", index, top=5))
    assert found.query_in_index and len(found.hits) == 2
    assert str(songs / "0 song.wav") not in [h.path for h in found.hits]
    with pytest.raises(RunError, match="not a tag of the index's model") as caught:
        find_similar(SimilarRequest(songs / "0 song.wav", index, tags=["no such tag"]))
    assert caught.value.exit_code == EXIT_USAGE


def test_write_and_undo_runs(songs, tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(songs, copy)
    results = tmp_path / "tags.jsonl"
    run_tag(TagRequest([copy], model=tiny_model, output=results))
    events = Recorder()
    summary = run_write(WriteRequest(results, top=2), events)
    assert summary.counts == {"written": 3, "skipped": 1} and summary.exit_code == 0
    assert summary.undo_log is not None and summary.undo_log.is_file()
    assert [c[0] for c in events.calls].count("result") == 4
    undone = run_undo(summary.undo_log)
    assert undone.counts == {"restored": 3} and undone.exit_code == 0
    with pytest.raises(RunError, match="no such file"):
        run_write(WriteRequest(tmp_path / "missing.jsonl"))
    with pytest.raises(RunError, match="--fields genre,colour"):
        run_write(WriteRequest(results, fields="genre,colour"))


def test_interruptible_turns_sigterm_into_keyboard_interrupt_in_the_main_thread_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts it
    assert signal.getsignal(signal.SIGTERM) is before
    seen = []
    worker = threading.Thread(target=lambda: seen.append(interruptible().__enter__() is None))
    worker.start()
    worker.join()
    assert seen == [True] and signal.getsignal(signal.SIGTERM) is before


def test_the_run_layer_imports_without_torch_typer_or_rich():
    code = ("import sys, mttag.runs; sys.exit(any(m in sys.modules for m in ('torch', 'numpy', 'typer', 'rich')))")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
