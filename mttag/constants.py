"""Names and defaults shared by the library and the command line that must not need torch to
import: ``mttag --help``, ``--version`` and ``mttag models`` load nothing heavy."""

from __future__ import annotations

from pathlib import Path

# Files shipped with the package: the vocabulary, calibration, the pinned model registry,
# the bundled musicnn weights.
DATA_DIR = Path(__file__).parent / "data"

# A model directory: config.json + model.safetensors + README.md model card.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"

# Windows of the whole-track grid averaged per track by default (`mttag tag --windows`).
# Chosen from the agreement-versus-cost curve on real music (docs/tagging.md, "Choosing the
# default windows"): 20 is the fewest that share at least 4.8 of 5 top tags with
# whole-track tagging in all three test sets (4.86-4.87, no track below 4); 12 gave
# 4.61-4.74 and 16 4.67-4.74 (a track at 3).
DEFAULT_WINDOWS = 20
