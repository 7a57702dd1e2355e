"""Batched waveform augmentation (the paper's chain: docs/augmentation.md), in plain torch.

Every transform works on a ``B×N`` batch on any device and returns the same
shape, dtype and device. Each example draws its own on/off decision and its own
parameters; nothing is shared across the batch. All random draws are made on
the CPU from a ``torch.Generator`` and then moved to the data's device, so one
seed gives the same parameters on CPU and GPU (the white-noise waveform itself
is drawn on the data's device from a seed taken from that generator, so it is
reproducible per device, not across devices).

Each transform has ``apply(x, ...)`` taking explicit per-example parameters
(tensors of shape ``(B,)`` or scalars) for exact, deterministic use, and
``__call__(x, generator)`` which draws them. :func:`paper_chain` builds the
authors' chain with the paper's probabilities. See ``docs/augmentation.md``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = [
    "Augmentation",
    "PolarityInversion",
    "Noise",
    "Gain",
    "HighLowPass",
    "Delay",
    "PitchShift",
    "Reverb",
    "AugmentationChain",
    "DEFAULT_PROBABILITIES",
    "paper_chain",
    "lowpass",
    "highpass",
    "sox_reverb_settings",
]

# Paper order and probabilities (docs/augmentation.md); keys are the names paper_chain accepts.
DEFAULT_PROBABILITIES: dict[str, float] = {
    "polarity": 0.8,
    "noise": 0.3,
    "gain": 0.2,
    "filter": 0.8,
    "delay": 0.5,
    "pitch_shift": 0.4,
    "reverb": 0.3,
}


# --------------------------------------------------------------------------- helpers


@lru_cache(maxsize=None)
def _fast_len(n: int) -> int:
    """Smallest 2^a·3^b·5^c >= n: sizes every FFT backend handles quickly."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


def _per_example(v, x: torch.Tensor, dtype=None) -> torch.Tensor:
    """Scalar or (B,) parameter -> (B, 1) tensor on x's device."""
    t = torch.as_tensor(v, dtype=dtype or x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"expected a scalar or {x.shape[0]} per-example values, got shape {tuple(t.shape)}")
    return t.unsqueeze(1)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # FFTs need float32/64; half precision is computed in float32 and cast back.
    return x.dtype if x.dtype == torch.float64 else torch.float32


def _check(x: torch.Tensor) -> None:
    if not torch.is_floating_point(x):
        raise TypeError(f"expected a floating-point waveform, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"expected a B×N batch of waveforms, got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- base class


class Augmentation:
    """One augmentation: probability ``p`` plus per-example parameter draws.

    Subclasses implement ``sample(batch_size, generator) -> dict`` (CPU tensors of
    shape ``(B,)``) and ``apply(x, **params)``. ``__call__`` draws the on/off mask
    and the parameters for the *whole* batch (so the generator advances the same
    way whichever examples are on) and runs ``apply`` on the selected examples only.
    """

    name = "augmentation"

    def __init__(self, p: float):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: probability must be in [0, 1], got {p}")
        self.p = float(p)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, **params) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, batch_size: int, generator: torch.Generator | None = None):
        """``(on, params)``: the per-example on/off mask and parameters ``__call__`` would use."""
        g = generator if generator is not None else torch.default_generator
        on = torch.rand(batch_size, generator=g) < self.p
        return on, self.sample(batch_size, g)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check(x)
        on, params = self.draw(x.shape[0], generator)
        if not bool(on.any()):
            return x
        if bool(on.all()):
            return self.apply(x, **params)
        idx = on.nonzero().squeeze(1)
        idx_dev = idx.to(x.device)
        out = x.clone()
        out[idx_dev] = self.apply(x[idx_dev], **{k: v[idx] for k, v in params.items()})
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


# --------------------------------------------------------------------------- simple ones


class PolarityInversion(Augmentation):
    """Multiply by -1."""

    name = "polarity"

    def __init__(self, p: float = 0.8):
        super().__init__(p)

    def sample(self, batch_size, generator):
        return {}

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return -x


