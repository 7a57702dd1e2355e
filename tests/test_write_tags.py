"""``mttag write`` / :mod:`mttag.filetags.writer`: tags go into real files of every supported
format, the audio and every other tag (cover art included) stay exactly as they were, a
write is atomic per file (also when the process is killed), bad files get one error line
and the run goes on, and the undo log restores the files byte for byte."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import HAS_FFMPEG, synth, write_audio
from typer.testing import CliRunner

from mttag.cli import app
from mttag.filetags import formats
from mttag.filetags import writer as filetags

runner = CliRunner()
COVER = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16  # 4 KiB of "picture"
TAGS = [{"tag": "rock", "score": 0.81}, {"tag": "guitar", "score": 0.6}, {"tag": "happy", "score": 0.5},
        {"tag": "80s", "score": 0.4}, {"tag": "alternative rock", "score": 0.3}]
ALL = "genre,mood,comment,mttag"
KINDS = ["v23.mp3", "v24.mp3", "flac", "ogg", "opus", "m4a", "wav", "aiff"]
# where each kind keeps genre / mood / comment / mttag (ID3 hash keys, Vorbis keys, MP4 atoms)
TOUCHED = {
    "id3v23": {"TCON", "TXXX:MOOD", "COMM::eng", "TXXX:MTTAG"},
    "id3v24": {"TCON", "TMOO", "COMM::eng", "TXXX:MTTAG"},
    "vorbis": {"genre", "mood", "comment", "mttag"},
    "mp4": {"\xa9gen", "\xa9cmt", "----:com.apple.iTunes:MOOD", "----:com.apple.iTunes:MTTAG"},
}


# ---------------------------------------------------------------------------- helpers


def make_tagged(folder: Path, kind: str, seed: int = 0) -> Path:
    """A 2 s file of ``kind`` with a title, artist, genre ``Jazz``, other fields and cover art."""
    ext = kind.split(".")[-1]
    path = folder / f"song {kind}{'' if '.' in kind else '.' + ext}"
    sr = 48000 if ext == "opus" else 44100
    write_audio(path, synth(2.0, sr, 2, "music", seed=seed), sr)
    if ext in ("mp3", "wav", "aiff"):
        from mutagen.id3 import APIC, COMM, ID3, TALB, TCON, TDRC, TIT2, TPE1, TRCK, TXXX, TYER

        v = 3 if kind.startswith("v23") else 4
        enc = 1 if v == 3 else 3
        frames = [TIT2(encoding=enc, text="Title ü"), TPE1(encoding=enc, text="Artist"), TALB(encoding=enc, text="Album"),
                  TRCK(encoding=0, text="3/12"), TCON(encoding=enc, text="Jazz"),
                  TXXX(encoding=enc, desc="CUSTOM", text="keep me"),
                  COMM(encoding=enc, lang="eng", desc="iTunNORM", text=" 0000 0001"),
                  APIC(encoding=0, mime="image/png", type=3, desc="", data=COVER),
                  TYER(encoding=0, text="2001") if v == 3 else TDRC(encoding=0, text="2001-05-06")]
        if ext == "mp3":
            tags = ID3()
            for f in frames:
                tags.add(f)
            tags.save(path, v2_version=v, v1=2 if v == 3 else 0)  # the v2.3 file also gets an ID3v1 tag
        else:
            import mutagen

            audio = mutagen.File(path)
            audio.add_tags()
            for f in frames:
                audio.tags.add(f)
            audio.save(v2_version=v)
    elif ext == "flac":
        from mutagen.flac import FLAC, Picture

        audio = FLAC(path)
        audio["TITLE"], audio["ARTIST"], audio["GENRE"], audio["custom"] = "Title ü", "Artist", "Jazz", "keep me"
        pic = Picture()
        pic.data, pic.type, pic.mime = COVER, 3, "image/png"
        audio.add_picture(pic)
        audio.save()
    elif ext in ("ogg", "opus"):
        import mutagen
        from mutagen.flac import Picture

        audio = mutagen.File(path)
        pic = Picture()
        pic.data, pic.type, pic.mime = COVER, 3, "image/png"
        audio["TITLE"], audio["ARTIST"], audio["GENRE"], audio["custom"] = "Title ü", "Artist", "Jazz", "keep me"
        audio["METADATA_BLOCK_PICTURE"] = base64.b64encode(pic.write()).decode("ascii")
        audio.save()
    elif ext == "m4a":
        from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm

        audio = MP4(path)
        audio["\xa9nam"], audio["\xa9ART"], audio["\xa9gen"] = "Title ü", "Artist", "Jazz"
        audio["covr"] = [MP4Cover(COVER, imageformat=MP4Cover.FORMAT_PNG)]
        audio["----:com.apple.iTunes:CUSTOM"] = [MP4FreeForm(b"keep me")]
        audio.save()
    return path


def family(kind: str) -> str:
    if kind.endswith(("mp3", "wav", "aiff")):
        return "id3v23" if kind.startswith("v23") else "id3v24"
    return "mp4" if kind == "m4a" else "vorbis"


def snapshot(path: Path) -> dict:
    """Every tag of a file, comparable: {key: repr}, plus FLAC pictures."""
    import mutagen
    from mutagen.id3 import ID3

    audio = mutagen.File(path)
    if path.suffix == ".mp3":
        tags = ID3(path, translate=False, load_v1=False)
        return {k: repr(v) for k, v in tags.items()}
    if path.suffix in (".wav", ".aiff"):
        audio = type(audio)(path, translate=False, load_v1=False)
        return {k: repr(v) for k, v in audio.tags.items()}
    if path.suffix == ".m4a":
        return {k: repr(v) for k, v in audio.tags.items()}
    out: dict = {}
    for k, v in audio.tags:
        out.setdefault(k.lower(), []).append(v)
    out = {k: repr(v) for k, v in out.items()}
    for i, p in enumerate(getattr(audio, "pictures", [])):
        out[f"picture{i}"] = repr((p.type, p.mime, p.data))
    return out


def without(snap: dict, keys: set) -> dict:
    return {k: v for k, v in snap.items() if k not in keys}


def cover_of(path: Path) -> bytes:
    import mutagen
    from mutagen.flac import Picture

    audio = mutagen.File(path)
    if path.suffix in (".mp3", ".wav", ".aiff"):
        return audio.tags.getall("APIC")[0].data
    if path.suffix == ".m4a":
        return bytes(audio.tags["covr"][0])
    if path.suffix == ".flac":
        return audio.pictures[0].data
    return Picture(base64.b64decode(audio["METADATA_BLOCK_PICTURE"][0])).data


def decode(path: Path) -> np.ndarray:
    """The decoded samples (ffmpeg for m4a, libsndfile for everything else)."""
    if path.suffix == ".m4a":
        out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-"], capture_output=True, check=True)
        return np.frombuffer(out.stdout, dtype=np.float32)
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return data


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fields_of(path: Path) -> dict[str, list[str]]:
    h = formats.open_tags(str(path))
    return {name: h.get(name) for name in filetags.FIELDS}


def write_results(path: Path, files, tags=TAGS) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for p in files:
            f.write(json.dumps({"path": str(p), "duration": 2.0, "tags": tags}) + "\n")
    return path


def cli(*args):
    return runner.invoke(app, ["write", *map(str, args)], catch_exceptions=False)


def kinds_available():
    return [k for k in KINDS if k != "m4a" or HAS_FFMPEG]


@pytest.fixture(autouse=True)
def undo_key_home(tmp_path, monkeypatch):
    """The undo key (signing undo records) lives in a per-test config folder, never the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    return {kind: make_tagged(folder, kind, seed=i) for i, kind in enumerate(kinds_available())}


