"""mttag: automatic music tagging with the Music Tagging Transformer.

The public API is imported on first use (PEP 562), so that ``import mttag`` and the
command line's ``--help``, ``--version`` and ``mttag models`` never wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_model": "mttag.weights.pretrained",
    "save_model": "mttag.weights.modelfile",
    "tag": "mttag.api",
    "Tagger": "mttag.inference.tagging",
    "TagResult": "mttag.inference.tagging",
    "ModelLoadError": "mttag.errors",
    "embed": "mttag.api",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs: the eager view of the same names
    from .api import embed, tag
    from .errors import ModelLoadError
    from .inference.tagging import Tagger, TagResult
    from .weights.modelfile import save_model
    from .weights.pretrained import load_model


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mttag' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
