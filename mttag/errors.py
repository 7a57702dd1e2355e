"""Names shared by the library and the command line that must not need torch to import:
``mttag --help``, ``--version`` and ``mttag models`` load nothing heavy."""

from __future__ import annotations

# A model directory: config.json + model.safetensors + README.md model card.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"

# Evenly spaced windows averaged per track by default (`mttag tag --windows`). Chosen from
# the agreement-versus-cost curve on real music (docs/tagging.md, "Choosing the default
# windows"): 12 windows share 4.67 of 5 top tags with whole-track tagging and no track
# falls below 4, at about 1.4x the cost of decoding alone; 8 gave 4.20 (worst 3).
DEFAULT_WINDOWS = 12


class ModelLoadError(Exception):
    """A model that cannot be found, downloaded or loaded; the message says why in one line."""