# ---------------------------------------------------------------------------- every format


@pytest.mark.parametrize("kind", KINDS)
def test_write_every_format_keeps_audio_and_other_tags_and_undo_is_exact(kind, tmp_path):
    if kind == "m4a" and not HAS_FFMPEG:
        pytest.skip("m4a needs ffmpeg")
    path = make_tagged(tmp_path, kind)
    original = path.read_bytes()
    samples, snap = decode(path), snapshot(path)
    log = filetags.UndoLog(tmp_path / "undo.jsonl")
    outcome = filetags.write_tags(path, TAGS, filetags.WriteOptions(fields=filetags.FIELDS), log)
    log.close()
    assert outcome.status == "written", outcome.error

    got = fields_of(path)
    assert got["genre"] == (["Jazz/Rock/Alternative Rock"] if family(kind) == "id3v23" else ["Jazz", "Rock", "Alternative Rock"])
    assert got["mood"] == ["Happy"]
    assert got["comment"] == ["rock, guitar, happy, 80s, alternative rock"]
    assert got["mttag"] == ["rock 0.81; guitar 0.60; happy 0.50; 80s 0.40; alternative rock 0.30"]
    # read back with plain mutagen too, by the keys other tools use
    after = snapshot(path)
    keys = TOUCHED[family(kind)]
    assert keys <= set(after) or family(kind) == "vorbis"
    assert without(after, keys) == without(snap, keys)  # every other tag, as it was
    assert cover_of(path) == COVER
    assert np.array_equal(decode(path), samples)  # the audio, sample for sample
    if path.suffix == ".mp3":
        assert path.read_bytes()[3] == (3 if kind.startswith("v23") else 4)  # the ID3 version is kept
        if kind.startswith("v23"):
            assert path.read_bytes()[-128:] == original[-128:]  # ID3v1 untouched

    outcomes = list(filetags.undo(tmp_path / "undo.jsonl"))
    assert [o.status for o in outcomes] == ["restored"] and outcomes[0].note == "byte for byte"
    assert path.read_bytes() == original
    assert snapshot(path) == snap


