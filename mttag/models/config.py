"""Model configuration: everything needed to rebuild a model, stored as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Bumped when the on-disk layout changes incompatibly; a newer file is refused
# with a message instead of being half-understood.
FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    """Architecture, audio settings and tag vocabulary of a model.

    ``params`` holds the architecture's own hyper-parameters (see each
    architecture's ``PRESETS``); everything else is shared by all architectures
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        version = int(data.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"model format version {version} is newer than this mttag understands "
                f"({FORMAT_VERSION}); upgrade with: pip install -U mttag"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"arch", "tags"} - data.keys()
        if missing:
            raise ValueError(f"config is missing {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
