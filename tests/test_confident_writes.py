"""Issue 35: kinds and confidence in every output, and only confident tags written into files.

``mttag write`` (and ``mttag tag --write``) puts at most 3 genres and 2 moods whose calibrated
confidence reaches ``calibration.DEFAULT_THRESHOLD`` into GENRE/MOOD; instruments, voices and
eras go only into MTTAG; results without a confidence fall back to the raw scores (with the
genre cap) and the run says so once."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import synth, write_audio
from typer.testing import CliRunner

from mttag.cli import app
from mttag.filetags import writer as filetags
from mttag.inference.output import ResultWriter, read_records, record_problem

runner = CliRunner()

# Death Metal 0.95c | Metal 0.93c | Rock 0.4c | Electronic 0.04c (raw probabilities say otherwise:
# rock and electronic score high on everything)
CONFIDENT = [
    {"tag": "rock", "score": 0.81, "kind": "genre", "confidence": 0.4, "name": "msd:rock"},
    {"tag": "death metal", "score": 0.12, "kind": "genre", "confidence": 0.95, "name": "msd:death metal"},
    {"tag": "electronic", "score": 0.6, "kind": "genre", "confidence": 0.04, "name": "msd:electronic"},
    {"tag": "metal", "score": 0.3, "kind": "genre", "confidence": 0.93, "name": "msd:metal"},
]


def song(folder: Path, name: str = "song.flac", seed: int = 0) -> Path:
    return write_audio(folder / name, synth(1.0, 22050, 1, "music", seed=seed), 22050)


def results(path: Path, records: list[tuple[Path, list[dict]]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for audio, tags in records:
            f.write(json.dumps({"path": str(audio), "model": "musicnn", "duration": 1.0, "tags": tags}) + "\n")
    return path


def dry_run(res: Path, *args) -> tuple[list[dict], str]:
    r = runner.invoke(app, ["write", str(res), "--dry-run", "--json", "--fields", "genre,mood,mttag", *map(str, args)])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")], r.stderr


def planned(outcome: dict) -> dict[str, list[str]]:
    return {c["field"]: c["after"] for c in outcome.get("changes", [])}


def test_only_confident_genres_are_written(tmp_path):
    res = results(tmp_path / "r.jsonl", [(song(tmp_path), CONFIDENT)])
    (outcome,), _ = dry_run(res)
    plan = planned(outcome)
    assert plan["genre"] == ["Death Metal", "Metal"]  # most confident first; rock (0.4c) is not
    assert plan["mttag"] == ["death metal 0.12; metal 0.30"]
    assert "mood" not in plan


def test_min_confidence_zero_and_the_genre_cap(tmp_path):
    res = results(tmp_path / "r.jsonl", [(song(tmp_path), CONFIDENT)])
    (outcome,), _ = dry_run(res, "--min-confidence", "0")
    assert planned(outcome)["genre"] == ["Death Metal", "Metal", "Rock"]  # at most 3 genres
    (outcome,), _ = dry_run(res, "--min-confidence", "0", "--max-genres", "4")
    assert planned(outcome)["genre"] == ["Death Metal", "Metal", "Rock", "Electronic"]
    # --threshold asks for raw probabilities instead of the confidence rule
    (outcome,), _ = dry_run(res, "--threshold", "0.5")
    assert planned(outcome)["genre"] == ["Rock", "Electronic"]


def test_moods_capped_and_instruments_only_in_mttag(tmp_path):
    tags = [{"tag": t, "score": 0.5, "kind": k, "confidence": c} for t, k, c in [
        ("violin", "instrument", 0.99), ("female vocals", "voice", 0.98), ("80s", "era", 0.97),
        ("happy", "mood", 0.96), ("sad", "mood", 0.95), ("mellow", "mood", 0.94), ("jazz", "genre", 0.93)]]
    res = results(tmp_path / "r.jsonl", [(song(tmp_path), tags)])
    (outcome,), _ = dry_run(res)
    plan = planned(outcome)
    assert plan["genre"] == ["Jazz"] and plan["mood"] == ["Happy", "Sad"]
    assert plan["mttag"][0].startswith("violin 0.50; female vocals 0.50; 80s 0.50; happy")


def test_results_without_confidence_fall_back_and_say_so_once(tmp_path):
    old = [{"tag": t, "score": s} for t, s in [("rock", 0.8), ("pop", 0.7), ("jazz", 0.6), ("metal", 0.5),
                                              ("happy", 0.4), ("sad", 0.3), ("mellow", 0.2), ("guitar", 0.1)]]
    res = results(tmp_path / "r.jsonl", [(song(tmp_path, "a.flac"), old), (song(tmp_path, "b.flac", 1), old)])
    outcomes, err = dry_run(res)
    assert len(outcomes) == 2
    for outcome in outcomes:
        plan = planned(outcome)
        assert plan["genre"] == ["Rock", "Pop", "Jazz"] and plan["mood"] == ["Happy", "Sad"]
        assert plan["mttag"][0].endswith("guitar 0.10")  # every tag, as before
    assert err.count("no confidence") == 1


def test_write_tags_takes_tag_scores_and_skips_when_nothing_is_confident(tmp_path):
    from mttag.inference.tagging import TagScore

    audio = song(tmp_path)
    opts = filetags.WriteOptions(dry_run=True)
    scores = [TagScore("jazz", "genre", "msd:jazz", 0.2, 0.97), TagScore("rock", "genre", "msd:rock", 0.9, 0.5)]
    outcome = filetags.write_tags(audio, scores, opts)
    assert outcome.status == "would-write"
    assert {c.field: c.after for c in outcome.changes}["genre"] == ["Jazz"]
    outcome = filetags.write_tags(audio, [TagScore("rock", "genre", "msd:rock", 0.9, 0.5)], opts)
    assert outcome.status == "skipped" and "confidence" in outcome.note


def test_kinds_csv_still_overrides(tmp_path):
    kinds = tmp_path / "kinds.csv"
    kinds.write_text("violin,genre\n", encoding="utf-8")
    tags = [{"tag": "violin", "score": 0.5, "kind": "instrument", "confidence": 0.99}]
    res = results(tmp_path / "r.jsonl", [(song(tmp_path), tags)])
    (outcome,), _ = dry_run(res, "--kinds", kinds)
    assert planned(outcome)["genre"] == ["Violin"]


# -- kind and confidence in the results files ------------------------------------------------


def _result(path: str = "/m/a.flac"):
    from mttag.inference.tagging import TagResult, TagScore

    scores = [TagScore("death metal", "genre", "msd:death metal", 0.12, 0.95),
              TagScore("violin", "instrument", "mtt:violin", 0.3, None)]
    return TagResult(path, 2.0, [(s.tag, s.probability) for s in scores], model="musicnn", scores=scores)


def test_json_tag_records_have_kind_confidence_and_name():
    out = io.StringIO()
    ResultWriter(out, "jsonl").write(_result())
    tags = json.loads(out.getvalue())["tags"]
    assert tags == [{"tag": "death metal", "score": 0.12, "kind": "genre", "confidence": 0.95, "name": "msd:death metal"},
                    {"tag": "violin", "score": 0.3, "kind": "instrument", "confidence": None, "name": "mtt:violin"}]
    assert list(tags[0]) == ["tag", "score", "kind", "confidence", "name"]  # documented order


@pytest.mark.parametrize("layout", ["track", "long"])
def test_csv_kind_and_confidence_columns_round_trip(tmp_path, layout):
    path = tmp_path / "r.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = ResultWriter(f, "csv", layout=layout)
        writer.write(_result())
        writer.write(_result("/m/b.flac"))  # long: the last track is read back only when complete
        writer.close()
    header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[-2:] == (["kinds", "confidences"] if layout == "track" else ["kind", "confidence"])
    record = read_records(path, "csv")[0]
    assert [(t["tag"], t["kind"], t["confidence"]) for t in record["tags"]] == [
        ("death metal", "genre", 0.95), ("violin", "instrument", None)]
    # written again from what was read (as --resume does): the same rows
    again = io.StringIO()
    ResultWriter(again, "csv", layout=layout).write_record(record)
    assert again.getvalue().splitlines()[1] == path.read_text(encoding="utf-8").splitlines()[1]


def test_older_csv_without_kind_columns_still_reads(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("path,model,duration,tags,scores,error,fingerprint\n/m/a.flac,m,2.0,rock;violin,0.5000;0.2500,,\n",
                    encoding="utf-8")
    record = read_records(path, "csv")[0]
    assert record["tags"] == [{"tag": "rock", "score": 0.5}, {"tag": "violin", "score": 0.25}]


def test_a_confidence_out_of_range_is_refused():
    record = {"path": "/m/a.flac", "duration": 1.0, "tags": [{"tag": "rock", "score": 0.5, "confidence": 1.5}]}
    assert "confidence" in record_problem(record)
    record["tags"][0]["confidence"] = None
    assert record_problem(record) is None


def test_parquet_tag_structs_have_kind_and_confidence(tmp_path):
    pytest.importorskip("pyarrow")
    from mttag.inference.parquet import ParquetResultWriter, read_rows

    path = tmp_path / "r.parquet"
    with open(path, "wb") as f:
        writer = ParquetResultWriter(f, ["msd:death metal", "mtt:violin"], "musicnn")
        writer.write(_result())
        writer.write_record({"path": "/m/b.flac", "duration": 1.0, "tags": [{"tag": "rock", "score": 0.5}]})
        writer.close()
    first, second = read_rows(path)
    assert first["tags"][0]["kind"] == "genre" and first["tags"][0]["confidence"] == pytest.approx(0.95)
    assert first["tags"][1]["confidence"] is None
    assert second["tags"] == [{"tag": "rock", "score": 0.5, "kind": "genre", "confidence": None}]  # an older record


def test_wide_layout_has_one_column_per_merged_tag():
    """A combined model's ``msd:rock`` and ``mtt:rock`` are one tag: one ``rock`` column,
    filled (the columns used to be the model's names, which no merged tag matched)."""
    from mttag.inference.tagging import TagResult

    out = io.StringIO()
    writer = ResultWriter(out, "csv", layout="wide", vocabulary=["msd:rock", "mtt:rock", "mtt:violin"])
    writer.write(TagResult("/m/a.flac", 2.0, [("rock", 0.5), ("violin", 0.25)], model="musicnn"))
    header, row = out.getvalue().splitlines()
    assert header.endswith(",error,rock,violin") and row.endswith(",0.5000,0.2500")


def test_tag_write_with_the_calibrated_default_writes_only_confident_genres(tmp_path):
    """``mttag tag --write`` with the bundled musicnn (which has a calibration table): of the 10
    tags kept, only genres of confidence >= 0.9 go into GENRE, at most 3."""
    import numpy as np
    import soundfile as sf

    mutagen_flac = pytest.importorskip("mutagen.flac")
    audio = tmp_path / "noise.flac"
    sf.write(audio, (0.3 * np.random.default_rng(0).standard_normal(22050 * 4)).astype(np.float32), 22050)
    out = tmp_path / "tags.jsonl"
    r = runner.invoke(app, ["tag", str(audio), "--model", "musicnn", "--top", "10", "--windows", "2", "-o", str(out),
                            "--write", "--undo-log", str(tmp_path / "undo.jsonl")])
    assert r.exit_code == 0, r.output
    tags = json.loads(out.read_text(encoding="utf-8").splitlines()[0])["tags"]
    assert all(t["confidence"] is not None for t in tags)
    want = [filetags.display_name(t["tag"]) for t in tags if t["kind"] == "genre" and t["confidence"] >= 0.9][:3]
    assert mutagen_flac.FLAC(audio).get("genre", []) == want
    written = mutagen_flac.FLAC(audio)["mttag"][0].split("; ")
    assert len(written) == sum(t["confidence"] >= 0.9 for t in tags)


def test_the_table_shows_the_confidence_of_a_calibrated_model(tmp_path):
    """Tags come best-confidence first, so the table shows that confidence (a percentage),
    not the raw probability, which would look unsorted; json keeps both."""
    import re

    import numpy as np
    import soundfile as sf

    audio = tmp_path / "noise.wav"
    sf.write(audio, (0.3 * np.random.default_rng(1).standard_normal(22050 * 4)).astype(np.float32), 22050)
    table = runner.invoke(app, ["tag", str(audio), "--model", "musicnn", "--windows", "2", "-q"])
    assert table.exit_code == 0, table.output
    shown = [int(p) for p in re.findall(r"\s(\d{1,3})%", " ".join(table.stdout.splitlines()[1:]))]
    record = json.loads(runner.invoke(app, ["tag", str(audio), "--model", "musicnn", "--windows", "2", "-q",
                                            "-f", "jsonl"]).stdout)
    # json keeps 4 decimals: a percentage may differ by one from the rounded record
    want = [t["confidence"] * 100 for t in record["tags"]]
    assert len(shown) == len(want) == 5 and all(abs(a - b) <= 1 for a, b in zip(shown, want))
    assert shown == sorted(shown, reverse=True)


def test_quiet_keeps_the_no_confidence_note_off_stderr(tmp_path):
    old = [{"tag": "rock", "score": 0.8}]
    res = results(tmp_path / "r.jsonl", [(song(tmp_path, "a.flac"), old)])
    r = runner.invoke(app, ["write", str(res), "--dry-run", "--json", "-q"])
    assert r.exit_code == 0 and "no confidence" not in r.stderr, r.stderr
