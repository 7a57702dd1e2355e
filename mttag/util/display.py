"""Text that is safe to print on a terminal.

File names may hold any byte but ``/`` and NUL, including escape sequences that
clear the screen or retitle the window when printed raw. Everything mttag prints
about a user's file goes through :func:`printable`.
"""

from __future__ import annotations

import os
import re
import stat

# C0 and C1 control characters, DEL, and the Unicode bidi overrides that can make
# a name display as another
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` with control characters shown as ``\\xNN`` / ``\\uNNNN`` escapes, and
    undecodable bytes of a file name (surrogate escapes) as ``\\xNN``."""
    text = str(text)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    def esc(m: re.Match) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return _CONTROL.sub(esc, text)


# What JSON leaves raw: it escapes C0 controls itself, but not DEL, C1 controls (U+009B
# starts an escape sequence on some terminals) or the bidi overrides
_JSON_RAW_CONTROL = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def json_printable(text: str) -> str:
    """JSON text (from ``json.dumps``) with the control characters JSON leaves raw written
    as ``\\uNNNN`` escapes: the same JSON value, safe on a terminal. Outside its strings
    ``json.dumps`` writes only ASCII punctuation, so every match is inside a string."""
    return _JSON_RAW_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def reaches_terminal(stream) -> bool:
    """Whether text written to ``stream`` can end up on a terminal: anything but a regular
    file (a terminal, or a pipe into ``less`` or ``head``). A stream without a file
    descriptor (``io.StringIO``, a test runner's capture) is kept exact, as a file is."""
    try:
        return not stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False