def test_id3_mood_frame_follows_the_version(tmp_path):
    from mutagen.id3 import ID3

    v23, v24 = make_tagged(tmp_path, "v23.mp3"), make_tagged(tmp_path, "v24.mp3")
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    for p in (v23, v24):
        assert filetags.write_tags(p, TAGS, filetags.WriteOptions(), log).status == "written"
    assert ID3(v23).getall("TXXX:MOOD")[0].text == ["Happy"] and not ID3(v23, translate=False).getall("TMOO")
    assert ID3(v24).getall("TMOO")[0].text == ["Happy"]
    assert ID3(v23, translate=False).version == (2, 3, 0) and ID3(v24).version == (2, 4, 0)


def test_ogg_comment_growing_past_a_page_is_verified_and_undone(tmp_path):
    """A big comment renumbers every audio page: the check compares packets, not bytes."""
    path = make_tagged(tmp_path, "ogg")
    original, samples = path.read_bytes(), decode(path)
    many = [{"tag": f"tag{i:03d} " + "x" * 60, "score": 0.5} for i in range(200)]
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    outcome = filetags.write_tags(path, many, filetags.WriteOptions(fields=("comment", "mttag")), log)
    log.close()
    assert outcome.status == "written", outcome.error
    assert np.array_equal(decode(path), samples)
    assert [o.status for o in filetags.undo(tmp_path / "u.jsonl")] == ["restored"]
    assert path.read_bytes() == original


# ---------------------------------------------------------------------------- modes and planning


def test_add_and_replace(tmp_path):
    path = make_tagged(tmp_path, "flac")
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    filetags.write_tags(path, TAGS, filetags.WriteOptions(fields=("genre", "comment")), log)
    assert fields_of(path)["genre"] == ["Jazz", "Rock", "Alternative Rock"]
    filetags.write_tags(path, [("metal", 0.9)], filetags.WriteOptions(fields=("genre", "comment")), log)
    assert fields_of(path)["genre"] == ["Jazz", "Rock", "Alternative Rock", "Metal"]
    assert fields_of(path)["comment"] == ["rock, guitar, happy, 80s, alternative rock; metal"]
    filetags.write_tags(path, [("metal", 0.9)], filetags.WriteOptions(fields=("genre", "comment"), mode="replace"), log)
    assert fields_of(path)["genre"] == ["Metal"] and fields_of(path)["comment"] == ["metal"]
    log.close()


def test_merge_values_rules():
    m = filetags.merge_values
    assert m("genre", ["Rock"], ["rock", "Pop"], "add", None) == ["Rock", "Pop"]  # case-insensitive
    assert m("genre", ["Rock"], ["Rock"], "add", None) == ["Rock"]
    assert m("genre", ["Rock/Pop"], ["Jazz"], "add", "/") == ["Rock/Pop/Jazz"]
    assert m("genre", ["Rock"], ["Jazz", "Pop"], "add", "; ") == ["Rock; Jazz; Pop"]
    assert m("genre", ["Rock"], ["Jazz"], "replace", None) == ["Jazz"]
    assert m("genre", ["Rock"], [], "replace", None) == ["Rock"]  # nothing of ours: left alone
    assert m("comment", ["8A energy 6"], ["rock, pop"], "add", None) == ["8A energy 6; rock, pop"]
    assert m("comment", ["8A energy 6; rock, pop"], ["rock, pop"], "add", None) == ["8A energy 6; rock, pop"]
    assert m("mttag", ["old 0.10"], ["rock 0.81"], "add", None) == ["rock 0.81"]  # ours: always replaced


