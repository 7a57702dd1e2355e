"""Ogg Vorbis files whose first audio packet shares the page of the setup header (issue 35).

Some encoders write the first audio packet onto the page that ends the header packets.
libsndfile decodes such a file shifted by about one packet (hundreds of samples) and short
by as many; ffmpeg decodes it exactly. The test builds such a file from a normal one by
moving that packet between pages (the Ogg page format: 'OggS', a segment table of lacing
values, a CRC-32 with polynomial 0x04C11DB7 over the page with its CRC field zeroed).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import HAS_FFMPEG
from typer.testing import CliRunner

from mttag.audio.decode import load_audio, ogg_header_page_carries_audio, probe
from mttag.cli import app

runner = CliRunner()
needs_ffmpeg = pytest.mark.skipif(not HAS_FFMPEG, reason="needs ffmpeg")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_TABLE = _crc_table()


def ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def read_pages(data: bytes) -> list[dict]:
    pages, pos = [], 0
    while pos < len(data):
        assert data[pos:pos + 4] == b"OggS"
        granule, serial, seq, _crc, count = struct.unpack_from("<qIIIB", data, pos + 6)
        segments = data[pos + 27:pos + 27 + count]
        start = pos + 27 + count
        pages.append(dict(type=data[pos + 5], granule=granule, serial=serial, seq=seq, segments=bytes(segments),
                          body=data[start:start + sum(segments)]))
        pos = start + sum(segments)
    return pages


def build_page(page: dict) -> bytes:
    head = (b"OggS" + bytes([0, page["type"]])
            + struct.pack("<qIIIB", page["granule"], page["serial"], page["seq"], 0, len(page["segments"])))
    raw = head + page["segments"] + page["body"]
    return raw[:22] + struct.pack("<I", ogg_crc(raw)) + raw[26:]


def join_first_audio_packet(source: Path, target: Path) -> None:
    """``source`` (a normal Ogg Vorbis file: ident page, comment+setup page, audio pages)
    rewritten with its first audio packet moved onto the setup header's page."""
    data = source.read_bytes()
    pages = read_pages(data)
    assert b"".join(build_page(p) for p in pages) == data  # the page writer (and its CRC) is exact
    header, audio = pages[1], pages[2]
    assert header["body"].startswith(b"\x03vorbis") and sum(s < 255 for s in header["segments"]) == 2
    count = size = 0
    for lacing in audio["segments"]:  # the first packet: its segments up to one under 255
        count, size = count + 1, size + lacing
        if lacing < 255:
            break
    header["segments"] += audio["segments"][:count]
    header["body"] += audio["body"][:size]
    audio["segments"], audio["body"] = audio["segments"][count:], audio["body"][size:]
    target.write_bytes(b"".join(build_page(p) for p in pages))


@pytest.fixture(scope="module")
def oggs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ogg")
    sr = 22050
    t = np.arange(sr * 4) / sr
    rng = np.random.default_rng(0)
    # a chirp with noise: any shift of the signal changes every sample
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)
    normal, joined = folder / "normal.ogg", folder / "joined.ogg"
    sf.write(normal, x.astype(np.float32), sr, format="OGG", subtype="VORBIS")
    join_first_audio_packet(normal, joined)
    return normal, joined


def test_detects_audio_on_the_header_page(oggs, tmp_path):
    normal, joined = oggs
    assert not ogg_header_page_carries_audio(normal)
    assert ogg_header_page_carries_audio(joined)
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(joined.read_bytes()[:60])  # the header page's segment table cut off
    assert not ogg_header_page_carries_audio(cut)
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(100, np.float32), 8000)
    assert not ogg_header_page_carries_audio(wav)
    assert not ogg_header_page_carries_audio(tmp_path / "missing.ogg")


def test_libsndfile_alone_decodes_it_shifted(oggs):
    """The case itself, so that the fix below is known to be needed: libsndfile's samples
    of the joined file are not the normal file's."""
    normal, joined = oggs
    a, _ = sf.read(normal, dtype="float32")
    b, _ = sf.read(joined, dtype="float32")
    n = min(len(a), len(b))
    assert len(b) < len(a) and np.abs(a[:n] - b[:n]).max() > 0.05


@needs_ffmpeg
def test_header_page_audio_decodes_like_the_normal_file(oggs):
    normal, joined = oggs
    assert probe(joined).backend == "ffmpeg"
    assert probe(normal).backend == "soundfile"  # a normal Ogg file stays with libsndfile
    whole_a, whole_b = load_audio(normal, 16000), load_audio(joined, 16000)
    assert len(whole_a) == len(whole_b)
    assert np.abs(whole_a - whole_b).max() < 1e-4
    for offset in (0.0, 0.004, 0.06, 0.5, 2.0):  # windows near the start read without a seek
        a = load_audio(normal, 16000, offset=offset, duration=1.0)
        b = load_audio(joined, 16000, offset=offset, duration=1.0)
        assert len(a) == len(b) == 16000 and np.abs(a - b).max() < 1e-4, offset


@needs_ffmpeg
def test_tagged_from_the_right_audio(oggs, tiny_model_dir):
    normal, joined = oggs
    scores = []
    for path in (normal, joined):
        result = runner.invoke(app, ["tag", str(path), "--model", str(tiny_model_dir), "-f", "jsonl", "--all-tags",
                                     "--windows", "all"], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        assert "warning" not in result.stderr
        scores.append({t["tag"]: t["score"] for t in json.loads(result.stdout)["tags"]})
    assert scores[0].keys() == scores[1].keys()
    # the same up to the records' 4 decimals (shifted audio moved them by over 1e-3)
    assert max(abs(scores[0][k] - scores[1][k]) for k in scores[0]) < 2e-4


def test_without_ffmpeg_a_one_line_warning(oggs, tiny_model_dir, tmp_path, monkeypatch):
    normal, joined = oggs
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    result = runner.invoke(app, ["tag", str(normal), str(joined), "--model", str(tiny_model_dir), "-f", "jsonl"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert str(joined) in warnings[0] and "install ffmpeg" in warnings[0]


def _write_joined(oggs, tmp_path, extra: list[str]):
    """Tag a copy of the joined file, then write its tags into it (``extra``: write's options)."""
    import shutil

    song = tmp_path / "song.ogg"
    shutil.copy(oggs[1], song)
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"path": str(song), "model": "m", "duration": 4.0,
                                   "tags": [{"tag": "rock", "score": 0.9}]}) + "\n")
    return song, runner.invoke(app, ["write", str(results), "--undo-log", str(tmp_path / "u.jsonl"), *extra],
                               catch_exceptions=False)


@needs_ffmpeg
def test_write_verifies_header_page_audio_with_ffmpeg(oggs, tmp_path):
    """mutagen re-paginates the file (its first audio packet gets a page of its own): libsndfile
    would decode old and new differently, ffmpeg decodes both alike, so the write goes through."""
    song, result = _write_joined(oggs, tmp_path, [])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert np.abs(load_audio(song, 16000) - load_audio(oggs[0], 16000)).max() < 1e-4
    assert "Rock" in str(__import__("mutagen").File(song).tags.get("genre"))


def test_write_without_ffmpeg_refuses_in_one_line_also_in_a_dry_run(oggs, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    for extra in (["--dry-run"], []):
        song, result = _write_joined(oggs, tmp_path, extra)
        before = oggs[1].read_bytes()
        assert result.exit_code == 1, result.stdout + result.stderr
        assert "shares its header page" in result.stdout + result.stderr and "install ffmpeg" in result.stdout
        assert song.read_bytes() == before