class Noise(Augmentation):
    """Additive white Gaussian noise whose std is ``std_ratio`` × the example's own std.

    ``std_ratio`` ~ U[0.3, 0.5] (the authors' ``min_snr``/``max_snr``), i.e. an SNR
    of ``-20·log10(std_ratio)`` = 6.0 to 10.5 dB. Silent examples get no noise.
    """

    name = "noise"

    def __init__(self, p: float = 0.3, min_std_ratio: float = 0.3, max_std_ratio: float = 0.5):
        super().__init__(p)
        self.min_std_ratio, self.max_std_ratio = min_std_ratio, max_std_ratio

    def sample(self, batch_size, generator):
        return {
            "std_ratio": _uniform(batch_size, self.min_std_ratio, self.max_std_ratio, generator),
            # one noise seed per example keeps each example's noise independent of
            # which other examples are switched on
            "seed": torch.randint(0, 2**62, (batch_size,), generator=generator),
        }

    @staticmethod
    def apply(x: torch.Tensor, std_ratio, seed=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x + std_ratio·std(x)·noise``; ``noise`` (B×N, unit variance) is drawn when not given.

        Draws use ``seed`` (one integer per example) on x's device, or the default
        generator when ``seed`` is None.
        """
        _check(x)
        if noise is None:
            noise = _unit_noise(x, seed)
        std = x.std(dim=-1, keepdim=True, correction=0)  # population std: defined for N = 1
        return x + _per_example(std_ratio, x) * std * noise.to(x.dtype)


def _unit_noise(x: torch.Tensor, seed) -> torch.Tensor:
    if seed is None:
        return torch.randn(x.shape, dtype=x.dtype, device=x.device)
    seeds = torch.as_tensor(seed).reshape(-1).tolist()
    if len(seeds) == 1:
        seeds = seeds * x.shape[0]
    rows = []
    for s in seeds:
        g = torch.Generator(device=x.device)
        g.manual_seed(int(s))
        rows.append(torch.randn(x.shape[-1], generator=g, dtype=x.dtype, device=x.device))
    return torch.stack(rows)


class Gain(Augmentation):
    """Scale by ``gain_db`` ~ U[-20, -1] dB.

    Unlike torchaudio's ``Vol`` used by the authors, the result is not clamped to
    [-1, 1]: with negative gains that only matters for input that already exceeds 1.
    """

    name = "gain"

    def __init__(self, p: float = 0.2, min_gain_db: float = -20.0, max_gain_db: float = -1.0):
        super().__init__(p)
        self.min_gain_db, self.max_gain_db = min_gain_db, max_gain_db

    def sample(self, batch_size, generator):
        return {"gain_db": _uniform(batch_size, self.min_gain_db, self.max_gain_db, generator)}

    @staticmethod
    def apply(x: torch.Tensor, gain_db) -> torch.Tensor:
        _check(x)
        return x * torch.pow(10.0, _per_example(gain_db, x, torch.float64) / 20.0).to(x.dtype)


class Delay(Augmentation):
    """Echo: ``(x + 0.5·x delayed by delay_ms) / 2``, delay in {200, 250, ..., 450} ms.

    The offset is ``int(delay_ms · sample_rate / 1000)`` samples (as the authors'
    code); an offset past the end leaves ``x / 2``.
    """

    name = "delay"

    def __init__(self, sample_rate: int = 22050, p: float = 0.5, min_delay_ms: int = 200,
                 max_delay_ms: int = 450, step_ms: int = 50, volume: float = 0.5):
        super().__init__(p)
        self.sample_rate = sample_rate
        self.delays_ms = torch.arange(min_delay_ms, max_delay_ms + 1, step_ms, dtype=torch.float64)
        self.volume = volume

    def sample(self, batch_size, generator):
        k = torch.randint(0, len(self.delays_ms), (batch_size,), generator=generator)
        return {"delay_ms": self.delays_ms[k]}

    def apply(self, x: torch.Tensor, delay_ms) -> torch.Tensor:
        _check(x)
        n = x.shape[-1]
        ms = torch.as_tensor(delay_ms, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        offset = (ms * self.sample_rate / 1000).long().clamp(0, n)  # CPU, like the authors' int()
        maxoff = int(offset.max())
        padded = F.pad(x, (maxoff, 0))
        idx = torch.arange(n, device=x.device) + (maxoff - offset.to(x.device)).unsqueeze(1)
        echo = padded.gather(1, idx)
        return (x + self.volume * echo) / 2


# --------------------------------------------------------------------------- filters


def _fft_filter(x: torch.Tensor, cutoff_hz, highpass, sample_rate: int, width: float) -> torch.Tensor:
    """Zero-phase low-/high-pass with a raised-cosine transition, per-example cutoff.

    The gain is 1 below ``cutoff·(1-width)`` and 0 above ``cutoff·(1+width)`` (the
    reverse for high-pass) with a half-cosine in between, applied to the FFT of the
    zero-padded signal. Padding covers the (two-sided) impulse response so there
    is no circular wrap-around: edges behave like silence outside the clip.
    """
    _check(x)
    b, n = x.shape
    wd = _work_dtype(x)
    fc = _per_example(cutoff_hz, x, wd)
    hp = torch.as_tensor(highpass, dtype=torch.bool, device=x.device).reshape(-1).expand(b).unsqueeze(1)
    half = (fc * width).clamp(min=1e-3)
    # the transition's impulse response decays as 1/t³ beyond ~1/(2·half); 6/half covers it
    min_half = max(float(torch.as_tensor(cutoff_hz, dtype=torch.float64).min()) * width, 1e-3)
    pad = int(math.ceil(6 * sample_rate / min_half))
    m = _fast_len(n + 2 * min(pad, 4 * n + 4096))
    spec = torch.fft.rfft(x.to(wd), n=m)
    freqs = torch.fft.rfftfreq(m, 1 / sample_rate, dtype=wd, device=x.device)
    t = ((freqs - (fc - half)) / (2 * half)).clamp(0, 1)
    gain = 0.5 + 0.5 * torch.cos(math.pi * t)  # low-pass
    gain = torch.where(hp, 1 - gain, gain)
    return torch.fft.irfft(spec * gain, n=m)[:, :n].to(x.dtype)


def lowpass(x: torch.Tensor, cutoff_hz, sample_rate: int = 22050, width: float = 0.15) -> torch.Tensor:
    """Zero-phase low-pass of a ``B×N`` batch; ``cutoff_hz`` scalar or per example."""
    return _fft_filter(x, cutoff_hz, False, sample_rate, width)


def highpass(x: torch.Tensor, cutoff_hz, sample_rate: int = 22050, width: float = 0.15) -> torch.Tensor:
    """Zero-phase high-pass of a ``B×N`` batch; ``cutoff_hz`` scalar or per example."""
    return _fft_filter(x, cutoff_hz, True, sample_rate, width)


class HighLowPass(Augmentation):
    """High-pass (cutoff U[200, 1200] Hz) or low-pass (U[2200, 4000] Hz), 50/50 per example.

    Zero-phase FFT filter (see :func:`lowpass`); ``width`` is the half-width of the
    transition band relative to the cutoff (0.15: a 3 kHz low-pass passes <= 2.55
    kHz untouched and removes >= 3.45 kHz completely).
    """

    name = "filter"

    def __init__(self, sample_rate: int = 22050, p: float = 0.8, highpass_hz=(200.0, 1200.0),
                 lowpass_hz=(2200.0, 4000.0), width: float = 0.15):
        super().__init__(p)
        self.sample_rate = sample_rate
        self.highpass_hz, self.lowpass_hz = tuple(highpass_hz), tuple(lowpass_hz)
        self.width = width

    def sample(self, batch_size, generator):
        high = torch.rand(batch_size, generator=generator) < 0.5
        hp = _uniform(batch_size, *self.highpass_hz, generator)
        lp = _uniform(batch_size, *self.lowpass_hz, generator)
        return {"cutoff_hz": torch.where(high, hp, lp), "highpass": high}

    def apply(self, x: torch.Tensor, cutoff_hz, highpass) -> torch.Tensor:
        return _fft_filter(x, cutoff_hz, highpass, self.sample_rate, self.width)


# --------------------------------------------------------------------------- pitch shift


def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Sum (B, T, W) frames placed ``hop`` apart; W must be a multiple of hop."""
    b, t, w = frames.shape
    parts = frames.reshape(b, t, w // hop, hop)
    out = frames.new_zeros(b, t + w // hop - 1, hop)
    for i in range(w // hop):
        out[:, i:i + t] += parts[:, :, i]
    return out.reshape(b, -1)


def _istft(spec: torch.Tensor, window: torch.Tensor, hop: int, length: int) -> torch.Tensor:
    """Inverse of ``torch.stft(center=True)``; a faster overlap-add than ``torch.istft`` on CPU."""
    n_fft = window.numel()
    if n_fft % hop:
        return torch.istft(spec, n_fft, hop, window=window, center=True, length=length)
    frames = torch.fft.irfft(spec, n=n_fft, dim=1).transpose(1, 2) * window
    out = _overlap_add(frames, hop)
    env = _overlap_add((window * window).expand(1, spec.shape[2], n_fft), hop)
    sl = slice(n_fft // 2, n_fft // 2 + length)
    out, env = out[:, sl], env[:, sl]
    if out.shape[1] < length:
        out = F.pad(out, (0, length - out.shape[1]))
        env = F.pad(env, (0, length - env.shape[1]), value=1.0)
    return out / env.clamp_min(1e-8)


def _wsola_positions(x: torch.Tensor, factor: torch.Tensor, segment: int, search: int, overlap: int,
                     n_segments: int) -> torch.Tensor:
    """Where each of ``n_segments`` output segments is read from in ``x`` (B×N', zero-padded
    far enough): SoX ``tempo``'s search, batched over examples (each its own ``factor``).

    Segment k nominally starts at round(factor·k·(segment − overlap)); the actual start is
    the offset in [0, search) whose first ``overlap`` samples differ least (sum of squares)
    from the natural continuation of segment k−1, so waveforms join in phase and no
    attack is smeared. Only this choice is sequential; it costs one small correlation
    per segment (one batched multiply-and-sum).
    """
    b = x.shape[0]
    dev = x.device
    hop_in = factor.to(torch.float64) * (segment - overlap)  # (B,)
    positions = torch.empty(b, n_segments, dtype=torch.long, device=dev)
    positions[:, 0] = search // 2  # SoX: the first segment is taken from the middle of the search range
    # Everything that does not depend on the previous segment's choice is computed for all
    # segments at once, so that the sequential loop is a handful of kernels per segment
    # (on a GPU its cost is kernel launches, not arithmetic).
    ks = torch.arange(n_segments, device=dev, dtype=torch.float64)
    nominal = torch.floor(hop_in[:, None] * ks + 0.5).long()  # (B,K): where segment k would start
    windows = x.gather(1, (nominal[:, :, None] + torch.arange(search + overlap - 1, device=dev)).flatten(1))
    windows = windows.view(b, n_segments, search + overlap - 1)  # every candidate's head, per segment
    sq = F.pad(torch.cumsum(x * x, dim=1), (1, 0))  # running energy: Σa² of any window in O(1)
    starts = (nominal[:, :, None] + torch.arange(search, device=dev)).flatten(1)
    energy = (sq.gather(1, starts + overlap) - sq.gather(1, starts)).view(b, n_segments, search)
    tail_idx = torch.arange(overlap, device=dev) + (segment - overlap)
    for k in range(1, n_segments):
        tail = x.gather(1, positions[:, k - 1:k] + tail_idx)  # B×O: the natural continuation of k−1
        # Σ(a−b)² = Σa² − 2Σab + Σb²; Σb² is the same for every candidate
        cross = (windows[:, k].unfold(1, overlap, 1) * tail[:, None, :]).sum(dim=2)  # B×R
        positions[:, k] = nominal[:, k] + torch.argmin(energy[:, k] - 2 * cross, dim=1)
    return positions


def _wsola(x: torch.Tensor, factor: torch.Tensor, out_len: int, sample_rate: int) -> torch.Tensor:
    """SoX ``tempo`` (music settings: 82 ms segments, 14.68 ms search, 12 ms overlap, full
    search): B×N → B×``out_len`` at ``factor`` × the speed, pitch kept, each example its own factor."""
    segment = int(sample_rate * 0.082 + 0.5)
    search = int(sample_rate * 0.01468 + 0.5)
    overlap = max(int(sample_rate * 0.012 + 4.5) & ~7, 16)  # SoX rounds the overlap to a multiple of 8
    hop_out = segment - overlap
    n_segments = -(-out_len // hop_out) + 1
    need = int(math.ceil(float(factor.max()) * n_segments * hop_out)) + segment + search + overlap
    # SoX pre-loads half a search range of silence, so that the first segment (taken from the
    # middle of the range) starts at the first sample; past the end: silence, as SoX flushes
    xp = F.pad(x, (search // 2, max(0, need - x.shape[1])))
    pos = _wsola_positions(xp, factor, segment, search, overlap, n_segments)
    dev = x.device
    # each segment emits hop_out samples: a cross-fade from the previous segment's
    # continuation into its own first `overlap` samples, then its middle
    seg = xp.gather(1, (pos[:, :, None] + torch.arange(segment - overlap, device=dev)).flatten(1))
    seg = seg.view(x.shape[0], n_segments, hop_out)
    cont = xp.gather(1, (pos[:, :-1, None] + hop_out + torch.arange(overlap, device=dev)).flatten(1))
    cont = cont.view(x.shape[0], n_segments - 1, overlap)
    fade_in = torch.arange(overlap, device=dev, dtype=x.dtype) / overlap  # SoX's linear fade
    head = seg[:, 1:, :overlap] * fade_in + cont * (1 - fade_in)
    seg = torch.cat([seg[:, :1], torch.cat([head, seg[:, 1:, overlap:]], dim=2)], dim=1)
    return seg.flatten(1)[:, :out_len]


_SINC_ZEROS = 16  # zero crossings of the interpolation kernel on each side
_KAISER_BETA = 8.6  # ~-90 dB side lobes
_PHASES = 32  # kernel tabulated at 32 fractional positions, linearly interpolated between them
_CHUNK_SAMPLES = 1 << 17  # output samples (all examples together) per step of the resampler
_STRETCH_MARGIN = 64  # stretched samples kept past the end: more than the widest kernel reaches (24)


def _resample_to(y: torch.Tensor, ratio: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` samples of each example read at ``ratio`` × the input rate (output sample j is
    y(j·ratio)), band-limited like SoX ``rate``: a Kaiser-windowed sinc whose cut-off is the
    lower of the two Nyquist frequencies, so shifting up never aliases. Each example has
    its own ratio.

    The kernel is tabulated per example at ``_PHASES + 1`` fractional positions. For a
    stretch of output samples, the input frames they start at are multiplied by the whole
    table at once (one matrix product: every phase of every frame), and each output takes
    the two phases around its own and interpolates linearly. Dense arithmetic instead of a
    gather per tap and output sample: 2-3x faster on a CPU than a 1,024-phase table looked
    up sample by sample, and as close to the exact kernel (the two differ by about -65 dB)."""
    b = y.shape[0]
    dev, dt = y.device, y.dtype
    ratio = ratio.to(torch.float64).to(dev)[:, None]  # (B,1)
    cutoff = torch.clamp(1 / ratio, max=1.0)  # (B,1): relative to the input's Nyquist
    half = int(math.ceil(_SINC_ZEROS / float(cutoff.min())))  # taps each side, for the lowest cut-off
    taps = torch.arange(-half + 1, half + 1, device=dev, dtype=torch.float64)  # (T,)
    phase = torch.arange(_PHASES + 1, device=dev, dtype=torch.float64) / _PHASES  # (P+1,): 0 … 1
    d = taps[None, None, :] - phase[None, :, None]  # (1,P+1,T): distance from the wanted position
    span = (_SINC_ZEROS / cutoff)[:, :, None]  # (B,1,1) kernel half-width in input samples
    window = torch.special.i0(_KAISER_BETA * torch.sqrt(torch.clamp(1 - (d / span) ** 2, min=0.0)))
    table = cutoff[:, :, None] * torch.sinc(cutoff[:, :, None] * d) * window * (d.abs() < span)
    table = (table / table.sum(dim=2, keepdim=True)).to(dt)  # unity gain at DC for every phase: (B,P+1,T)
    t = torch.arange(n, device=dev, dtype=torch.float64)[None] * ratio  # (B,n) input positions
    base = torch.floor(t).long()
    where = (t - base) * _PHASES
    k = torch.clamp(torch.floor(where).long(), max=_PHASES - 1)  # the table row at or below
    frac = (where - k).to(dt)  # and how far towards the next one
    yp = F.pad(y, (half, half + 1))
    n_taps = taps.numel()
    kernels = table.transpose(1, 2)  # (B, T, P+1)
    # Every example at once, a stretch of output samples at a time: no loop over examples and
    # no host<->device round trip inside the loop (on a GPU, per-example slices cost ~3,500
    # synchronisations per batch of 32). The frames a stretch needs are gathered into a
    # (B, span, T) block whose span bounds every example's; memory stays bounded.
    step = max(1024, min(n, _CHUNK_SAMPLES // b))
    span = int(math.ceil((step - 1) * float(ratio.max()))) + 2
    if yp.shape[1] < span + n_taps - 1:  # a short clip: one stretch reads past its end, into silence
        yp = F.pad(yp, (0, span + n_taps - 1 - yp.shape[1]))
    last_start = yp.shape[1] - (span + n_taps - 1)
    ar = torch.arange(span + n_taps - 1, device=dev)
    n_cols = _PHASES + 1
    out = torch.empty(b, n, dtype=dt, device=dev)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        rows = base[:, lo:hi] + 1  # (B, S)
        # tap j of output sample s is input sample base[s] - half + 1 + j: frame rows[s] of yp
        first = rows[:, :1].clamp(max=last_start)  # near the end: read the same samples from earlier
        frames = yp.gather(1, first + ar).unfold(1, n_taps, 1)  # (B, span, T) view of a short copy
        every_phase = torch.bmm(frames, kernels).flatten(1)  # (B, span·(P+1)): every phase of every frame
        at = (rows - first) * n_cols + k[:, lo:hi]
        below, above = every_phase.gather(1, at), every_phase.gather(1, at + 1)
        out[:, lo:hi] = below + frac[:, lo:hi] * (above - below)
    return out


class PitchShift(Augmentation):
    """Pitch shift by ``semitones`` ~ U[-7, +7] in whole cents, length kept.

    Method: a phase vocoder that scales frequency instead of time. Each STFT frame
    (Hann, ``n_fft`` 2048, hop 512) is resampled along frequency (output bin k
    reads source bin k/ratio, ratio = 2^(semitones/12), magnitudes linearly
    interpolated) and the output phase advances by ratio × the source bin's
    instantaneous frequency, so partials move to ratio × their frequency while
    frames stay where they were. This is equivalent to the classic "time-stretch
    by ratio, then resample by 1/ratio" but needs no per-example resampling, so
    every example gets its own exact shift in one batched pass (no grouping).
    The output is scaled back to the example's RMS (the vocoder loses 1-4 dB).
    """

    name = "pitch_shift"
    METHODS = ("sox", "vocoder")

    def __init__(self, sample_rate: int = 22050, p: float = 0.4, min_semitones: float = -7.0,
                 max_semitones: float = 7.0, n_fft: int = 2048, hop_length: int | None = None,
                 method: str = "sox"):
        super().__init__(p)
        if method not in self.METHODS:
            raise ValueError(f"PitchShift: method must be one of {', '.join(self.METHODS)}, got {method!r}")
        self.sample_rate = sample_rate
        self.min_cents, self.max_cents = round(min_semitones * 100), round(max_semitones * 100)
        self.n_fft = n_fft
        self.hop_length = hop_length or n_fft // 4
        self.method = method

    def sample(self, batch_size, generator):
        cents = torch.randint(self.min_cents, self.max_cents + 1, (batch_size,), generator=generator)
        return {"semitones": cents.double() / 100}

    def apply(self, x: torch.Tensor, semitones) -> torch.Tensor:
        _check(x)
        if self.method == "sox":
            return self._apply_sox(x, semitones)
        return self._apply_vocoder(x, semitones)

    def _apply_sox(self, x: torch.Tensor, semitones) -> torch.Tensor:
        """SoX ``pitch`` as the authors ran it: ``tempo`` by 1/ratio (WSOLA: the clip gets
        ratio × longer, pitch kept, every attack copied from the original waveform), then
        ``rate``: resampled back to the original length, which moves the pitch by ratio."""
        # On the CPU the resampler runs one example at a time (its temporaries then stay in
        # cache: 1.7x less CPU time for 16 clips of 3.69 s), while the WSOLA search, a loop of
        # small kernels per segment, runs once for the whole batch. Bit-identical to one pass
        # (each example's output is independent of the batch, see below), which is what a
        # GPU runs, with no host syncs.
        return self._sox_batched(x, semitones, resample_one_by_one=x.device.type == "cpu")

    def _sox_batched(self, x: torch.Tensor, semitones, resample_one_by_one: bool = False) -> torch.Tensor:
        b, n = x.shape
        wd = _work_dtype(x)
        ratio = torch.pow(2.0, _per_example(semitones, x, torch.float64)[:, 0] / 12)  # (B,)
        # Each example's stretch is cut at its own length (+ room for the resampling kernel),
        # so its output does not depend on which other examples share the batch.
        valid = torch.ceil(ratio * n).long() + _STRETCH_MARGIN  # (B,)
        stretched = _wsola(x.to(wd), 1 / ratio, int(valid.max()), self.sample_rate)
        keep = torch.arange(stretched.shape[1], device=x.device)[None] < valid.to(x.device)[:, None]
        stretched = stretched * keep
        if resample_one_by_one and b > 1:
            return torch.cat([_resample_to(stretched[i:i + 1, :int(valid[i])], ratio[i:i + 1], n)
                              for i in range(b)]).to(x.dtype)
        return _resample_to(stretched, ratio, n).to(x.dtype)

    def _apply_vocoder(self, x: torch.Tensor, semitones) -> torch.Tensor:
        b, n = x.shape
        wd = _work_dtype(x)
        dev = x.device
        n_fft, hop = self.n_fft, self.hop_length
        two_pi = 2 * math.pi
        # short clips: pad to one frame so the STFT exists; cropped again below
        xp = F.pad(x.to(wd), (0, max(0, n_fft - n)))
        window = torch.hann_window(n_fft, dtype=wd, device=dev)
        spec = torch.stft(xp, n_fft, hop, window=window, center=True, pad_mode="constant",
                          return_complex=True)
        n_bins = spec.shape[1]
        mag, phase = spec.abs(), spec.angle()

        ratio = torch.pow(2.0, _per_example(semitones, x, torch.float64) / 12)  # (B,1)
        src = torch.arange(n_bins, dtype=torch.float64, device=dev) / ratio  # output bin k reads k/ratio
        lo = src.floor().long().clamp(max=n_bins - 1)
        hi = (lo + 1).clamp(max=n_bins - 1)
        near = src.round().long().clamp(max=n_bins - 1)
        frac = (src - src.floor()).to(wd).unsqueeze(2)
        inside = (src <= n_bins - 1).to(wd).unsqueeze(2)

        def take(t, i):
            return t.gather(1, i.unsqueeze(2).expand(-1, -1, t.shape[2]))

        new_mag = torch.lerp(take(mag, lo), take(mag, hi), frac) * inside
        # Per hop a bin's phase advances by its instantaneous frequency × hop: the bin
        # frequency plus the wrapped deviation. Scaling that by ratio moves the partial.
        phase_near = take(phase, near)
        expected = (near * (two_pi * hop / n_fft)).to(wd).unsqueeze(2)
        dev_ = torch.remainder(phase_near[..., 1:] - phase_near[..., :-1] - expected + math.pi, two_pi)
        step = (expected + dev_ - math.pi) * ratio.to(wd).unsqueeze(2)
        # wrap each step before summing: keeps the running phase small (float32 precision)
        step = torch.remainder(step, two_pi)
        # Phases are measured from the frame start, so a steady partial's bins alternate by
        # π (window centre at n_fft/2). Re-reference them to the window centre, where all
        # bins of one partial share a phase; otherwise output bins that read the same (or
        # every other) source bin would cancel each other. Then back for bin k: - π·k.
        k = torch.arange(n_bins, device=dev)
        start = phase_near[..., :1] + (math.pi * (near - k)).to(wd).unsqueeze(2)
        new_phase = torch.cumsum(torch.cat([start, step], dim=2), dim=2)
        out = _istft(torch.polar(new_mag, new_phase), window, hop, xp.shape[-1])[:, :n]
        # Overlapping frames whose phases were re-synthesised add up a little out of step,
        # which loses 1-4 dB depending on the material; restore the example's RMS (at most
        # +12 dB, in case the shift pushed most of the energy past Nyquist).
        rms_in = x.to(wd).pow(2).mean(dim=1, keepdim=True).sqrt()
        rms_out = out.pow(2).mean(dim=1, keepdim=True).sqrt()
        gain = torch.where(rms_out > 0, rms_in / rms_out.clamp_min(1e-30), torch.ones_like(rms_out))
        return (out * gain.clamp(max=4.0)).to(x.dtype)


# --------------------------------------------------------------------------- reverb

# SoX reverb.c (Freeverb): delay lengths in samples at 44.1 kHz, stereo spread.
_COMB_LENGTHS = (1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617)
_ALLPASS_LENGTHS = (225, 341, 441, 556)
_STEREO_SPREAD = 12
# The impulse response is computed until it has decayed by this much (100 dB).
_TAIL_NEPERS = 100 / 20 * math.log(10)


def sox_reverb_settings(reverberance, hf_damping, room_scale, sample_rate: int = 22050):
    """SoX's mapping of the three percentages to Freeverb coefficients.

    Returns ``(feedback, damping, comb_lengths, allpass_lengths)``: feedback 0.3 at
    reverberance 0 rising exponentially to 0.98 at 100; damping (one-pole low-pass
    coefficient in the comb loops) 0.2 + 0.3·hf_damping/100; comb delays scaled by
    0.1 + 0.9·room_scale/100 (and by sample_rate/44100). Lengths have shape
    (..., 2 channels, 8) and (2, 4): SoX makes a stereo pair (second channel's
    delays spread by ±12 samples) from a mono input.
    """
    rev = torch.as_tensor(reverberance, dtype=torch.float64)
    a = -1 / math.log(1 - 0.3)
    bb = 100 / (math.log(1 - 0.98) * a + 1)
    feedback = 1 - torch.exp((rev - bb) / (a * bb))
    damping = torch.as_tensor(hf_damping, dtype=torch.float64) / 100 * 0.3 + 0.2
    scale = torch.as_tensor(room_scale, dtype=torch.float64) / 100 * 0.9 + 0.1
    r = sample_rate / 44100
    sign_c = torch.tensor([(-1.0) ** i for i in range(8)], dtype=torch.float64)
    sign_a = torch.tensor([(-1.0) ** i for i in range(4)], dtype=torch.float64)  # 8 flips: restarts at +
    spread = torch.tensor([0.0, 1.0], dtype=torch.float64).unsqueeze(1)
    comb = torch.tensor(_COMB_LENGTHS, dtype=torch.float64) + _STEREO_SPREAD * spread * sign_c  # (2,8)
    allp = torch.tensor(_ALLPASS_LENGTHS, dtype=torch.float64) + _STEREO_SPREAD * spread * sign_a
    comb_len = torch.floor(scale.unsqueeze(-1).unsqueeze(-1) * r * comb + 0.5).long().clamp(min=1)
    allp_len = torch.floor(r * allp + 0.5).long().clamp(min=1)
    return feedback, damping, comb_len, allp_len


def _reverb_ir_plan(feedback, comb_len, allp_len, n: int):
    """Per example: FFT size to evaluate the response on, window exponent, IR length.

    The comb loop gain is largest at DC (= feedback), so the tail decays by
    -ln(feedback) nepers per longest-comb round trip; the all-passes (loop gain
    0.5) add their own shorter tail. Sizes are rounded up to powers of two so a
    batch falls into a few groups. Where the tail is longer than the clip, only
    the first ``n`` samples matter: the response is then evaluated on |z| = r > 1
    (an exponential window), which suppresses the wrapped-around tail.
    """
    plans = []
    ap_tail = float(allp_len.sum()) * _TAIL_NEPERS / math.log(2)
    for fb, lmax in zip(feedback.tolist(), comb_len.amax(dim=(1, 2)).tolist()):
        rate = -math.log(max(fb, 1e-12)) / lmax  # nepers per sample
        need = _TAIL_NEPERS / rate + ap_tail
        # at least 4 round trips of the longest comb, so r^L stays small on short clips
        m = 1 << math.ceil(math.log2(max(min(need, n) + 1, 4 * lmax, 64)))
        while True:
            log_r = max(0.0, _TAIL_NEPERS - rate * m) / m
            if log_r * min(n, m) <= 5:  # r^n amplifies float error; keep it below e^5
                break
            m *= 2
        plans.append((m, log_r, min(n, m)))
    return plans


def _unit_powers(length: torch.Tensor, n_bins: int, table: torch.Tensor,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """``scale``·exp(2πi·L·k/m) for k < n_bins from ``table`` = exp(2πi·j/m), shape (*L.shape, n_bins).

    The phase index L·k mod m is exact in integers; writing k = hi·S + lo turns
    indexing every element into two small look-ups and one outer product (3x faster).
    ``scale`` (shape of L, real) multiplies the small ``hi`` factor, not the product.
    """
    m, step = table.numel(), 512
    hi = torch.arange(-(-n_bins // step), device=table.device) * step
    lo = torch.arange(step, device=table.device)
    length = length.unsqueeze(-1) % m
    coarse = table[(length * hi) % m]
    if scale is not None:
        coarse = coarse * scale.unsqueeze(-1)
    out = coarse.unsqueeze(-1) * table[(length * lo) % m].unsqueeze(-2)
    return out.flatten(-2)[..., :n_bins]


class Reverb(Augmentation):
    """SoX ``reverb reverberance hf_damping room_scale`` (each U[0, 100]), mono in/out.

    Exactly SoX's Freeverb network (8 damped feedback combs in parallel, 4
    Schroeder all-passes in series, wet gain 0.015, stereo depth 100 %, pre-delay
    0), with the stereo pair averaged back to mono as the authors' ``channels 1``
    did, and output ``dry + wet``. The network is linear, so instead of a
    sample-by-sample loop its exact transfer function is evaluated on an FFT grid
    per example, turned into the impulse response (kept until it has decayed by
    100 dB, or for the whole clip), and convolved with the batch by FFT. SoX itself
    clips to ±1 when converting back to integer samples; this does not clip.
    """

    name = "reverb"

    def __init__(self, sample_rate: int = 22050, p: float = 0.3, reverberance=(0.0, 100.0),
                 hf_damping=(0.0, 100.0), room_scale=(0.0, 100.0), wet_gain_db: float = 0.0):
        super().__init__(p)
        self.sample_rate = sample_rate
        self.reverberance, self.hf_damping, self.room_scale = reverberance, hf_damping, room_scale
        self.wet_gain_db = wet_gain_db

    def sample(self, batch_size, generator):
        return {
            "reverberance": _uniform(batch_size, *self.reverberance, generator),
            "hf_damping": _uniform(batch_size, *self.hf_damping, generator),
            "room_scale": _uniform(batch_size, *self.room_scale, generator),
        }

    def impulse_response(self, reverberance, hf_damping, room_scale, n: int, device=None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The wet impulse responses (B × at most n), SoX wet gain included."""
        b = max(torch.as_tensor(v).numel() for v in (reverberance, hf_damping, room_scale))

        def per_ex(v):
            return torch.as_tensor(v, dtype=torch.float64).cpu().reshape(-1).expand(b)

        feedback, damping, comb_len, allp_len = sox_reverb_settings(
            per_ex(reverberance), per_ex(hf_damping), per_ex(room_scale), self.sample_rate)
        plans = _reverb_ir_plan(feedback, comb_len, allp_len, n)
        gain = 0.015 * 10 ** (self.wet_gain_db / 20) / 2  # /2: mean of the stereo pair
        cd = torch.complex128 if dtype == torch.float64 else torch.complex64
        ir = torch.zeros(b, max(p[2] for p in plans), dtype=dtype, device=device)
        groups = []
        for m in sorted({p[0] for p in plans}):
            same = [i for i, p in enumerate(plans) if p[0] == m]
            # bounded chunks keep the (examples × 8 × bins) complex temporaries small
            groups += [(m, same[i:i + 16]) for i in range(0, len(same), 16)]
        for m, rows in groups:
            rows = torch.tensor(rows)
            log_r = torch.tensor([plans[i][1] for i in rows.tolist()], dtype=torch.float64)
            lr = log_r.view(-1, 1)
            n_bins = m // 2 + 1

            j = torch.arange(m, dtype=torch.float64)
            table = torch.polar(torch.ones_like(j), j * (2 * math.pi / m)).to(device, cd)
            windowed = bool((log_r > 0).any())

            def z_pow(length):
                """z^+L (L integer, shape (G, j)) on |z| = r: (G, j, n_bins)."""
                scale = torch.exp(lr * length).to(device, cd) if windowed else None
                return _unit_powers(length.to(device), n_bins, table, scale)

            fb = feedback[rows].to(device, dtype).view(-1, 1, 1)
            d = damping[rows].to(device, dtype).view(-1, 1, 1)
            z_inv = z_pow(-torch.ones(len(rows), 1, dtype=torch.long))  # z^-1
            # comb: out = z^-L (in + fb·LP(out)), LP = (1-d)/(1 - d z^-1)
            #   => H = 1 / (z^L - q) with q = fb (1-d) / (1 - d z^-1)
            q = fb * (1 - d) / (1 - d * z_inv)
            wet = 0
            for ch in range(2):
                # in place: fresh full-size complex temporaries cost more (page faults) than the arithmetic
                combs = z_pow(comb_len[rows, ch]).sub_(q).reciprocal_().sum(dim=1)
                # SoX "all-pass": out = z^-L (in + 0.5 out) - in  =>  (1.5 - z^L) / (z^L - 0.5)
                za = z_pow(allp_len[ch].expand(len(rows), -1))
                # one division for the four in series: their |z^L| stays within e^5 of 1
                num = za.neg().add_(1.5).prod(dim=1)
                wet = wet + combs.mul_(num).div_(za.sub_(0.5).prod(dim=1))
            length = min(n, m)
            t = torch.arange(length, dtype=torch.float64)
            h = torch.fft.irfft(wet * gain, n=m)[:, :length]
            if windowed:
                h = h * torch.exp(lr * t).to(device, dtype)  # back from the |z| = r grid
            ir[rows.to(device), :length] = h
        return ir

    def apply(self, x: torch.Tensor, reverberance, hf_damping, room_scale) -> torch.Tensor:
        _check(x)
        b, n = x.shape
        wd = _work_dtype(x)
        ir = self.impulse_response(reverberance, hf_damping, room_scale, n, x.device, wd)
        if ir.shape[0] != b:
            ir = ir.expand(b, -1)
        m = _fast_len(n + ir.shape[1] - 1)
        wet = torch.fft.irfft(torch.fft.rfft(x.to(wd), n=m) * torch.fft.rfft(ir, n=m), n=m)[:, :n]
        return (x.to(wd) + wet).to(x.dtype)


# --------------------------------------------------------------------------- chain


class AugmentationChain:
    """Applies transforms in order, each with its own per-example draws.

    ``generator`` (a CPU ``torch.Generator``) is owned by the chain and advances
    with every call; ``manual_seed`` resets it. ``__call__`` accepts ``B×N`` (or a
    single ``N`` waveform) and returns the same shape, dtype and device.
    """

    def __init__(self, transforms, seed: int | None = None):
        self.transforms = list(transforms)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def manual_seed(self, seed: int) -> "AugmentationChain":
        self.generator.manual_seed(int(seed))
        return self

    def __getitem__(self, name: str) -> Augmentation:
        for t in self.transforms:
            if t.name == name:
                return t
        raise KeyError(name)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator if generator is not None else self.generator
        single = x.ndim == 1
        y = x.unsqueeze(0) if single else x
        _check(y)
        dtype = y.dtype
        y = y.to(_work_dtype(y))
        for t in self.transforms:
            y = t(y, g)
        y = y.to(dtype)
        if y.data_ptr() == x.data_ptr():
            y = y.clone()  # never hand back the caller's tensor itself
        return y[0] if single else y

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"AugmentationChain([{inner}])"


def paper_chain(sample_rate: int = 22050, seed: int | None = None, **probabilities: float) -> AugmentationChain:
    """The authors' augmentation chain (docs/augmentation.md) with its probabilities.

    Keyword overrides set one transform's probability by name: ``polarity``,
    ``noise``, ``gain``, ``filter``, ``delay``, ``pitch_shift``, ``reverb``.
    Returns a callable mapping a ``B×N`` tensor to a ``B×N`` tensor.
    """
    unknown = sorted(set(probabilities) - set(DEFAULT_PROBABILITIES))
    if unknown:
        raise TypeError(f"paper_chain() got unknown augmentation name(s) {', '.join(map(repr, unknown))}; "
                        f"expected some of {', '.join(DEFAULT_PROBABILITIES)}")
    p = {**DEFAULT_PROBABILITIES, **{k: float(v) for k, v in probabilities.items()}}
    return AugmentationChain(
        [
            PolarityInversion(p["polarity"]),
            Noise(p["noise"]),
            Gain(p["gain"]),
            HighLowPass(sample_rate, p["filter"]),
            Delay(sample_rate, p["delay"]),
            PitchShift(sample_rate, p["pitch_shift"]),
            Reverb(sample_rate, p["reverb"]),
        ],
        seed=seed,
    )
