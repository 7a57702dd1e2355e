"""Write tags into audio files, safely: plan → apply to a copy → verify → replace, with undo.

This is the library behind ``mttag write``. For one file, :func:`write_tags` takes the
tags of a result (``[("rock", 0.81), ...]``) and

1. **plans** the new values of the chosen fields (genre, mood, comment, and an ``MTTAG``
   field holding the tags with their scores), in ``add`` or ``replace`` mode;
2. **applies** them with mutagen to a *copy* of the file in the same folder (the original
   is only ever read);
3. **verifies** the copy: it is re-opened, the written fields read back as planned, every
   other tag (and cover art, and FLAC's other metadata blocks) is unchanged, and the audio
   is unchanged: the audio payload bytes are compared (MP3 frames, FLAC frames and
   STREAMINFO, WAV/AIFF sample chunks, MP4 ``mdat`` plus the sample tables, whose chunk
   offsets must move exactly with the audio, Ogg packets and granule positions page by
   page); where that cannot decide, or with ``verify_audio``, both files are decoded and
   their samples compared;
4. writes an **undo record** (previous values of every touched field, the SHA-256 of the
   file before and after, and a small binary delta that rebuilds the old file byte for
   byte from the new one), flushed and fsynced, and only then
5. **replaces** the original with the copy (``os.replace``: atomic on POSIX and Windows),
   then fsyncs the folder.

An interruption at any moment leaves the original or the new file, never a mix; the undo
log (:func:`undo`) restores the file byte for byte when it is still as mttag left it, and
otherwise puts the previous values back into the fields mttag wrote.

Formats: MP3 (ID3v2.3 and 2.4; the file's version is kept), FLAC, Ogg Vorbis and Opus
(Vorbis comments), MP4/M4A (iTunes atoms and freeform atoms), WAV and AIFF (an ID3 chunk).

The steps live in modules named for what they hold, each using only those before it:
:mod:`.fields` (where each format keeps a field), :mod:`.plan` (which tags, which values),
:mod:`.formats` (the tags through mutagen), :mod:`.containers` (where the audio is, its hash),
:mod:`.verify` and :mod:`.fingerprint`, :mod:`.delta` and :mod:`.undolog`, :mod:`.atomic` (lock,
copy, replace), :mod:`.restore` (undo), then this module: the write itself, and the names
``mttag.filetags.writer`` has always offered, imported from the others (see ``__all__``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..util.fs import fsync_file
from ..util.hashing import file_sha256
from . import formats
from .atomic import (
    TMP_SUFFIX,
    check_writable,
    file_lock,
    finish_times,
    make_copy,
    replacing,
)
from .containers import AudioPayload, audio_ranges
from .delta import make_delta
from .fields import FIELDS
from .fingerprint import audio_fingerprint, check_fingerprint, parse_fingerprint
from .outcome import FieldChange, WriteError, WriteOutcome, path_text, reason
from .plan import (
    CASES,
    DEFAULT_FIELDS,
    DISPLAY_NAMES,
    MAX_GENRES,
    MAX_MOODS,
    MODES,
    TAG_KINDS,
    Chosen,
    WriteOptions,
    calibrated,
    choose_tags,
    display_name,
    load_kinds,
    merge_values,
    planned_values,
    select_tags,
    tag_kind,
)
from .restore import undo
from .undolog import (
    UNDO_FORMAT,
    UndoLog,
    default_undo_log,
    is_undo_log,
    read_undo_log,
    undo_key_path,
)
from .verify import check_audio, check_ogg_pages, decoded_digest, verify_audio


def write_tags(path: str | os.PathLike, tags: Iterable[Any], options: WriteOptions | None = None,
               undo_log: UndoLog | None = None, fingerprint: str | None = None) -> WriteOutcome:
    """Write ``tags`` (``(tag, score)`` pairs or ``{"tag", "score"}`` records, any order)
    into the audio file ``path`` as ``options`` say; never raises for a bad file (the
    outcome says ``error``). Without ``undo_log`` nothing records the old values, so give
    one unless ``options.dry_run``. A symbolic link is written through (the link stays).
    ``fingerprint`` (from the results, see :func:`audio_fingerprint`): the file is refused
    when its audio is no longer what was tagged."""
    options = options or WriteOptions()
    path = os.fspath(path)
    try:
        tags = list(tags)
        chosen = choose_tags(tags, options)
    except (TypeError, ValueError, KeyError) as exc:
        return WriteOutcome(path, "error", error=f"bad tags in the results ({reason(exc)})")
    if not chosen:
        floor = options.confidence_floor
        why = (f"no tag of confidence >= {floor:g} to write" if tags and floor is not None and calibrated(tags)
               else "no tags to write")
        return WriteOutcome(path, "skipped", note=why)
    try:
        if options.dry_run:
            return _write(path, chosen, options, None, fingerprint)
        real = os.path.realpath(path)
        check_writable(real)
        with file_lock(real):  # one mttag run at a time reads, plans and replaces a file
            return _write(path, chosen, options, undo_log, fingerprint)
    except WriteError as exc:
        return WriteOutcome(path, "error", error=str(exc))
    except OSError as exc:
        return WriteOutcome(path, "error", error=reason(exc))


def _changes(handler: formats.TagHandler, chosen: list[Chosen], options: WriteOptions) -> list[FieldChange]:
    """Each field whose values the write changes, before and after."""
    ours = planned_values(chosen, options)
    join = options.join or handler.join
    changes = []
    for name in options.fields:
        before = handler.get(name)
        after = merge_values(name, before, ours[name], options.mode, join)
        if after != before:
            changes.append(FieldChange(name, before, after))
    return changes


def _write(path: str, chosen: list[Chosen], options: WriteOptions, undo_log: UndoLog | None,
           fingerprint: str | None) -> WriteOutcome:
    # a dry run makes the same checks as a write: "would write" means it would
    real = os.path.realpath(path)
    st = check_writable(real)
    handler = formats.open_tags(real)
    audio = check_audio(handler.format, real)  # hashed at most once: for the fingerprint and the verification
    check_ogg_pages(handler.format, real)
    if fingerprint is not None:
        check_fingerprint(audio, fingerprint)
    changes = _changes(handler, chosen, options)
    if not changes:
        return WriteOutcome(path, "unchanged", format=handler.format)
    if options.dry_run:
        return WriteOutcome(path, "would-write", changes, format=handler.format)
    if undo_log is None:
        raise WriteError("no undo log: refusing to write without one")
    plan = {c.field: c.after for c in changes}
    captured = {name: handler.capture(name) for name in plan}
    others_before = handler.others(list(plan))

    tmp, sha_before = make_copy(real, st)
    with replacing(tmp, real, st, sha_before):
        copy = formats.open_tags(tmp)
        for name, values in plan.items():
            copy.set(name, values)
        copy.save()
        _verify_copy(audio, tmp, plan, others_before, options.verify_audio)
        finish_times(tmp, st, options.keep_mtime)
        fsync_file(tmp)
        written = os.stat(tmp)
        record = {
            "path": path_text(real), "format": handler.format, "id3_version": handler.id3_version,
            "fields": list(plan), "before": captured, "after": plan,
            "sha256_before": sha_before, "sha256_after": file_sha256(tmp),
            "size_before": st.st_size, "mtime_ns_before": st.st_mtime_ns, "keep_mtime": options.keep_mtime,
            "dev": written.st_dev, "ino": written.st_ino,  # os.replace keeps the copy's inode
            "delta": make_delta(real, tmp),
        }
        undo_log.write(undo_log.sign(record))  # on disk before the original is replaced
    return WriteOutcome(path, "written", changes, format=handler.format)


def _verify_copy(audio: AudioPayload, tmp: str, plan: Mapping[str, list[str]], others_before: Any,
                 decode: bool) -> None:
    kind = audio.kind
    try:
        check = formats.open_tags(tmp)
    except WriteError as exc:
        raise WriteError(f"the written copy does not read back ({exc}); file left as it was") from None
    if check.format != kind:
        raise WriteError(f"the written copy reads as {check.format}, not {kind}; file left as it was")
    for name, values in plan.items():
        if check.get(name) != values:
            raise WriteError(f"the {name} field did not read back as written; file left as it was")
    if check.others(list(plan)) != others_before:
        raise WriteError("other tags would change (mttag bug or unusual file); file left as it was")
    verify_audio(audio, tmp, decode)


__all__ = [
    "CASES", "DEFAULT_FIELDS", "DISPLAY_NAMES", "FIELDS", "MAX_GENRES", "MAX_MOODS", "MODES", "TAG_KINDS",
    "TMP_SUFFIX", "UNDO_FORMAT", "Chosen", "FieldChange", "UndoLog", "WriteError", "WriteOptions", "WriteOutcome",
    "audio_fingerprint", "audio_ranges", "calibrated", "choose_tags", "decoded_digest", "default_undo_log",
    "display_name", "file_lock", "file_sha256", "is_undo_log", "load_kinds", "make_delta", "merge_values",
    "parse_fingerprint", "planned_values", "read_undo_log", "select_tags", "tag_kind", "undo", "undo_key_path",
    "write_tags",
]