def test_planning_top_threshold_kinds_and_case():
    chosen = filetags.select_tags(TAGS, top=3, threshold=0.55)
    assert chosen == [("rock", 0.81), ("guitar", 0.6)]
    opts = filetags.WriteOptions(fields=filetags.FIELDS, kinds={"guitar": "genre"})
    plan = filetags.planned_values(chosen, opts)
    assert plan == {"genre": ["Rock", "Guitar"], "mood": [], "comment": ["rock, guitar"], "mttag": ["rock 0.81; guitar 0.60"]}
    assert filetags.display_name("rnb") == "R&B" and filetags.display_name("00s") == "00s"
    assert filetags.tag_kind("House") == "genre" and filetags.tag_kind("Mellow") == "mood"
    assert filetags.tag_kind("female vocalists") == "voice" and filetags.tag_kind("80s") == "era"  # mttag.inference.vocab decides


# ---------------------------------------------------------------------------- the command


def test_cli_dry_run_changes_nothing(library, tmp_path):
    before = {p: sha(p) for p in library.values()}
    results = write_results(tmp_path / "r.jsonl", library.values())
    r = cli(results, "--dry-run", "--fields", ALL)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("would write") == len(library)
    assert "genre: Jazz → Jazz | Rock | Alternative Rock" in r.stdout
    assert {p: sha(p) for p in library.values()} == before
    assert not list(tmp_path.glob("r.undo-*")) and not list((tmp_path / "music").glob(".*"))


def test_cli_write_then_undo_restores_every_file_byte_for_byte(library, tmp_path):
    before = {p: sha(p) for p in library.values()}
    results = write_results(tmp_path / "r.jsonl", library.values())
    log = tmp_path / "undo.jsonl"
    r = cli(results, "--fields", ALL, "--undo-log", log, "--top", "3")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("written") == len(library)
    assert all(sha(p) != before[p] for p in library.values())
    assert not list((tmp_path / "music").glob(".*"))  # no temporary file left
    r = cli(results, "--fields", ALL, "--undo-log", log, "--top", "3")  # again: nothing to change
    assert r.stdout.count("unchanged") == len(library)
    r = cli("--undo", log)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("restored") == len(library)
    assert {p: sha(p) for p in library.values()} == before


def test_cli_reads_csv_and_json_results_with_relative_paths(library, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flac = library["flac"].relative_to(tmp_path)
    (tmp_path / "r.csv").write_text("path,duration,tags,scores,error\n"
                                    f"{flac},2.0,rock;happy,0.9000;0.5000,\n"
                                    "music/gone.wav,,,,not a decodable audio file\n", encoding="utf-8")
    r = cli("r.csv", "--undo-log", "u.jsonl", "--json")
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["status"] for x in records] == ["written", "skipped"]
    assert fields_of(library["flac"])["genre"] == ["Jazz", "Rock"]
    (tmp_path / "r.json").write_text('[\n{"path": "%s", "duration": 2.0, "tags": [{"tag": "metal", "score": 0.7}]}\n]\n' % flac)
    assert cli("r.json", "--undo-log", "u.jsonl").exit_code == 0
    assert fields_of(library["flac"])["genre"] == ["Jazz", "Rock", "Metal"]
    # the log holds both runs: undo goes back to the very start
    assert cli("--undo", "u.jsonl").exit_code == 0
    assert fields_of(library["flac"])["genre"] == ["Jazz"]


