"""Model configuration: everything needed to rebuild a model, stored as ``config.json``.

Nothing here imports torch. A config read from a file is checked field by field
(:meth:`ModelConfig.from_dict`) before any network is built from it: a model file
cannot ask for an unbounded network, sample rate or window.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.text import short_repr as _short
from .params import PARAMS, ArchParams, TransformerParams, params_class

# Bumped when the on-disk layout changes incompatibly; a newer file is refused
# with a message instead of being half-understood.
FORMAT_VERSION = 1

# Bounds of the fields shared by all architectures.
MAX_TAGS = 100_000
MAX_TAG_CHARS = 1_000
SAMPLE_RATE_RANGE = (1_000, 384_000)
CROP_SECONDS_RANGE = (0.01, 600.0)
MAX_PRESET_CHARS = 200
MAX_CONFIG_BYTES = 64 << 20
# Top-level keys a config.json may have besides the fields of ModelConfig: a list of
# extra files the model needs (fetched from the Hub with it, see mttag.weights.hub).
EXTRA_KEYS = ("files",)


@dataclass
class ModelConfig:
    """Architecture, audio settings and tag vocabulary of a model.

    ``params`` holds the architecture's own hyper-parameters as a plain dict, as
    ``config.json`` stores them; :attr:`arch_params` is the same, typed and checked
    (see :mod:`mttag.models.params`). Everything else is shared by all architectures
    so that tagging code never needs to know which model it runs.
    """

    arch: str
    tags: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    sample_rate: int = 22050
    # Length of the audio crops the model was trained on; tagging cuts tracks
    # into windows of this length and averages their probabilities.
    crop_seconds: float = 10.0
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def n_tags(self) -> int:
        return len(self.tags)

    @property
    def crop_samples(self) -> int:
        return int(round(self.crop_seconds * self.sample_rate))

    @property
    def arch_params(self) -> ArchParams:
        """The architecture's parameters, typed; raises ``ValueError`` (one line) if they are not valid.

        Parsed once, when the config is read, and again only after ``arch`` or ``params`` change:
        comparing the dict with the copy it was parsed from costs far less than checking every field."""
        cached = self.__dict__.get("_typed")
        if cached is not None and cached[0] == self.arch and cached[1] == self.params:
            return cached[2]
        typed = params_class(self.arch).from_dict(self.params)
        self.__dict__["_typed"] = (self.arch, copy.deepcopy(self.params), typed)
        return typed

    def validate(self) -> ArchParams:
        """Check every field; raise ``ValueError`` with a one-line message naming the first bad one.
        Returns the typed parameters."""
        if not isinstance(self.arch, str) or self.arch not in PARAMS:
            raise ValueError(f"arch = {_short(self.arch)} is not a known architecture; known: {', '.join(PARAMS)}")
        tags = self.tags
        if not isinstance(tags, list) or not 1 <= len(tags) <= MAX_TAGS:
            what = f"a list of {len(tags)}" if isinstance(tags, list) else type(tags).__name__
            raise ValueError(f"tags must be a list of 1 to {MAX_TAGS} tag names, not {what}")
        for i, tag in enumerate(tags):
            if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG_CHARS:
                raise ValueError(f"tags[{i}] = {_short(tag)} is not a tag name (a non-empty string of at most "
                                 f"{MAX_TAG_CHARS} characters)")
        if len(set(tags)) != len(tags):
            seen: set[str] = set()
            dup = next(t for t in tags if t in seen or seen.add(t))
            raise ValueError(f"tags lists {_short(dup)} more than once")
        if self.preset is not None and (not isinstance(self.preset, str) or len(self.preset) > MAX_PRESET_CHARS):
            raise ValueError(f"preset = {_short(self.preset)} is not a preset name (a string or null)")
        sr = self.sample_rate
        lo, hi = SAMPLE_RATE_RANGE
        if isinstance(sr, bool) or not isinstance(sr, int) or not lo <= sr <= hi:
            raise ValueError(f"sample_rate = {_short(sr)} is not allowed: expected an integer from {lo} to {hi} (Hz)")
        crop = self.crop_seconds
        lo_c, hi_c = CROP_SECONDS_RANGE
        if (isinstance(crop, bool) or not isinstance(crop, (int, float)) or not math.isfinite(crop)
                or not lo_c <= crop <= hi_c):
            raise ValueError(f"crop_seconds = {_short(crop)} is not allowed: expected a number from {lo_c:g} to {hi_c:g}")
        if not isinstance(self.provenance, dict):
            raise ValueError(f"provenance must be a JSON object, not {type(self.provenance).__name__}")
        version = self.format_version
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"format_version = {_short(version)} is not a format version (a positive integer)")
        params = self.arch_params
        if isinstance(params, TransformerParams) and self.crop_samples > params.max_samples():
            raise ValueError(
                f"crop_seconds = {crop:g} is longer than this transformer takes "
                f"({params.max_samples() / sr:.1f} s with params.max_len = {params.max_len})"
            )
        return params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "ModelConfig":
        """A config from its JSON object, every field checked (see :meth:`validate`); unknown keys are refused."""
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a JSON object, not {type(data).__name__}")
        version = data.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"format_version = {_short(version)} is not a format version (a positive integer)")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"model format version {version} is newer than this mttag understands "
                f"({FORMAT_VERSION}); upgrade with: pip install -U mttag"
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known and k not in EXTRA_KEYS]
        if unknown:
            raise ValueError(f"unknown config key {_short(unknown[0])}; known: {', '.join(known + list(EXTRA_KEYS))}")
        missing = {"arch", "tags"} - data.keys()
        if missing:
            raise ValueError(f"config is missing {', '.join(sorted(missing))}")
        files = data.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError("files must be a list of file names")
        config = cls(**{k: v for k, v in data.items() if k in known})
        config.validate()
        return config

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"config of {size:,} bytes is larger than a model config can be ({MAX_CONFIG_BYTES:,})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise ValueError("config is nested too deeply to be a model config") from None
        return cls.from_dict(data)
