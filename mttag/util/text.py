"""Exception texts and values shortened to one line, for messages that name a file and a reason."""

from __future__ import annotations

from typing import Any


def one_line(message: object, limit: int = 500) -> str:
    """``message`` (an exception or text) with its white space folded onto one line and cut at
    ``limit`` characters; an exception with no text gives its type's name."""
    text = " ".join(str(message).split())[:limit]
    if not text and isinstance(message, BaseException):
        return type(message).__name__
    return text


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters with an ellipsis (a config value in a message)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
