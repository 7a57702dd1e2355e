"""What a write or an undo reports for one file: :class:`WriteOutcome` (with its
:class:`FieldChange` list), and :class:`WriteError`, the one-line refusal every step raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..util.text import one_line


class WriteError(Exception):
    """A file cannot be written (or restored); the message says why in one line."""


@dataclass
class FieldChange:
    field: str
    before: list[str]
    after: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "before": self.before, "after": self.after}


@dataclass
class WriteOutcome:
    """What happened to one file. ``status``: ``written``, ``unchanged`` (nothing to change),
    ``would-write`` (dry run), ``restored`` / ``would-restore`` (undo), ``skipped`` (no tags
    to write) or ``error`` (``error`` says why; the file is as it was)."""

    path: str
    status: str
    changes: list[FieldChange] = field(default_factory=list)
    error: str | None = None
    format: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "error"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": path_text(self.path), "status": self.status}
        if self.format:
            out["format"] = self.format
        if self.changes:
            out["changes"] = [c.to_dict() for c in self.changes]
        if self.note:
            out["note"] = self.note
        if self.error:
            out["error"] = self.error
        return out


def path_text(path: str) -> str:
    """A path as results and undo records spell it (:func:`mttag.inference.output.path_text`)."""
    from ..inference.output import path_text as text

    return text(str(path))


def reason(exc: BaseException) -> str:
    """Why an operation failed, in one line: an OSError's own words, else the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return one_line(exc, 200)
