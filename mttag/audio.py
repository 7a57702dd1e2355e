"""Audio input: find audio files, decode them to mono float32 at the model's rate.

libsndfile (through soundfile) decodes wav, flac, ogg/vorbis, opus and mp3 and
can seek, so reading a window of an hour-long file reads only that window.
Anything else (m4a/aac, wma, ...) goes through an ``ffmpeg`` executable.
Every failure is an :class:`AudioError` whose message names the file and the reason.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SOUNDFILE_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64"}
FFMPEG_EXTENSIONS = {".m4a", ".mp4", ".aac", ".alac", ".wma", ".webm", ".mka", ".ac3", ".amr", ".ape", ".wv", ".mpc"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS

# Tracks shorter than this are refused rather than tagged: a fraction of a
# second carries no genre or mood, and tags on it would be noise.
MIN_DURATION = 1.0
# Resampling a window on its own needs context on each side to avoid edge transients.
_MARGIN_SECONDS = 0.05
FFMPEG_TIMEOUT = 600


class AudioError(Exception):
    """A file that cannot be used; ``str(exc)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int
    backend: str  # "soundfile" or "ffmpeg"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def iter_audio_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files named directly (whatever their extension), and audio files found
    recursively in folders, sorted, each real file once, safe against symlink loops."""
    seen: set[str] = set()
    for root in paths:
        root = Path(root)
        if not root.is_dir():
            yield root  # a missing or odd file is reported by the decoder, not skipped silently
            continue
        visited_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited_dirs:
                dirnames[:] = []
                continue
            visited_dirs.add(real)
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                path = Path(dirpath) / name
                key = os.path.realpath(path)
                if key not in seen:
                    seen.add(key)
                    yield path


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(path, f"cannot read ({exc.strerror})") from None
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied")


def _ffprobe(path: Path) -> AudioInfo:
    if not ffmpeg_available():
        raise AudioError(path, "format not supported by libsndfile and no ffmpeg on PATH (install ffmpeg to read it)")
    probe = shutil.which("ffprobe")
    if probe is None:
        raise AudioError(path, "needs ffprobe (part of ffmpeg) to read this format")
    cmd = [probe, "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels,duration:format=duration", "-of", "default=noprint_wrappers=1", str(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AudioError(path, "ffprobe timed out") from None
    fields: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if value and value != "N/A":
            fields.setdefault(key, value)
    if out.returncode != 0 or "sample_rate" not in fields:
        reason = (out.stderr.strip().splitlines() or ["no audio stream"])[-1]
        raise AudioError(path, f"not a decodable audio file ({_short(reason, path)})")
    sr = int(fields["sample_rate"])
    duration = float(fields.get("duration", 0) or 0)
    if sr <= 0:
        raise AudioError(path, "not a decodable audio file (no audio stream could be parsed)")
    if duration <= 0:
        raise AudioError(path, "unknown duration (truncated or streaming file)")
    return AudioInfo(str(path), sr, int(fields.get("channels", 1)), int(duration * sr), "ffmpeg")


def _short(message: str, path: Path) -> str:
    message = message.replace(str(path), "").strip(" :")
    return message[:160]


def probe(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channels and length, from the header, without decoding."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() not in FFMPEG_EXTENSIONS:
        try:
            info = sf.info(str(path))
            if info.frames > 0 and info.samplerate > 0:
                return AudioInfo(str(path), int(info.samplerate), int(info.channels), int(info.frames), "soundfile")
            if info.frames == 0 and not ffmpeg_available():
                raise AudioError(path, "contains no audio samples")
        except AudioError:
            raise
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            if not ffmpeg_available():
                raise AudioError(path, f"not a decodable audio file ({_short(str(exc), path)})") from None
    return _ffprobe(path)


def _to_mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data.astype(np.float32, copy=False)


def _sanitize(x: np.ndarray) -> np.ndarray:
    # Float files can hold NaN/inf (broken encoders, bad edits); they would poison
    # every frame they touch, so they become silence.
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def _read_soundfile(info: AudioInfo, start: int, frames: int) -> np.ndarray:
    try:
        with sf.SoundFile(info.path) as f:
            if start:
                f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(info.path, f"decoding failed ({_short(str(exc), Path(info.path))})") from None
    return _to_mono(data)


def _read_ffmpeg(info: AudioInfo, offset: float, duration: float | None, sample_rate: int) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{offset:.6f}", "-i", info.path]
    if duration is not None:
        cmd += ["-t", f"{duration:.6f}"]
    cmd += ["-vn", "-f", "f32le", "-ac", "1", "-ar", str(sample_rate), "-"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AudioError(info.path, f"ffmpeg did not finish in {FFMPEG_TIMEOUT} s") from None
    if out.returncode != 0:
        reason = (out.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"])[-1]
        raise AudioError(info.path, f"ffmpeg could not decode it ({_short(reason, Path(info.path))})")
    return np.frombuffer(out.stdout, dtype=np.float32).copy()


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """High-quality (soxr HQ) resampling of a mono signal."""
    if orig_sr == target_sr or x.size == 0:
        return x
    return soxr.resample(x, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def read_segment(info: AudioInfo, offset: float, duration: float | None, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate`` from ``offset`` seconds, ``duration`` seconds long
    (``None``: to the end). Reads only that part of the file where the format can seek."""
    if info.backend == "ffmpeg":
        x = _read_ffmpeg(info, offset, duration, sample_rate)
    else:
        src = info.sample_rate
        start = max(0, int(round(offset * src)))
        stop = info.frames if duration is None else min(info.frames, start + int(round(duration * src)))
        if src == sample_rate:
            x = _read_soundfile(info, start, stop - start)
        else:
            margin = int(_MARGIN_SECONDS * src)
            lo, hi = max(0, start - margin), min(info.frames, stop + margin)
            raw = resample(_read_soundfile(info, lo, hi - lo), src, sample_rate)
            head = int(round((start - lo) * sample_rate / src))
            length = int(round((stop - start) * sample_rate / src))
            x = raw[head : head + length]
    return _sanitize(x)


