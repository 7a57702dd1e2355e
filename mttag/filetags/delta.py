"""The byte delta that lets undo rebuild a file exactly: the old file as the new one's common
prefix and suffix, and between them copies from the new file and literal bytes, small enough
for a line of the undo log (else :func:`make_delta` gives ``None`` and undo restores fields)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

from .containers import read_at
from .outcome import WriteError

_DELTA_LIMIT = 16 << 20  # the differing middle of a file must fit in this, else undo restores fields
_LITERAL_LIMIT = 1 << 20  # bytes stored verbatim in the undo log, at most
_MIN_COPY = 32


def _common_prefix(fa, fb, limit: int) -> int:
    n = 0
    fa.seek(0)
    fb.seek(0)
    while n < limit:
        a, b = fa.read(min(1 << 20, limit - n)), fb.read(min(1 << 20, limit - n))
        if a == b and a:
            n += len(a)
            continue
        m = min(len(a), len(b))
        i = 0
        while i < m and a[i] == b[i]:
            i += 1
        return n + i
    return n


def _common_suffix(fa, sa: int, fb, sb: int, limit: int) -> int:
    n = 0
    while n < limit:
        k = min(1 << 20, limit - n)
        a, b = read_at(fa, sa - n - k, k), read_at(fb, sb - n - k, k)
        if a == b:
            n += k
            continue
        i = 0
        while i < k and a[k - 1 - i] == b[k - 1 - i]:
            i += 1
        return n + i
    return n


def _match_len(a: bytes, ai: int, b: bytes, bi: int, limit: int, forward: bool) -> int:
    """Longest k <= limit with a[ai:ai+k] == b[bi:bi+k] (forward) or a[ai-k:ai] == b[bi-k:bi]."""
    def same(k):
        return a[ai:ai + k] == b[bi:bi + k] if forward else a[ai - k:ai] == b[bi - k:bi]
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if same(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _encode_delta(old: bytes, new: bytes) -> list:
    """``old`` as copies from ``new`` (``[offset, length]``) and literals (base64 strings)."""
    ops: list = []

    def literal(a, b):
        if b > a:
            if ops and isinstance(ops[-1], bytes):
                ops[-1] += old[a:b]
            else:
                ops.append(old[a:b])

    def rec(a0, a1, depth):
        n = a1 - a0
        if n < 2 * _MIN_COPY or depth > 60:
            literal(a0, a1)
            return
        for frac in (0.5, 0.25, 0.75, 0.05, 0.95):
            m = min(a0 + int(n * frac), a1 - _MIN_COPY)
            j = new.find(old[m:m + _MIN_COPY])
            if j >= 0:
                break
        else:
            literal(a0, a1)
            return
        left = _match_len(old, m, new, j, min(m - a0, j), forward=False)
        right = _match_len(old, m, new, j, min(a1 - m, len(new) - j), forward=True)
        s, e, t = m - left, m + right, j - left
        rec(a0, s, depth + 1)
        ops.append([t, e - s])
        rec(e, a1, depth + 1)

    rec(0, len(old), 0)
    return [base64.b64encode(op).decode("ascii") if isinstance(op, bytes) else op for op in ops]


def _decode_delta(ops: list, new: bytes) -> bytes:
    out = bytearray()
    for op in ops:
        out += base64.b64decode(op) if isinstance(op, str) else new[op[0]:op[0] + op[1]]
    return bytes(out)


def make_delta(old: str, new: str) -> dict[str, Any] | None:
    """How to rebuild ``old`` from ``new`` byte for byte, or ``None`` when that would take
    too much room in the undo log (then undo restores the fields instead)."""
    so, sn = os.path.getsize(old), os.path.getsize(new)
    with open(old, "rb") as fo, open(new, "rb") as fn:
        p = _common_prefix(fo, fn, min(so, sn))
        s = _common_suffix(fo, so, fn, sn, min(so, sn) - p)
        if so - p - s > _DELTA_LIMIT or sn - p - s > _DELTA_LIMIT:
            return None
        mid_old, mid_new = read_at(fo, p, so - p - s), read_at(fn, p, sn - p - s)
    ops = _encode_delta(mid_old, mid_new)
    if sum(len(op) for op in ops if isinstance(op, str)) > _LITERAL_LIMIT * 4 // 3 + 4:
        return None
    if _decode_delta(ops, mid_new) != mid_old:  # never record a delta that does not rebuild the file
        return None
    return {"prefix": p, "suffix": s, "ops": ops}


def apply_delta(delta: Mapping[str, Any], current: str, out) -> None:
    size = os.path.getsize(current)
    p, s = delta["prefix"], delta["suffix"]
    with open(current, "rb") as f:
        _copy_range(f, 0, p, out)
        out.write(_decode_delta(delta["ops"], read_at(f, p, size - p - s)))
        _copy_range(f, size - s, size, out)


def _copy_range(f, start: int, end: int, out) -> None:
    f.seek(start)
    left = end - start
    while left > 0:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise WriteError("the file changed while it was being read")
        out.write(chunk)
        left -= len(chunk)

