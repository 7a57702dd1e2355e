"""mttag's own exceptions that callers catch across packages (torch-free)."""

from __future__ import annotations

# re-exported for code outside mttag that imported them from here (mttag itself uses .constants)
from .constants import CARD_NAME, CONFIG_NAME, DEFAULT_WINDOWS, WEIGHTS_NAME  # noqa: F401


class ModelLoadError(Exception):
    """A model that cannot be found, downloaded or loaded; the message says why in one line."""


class TrainingError(Exception):
    """A training run that cannot go on; the message says why in one line."""
