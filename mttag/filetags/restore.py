"""Undo: every file an undo log recorded put back, newest record first; byte for byte through
the record's delta when the file is still as mttag left it, else the fields mttag wrote that
still hold its values."""

from __future__ import annotations

import hmac
import os
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

from ..util.fs import fsync_file
from ..util.hashing import file_sha256
from . import formats
from .atomic import (
    check_writable,
    file_lock,
    finish_times,
    make_copy,
    replacing,
    temp_beside,
)
from .containers import AudioPayload
from .delta import apply_delta
from .outcome import FieldChange, WriteError, WriteOutcome, reason
from .undolog import read_undo_log, record_mac, record_problem, undo_key
from .verify import check_audio, verify_audio


def undo(log: str | os.PathLike, *, dry_run: bool = False) -> Iterator[WriteOutcome]:
    """Restore every file an undo log recorded, newest record first (so a log that several
    runs appended to goes back to the state before the first). Yields one outcome a record.

    Only records signed with this user's undo key are used (see
    :class:`~mttag.filetags.undolog.UndoLog`): an undo log is input from anywhere, and a forged
    or edited record is refused with its reason. A byte-for-byte restore also needs the file to
    be the very one mttag wrote (its inode and SHA-256) and to open as the same audio container
    before and after."""
    from ..inference.output import path_from_text

    key = undo_key(create=False)
    for n, record in reversed(list(enumerate(read_undo_log(log), 1))):
        raw = record.get("path")
        path = path_from_text(raw) if isinstance(raw, str) and raw else f"(record {n})"
        kind = record.get("format") if isinstance(record.get("format"), str) else None
        problem = record_problem(record)
        if problem is None and (key is None or not hmac.compare_digest(record_mac(key, record), record["mac"])):
            problem = ("its signature does not match this user's undo key (edited, forged, or written by another "
                       "user or machine); refused")
        if problem is not None:
            if not problem.endswith("refused"):
                problem = f"damaged undo record ({problem}); refused"
            yield WriteOutcome(path, "error", error=f"record {n}: {problem}", format=kind)
            continue
        try:
            if dry_run:
                yield _undo_one(path, record, dry_run)
            else:
                real = os.path.realpath(path)
                check_writable(real)
                with file_lock(real):
                    yield _undo_one(path, record, dry_run)
        except WriteError as exc:
            yield WriteOutcome(path, "error", error=str(exc), format=kind)
        except OSError as exc:
            yield WriteOutcome(path, "error", error=reason(exc), format=kind)


def _undo_one(path: str, record: Mapping[str, Any], dry_run: bool) -> WriteOutcome:
    kind = record["format"]
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise WriteError("no such file")
    st0 = os.stat(real)
    current = file_sha256(real)
    if current == record["sha256_before"]:
        return WriteOutcome(path, "unchanged", format=kind, note="already as before")
    try:
        handler = formats.open_tags(real)
    except WriteError as exc:
        raise WriteError(f"not an audio file mttag wrote ({exc}); refused") from None
    if handler.format != kind:
        raise WriteError(f"it is now {handler.format}, not the {kind} file mttag wrote; refused")
    audio = check_audio(kind, real)
    changes = [FieldChange(name, list(record["after"].get(name, [])), formats.captured_text(kind, name, value))
               for name, value in record["before"].items()]
    exact = (current == record["sha256_after"] and record.get("delta") is not None
             and (st0.st_dev, st0.st_ino) == (record["dev"], record["ino"]))
    if dry_run:
        return WriteOutcome(path, "would-restore", changes, format=kind,
                            note="byte for byte" if exact else "fields only")
    st = check_writable(real)
    if exact:
        _rebuild(real, record, st, current)
        return WriteOutcome(path, "restored", changes, format=kind, note="byte for byte")
    # the file changed since (another tagger, a later run): put back only the fields that
    # still hold what mttag wrote
    restore = {name: value for name, value in record["before"].items()
               if handler.get(name) == list(record["after"].get(name, []))}
    skipped = sorted(set(record["before"]) - set(restore))
    if not restore:
        return WriteOutcome(path, "unchanged", format=kind, note="fields changed since mttag wrote them; left as they are")
    _restore_fields(real, audio, restore, record, st)
    note = "fields only (the file changed since)"
    if skipped:
        note += f"; {', '.join(skipped)} changed since and left as is"
    return WriteOutcome(path, "restored", [c for c in changes if c.field in restore], format=kind, note=note)


def _rebuild(real: str, record: Mapping[str, Any], st: os.stat_result, current: str) -> None:
    """The file as it was before mttag wrote it, byte for byte, from the record's delta."""
    kind = record["format"]
    fd, tmp = temp_beside(real)
    with replacing(tmp, real, st, current):
        with os.fdopen(fd, "wb") as out:
            try:
                apply_delta(record["delta"], real, out)
            except (ValueError, TypeError, IndexError) as exc:
                raise WriteError(f"the record's delta does not apply ({reason(exc)}); left as it is") from None
        if file_sha256(tmp) != record["sha256_before"]:
            raise WriteError("the rebuilt file does not match the recorded one; left as it is")
        rebuilt = formats.open_tags(tmp)
        if rebuilt.format != kind:
            raise WriteError(f"the rebuilt file is not {kind}; left as it is")
        check_audio(kind, tmp)
        shutil.copystat(real, tmp)
        finish_times(tmp, st, False)
        if record.get("keep_mtime"):
            os.utime(tmp, ns=(st.st_atime_ns, record["mtime_ns_before"]))
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except OSError:
            pass
        fsync_file(tmp)


def _restore_fields(real: str, audio: AudioPayload, restore: Mapping[str, Any], record: Mapping[str, Any],
                    st: os.stat_result) -> None:
    """The previous values of the ``restore`` fields put back into a copy, verified, and the copy in place."""
    kind = record["format"]
    tmp, sha = make_copy(real, st)
    with replacing(tmp, real, st, sha):
        copy = formats.open_tags(tmp)
        try:
            copy.restore(restore)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WriteError(f"the record's previous values do not fit the file ({reason(exc)}); left as it is") from None
        copy.save()
        check = formats.open_tags(tmp)
        for name in restore:
            if check.get(name) != formats.captured_text(kind, name, restore[name]):
                raise WriteError(f"the {name} field did not read back as restored; left as it is")
        verify_audio(audio, tmp, False)
        finish_times(tmp, st, bool(record.get("keep_mtime")))
        fsync_file(tmp)
