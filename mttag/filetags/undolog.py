"""The undo log: an append-only JSONL journal with one signed record per file written (its
previous field values, SHA-256 before and after, the byte delta), the per-user key that signs
the records, and the checks a record must pass before :func:`mttag.filetags.restore.undo` acts
on it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..util.display import printable
from ..util.fs import regular_or_missing
from .fields import FIELDS
from .outcome import WriteError, reason

UNDO_FORMAT = 1

UNDO_KEY_NAME = "undo.key"
_HEX = set("0123456789abcdef")


def undo_key_path() -> Path:
    """The per-user secret that signs undo records (``~/.config/mttag/undo.key``)."""
    from ..util.fs import user_config_dir

    return user_config_dir() / UNDO_KEY_NAME


def undo_key(create: bool) -> bytes | None:
    """This user's undo key: 32 random bytes, made owner-only (0600) on first use. Made whole
    in a temporary file and linked into place, so a run starting at the same moment reads
    either no key or the whole one; a key that cannot be read is a WriteError, one line."""
    path = undo_key_path()
    try:
        for _ in range(2):
            try:
                with open(path, "rb") as f:
                    key = f.read(64)
                if len(key) != 32:
                    raise WriteError(f"{printable(path)} is not an mttag undo key "
                                     "(delete it; old undo logs then stop working)")
                return key
            except FileNotFoundError:
                if not create:
                    return None
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".undo.key.")  # mode 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass  # another run made it first: read theirs
            finally:
                os.unlink(tmp)
    except OSError as exc:
        raise WriteError(f"cannot read the undo key {printable(path)} ({reason(exc)})") from None
    raise WriteError(f"cannot read the undo key {printable(path)}")



def record_mac(key: bytes, record: Mapping[str, Any]) -> str:
    body = json.dumps({k: v for k, v in record.items() if k != "mac"}, sort_keys=True, ensure_ascii=True,
                      separators=(",", ":"))
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).hexdigest()


class UndoLog:
    """An append-only JSONL journal: a header line per run, then one record per file,
    each flushed and fsynced before the file it describes is replaced. Every record is
    signed (HMAC-SHA256) with this user's undo key, so :func:`undo` acts only on records
    that an mttag run of this user wrote, unchanged."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.count = 0
        if not regular_or_missing(self.path):
            raise WriteError(f"{printable(self.path)} is not a regular file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not is_undo_log(self.path):
            raise WriteError(f"{printable(self.path)} exists and is not an mttag undo log; refusing to append to it")
        self.key = undo_key(create=True)
        # O_NONBLOCK: a FIFO put there since the check fails at once instead of waiting for a reader
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise WriteError(f"{printable(self.path)} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        self.stream = os.fdopen(fd, "a", encoding="utf-8")
        self._write({"mttag_undo": UNDO_FORMAT, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(meta or {})})

    def _write(self, record: Mapping[str, Any]) -> None:
        end = os.fstat(self.stream.fileno()).st_size
        try:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
            os.fsync(self.stream.fileno())
        except BaseException:
            # a full disk can leave half a line: cut it off, or the next record would be glued to it
            try:
                self.stream = _reopen_truncated(self.stream, end)
            except OSError:
                pass
            raise

    def sign(self, record: dict[str, Any]) -> dict[str, Any]:
        record["mac"] = record_mac(self.key, record)
        return record

    def write(self, record: Mapping[str, Any]) -> None:
        self._write(record)
        self.count += 1

    def close(self) -> None:
        """Close the log; a failure (a full disk) is a :class:`WriteError` — every record
        before it was already synced to disk."""
        try:
            self.stream.close()
        except OSError as exc:
            raise WriteError(f"cannot close {printable(self.path)} ({reason(exc)}); "
                             "the records before are on disk") from None


def _reopen_truncated(stream, size: int):
    fd = os.dup(stream.fileno())
    try:
        stream.close()
    except OSError:
        pass  # the buffer that did not fit is dropped with the close
    os.ftruncate(fd, size)
    return os.fdopen(fd, "a", encoding="utf-8")


def is_undo_log(path: str | os.PathLike) -> bool:
    if not regular_or_missing(path):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith('{"mttag_undo":')
    except OSError:
        return False


def read_undo_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The file records of an undo log, in the order written (a cut-off last line is ignored).
    Records are not checked here: :func:`undo` checks (and refuses) each one."""
    if not is_undo_log(path):
        raise WriteError(f"{printable(path)} is not an mttag undo log")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "mttag_undo" not in record:
                out.append(record)
    return out


def _is_hex(value: Any, n: int = 64) -> bool:
    return isinstance(value, str) and len(value) == n and set(value) <= _HEX


def _is_int(value: Any, low: int | None = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why an undo record cannot be used as it is (types and ranges), or ``None``."""
    if not isinstance(record.get("path"), str) or not record["path"]:
        return "no path"
    if not _is_hex(record.get("mac")):
        return "it is not signed (written by hand, or by an mttag from before undo records were signed); refused"
    kind = record.get("format")
    if kind not in ("mp3", "wav", "aiff", "flac", "ogg", "opus", "m4a"):
        return f"unknown format {kind!r}"
    for name in ("sha256_before", "sha256_after"):
        if not _is_hex(record.get(name)):
            return f"{name} is missing or not a SHA-256"
    if not isinstance(record.get("before"), dict) or not isinstance(record.get("after"), dict):
        return "before/after are not field maps"
    for name, captured in record["before"].items():
        if name not in FIELDS:
            return f"unknown field {name!r}"
        if kind == "m4a":
            ok = isinstance(captured, dict) and all(isinstance(k, str) and isinstance(v, list) for k, v in captured.items())
        elif kind in ("flac", "ogg", "opus"):
            ok = isinstance(captured, list) and all(
                isinstance(x, list) and len(x) == 3 and _is_int(x[0]) and isinstance(x[1], str) and isinstance(x[2], str)
                for x in captured)
        else:
            ok = isinstance(captured, list) and all(
                isinstance(x, dict) and isinstance(x.get("frame"), str) and isinstance(x.get("text"), list)
                and all(isinstance(t, str) for t in x["text"]) and _is_int(x.get("encoding")) and x["encoding"] <= 3
                for x in captured)
        if not ok:
            return f"the previous {name} values are damaged"
    for name, values in record["after"].items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return f"the written {name} values are damaged"
    if not _is_int(record.get("mtime_ns_before"), None) or not isinstance(record.get("keep_mtime", False), bool):
        return "mtime_ns_before/keep_mtime are damaged"
    for name in ("dev", "ino"):
        if not _is_int(record.get(name)):
            return f"no {name} (the file mttag wrote)"
    delta = record.get("delta")
    if delta is not None:
        if not isinstance(delta, dict) or not _is_int(delta.get("prefix")) or not _is_int(delta.get("suffix")) \
                or not isinstance(delta.get("ops"), list):
            return "the delta is damaged"
        for op in delta["ops"]:
            if isinstance(op, str):
                try:
                    base64.b64decode(op, validate=True)
                except ValueError:
                    return "the delta is damaged"
            elif not (isinstance(op, list) and len(op) == 2 and _is_int(op[0]) and _is_int(op[1])):
                return "the delta is damaged"
    return None



def default_undo_log(results: str | os.PathLike) -> Path:
    """``tags.jsonl`` → ``tags.undo-20250101-120000.jsonl`` beside it."""
    results = Path(results)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = results.with_name(f"{results.stem}.undo-{stamp}.jsonl")
    n = 1
    while base.exists():
        n += 1
        base = results.with_name(f"{results.stem}.undo-{stamp}-{n}.jsonl")
    return base

