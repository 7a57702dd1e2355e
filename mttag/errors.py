"""Names shared by the library and the command line that must not need torch to import:
``mttag --help``, ``--version`` and ``mttag models`` load nothing heavy."""

from __future__ import annotations

# A model directory: config.json + model.safetensors + README.md model card.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"

# Evenly spaced windows averaged per track by default (`mttag tag --windows`).
DEFAULT_WINDOWS = 8


class ModelLoadError(Exception):
    """A model that cannot be found, downloaded or loaded; the message says why in one line."""
