"""Audio input: every format, downmix, resampling, seeking, windows, and bad input."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import HAS_FFMPEG, finishes, needs_ffmpeg, synth, write_audio

from mttag.audio import decode as audio
from mttag.audio import windows as windows_mod
from mttag.audio.decode import MIN_DURATION, AudioError, check_decoded, load_audio, probe, read_segment
from mttag.audio.files import iter_audio_files
from mttag.audio.windows import even_starts, fit_length, is_silent, iter_windows, window_starts

SR = 22050
SOUNDFILE_FORMATS = ["wav", "flac", "ogg", "opus", "mp3"]
ALL_FORMATS = SOUNDFILE_FORMATS + [pytest.param("m4a", marks=needs_ffmpeg)]


def dominant_frequency(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def one_line_error(exc: pytest.ExceptionInfo, path: Path, *reasons: str) -> str:
    """The error names the file and one of ``reasons``, on a single line."""
    message = str(exc.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message, message
    assert any(r in exc.value.reason for r in reasons), message
    return message


# -- formats ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ALL_FORMATS)
def test_decodes_every_format_to_mono_22050(tmp_path, make_audio, ext):
    path = make_audio(tmp_path / f"tone.{ext}", seconds=2.0, kind="tone", freq=440.0, amp=0.4)
    info = probe(path)
    assert info.backend == ("ffmpeg" if ext == "m4a" else "soundfile")
    assert info.channels == 2
    assert info.duration == pytest.approx(2.0, abs=0.1)
    x = load_audio(path, SR)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == pytest.approx(2.0 * SR, abs=0.1 * SR)
    assert np.isfinite(x).all()
    middle = x[SR // 4 : -SR // 4]  # away from codec priming and fades
    assert dominant_frequency(middle, SR) == pytest.approx(440.0, abs=2.0)
    assert rms(middle) == pytest.approx(0.4 / np.sqrt(2), rel=0.1)


@needs_ffmpeg
def test_ffmpeg_and_soundfile_downmix_alike(tmp_path, make_audio):
    """Both backends average the channels (ffmpeg's own -ac 1 matrix would not)."""
    data = synth(2.0, 44100, 2, "tone", amp=0.4)
    data[:, 1] = 0.0  # mono of (a, 0) is a/2
    for ext in ("wav", "m4a"):
        path = write_audio(tmp_path / f"left.{ext}", data)
        x = load_audio(path, SR)[SR // 4 : -SR // 4]
        assert rms(x) == pytest.approx(0.2 / np.sqrt(2), rel=0.05), ext


def test_missing_ffmpeg_gives_a_clear_error(tmp_path, monkeypatch, make_audio):
    path = tmp_path / "song.m4a"
    if HAS_FFMPEG:
        make_audio(path)
    else:
        path.write_bytes(b"\0\0\0\x20ftypM4A " + os.urandom(2000))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no ffmpeg, no ffprobe
    with pytest.raises(AudioError) as exc:
        probe(path)
    message = one_line_error(exc, path, "ffmpeg")
    assert "install ffmpeg" in message
    # formats libsndfile reads still work without ffmpeg
    assert load_audio(make_audio(tmp_path / "fine.flac"), SR).size > 0


def test_missing_ffmpeg_for_an_undecodable_soundfile_extension(tmp_path, monkeypatch):
    path = tmp_path / "junk.wav"
    path.write_bytes(os.urandom(4096))
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(AudioError) as exc:
        probe(path)
    one_line_error(exc, path, "not a decodable audio file")


@needs_ffmpeg
def test_wrong_extension_falls_back_to_ffmpeg(tmp_path, make_audio):
    m4a = make_audio(tmp_path / "real.m4a", kind="tone")
    disguised = tmp_path / "disguised.mp3"
    disguised.write_bytes(m4a.read_bytes())
    x = load_audio(disguised, SR)
    assert dominant_frequency(x[SR // 4 : -SR // 4], SR) == pytest.approx(440.0, abs=2.0)


def test_wav_named_flac_decodes(tmp_path, make_audio):
    wav = make_audio(tmp_path / "a.wav", kind="tone")
    flac = tmp_path / "a.flac"
    flac.write_bytes(wav.read_bytes())
    np.testing.assert_array_equal(load_audio(flac, SR), load_audio(wav, SR))


# -- downmix and resampling ------------------------------------------------------------


def test_stereo_and_multichannel_are_averaged(tmp_path):
    base = synth(1.5, 44100, 1, "tone", amp=1.0)[:, 0]
    six = np.stack([base * 0.05 * (c + 1) for c in range(6)], axis=1)  # mean gain 0.175
    path = write_audio(tmp_path / "six.wav", six, subtype="FLOAT")
    assert probe(path).channels == 6
    x = load_audio(path, 44100)  # same rate: no resampling involved
    np.testing.assert_allclose(x, base * 0.175, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 7, 8, 12])
def test_downmix_is_bit_for_bit_the_channel_mean(channels):
    # the fast column sum must not change a single sample against numpy's mean (the
    # order of the additions decides the rounding), nor for float64 input
    rng = np.random.default_rng(channels)
    data = (rng.standard_normal((5000, channels)) * 10.0 ** rng.integers(-4, 4, (5000, channels)))
    for x in (data.astype(np.float32), data):
        mono = audio._to_mono(x)
        assert mono.dtype == np.float32
        assert np.array_equal(mono, x.astype(np.float32).mean(axis=1, dtype=np.float32))
    assert np.array_equal(audio._to_mono(data[:, 0].astype(np.float32)), data[:, 0].astype(np.float32))


def test_resampling_keeps_frequency_and_amplitude(tmp_path):
    """A 1 kHz tone at 44.1 kHz comes out as the same 1 kHz tone at 22,050 Hz."""
    path = write_audio(tmp_path / "1k.wav", synth(3.0, 44100, 1, "tone", freq=1000.0, amp=0.5), subtype="FLOAT")
    x = load_audio(path, SR)
    assert len(x) == 3 * SR
    expected = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(len(x)) / SR)
    middle = slice(SR // 10, -SR // 10)
    assert dominant_frequency(x[middle], SR) == pytest.approx(1000.0, abs=0.5)
    assert rms(x[middle]) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    # no delay, no phase shift: sample for sample the ideal 22,050 Hz sine
    assert np.max(np.abs(x[middle] - expected[middle])) < 2e-3


def test_resampling_removes_content_above_the_new_nyquist(tmp_path):
    path = write_audio(tmp_path / "15k.wav", synth(2.0, 44100, 1, "tone", freq=15000.0, amp=0.5), subtype="FLOAT")
    x = load_audio(path, SR)
    assert rms(x[SR // 10 : -SR // 10]) < 1e-3  # would alias to 7,050 Hz with a poor resampler


def test_opus_48k_resamples(tmp_path, make_audio):
    path = make_audio(tmp_path / "a.opus", seconds=2.0, kind="tone", freq=1000.0)
    assert probe(path).sample_rate == 48000
    x = load_audio(path, SR)
    assert dominant_frequency(x[SR // 4 : -SR // 4], SR) == pytest.approx(1000.0, abs=2.0)


# -- seeking: a window equals the same slice of the fully decoded track -----------------


@pytest.mark.parametrize("ext", ALL_FORMATS)
def test_window_equals_slice_of_full_decode(tmp_path, make_audio, ext):
    # m4a: a noise-free sweep (AAC's noise substitution is random, so noisy content
    # decodes differently after every seek); others: music with noise
    kind = "chirp" if ext == "m4a" else "music"
    path = make_audio(tmp_path / f"long.{ext}", seconds=12.0, kind=kind)
    info = probe(path)
    full = read_segment(info, 0.0, None, SR)
    tolerance = 1e-3 if ext == "m4a" else 1e-4
    # ffmpeg decodes an AAC stream's last ~40 ms differently after a seek (end padding)
    tail = int(0.05 * SR) if ext == "m4a" else 0
    for offset in (0.0, 1.3, 3.77, 6.0001, info.duration - 2.5):
        window = read_segment(info, offset, 2.5, SR)
        start = int(round(offset * SR))
        expected = full[start : start + int(round(2.5 * SR))]
        assert abs(len(window) - len(expected)) <= 1, (offset, len(window), len(expected))
        n = min(len(window), len(expected), int(round(info.duration * SR)) - tail - start)
        np.testing.assert_allclose(window[:n], expected[:n], atol=tolerance, err_msg=f"offset {offset}")


def test_window_past_the_end_is_empty(tmp_path, make_audio):
    info = probe(make_audio(tmp_path / "a.flac", seconds=2.0))
    assert read_segment(info, 5.0, 1.0, SR).size == 0
    assert len(read_segment(info, 1.5, 1.0, SR)) == pytest.approx(0.5 * SR, abs=2)


# -- windows ----------------------------------------------------------------------------


def test_window_starts_short_track_is_one_window():
    assert window_starts(5.0, 10.0, 8) == [0.0]
    assert window_starts(10.0, 10.0, None) == [0.0]


def test_window_starts_all_covers_the_track_last_aligned_to_end():
    assert window_starts(30.0, 10.0, None) == [0.0, 10.0, 20.0]
    assert window_starts(25.0, 10.0, None) == [0.0, 10.0, 15.0]
    starts = window_starts(3600.0, 10.0, None)
    assert len(starts) == 360 and starts[-1] == 3590.0


def test_window_starts_bounded_count_is_spread_evenly_over_the_whole_track_grid():
    # 24 grid windows, 8 runs of 3: the centre of each
    starts = window_starts(240.0, 10.0, 8)
    assert starts == [10.0, 40.0, 70.0, 100.0, 130.0, 160.0, 190.0, 220.0]
    # always windows --windows all would also average (the last grid window ends with the track)
    for duration in (10.5, 25.0, 33.3, 240.0, 3601.0):
        grid = window_starts(duration, 10.0, None)
        for n in (1, 2, 3, 7, 8, 100, 1000):
            s = window_starts(duration, 10.0, n)
            assert set(s) <= set(grid) and s == sorted(s) and len(set(s)) == len(s)
            assert len(s) == min(n, len(grid))
            assert all(0.0 <= x <= duration - 10.0 + 1e-9 for x in s)
    # as many windows as the grid holds, or more: the whole track
    assert window_starts(25.0, 10.0, 8) == window_starts(25.0, 10.0, None) == [0.0, 10.0, 15.0]
    # a single window: the middle of the grid (rounded down)
    assert window_starts(100.0, 10.0, 1) == [40.0]
    assert window_starts(110.0, 10.0, 1) == [50.0]
    # index arithmetic in integers: 3600 s in 360 windows, 7 runs
    idx = [round(s / 10.0) for s in window_starts(3600.0, 10.0, 7)]
    assert idx == [25, 77, 128, 179, 231, 282, 334]


def test_even_starts_is_the_one_evenly_spaced_plan():
    """Validation crops and the teacher's windows come from even_starts."""
    assert even_starts(100.0, 10.0, 4) == [0.0, 30.0, 60.0, 90.0]  # first at 0, last ends with the track
    assert even_starts(100.0, 10.0, 1) == [45.0]  # one window: the middle
    assert even_starts(5.0, 10.0, 3) == [0.0, 0.0, 0.0]  # shorter than a window: every window at 0
    assert even_starts(20800, 8000, 3) == [0.0, 6400.0, 12800.0]  # in samples as well as seconds


def test_too_little_audio_is_one_check_and_one_message(tmp_path, make_audio):
    info = probe(make_audio(tmp_path / "a.wav", seconds=4.0))
    check_decoded(info, int(MIN_DURATION * SR * 0.5), SR)  # half the minimum duration is enough
    with pytest.raises(AudioError, match=r"truncated: header says 4\.0 s but no audio could be read"):
        check_decoded(info, int(MIN_DURATION * SR * 0.5) - 1, SR)


def test_iter_windows_yields_fixed_length_windows(tmp_path, make_audio):
    path = make_audio(tmp_path / "a.flac", seconds=7.0)
    info, gen = iter_windows(path, SR, 2.0, None)
    windows = list(gen)
    assert info.duration == pytest.approx(7.0)
    assert len(windows) == len(window_starts(7.0, 2.0, None)) == 4
    assert all(w.shape == (2 * SR,) and w.dtype == np.float32 for w in windows)
    _, gen = iter_windows(path, SR, 2.0, 2)
    assert len(list(gen)) == 2


def test_track_shorter_than_a_window_is_looped(tmp_path, make_audio):
    path = make_audio(tmp_path / "short.wav", seconds=1.2, sr=SR)
    x = load_audio(path, SR)
    _, gen = iter_windows(path, SR, 3.0, 8)
    (window,) = list(gen)
    assert len(window) == 3 * SR
    np.testing.assert_array_equal(window[: len(x)], x)
    np.testing.assert_array_equal(window[len(x) : 2 * len(x)], x)


def test_fit_length_and_is_silent():
    assert fit_length(np.arange(5, dtype=np.float32), 3).tolist() == [0, 1, 2]
    assert fit_length(np.arange(3, dtype=np.float32), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert is_silent(np.zeros(10)) and is_silent(np.full(10, 1e-6)) and is_silent(np.zeros(0))
    assert not is_silent(np.full(10, 1e-3))


# -- bounded memory: windows are read in bounded stretches ---------------------------


def test_reading_windows_reads_bounded_stretches(tmp_path, monkeypatch):
    """A 3-minute flac with every window: consecutive windows are decoded in stretches of
    at most ``_RUN_SECONDS`` (one seek and one resampler start-up per stretch), each read
    asks libsndfile for at most one block, and the whole track is read about once in total
    (not once per window, not all at once)."""
    path = tmp_path / "three minutes.flac"
    with sf.SoundFile(path, "w", 44100, 2) as f:
        for i in range(18):
            f.write(synth(10.0, 44100, 2, "music", seed=i))
    reads: list[int] = []
    segments: list[int] = []
    original_read, original_segment = sf.SoundFile.read, audio._read_soundfile

    def recording_read(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original_read(self, frames, *args, **kwargs)

    def recording_segment(info, start, frames):
        segments.append(frames)
        return original_segment(info, start, frames)

    monkeypatch.setattr(sf.SoundFile, "read", recording_read)
    monkeypatch.setattr(audio, "_read_soundfile", recording_segment)
    import tracemalloc

    tracemalloc.start()
    info, gen = iter_windows(path, SR, 10.0, None)
    n = sum(1 for _ in gen)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    run_frames = int(windows_mod._RUN_SECONDS * 44100)
    assert n == 18 and len(segments) == 180 // int(windows_mod._RUN_SECONDS)
    assert all(0 < r <= audio._BLOCK_FRAMES for r in reads)  # never -1 (= the whole file)
    assert max(segments) <= run_frames + 2 * int(audio._MARGIN_SECONDS * 44100) + 2
    assert sum(segments) < 1.02 * info.frames
    # whole track as float32 mono at 44.1 kHz would be ~32 MB
    assert peak < 16e6, f"peak traced allocation {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("name", ["a.flac", "a.ogg", "a.wav"])
def test_windows_cut_from_a_stretch_equal_windows_read_alone(tmp_path, make_audio, monkeypatch, name):
    path = make_audio(tmp_path / name, seconds=23.0)
    _, gen = iter_windows(path, SR, 2.0, None)
    together = list(gen)
    monkeypatch.setattr(windows_mod, "_RUN_SECONDS", 0.0)  # every window its own read
    _, gen = iter_windows(path, SR, 2.0, None)
    alone = list(gen)
    assert len(together) == len(alone) == 12
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_runs_group_close_windows_only():
    assert windows_mod._runs([0, 3, 6], 3.0, 30.0, 1.0) == [[0, 3, 6]]
    assert windows_mod._runs([0, 3, 6, 10], 3.0, 30.0, 1.0) == [[0, 3, 6, 10]]  # 1 s gap: still one run
    assert windows_mod._runs([0, 10, 20], 3.0, 30.0, 1.0) == [[0], [10], [20]]  # sparse plan: one read each
    assert windows_mod._runs([0, 3, 6, 9], 3.0, 9.0, 1.0) == [[0, 3, 6], [9]]  # a run spans at most 9 s
    assert windows_mod._runs([0, 2.5, 3.0], 3.0, 30.0, 1.0) == [[0, 2.5, 3.0]]  # overlapping last window


@needs_ffmpeg
def test_ffmpeg_windows_decode_one_stretch_or_only_the_window(tmp_path, make_audio, monkeypatch):
    path = make_audio(tmp_path / "a.m4a", seconds=9.0)
    commands: list[list[str]] = []
    original = audio.subprocess.Popen

    def recording_popen(cmd, *args, **kwargs):
        commands.append(list(cmd))
        return original(cmd, *args, **kwargs)

    monkeypatch.setattr(audio.subprocess, "Popen", recording_popen)
    _, gen = iter_windows(path, SR, 2.0, None)
    assert len(list(gen)) == 5
    decodes = [c for c in commands if Path(c[0]).name == "ffmpeg"]  # not ffprobe
    assert len(decodes) == 1  # consecutive windows: one decode of the stretch they cover
    assert float(decodes[0][decodes[0].index("-t") + 1]) < 9.2
    commands.clear()
    _, gen = iter_windows(path, SR, 2.0, 2)  # windows at 0 s and 7 s: far apart, read alone
    assert len(list(gen)) == 2
    decodes = [c for c in commands if Path(c[0]).name == "ffmpeg"]
    assert len(decodes) == 2
    for cmd in decodes:
        assert "-ss" in cmd and "-t" in cmd
        assert float(cmd[cmd.index("-t") + 1]) < 2.2


# -- bad input: each has a one-line error or a documented result ------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp3"
    path.touch()
    with pytest.raises(AudioError) as exc:
        probe(path)
    one_line_error(exc, path, "empty file")


@pytest.mark.parametrize("name", ["noise.wav", "noise.flac", "noise.mp3", "noise.ogg", "noise.m4a"])
def test_corrupt_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as exc:
        finishes(lambda: list(iter_windows(path, SR, 2.0, 8)[1]))
    one_line_error(exc, path, "not a decodable audio file", "decoding failed", "ffmpeg")


def test_text_file_named_mp3(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio\n" * 100)
    with pytest.raises(AudioError) as exc:
        finishes(lambda: probe(path))
    one_line_error(exc, path, "not a decodable audio file")


def test_directory_named_like_audio(tmp_path, make_audio):
    folder = tmp_path / "album.wav"
    folder.mkdir()
    inside = make_audio(folder / "inside.flac")
    with pytest.raises(AudioError) as exc:
        probe(folder)
    one_line_error(exc, folder, "is a directory")
    # searching the parent walks into it rather than treating it as a file
    assert list(iter_audio_files([tmp_path])) == [inside]


def test_missing_file_and_broken_symlink(tmp_path):
    with pytest.raises(AudioError) as exc:
        probe(tmp_path / "nope.wav")
    one_line_error(exc, tmp_path / "nope.wav", "no such file")
    link = tmp_path / "dangling.wav"
    link.symlink_to(tmp_path / "gone.wav")
    with pytest.raises(AudioError) as exc:
        probe(link)
    one_line_error(exc, link, "broken symbolic link")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_fifo_does_not_hang(tmp_path):
    path = tmp_path / "pipe.wav"
    os.mkfifo(path)
    with pytest.raises(AudioError) as exc:
        finishes(lambda: probe(path), timeout=10)
    one_line_error(exc, path, "not a regular file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path, make_audio):
    path = make_audio(tmp_path / "locked.wav")
    path.chmod(0)
    try:
        with pytest.raises(AudioError) as exc:
            probe(path)
        one_line_error(exc, path, "permission denied")
    finally:
        path.chmod(0o644)


def test_sub_second_file_is_too_short(tmp_path, make_audio):
    path = make_audio(tmp_path / "blip.wav", seconds=0.3)
    with pytest.raises(AudioError) as exc:
        iter_windows(path, SR, 10.0, 8)
    message = one_line_error(exc, path, "too short")
    assert "0.30 s" in message
    # exactly the minimum is accepted
    iter_windows(make_audio(tmp_path / "one.wav", seconds=MIN_DURATION), SR, 10.0, 8)


def test_silent_file_decodes_to_silence(tmp_path, make_audio):
    """Decoding succeeds; the tagger turns an all-silent track into the error "silent"
    (see test_tag_cli.py)."""
    path = make_audio(tmp_path / "silence.flac", kind="silence")
    _, gen = iter_windows(path, SR, 1.0, None)
    windows = list(gen)
    assert len(windows) == 2 and all(is_silent(w) for w in windows)


def test_nan_and_inf_samples_become_zero(tmp_path):
    data = synth(2.0, 44100, 1, "tone", amp=0.3)[:, 0]
    data[1000:3000] = np.nan
    data[50000] = np.inf
    data[60000] = -np.inf
    path = write_audio(tmp_path / "broken.wav", data, subtype="FLOAT")
    x = load_audio(path, 44100)
    assert np.isfinite(x).all()
    assert np.all(x[1000:3000] == 0) and x[50000] == 0 and x[60000] == 0
    np.testing.assert_array_equal(x[10000:40000], data[10000:40000])
    _, gen = iter_windows(path, SR, 1.0, None)
    windows = list(gen)
    assert len(windows) == 2 and all(np.isfinite(w).all() for w in windows)
    assert not is_silent(windows[0]) and not is_silent(windows[1])


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name(f"cut {path.name}")
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "ogg"])
def test_truncated_file_is_tagged_from_what_decodes(tmp_path, make_audio, ext):
    """A file cut in half (an interrupted download) gives the windows that exist,
    whatever its header promises; none of them silent or broken."""
    whole = make_audio(tmp_path / f"song.{ext}", seconds=20.0)
    cut = _cut(whole, 0.5)
    info, gen = finishes(lambda: iter_windows(cut, SR, 2.0, None))
    windows = finishes(lambda: list(gen))
    assert 2 <= len(windows) <= len(window_starts(info.duration, 2.0, None))
    assert len(windows) * 2.0 <= 14.0  # about half of the 20 s, not more
    assert all(w.shape == (2 * SR,) and np.isfinite(w).all() and not is_silent(w) for w in windows)
    _, gen = iter_windows(cut, SR, 2.0, 8)
    assert 1 <= len(list(gen)) <= 8


# (not ogg: libsndfile 1.2 crashes writing 60 s of vorbis in one call, before any mttag code runs)
@pytest.mark.parametrize("ext", ["flac", "mp3"])
def test_truncated_file_read_in_several_stretches_stops_at_the_damage(tmp_path, make_audio, ext):
    """60 s of 2 s windows are read in three 20 s stretches; cut at half, the first stretch
    decodes whole, the second up to the cut, the third not at all: the windows before the
    cut, and nothing after it."""
    cut = _cut(make_audio(tmp_path / f"long.{ext}", seconds=60.0), 0.5)
    info, gen = iter_windows(cut, SR, 2.0, None)
    assert len(windows_mod._runs(window_starts(info.duration, 2.0, None), 2.0, windows_mod._RUN_SECONDS, 1.0)) >= 3
    windows = finishes(lambda: list(gen))
    assert 12 <= len(windows) <= 16
    assert all(np.isfinite(w).all() and not is_silent(w) for w in windows)


def test_header_longer_than_data_stops_at_the_real_end(tmp_path, make_audio):
    """The mp3 header (Xing frame count) says 30 s; only the first 10 % is there."""
    cut = _cut(make_audio(tmp_path / "song.mp3", seconds=30.0), 0.1)
    info, gen = iter_windows(cut, SR, 2.0, None)
    assert info.duration > 20  # the header's claim
    windows = finishes(lambda: list(gen))
    assert 1 <= len(windows) <= 3


def test_truncated_to_the_header_only(tmp_path, make_audio):
    cut = _cut(make_audio(tmp_path / "song.flac", seconds=5.0), 0.01)
    with pytest.raises(AudioError) as exc:
        finishes(lambda: list(iter_windows(cut, SR, 2.0, 8)[1]))
    one_line_error(exc, cut, "decoding failed", "truncated", "not a decodable", "too short")


# -- finding files -----------------------------------------------------------------------


def test_iter_audio_files_recursive_sorted_audio_only(tmp_path, make_audio):
    a = make_audio(tmp_path / "Ünïcode ü" / "b track.flac")
    b = make_audio(tmp_path / "Ünïcode ü" / "a track.MP3")
    c = make_audio(tmp_path / "z.wav")
    (tmp_path / "cover.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.wav").write_bytes(c.read_bytes())
    found = list(iter_audio_files([tmp_path]))
    assert found == [c, b, a]
    # a file named directly is kept whatever its extension, and each file comes once
    assert list(iter_audio_files([tmp_path / "notes.txt", c, tmp_path])) == [tmp_path / "notes.txt", c, b, a]


def test_symlink_loops_terminate(tmp_path, make_audio):
    root = tmp_path / "music"
    song = make_audio(root / "sub" / "song.wav")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # sub/loop -> music
    (root / "self").symlink_to(root / "self")  # a link to itself
    (root / "again.wav").symlink_to(song)  # the same file under another name
    found = finishes(lambda: list(iter_audio_files([root])), timeout=10)
    assert len(found) == 1 and found[0].resolve() == song.resolve()


def test_self_referencing_link_named_like_audio(tmp_path):
    link = tmp_path / "loop.wav"
    link.symlink_to(link)
    (found,) = finishes(lambda: list(iter_audio_files([tmp_path])), timeout=10)
    with pytest.raises(AudioError) as exc:
        probe(found)
    one_line_error(exc, link, "broken symbolic link", "no such file")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a filesystem that takes any bytes")
def test_libsndfile_opens_a_file_name_that_is_not_utf8_without_ffmpeg(tmp_path, monkeypatch):
    """soundfile encodes str paths strictly; a Latin-1 name must still decode without
    the ffmpeg fallback (which is what hid this where ffmpeg is installed)."""
    import shutil

    from mttag.filetags.writer import decoded_digest

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert not audio.ffmpeg_available()
    x = synth(2.0, 22050)
    sf.write(tmp_path / "plain.wav", x, 22050)
    name = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.wav")
    os.link(tmp_path / "plain.wav", name)
    y = load_audio(name, 22050)
    assert np.array_equal(y, load_audio(tmp_path / "plain.wav", 22050))
    assert decoded_digest(name) == decoded_digest(tmp_path / "plain.wav") is not None
