"""Audio input: find audio files, decode them to mono float32 at the model's rate.

libsndfile (through soundfile) decodes wav, flac, ogg/vorbis, opus and mp3 and
can seek, so reading a window of an hour-long file reads only that window.
Anything else (m4a/aac, wma, ...) goes through an ``ffmpeg`` executable.
Every failure is an :class:`AudioError` whose message names the file and the reason.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .files import FFMPEG_EXTENSIONS

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


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "broken symbolic link" if path.is_symlink() else "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory")
    if not path.is_file():
        # a FIFO or device would block or never end
        raise AudioError(path, "not a regular file")
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
    try:
        sr = int(fields["sample_rate"])
        channels = int(fields.get("channels", 1))
        duration = float(fields.get("duration", 0) or 0)
    except ValueError:
        raise AudioError(path, "not a decodable audio file (ffprobe gave no usable stream description)") from None
    if sr <= 0 or not 0 < channels <= 1024:
        raise AudioError(path, "not a decodable audio file (no audio stream could be parsed)")
    if duration <= 0 or not plausible_length(duration * sr, sr, _file_size(path)):
        # no duration (a stream written through a pipe) or one the file cannot hold: measure it
        return _counted_info(path, sr, channels, "gives no length" if duration <= 0 else f"claims {duration:g} s")
    return AudioInfo(str(path), sr, channels, int(duration * sr), "ffmpeg")


def libsndfile_path(path: str | os.PathLike) -> str | bytes:
    """The path as libsndfile takes it. soundfile encodes a str path strictly, so a name
    that is not valid UTF-8 (its bytes kept as surrogate escapes) would fail to open;
    its bytes open it. Windows takes str paths (wide-character open)."""
    return os.fspath(path) if sys.platform == "win32" else os.fsencode(path)


def _short(message: str, path: Path) -> str:
    message = message.replace(str(path), "").strip(" :")
    return message[:160]


# The most audio one byte of a file can hold. A header can claim any length (a FLAC
# written through a pipe leaves STREAMINFO's total at 0, which libsndfile reports as
# 2**63 - 1 frames), and the window plan, the reads and their buffers all follow the
# length: one that no file of that size could hold is not believed. Generous bounds, far
# above what encoders reach on digital silence: a FLAC block of up to 65,535 frames takes
# at least ~10 bytes, an Opus or Vorbis packet of up to 5,760 frames at least ~1-2 bytes,
# an MPEG-2 layer III frame at least 24 bytes for its 576 frames.
MAX_FRAMES_PER_BYTE = {"MP3": 64}
DEFAULT_MAX_FRAMES_PER_BYTE = 8192
# ... and at most this many seconds per byte whatever the rate it claims (a header
# claiming 1 Hz would otherwise turn a plausible frame count into a year of windows).
MAX_SECONDS_PER_BYTE = 1.0


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise AudioError(path, f"cannot read ({exc.strerror})") from None


def plausible_length(frames: float, sample_rate: float, size: int, fmt: str = "") -> bool:
    """Whether ``frames`` at ``sample_rate`` could come out of a file of ``size`` bytes."""
    if not (math.isfinite(frames) and math.isfinite(sample_rate)) or frames < 0 or sample_rate <= 0:
        return False
    per_byte = MAX_FRAMES_PER_BYTE.get(fmt, DEFAULT_MAX_FRAMES_PER_BYTE)
    return frames <= size * per_byte and frames / sample_rate <= size * MAX_SECONDS_PER_BYTE


def _counted_info(path: Path, sample_rate: int, channels: int, claim: str) -> AudioInfo:
    """The file's real length, by decoding it once with ffmpeg (no header to trust), as an
    ffmpeg-backend :class:`AudioInfo`: ffmpeg seeks in such a file and stops at its real end."""
    if not ffmpeg_available():
        raise AudioError(path, f"its header {claim}, which cannot be right for a file of this size "
                               f"(a FLAC written through a pipe has no length); install ffmpeg to read it")
    size = _file_size(path)
    limit = size * DEFAULT_MAX_FRAMES_PER_BYTE
    # one byte per frame (mono, 8-bit): the count is all that is kept
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-map", "0:a:0", "-ac", "1",
           "-ar", str(sample_rate), "-f", "u8", "-"]
    frames = 0
    # past the limit the pipe is closed and ffmpeg exits; a count cut short by the timeout is
    # refused (tagging would plan windows on part of the track)
    with _ffmpeg(cmd, path) as run:
        while frames <= limit:
            chunk = run.stdout.read(1 << 20)
            if not chunk:
                break
            frames += len(chunk)
    if frames > limit:
        raise AudioError(path, "decodes to more audio than a file of this size can hold")
    if frames == 0:
        raise AudioError(path, f"not a decodable audio file ({_short(run.last_error('no audio samples'), path)})")
    return AudioInfo(str(path), int(sample_rate), max(1, int(channels)), frames, "ffmpeg")


# Header packets before the first audio packet, by the first bytes of an Ogg stream's first packet.
_OGG_HEADERS = {b"\x01vorbis": 3, b"OpusHead": 2}
# How many pages to look through for the last header packet (a comment header holding cover
# art spans many pages; only the segment tables are read, the bodies are skipped).
_OGG_MAX_HEADER_PAGES = 4096
# What to tell a user when such a file is decoded by libsndfile (no ffmpeg to decode it).
OGG_HEADER_AUDIO_WARNING = ("its first audio packet shares the Ogg page of the header packets, which libsndfile "
                            "decodes shifted; tagged from the shifted audio (install ffmpeg to decode it exactly)")


def ogg_header_page_carries_audio(path: str | os.PathLike) -> bool:
    """Whether the Ogg page that completes the last header packet (Vorbis: the setup
    header; Opus: OpusTags) also carries audio packet data.

    The Vorbis and Opus specifications start audio on a fresh page, but some encoders put the
    first audio packet on the header page. libsndfile (1.2) then decodes the whole stream
    shifted by hundreds of samples, its length short by as many; ffmpeg decodes it exactly.
    Only the first logical stream's page headers are read. False for anything that is not
    such an Ogg Vorbis/Opus stream, or that cannot be read (decoding reports that)."""
    try:
        with open(path, "rb") as f:
            return _ogg_header_page_carries_audio(f)
    except (OSError, ValueError):
        return False


def _ogg_header_page_carries_audio(f) -> bool:
    serial = headers = None
    packets = 0  # header packets completed so far
    for _ in range(_OGG_MAX_HEADER_PAGES):
        head = f.read(27)
        if len(head) < 27 or head[:4] != b"OggS":
            return False
        page_serial = int.from_bytes(head[14:18], "little")
        segments = f.read(head[26])
        if len(segments) < head[26]:
            return False
        body = sum(segments)
        if serial is None:
            serial = page_serial
            start = f.read(min(body, 8))
            headers = _OGG_HEADERS.get(start) or _OGG_HEADERS.get(start[:7])
            if headers is None:
                return False
            body -= len(start)
        if page_serial == serial:
            for i, lacing in enumerate(segments):
                if lacing < 255:  # a packet ends with this segment
                    packets += 1
                    if packets == headers:
                        # anything after the last header packet on its page is audio
                        return i + 1 < len(segments)
        f.seek(body, os.SEEK_CUR)
    return False


def probe(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channels and length, from the header, without decoding; a length the
    file's size rules out (see :data:`MAX_FRAMES_PER_BYTE`) is measured instead, by decoding."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() not in FFMPEG_EXTENSIONS:
        try:
            with _decoder_section(str(path)):
                info = sf.info(libsndfile_path(path))
            if info.frames > 0 and info.samplerate > 0:
                if info.format == "OGG" and ffmpeg_available() and ogg_header_page_carries_audio(path):
                    return _ffprobe(path)  # libsndfile would decode it shifted: see the function
                if not plausible_length(info.frames, info.samplerate, _file_size(path), info.format):
                    return _counted_info(path, int(info.samplerate), int(info.channels),
                                         f"claims {info.frames:,} frames")
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
    data = data.astype(np.float32, copy=False)
    if data.ndim == 1:
        return data
    channels = data.shape[1]
    if channels >= 8:  # numpy's pairwise summation starts at 8 terms: keep its order exactly
        return data.mean(axis=1, dtype=np.float32)
    # ``mean(axis=1)`` over a short inner axis runs ~18x slower than adding the columns
    # (it was a quarter of the whole decode time for stereo files); below 8 terms numpy
    # sums left to right from the first, so this is bit for bit the same.
    mono = data[:, 0].copy()
    for c in range(1, channels):
        mono += data[:, c]
    mono /= np.float32(channels)
    return mono


def _sanitize(x: np.ndarray) -> np.ndarray:
    # Float files can hold NaN/inf (broken encoders, bad edits); they would poison
    # every frame they touch, so those samples (and only those) become zero.
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


# Decode in blocks: a multichannel file is downmixed block by block (never held
# whole at full width), and a read that fails part way keeps what decoded before.
_BLOCK_FRAMES = 1 << 14


class DecoderMessages:
    """Keeps C decoders' chatter off the terminal and tells which file it was about.

    libmpg123 (inside libsndfile) prints ``Note: Illegal Audio-MPEG-Header ...`` lines
    straight to file descriptor 2, through any progress bar and past ``--quiet``. Within
    this context fd 2 goes to a temporary file, Python's own ``sys.stderr`` to the real
    one, and every mp3 read runs alone (a lock) so that what it printed is collected as
    that file's messages (:meth:`pop`). Anything printed outside an mp3 read is passed
    on to the real stderr at the end. POSIX only; elsewhere it does nothing.
    """

    _active: "DecoderMessages | None" = None

    def __init__(self) -> None:
        self.messages: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._saved: int | None = None

    def __enter__(self) -> "DecoderMessages":
        if os.name != "posix" or DecoderMessages._active is not None:
            return self
        import fcntl
        import sys

        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
        except (OSError, ValueError):
            return self  # no usable fd 2 (embedded, closed): nothing to capture
        self._sink = tempfile.TemporaryFile()
        fd = self._sink.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        self._stderr = sys.stderr
        try:
            real = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            real = False  # replaced by a test runner or an application: leave it alone
        if real:
            sys.stderr = open(self._saved, "w", encoding=getattr(self._stderr, "encoding", None) or "utf-8",
                              errors="backslashreplace", buffering=1, closefd=False)
        os.dup2(fd, 2)
        DecoderMessages._active = self
        return self

    def _take(self) -> bytes:
        fd = self._sink.fileno()
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        os.ftruncate(fd, 0)
        return data

    def section(self, path: str):
        """Run one decoder call on ``path`` with its messages attributed to it."""
        capture = self

        class _Section:
            def __enter__(self_inner):
                capture._lock.acquire()
                capture._take()  # unattributed leftovers are not this file's
                # (they are few: Python's own stderr is not captured)

            def __exit__(self_inner, *exc):
                try:
                    text = capture._take().decode("utf-8", "replace")
                    lines = [line.strip() for line in text.splitlines() if line.strip()]
                    if lines:
                        capture.messages.setdefault(path, []).extend(lines)
                finally:
                    capture._lock.release()
                return False

        return _Section()

    def pop(self, path: str) -> list[str]:
        with self._lock:
            return self.messages.pop(str(path), [])

    def __exit__(self, *exc) -> bool:
        if self._saved is None:
            return False
        import sys

        DecoderMessages._active = None
        with self._lock:
            leftover = self._take()
            os.dup2(self._saved, 2)
            if sys.stderr is not self._stderr:
                sys.stderr.close()  # closefd=False: the real stderr stays open
                sys.stderr = self._stderr
            if leftover:
                os.write(2, leftover)
            os.close(self._saved)
            self._saved = None
            self._sink.close()
        return False


class _NoSection:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _decoder_section(path: str):
    active = DecoderMessages._active
    if active is None or Path(path).suffix.lower() != ".mp3":
        return _NoSection()
    return active.section(path)


def _read_soundfile(info: AudioInfo, start: int, frames: int) -> np.ndarray:
    with _decoder_section(info.path):
        return _read_soundfile_unlocked(info, start, frames)


def _read_soundfile_unlocked(info: AudioInfo, start: int, frames: int) -> np.ndarray:
    blocks: list[np.ndarray] = []
    got = 0
    try:
        with sf.SoundFile(libsndfile_path(info.path)) as f:
            # libsndfile's mp3 decoder (1.2.x) mangles ~1,800 samples after every read
            # but the first: soundfile re-seeks to the current position around each
            # read, and an mp3 seek is only exact on a freshly opened file. So an mp3
            # range is read in one call (a window is a few MB; only a whole-file
            # load_audio holds the file at full width).
            block = frames if f.format == "MP3" else _BLOCK_FRAMES
            if start:
                f.seek(start)
            while got < frames:
                data = f.read(min(block, frames - got), dtype="float32", always_2d=True)
                if not len(data):
                    break  # end of the audio (a truncated file ends before its header says)
                blocks.append(_to_mono(data))
                got += len(data)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        # A truncated or damaged file fails where the damage starts (flac: "lost sync",
        # any format: seek past the real end); what decoded before it is good audio.
        if not blocks:
            raise AudioError(info.path, f"decoding failed ({_short(str(exc), Path(info.path))})") from None
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _read_ffmpeg(info: AudioInfo, start: int, frames: int | None) -> np.ndarray:
    """Mono float32 at the file's own rate, like :func:`_read_soundfile`, so both
    backends share the same downmix and the same (soxr HQ) resampler."""
    src, channels = info.sample_rate, max(1, info.channels)
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    # No seek into the first 0.1 s (not even "-ss 0"): on an Ogg file whose header page carries
    # audio (see ogg_header_page_carries_audio), ffmpeg's seeks that land in the first packets
    # come out shifted, while reading from the start is exact; those frames are dropped here.
    skip = start if start < src // 10 else 0
    if start > skip:
        cmd += ["-ss", f"{start / src:.6f}"]
    if frames is not None:
        frames += skip
    cmd += ["-i", info.path]
    if frames is not None:
        cmd += ["-t", f"{(frames + 64) / src:.6f}"]  # a little extra, cut exactly below
    cmd += ["-vn", "-map", "0:a:0", "-ac", str(channels), "-ar", str(src), "-f", "f32le", "-"]
    blocks: list[np.ndarray] = []
    got, frame_bytes = 0, 4 * channels
    with _ffmpeg(cmd, Path(info.path)) as run:
        # read in blocks and downmix each, so a long file is never held at full width
        while frames is None or got < frames:
            want = _BLOCK_FRAMES if frames is None else min(_BLOCK_FRAMES, frames - got)
            raw = run.stdout.read(want * frame_bytes)
            usable = len(raw) - len(raw) % frame_bytes
            if usable:
                block = np.frombuffer(raw[:usable], dtype=np.float32).reshape(-1, channels)
                blocks.append(_to_mono(block))
                got += len(block)
            if len(raw) < want * frame_bytes:
                break
    if run.returncode != 0 and not blocks:
        raise AudioError(info.path, f"ffmpeg could not decode it ({_short(run.last_error('unknown error'), Path(info.path))})")
    return np.concatenate(blocks)[skip:] if blocks else np.zeros(0, np.float32)


class _FfmpegRun:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.stdout, self._proc = proc.stdout, proc
        self.stderr_tail = b""

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def last_error(self, default: str) -> str:
        lines = self.stderr_tail.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else default


@contextlib.contextmanager
def _ffmpeg(cmd: list[str], path: Path) -> Iterator[_FfmpegRun]:
    """ffmpeg running ``cmd``, its output read from ``run.stdout``; killed after
    :data:`FFMPEG_TIMEOUT` s (then AudioError on leaving the block). Leaving early closes the
    pipe, and ffmpeg exits on it. stderr goes to a file: a damaged stream can log more than a
    pipe holds and stall ffmpeg; its end is ``run.last_error()`` once the block is left."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except OSError as exc:
            raise AudioError(path, f"cannot run ffmpeg ({exc.strerror})") from None
        timer = threading.Timer(FFMPEG_TIMEOUT, proc.kill)
        timer.start()
        run = _FfmpegRun(proc)
        try:
            yield run
        finally:
            proc.stdout.close()
            killed = proc.wait() != 0 and not timer.is_alive()
            timer.cancel()
            err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
            run.stderr_tail = err.read()
        if killed:
            raise AudioError(path, f"ffmpeg did not finish in {FFMPEG_TIMEOUT} s")


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """High-quality (soxr HQ) resampling of a mono signal."""
    if orig_sr == target_sr or x.size == 0:
        return x
    return soxr.resample(x, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def read_segment(info: AudioInfo, offset: float, duration: float | None, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate`` from ``offset`` seconds, ``duration`` seconds long
    (``None``: to the end). Reads only that part of the file where the format can seek.

    The result is the same slice of the whole file decoded and resampled at once
    (up to resampler rounding): output sample ``k`` is at ``k / sample_rate`` s.
    """
    src = info.sample_rate
    first = int(round(offset * sample_rate))  # first output sample
    count = None if duration is None else int(round(duration * sample_rate))
    # Read from a source frame that falls exactly on an output sample (a multiple of
    # src/gcd), with context on both sides for the resampling filter; starting
    # anywhere else would shift the window by a fraction of a sample.
    step = src // math.gcd(src, sample_rate)
    margin = 0 if src == sample_rate else int(_MARGIN_SECONDS * src)
    lo = max(0, (first * src // sample_rate - margin) // step * step)
    hi = None
    if count is not None:
        hi = -(-(first + count) * src // sample_rate) + margin
        if info.backend == "soundfile":
            # exact length from the header; ffprobe's is an estimate, and ffmpeg
            # simply stops at the real end
            hi = min(info.frames, hi)
        if hi <= lo:
            return np.zeros(0, np.float32)  # past the end
    frames = None if hi is None else hi - lo
    if info.backend == "ffmpeg":
        raw = _read_ffmpeg(info, lo, frames)
    else:
        raw = _read_soundfile(info, lo, info.frames - lo if frames is None else frames)
    # before resampling: the filter would smear each NaN/inf over ~30 ms of its neighbours
    x = resample(_sanitize(raw), src, sample_rate)
    head = first - lo * sample_rate // src
    return x[head:] if count is None else x[head : head + count]


def load_audio(path: str | os.PathLike, sample_rate: int = 22050, offset: float = 0.0,
               duration: float | None = None) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate`` (whole file, or a part of it)."""
    info = probe(path)
    x = read_segment(info, offset, duration, sample_rate)
    if x.size == 0:
        raise AudioError(path, "contains no audio samples")
    return x


def check_duration(info: AudioInfo) -> None:
    """Refuse a track shorter than :data:`MIN_DURATION` (``too short (0.30 s; ...)``)."""
    if info.duration < MIN_DURATION:
        raise AudioError(info.path, f"too short ({info.duration:.2f} s; at least {MIN_DURATION:g} s needed)")


def check_decoded(info: AudioInfo, samples: int, sample_rate: int) -> None:
    """Refuse a decode that gave (almost) nothing although the header promised audio:
    a truncated download, or damage from the start. Half of :data:`MIN_DURATION` is
    the least that counts as audio, so a file that decodes for a few frames is refused
    rather than looped into a whole window of near-silence."""
    if samples < MIN_DURATION * sample_rate * 0.5:
        raise AudioError(info.path, f"truncated: header says {info.duration:.1f} s but no audio could be read")
