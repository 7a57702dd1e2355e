"""Typed hyper-parameters of each architecture, and their named presets.

One frozen dataclass per architecture (as whisper's ``ModelDimensions``). Every field
has a type and an allowed range; constructing an instance checks them, so a value
that is out of range, of the wrong type or misspelled is refused with a one-line
``ValueError`` naming the field, the value and what is allowed. The bounds admit every
real model (the paper's presets up to "large", the authors' released teacher and
student, musicnn's MSD/MTT/big models) while keeping what a model file can ask
for finite: a ``config.json`` is checked against them before any network is built.

This module does not import torch, so listing presets (``--preset`` choices,
``--help``) stays cheap. On disk, ``config.json`` keeps the parameters as a plain
``params`` object; :meth:`ArchParams.from_dict` and :meth:`ArchParams.to_dict`
convert.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..util.text import short_repr as _short


def _int(default: int, lo: int, hi: int, doc: str = "") -> Any:
    return field(default=default, metadata={"kind": "int", "range": (lo, hi), "doc": doc})


def _float(default: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, doc: str = "") -> Any:
    return field(default=default, metadata={"kind": "float", "range": (lo, hi), "open": (lo_open, hi_open), "doc": doc})


def _bool(default: bool, doc: str = "") -> Any:
    return field(default=default, metadata={"kind": "bool", "doc": doc})


def _choice(default: str, choices: tuple[str, ...], doc: str = "") -> Any:
    return field(default=default, metadata={"kind": "choice", "choices": choices, "doc": doc})


def _ints(default: tuple[int, ...], lo: int, hi: int, min_len: int, max_len: int, doc: str = "") -> Any:
    return field(default=default, metadata={"kind": "ints", "range": (lo, hi), "len": (min_len, max_len), "doc": doc})


def _floats(default: tuple[float, ...], lo: float, hi: float, min_len: int, max_len: int, *, lo_open: bool = False,
            doc: str = "") -> Any:
    return field(default=default, metadata={"kind": "floats", "range": (lo, hi), "open": (lo_open, False),
                                            "len": (min_len, max_len), "doc": doc})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range_text(meta: dict) -> str:
    lo, hi = meta["range"]
    lo_open, hi_open = meta.get("open", (False, False))
    if meta["kind"] in ("int", "ints"):
        return f"an integer from {lo} to {hi}"
    return f"a number {'>' if lo_open else '>='} {lo:g} and {'<' if hi_open else '<='} {hi:g}"


def _in_range(value: float, meta: dict) -> bool:
    lo, hi = meta["range"]
    lo_open, hi_open = meta.get("open", (False, False))
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)


@dataclass(frozen=True)
class ArchParams:
    """Base of the per-architecture parameter classes."""

    arch: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, self._checked(f, getattr(self, f.name)))
        self._check_combination()

    def _fail(self, name: str, value: Any, allowed: str) -> None:
        raise ValueError(f"params.{name} = {_short(value)} is not allowed for {self.arch}: expected {allowed}")

    def _checked(self, f: dataclasses.Field, value: Any) -> Any:
        meta = f.metadata
        kind = meta["kind"]
        if kind == "int":
            if not _is_int(value) or not _in_range(value, meta):
                self._fail(f.name, value, _range_text(meta))
            return value
        if kind == "float":
            if not _is_number(value) or not _in_range(value, meta):
                self._fail(f.name, value, _range_text(meta))
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                self._fail(f.name, value, "true or false")
            return value
        if kind == "choice":
            if value not in meta["choices"] or not isinstance(value, str):
                self._fail(f.name, value, "one of " + ", ".join(repr(c) for c in meta["choices"]))
            return value
        # sequences
        lo_n, hi_n = meta["len"]
        item_ok = _is_int if kind == "ints" else _is_number
        allowed = f"a list of {lo_n} to {hi_n} items, each {_range_text(meta)}"
        if not isinstance(value, (list, tuple)) or not lo_n <= len(value) <= hi_n:
            self._fail(f.name, value, allowed)
        if not all(item_ok(v) and _in_range(v, meta) for v in value):
            self._fail(f.name, value, allowed)
        return tuple(value) if kind == "ints" else tuple(float(v) for v in value)

    def _check_combination(self) -> None:
        """Constraints between fields (overridden per architecture)."""

    # -- conversion ----------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check_names(cls, names: Any) -> None:
        """Refuse parameter names this architecture does not have (a typo must not build a default model)."""
        known = cls.field_names()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"unknown parameter {_short(unknown[0])} for {cls.arch}; known: {', '.join(known)}"
            )

    @classmethod
    def from_dict(cls, data: Any) -> "ArchParams":
        """The parameters a ``config.json`` ``params`` object describes; missing ones take their defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"params must be a JSON object of {cls.arch} parameters, not {type(data).__name__}")
        cls.check_names(data)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples) ``params`` object with every parameter spelled out."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **overrides: Any) -> "ArchParams":
        self.check_names(overrides)
        return dataclasses.replace(self, **overrides)

    @classmethod
    def ranges(cls) -> dict[str, str]:
        """Human-readable allowed values of each field (for docs and errors)."""
        out = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if meta["kind"] in ("int", "float", "ints", "floats"):
                out[f.name] = _range_text(meta)
            elif meta["kind"] == "bool":
                out[f.name] = "true or false"
            else:
                out[f.name] = "one of " + ", ".join(meta["choices"])
        return out


