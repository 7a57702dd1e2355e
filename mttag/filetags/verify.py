"""Whether a rewritten file still holds the same audio: the payload bytes compared through
:class:`~mttag.filetags.containers.AudioPayload` (the original's hash, made once, passed in),
and where that cannot decide, or when asked, both files decoded and their samples compared."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

from .containers import AudioPayload
from .outcome import WriteError, reason


def decoded_digest(path: str | os.PathLike, ffmpeg_only: bool = False) -> str | None:
    """SHA-256 of a file's decoded samples (with rate and channel count): libsndfile, else
    ffmpeg (``ffmpeg_only``: ffmpeg alone); ``None`` if neither can decode it."""
    path = os.fspath(path)
    h = hashlib.sha256()
    try:
        if ffmpeg_only:
            raise LookupError
        import soundfile as sf

        from ..audio.decode import libsndfile_path

        with sf.SoundFile(libsndfile_path(path)) as f:
            h.update(f"{f.samplerate}/{f.channels}/".encode())
            for block in f.blocks(blocksize=1 << 16, dtype="float32"):
                h.update(block.tobytes())
        return h.hexdigest()
    except Exception:  # noqa: BLE001 - not for libsndfile: try ffmpeg
        h = hashlib.sha256()
    if shutil.which("ffmpeg") is None:
        return None
    try:
        proc = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0", "-f", "f32le", "-"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
            h.update(chunk)
        if proc.wait(timeout=600) != 0:
            return None
    except (OSError, subprocess.SubprocessError):
        return None
    return h.hexdigest()


def _header_page_audio(path: str) -> bool:
    from ..audio.decode import ogg_header_page_carries_audio

    try:
        return ogg_header_page_carries_audio(path)
    except Exception:  # noqa: BLE001 - an unreadable layout: the usual checks decide
        return False


def check_ogg_pages(kind: str, path: str) -> None:
    """Refuse, before any work (also in a dry run), an Ogg file whose first audio packet shares
    the header page when ffmpeg is missing: the write could not verify its audio."""
    if kind in ("ogg", "opus") and shutil.which("ffmpeg") is None and _header_page_audio(path):
        raise WriteError("this Ogg file's first audio packet shares its header page (libsndfile decodes it "
                         "shifted), so the write cannot verify the audio; install ffmpeg and run again; "
                         "file left as it was")


def verify_audio(original: AudioPayload, new: str, decode: bool) -> None:
    """Refuse unless the file ``new`` holds ``original``'s audio (``decode``: also compare samples)."""
    kind, old = original.kind, original.path
    try:
        same = original.same_as(AudioPayload(kind, new))
    except Exception:  # noqa: BLE001 - an unexpected layout: let the decoder decide
        same = False
    if same and not decode:
        return
    # libsndfile decodes an Ogg stream whose first audio packet shares the header page shifted,
    # and the rewritten file (mutagen re-paginates) unshifted: only ffmpeg compares them fairly
    exact = kind in ("ogg", "opus") and _header_page_audio(old)
    a, b = decoded_digest(old, ffmpeg_only=exact), decoded_digest(new, ffmpeg_only=exact)
    if a is None or b is None:
        raise WriteError("cannot verify that the audio is unchanged (it does not decode); file left as it was")
    if a != b:
        raise WriteError("the audio would change (mttag bug or unusual file); file left as it was")



def check_audio(kind: str, path: str) -> AudioPayload:
    """The file's audio, parsed: refused unless it is audio of the container its tags say (a
    program named .mp3 is not)."""
    try:
        return AudioPayload(kind, path)
    except Exception as exc:  # noqa: BLE001 - any parse failure means: not this container
        raise WriteError(f"not a valid {kind} file ({reason(exc)}); left as it is") from None
