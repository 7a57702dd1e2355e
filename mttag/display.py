"""Text that is safe to print on a terminal.

File names may hold any byte but ``/`` and NUL, including escape sequences that
clear the screen or retitle the window when printed raw. Everything mttag prints
about a user's file goes through :func:`printable`.
"""

from __future__ import annotations

import re

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