@dataclass(frozen=True)
class TransformerParams(ArchParams):
    """Music Tagging Transformer (paper Table 1). Defaults: the paper's teacher."""

    arch: ClassVar[str] = "transformer"
    conv_channels: int = _int(128, 1, 1024, "channels of the 3x3 CNN front end")
    dim: int = _int(256, 1, 2048, "attention width (paper Table 5: up to 1024)")
    depth: int = _int(4, 1, 48, "transformer blocks")
    heads: int = _int(8, 1, 64, "attention heads; must divide dim")
    max_len: int = _int(512, 1, 16384, "longest token sequence (positional embedding)")
    dropout: float = _float(0.1, 0.0, 1.0, hi_open=True)
    n_mels: int = _int(128, 8, 512, "mel bands (at least 8: the front end pools frequency by 8)")
    n_fft: int = _int(1024, 16, 16384)
    hop_length: int = _int(512, 1, 16384)

    def _check_combination(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"params.dim = {self.dim} is not divisible by params.heads = {self.heads}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"params.hop_length = {self.hop_length} exceeds params.n_fft = {self.n_fft}")

    def max_samples(self) -> int:
        """Longest input the positional embedding covers (tokens = frames // 4, frames = 1 + samples // hop)."""
        return (4 * self.max_len + 3) * self.hop_length - 1


@dataclass(frozen=True)
class ResNetParams(ArchParams):
    """Short-chunk ResNet (Won et al. 2020). Defaults: the paper's model."""

    arch: ClassVar[str] = "resnet"
    channels: int = _int(128, 1, 512, "base width; the widest layers have 4x")
    n_mels: int = _int(128, 1, 512)
    n_fft: int = _int(1024, 16, 16384)
    hop_length: int = _int(512, 1, 16384)
    dropout: float = _float(0.5, 0.0, 1.0, hi_open=True)

    def _check_combination(self) -> None:
        if self.hop_length > self.n_fft:
            raise ValueError(f"params.hop_length = {self.hop_length} exceeds params.n_fft = {self.n_fft}")


@dataclass(frozen=True)
class MusicnnParams(ArchParams):
    """musicnn (Pons & Serra 2019). Defaults: the released MSD/MTT models (see mttag.models.musicnn)."""

    arch: ClassVar[str] = "musicnn"
    n_fft: int = _int(512, 16, 16384)
    hop_length: int = _int(256, 1, 16384)
    n_mels: int = _int(96, 1, 512)
    # How the first frame of a window is padded (see mttag.models.musicnn).
    pad_mode: str = _choice("constant", ("constant", "reflect"))
    float16_mel: bool = _bool(True, "round the mel spectrogram to float16 before the log, as musicnn does")
    frontend_filters: float = _float(1.6, 1 / 32, 16.0, doc="timbral: int(x*128) filters, temporal: int(x*32)")
    timbral_heights: tuple[float, ...] = _floats((0.4, 0.7), 0.0, 1.0, 1, 8, lo_open=True, doc="of n_mels")
    timbral_length: int = _int(7, 1, 255)
    temporal_lengths: tuple[int, ...] = _ints((128, 64, 32), 1, 4096, 1, 8)
    midend_filters: int = _int(64, 1, 2048)
    midend_length: int = _int(7, 1, 255)
    backend_units: int = _int(200, 1, 8192)
    dropout: float = _float(0.5, 0.0, 1.0, hi_open=True)
    bn_eps: float = _float(1e-3, 0.0, 1.0, lo_open=True)

    def _check_combination(self) -> None:
        if self.hop_length > self.n_fft:
            raise ValueError(f"params.hop_length = {self.hop_length} exceeds params.n_fft = {self.n_fft}")
        for h in self.timbral_heights:
            if int(h * self.n_mels) < 1:
                raise ValueError(
                    f"params.timbral_heights: {h:g} of {self.n_mels} mel bands is less than one band"
                )


PARAMS: dict[str, type[ArchParams]] = {
    "transformer": TransformerParams,
    "resnet": ResNetParams,
    "musicnn": MusicnnParams,
    # several musicnn networks of these parameters on one front end (mttag.models.musicnn.MusicnnMulti)
    "musicnn-multi": MusicnnParams,
}

_MUSICNN_RELEASED = MusicnnParams()  # both released checkpoints (MSD_musicnn, MTT_musicnn) have these shapes
PRESETS: dict[str, dict[str, ArchParams]] = {
    "transformer": {
        "teacher": TransformerParams(conv_channels=128, dim=256, depth=4, heads=8),
        # The paper's 0.5 M-parameter distillation student; the authors' release used 128 conv channels.
        "small": TransformerParams(conv_channels=64, dim=64, depth=4, heads=8),
        # A wider knowledge-expansion student (paper Table 5 explores widths up to 1024).
        "large": TransformerParams(conv_channels=128, dim=512, depth=4, heads=8),
        # For CPU experiments and tests: a few hundred thousand parameters.
        "tiny": TransformerParams(conv_channels=16, dim=64, depth=2, heads=4),
    },
    "resnet": {
        "teacher": ResNetParams(channels=128),
        "small": ResNetParams(channels=64),
        "tiny": ResNetParams(channels=16),
    },
    "musicnn": {
        "teacher": _MUSICNN_RELEASED,
        "msd": _MUSICNN_RELEASED,
        "mtt": _MUSICNN_RELEASED,
        # MSD_musicnn_big of the upstream repository (not in the wheel)
        "big": MusicnnParams(midend_filters=512, backend_units=500),
    },
    "musicnn-multi": {"teacher": _MUSICNN_RELEASED},
}


def params_class(arch: str) -> type[ArchParams]:
    if arch not in PARAMS:
        raise ValueError(f"unknown architecture {_short(arch)}; known: {', '.join(PARAMS)}")
    return PARAMS[arch]


def preset_names(arch: str) -> tuple[str, ...]:
    """Names of ``arch``'s presets, in order (e.g. the choices of ``--preset``)."""
    params_class(arch)
    return tuple(PRESETS[arch])


def preset_params(arch: str, preset: str) -> ArchParams:
    """The parameters of a named preset."""
    names = preset_names(arch)
    if preset not in names:
        raise ValueError(f"unknown preset {_short(preset)} for {arch}; known: {', '.join(names)}")
    return PRESETS[arch][preset]