def test_bad_files_get_one_error_line_and_the_run_goes_on(library, tmp_path):
    music = tmp_path / "music"
    readonly = make_tagged(music, "flac", seed=9).rename(music / "read only.flac")
    readonly.chmod(0o444)
    damaged = music / "damaged.mp3"
    damaged.write_bytes(b"ID3\x04\x00\x00\x00\x00\x7f\x7f" + b"\x00" * 64)  # tag claims 2 MB, file has 64 B
    unsupported = music / "notes.xyz"
    unsupported.write_bytes(os.urandom(4096))
    missing = music / "gone.wav"
    good = library["wav"]
    bad = [readonly, damaged, unsupported, missing]
    snaps = {p: sha(p) for p in bad if p.exists()}
    results = write_results(tmp_path / "r.jsonl", [*bad, good])
    r = cli(results, "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 4
    assert "read-only" in errors[0] and "damaged" in errors[1] and "unsupported format" in errors[2]
    assert "no such file" in errors[3]
    assert any(line.startswith("written") and "song wav" in line for line in lines)
    assert "4 failed" in r.stderr
    assert {p: sha(p) for p in snaps} == snaps
    assert oct(readonly.stat().st_mode & 0o777) == oct(0o444)


def test_symlink_is_written_through_and_hard_links_are_refused(tmp_path):
    real = make_tagged(tmp_path, "flac")
    link = tmp_path / "link.flac"
    link.symlink_to(real.name)
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    assert filetags.write_tags(link, TAGS, filetags.WriteOptions(), log).status == "written"
    assert link.is_symlink() and fields_of(real)["genre"][-1] == "Alternative Rock"
    hard = tmp_path / "hard.flac"
    os.link(real, hard)
    outcome = filetags.write_tags(hard, [("metal", 0.9)], filetags.WriteOptions(), log)
    assert outcome.status == "error" and "hard links" in outcome.error


def test_file_mode_is_kept_and_mtime_policy(tmp_path):
    path = make_tagged(tmp_path, "flac")
    path.chmod(0o640)
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    filetags.write_tags(path, TAGS, filetags.WriteOptions(keep_mtime=True), log)
    assert path.stat().st_mode & 0o777 == 0o640 and path.stat().st_mtime_ns == 1_000_000_000_000_000_000
    filetags.write_tags(path, [("metal", 0.9)], filetags.WriteOptions(), log)
    assert path.stat().st_mtime_ns > 1_000_000_000_000_000_000


def test_undo_after_another_tool_changed_the_file_restores_only_our_fields(tmp_path):
    from mutagen.flac import FLAC

    path = make_tagged(tmp_path, "flac")
    log = filetags.UndoLog(tmp_path / "u.jsonl")
    filetags.write_tags(path, TAGS, filetags.WriteOptions(fields=filetags.FIELDS), log)
    log.close()
    audio = FLAC(path)
    audio["TITLE"] = "Edited later"
    audio["MOOD"] = "Angry"  # the user changed one of our fields too: theirs wins
    audio.save()
    outcomes = list(filetags.undo(tmp_path / "u.jsonl"))
    assert outcomes[0].status == "restored" and "fields only" in outcomes[0].note and "mood" in outcomes[0].note
    audio = FLAC(path)
    assert audio["TITLE"] == ["Edited later"] and audio["GENRE"] == ["Jazz"] and audio["MOOD"] == ["Angry"]
    assert "MTTAG" not in audio and "COMMENT" not in audio


# ---------------------------------------------------------------------------- interruption


def test_failing_replace_mid_run_leaves_the_file_old_and_goes_on(library, tmp_path, monkeypatch):
    before = {p: sha(p) for p in library.values()}
    victim = library["flac"]
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if str(dst) == str(victim.resolve()):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    results = write_results(tmp_path / "r.jsonl", library.values())
    r = cli(results, "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 1
    assert sha(victim) == before[victim]
    assert sum(line.startswith("written") for line in r.stdout.splitlines()) == len(library) - 1
    assert not list((tmp_path / "music").glob(".*"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert cli("--undo", tmp_path / "u.jsonl").exit_code == 0  # the victim's record says: already as before
    assert {p: sha(p) for p in library.values()} == before


def test_interrupt_before_replace_stops_cleanly(library, tmp_path, monkeypatch):
    before = {p: sha(p) for p in library.values()}
    order = list(library.values())
    victim = order[1].resolve()

    real_replace = os.replace

    def fault(src, dst, *args, **kwargs):  # the undo record is on disk, the file not yet replaced
        if os.fspath(dst) == str(victim):
            raise KeyboardInterrupt
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fault)
    r = cli(write_results(tmp_path / "r.jsonl", order), "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 130 and "interrupted" in r.stderr
    assert sha(order[0]) != before[order[0]] and sha(order[1]) == before[order[1]]
    assert all(sha(p) == before[p] for p in order[2:])
    assert not list((tmp_path / "music").glob(".*"))
    assert cli("--undo", tmp_path / "u.jsonl").exit_code == 0
    assert {p: sha(p) for p in library.values()} == before


KILLER = r"""
import os, signal, sys
from mttag.filetags import formats
from mttag.cli import app
where, victim = sys.argv[1], os.path.realpath(sys.argv[2])
if where == "between":          # the undo record is on disk, the file not yet replaced
    real_replace = os.replace
    def fault(src, dst, *args, **kwargs):
        if os.fspath(dst) == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = fault
else:                            # mid-file: the copy is half written when the process dies
    original = formats.open_tags
    def opened(path):
        handler = original(path)
        if os.path.basename(path).startswith("." + os.path.basename(victim)):
            def save():
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            handler.save = save
        return handler
    formats.open_tags = opened
app(["write", *sys.argv[3:]])
"""


@pytest.mark.parametrize("where", ["between", "mid-file"])
def test_killed_process_leaves_every_file_old_or_new_and_undo_recovers(library, tmp_path, where):
    order = list(library.values())
    before = {p: sha(p) for p in order}
    samples = {p: decode(p) for p in order}
    victim = order[len(order) // 2]
    results = write_results(tmp_path / "r.jsonl", order)
    log = tmp_path / "u.jsonl"
    proc = subprocess.run([sys.executable, "-c", KILLER, where, str(victim), str(results), "--undo-log", str(log),
                           "--fields", ALL], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    records = {r["path"]: r for r in filetags.read_undo_log(log)}
    written = 0
    for p in order:
        now = sha(p)
        rec = records.get(str(p.resolve()))
        if now != before[p]:  # new: complete, its record on disk, audio as before
            written += 1
            assert rec is not None and now == rec["sha256_after"]
            assert fields_of(p)["mttag"] and np.array_equal(decode(p), samples[p])
    assert sha(victim) == before[victim]
    assert written == order.index(victim)  # every file before the victim is new, every one after it old
    leftovers = list((tmp_path / "music").glob(f".*{filetags.TMP_SUFFIX}.*"))
    assert len(leftovers) == 1  # the copy being made: hidden, never the only copy
    r = cli("--undo", log)
    assert r.exit_code == 0, r.output
    assert {p: sha(p) for p in order} == before


def test_refuses_to_write_without_an_undo_log(tmp_path):
    path = make_tagged(tmp_path, "flac")
    before = sha(path)
    outcome = filetags.write_tags(path, TAGS, filetags.WriteOptions())
    assert outcome.status == "error" and "undo log" in outcome.error and sha(path) == before


def test_usage_errors(tmp_path):
    results = write_results(tmp_path / "r.jsonl", [])
    assert cli(results, "--fields", "genre,colour").exit_code == 2
    assert cli("--undo", tmp_path / "nope.jsonl").exit_code == 2
    (tmp_path / "t.txt").write_text("# mttag tag results\nx\n")
    r = cli(tmp_path / "t.txt")
    assert r.exit_code == 2 and "table" in r.stderr
    song = make_tagged(tmp_path, "wav")
    results = write_results(tmp_path / "r.jsonl", [song])
    (tmp_path / "other.jsonl").write_text('{"hello": 1}\n')
    r = cli(results, "--undo-log", tmp_path / "other.jsonl")
    assert r.exit_code == 2 and "not an mttag undo log" in r.stderr
    assert (tmp_path / "other.jsonl").read_text() == '{"hello": 1}\n'
    r = cli(results, "--undo-log", song)
    assert r.exit_code == 2 and "audio" in r.stderr


def test_join_writes_one_value_and_overrides_the_id3v23_slash(tmp_path):
    v23, flac = make_tagged(tmp_path, "v23.mp3"), make_tagged(tmp_path, "flac")
    results = write_results(tmp_path / "r.jsonl", [v23, flac])
    r = cli(results, "--join", "; ", "--fields", "genre", "--undo-log", tmp_path / "u.jsonl")
    assert r.exit_code == 0, r.output
    assert fields_of(v23)["genre"] == ["Jazz; Rock; Alternative Rock"]
    assert fields_of(flac)["genre"] == ["Jazz; Rock; Alternative Rock"]
    r = cli(results, "--join", "; ", "--fields", "genre", "--undo-log", tmp_path / "u.jsonl")
    assert r.stdout.count("unchanged") == 2