def load_audio(path: str | os.PathLike, sample_rate: int = 22050, offset: float = 0.0,
               duration: float | None = None) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate`` (whole file, or a part of it)."""
    info = probe(path)
    x = read_segment(info, offset, duration, sample_rate)
    if x.size == 0:
        raise AudioError(path, "contains no audio samples")
    return x


def window_starts(duration: float, window: float, n_windows: int | None) -> list[float]:
    """Start times (s) of the windows a track is cut into.

    ``n_windows=None``: consecutive windows covering the whole track, the last one
    aligned to the end. Otherwise at most ``n_windows`` evenly spaced windows
    (overlapping only when the track is shorter than ``n_windows`` windows).
    """
    if duration <= window:
        return [0.0]
    last = duration - window
    if n_windows is None:
        count = math.ceil(duration / window - 1e-9)
        return [min(i * window, last) for i in range(count)]
    count = max(1, min(n_windows, math.ceil(duration / window - 1e-9)))
    if count == 1:
        return [last / 2]
    return [last * i / (count - 1) for i in range(count)]


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` samples: longer input is cut, shorter input is repeated
    (a loop sounds like music to the model; zero padding sounds like silence)."""
    if x.size >= n:
        return x[:n]
    reps = math.ceil(n / max(1, x.size))
    return np.tile(x, reps)[:n]


def is_silent(x: np.ndarray, threshold_db: float = -90.0) -> bool:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return peak <= 10 ** (threshold_db / 20)


def iter_windows(path: str | os.PathLike, sample_rate: int, window_seconds: float,
                 n_windows: int | None) -> tuple[AudioInfo, Iterator[np.ndarray]]:
    """Probe ``path`` and return its info plus a generator of fixed-length windows
    (``window_seconds`` at ``sample_rate``), read one at a time so memory stays
    bounded by one window whatever the track length."""
    info = probe(path)
    if info.duration < MIN_DURATION:
        raise AudioError(path, f"too short ({info.duration:.2f} s; at least {MIN_DURATION:g} s needed)")
    n = int(round(window_seconds * sample_rate))
    starts = window_starts(info.duration, window_seconds, n_windows)

    def generate() -> Iterator[np.ndarray]:
        for start in starts:
            x = read_segment(info, start, window_seconds, sample_rate)
            if x.size < MIN_DURATION * sample_rate * 0.5:
                # header promised more than the file holds (truncated download)
                if start == starts[0]:
                    raise AudioError(path, f"truncated: header says {info.duration:.1f} s but no audio could be read")
                return
            yield fit_length(x, n)

    return info, generate()
