"""Pick the compute device (CUDA, then Apple MPS, then CPU) and the precision to run a model in."""

from __future__ import annotations

import functools

import torch


def select_device(name: str | None = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: Apple MPS is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps") from None


# what --precision accepts, for tagging and training alike
PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX-512 BF16 or AMX-BF16, Arm
    BF16): there bf16 convolutions and matrix products run faster than float32; elsewhere
    PyTorch emulates them, more slowly. Read from /proc/cpuinfo; False where it cannot tell."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device, model: object = None, *, training: bool = False) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (auto, fp32, bf16) on ``device``; ``ValueError`` for another value.

    auto, tagging: bf16 where it makes tagging faster, float32 elsewhere. On a CPU with native bf16
    (AVX-512 BF16, AMX, Arm BF16) the model is what tagging waits for, and bf16 makes tagging
    1.5-1.8x faster (msd-musicnn with every window: 1.65x, 4.93 of 5 top-5 tags shared with
    float32, probabilities within ~0.004; docs/tagging.md has the measurements). On CUDA, bf16
    for a model that declares ``bf16_on_cuda`` (the Transformer, the ResNet); musicnn does not
    (its bf16 speed on a GPU is unmeasured). MPS and CPUs without native bf16 (where PyTorch
    emulates it, slowly): float32. ``--precision fp32`` reproduces the original musicnn's numbers.

    auto, ``training``: bf16 autocast on CUDA, for every model; float32 elsewhere.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if training or device.type != "cpu":
        wanted = training or getattr(model, "bf16_on_cuda", False)
        return "bf16" if device.type == "cuda" and wanted else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"
