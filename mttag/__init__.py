"""mttag: automatic music tagging with the Music Tagging Transformer."""

__version__ = "0.1.0"

from .modelfile import ModelLoadError, save_model  # noqa: E402
from .pretrained import load_model  # noqa: E402
from .tagging import TagResult, Tagger, tag  # noqa: E402

__all__ = ["__version__", "load_model", "save_model", "tag", "Tagger", "TagResult", "ModelLoadError"]
