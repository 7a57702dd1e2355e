"""musicnn (Pons & Serra 2019), ported from the TensorFlow release ``musicnn`` 0.1.0.

A musically motivated CNN: a log-mel front end with vertical (timbral) and
horizontal (temporal) convolutions, a dense mid-end of 1-D convolutions with
residual connections, and a back end that pools max and mean over time.
The layer shapes, padding and batch-norm constants reproduce the released
TensorFlow graphs (``MSD_musicnn`` and ``MTT_musicnn``) exactly; the weights are
converted by ``scripts/convert_musicnn.py``. See ``docs/musicnn.md``.

Facts of the original graph that the port keeps (and that differ from PyTorch
defaults):

* every batch norm is ``tf.compat.v1.layers.batch_normalization`` at inference,
  i.e. ``eps = 0.001`` (PyTorch's default is 1e-5);
* the timbral convolutions (7×38 and 7×67 over time×mel) pad time by 3 frames
  each side with zeros and no frequency padding ("valid"), then max-pool over all
  remaining frequency positions;
* the temporal convolutions (128×1, 64×1, 32×1) use TensorFlow ``'same'``
  padding, which is asymmetric for even kernels: ``(k-1)//2`` frames before and
  ``k//2`` after (63/64, 31/32, 15/16);
* the back end concatenates max- and mean-pooling along a new last axis and
  flattens, so its 1506 features are *interleaved*: ``max c0, mean c0, max c1,
  mean c1, ...``;
* the input to the network is ``log10(10000·mel + 1)`` of a power mel
  spectrogram (librosa, Slaney mel scale and normalisation) whose values musicnn
  rounds to float16 before the log. Under numpy 1 the product ``10000·x`` is
  promoted to float32; numpy 2 keeps it in float16 and overflows to ``inf``.
  Here the rounding is reproduced and the log is taken in float32.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..audio.features import mel_filters
from . import computed_buffers
from .config import ModelConfig
from .params import PRESETS as _PRESETS
from .params import MusicnnParams

# Typed parameters and presets live in mttag.models.params (MusicnnParams): both released
# checkpoints (MSD_musicnn and MTT_musicnn) have the default shapes; "big" is the
# MSD_musicnn_big variant of the upstream repository (not in the wheel). About pad_mode:
# the first frame of a window is centred on the window's first sample, so half of it lies
# before the window. musicnn's own code pads a track's first frame with zeros under
# librosa >= 0.10, so "constant" makes a window analysed here identical to a track musicnn
# analyses from that point (on a later patch of a track musicnn has real audio there; see
# docs/musicnn.md). frontend_filters 1.6 gives int(1.6*128) = 204 timbral and int(1.6*32) =
# 51 temporal filters; timbral_heights (0.4, 0.7) of 96 mel bands are 38 and 67 bands.
# Compatibility views, plain dicts of every parameter (tuples for the sequences):
PRESETS = {name: dataclasses.asdict(params) for name, params in _PRESETS["musicnn"].items()}
DEFAULTS = dataclasses.asdict(MusicnnParams())
# Frames per training patch: librosa.time_to_frames(3 s) + 1 at 16 kHz, hop 256.
PATCH_FRAMES = 187
# Audio per patch: 187 hops = 47872 samples = 2.992 s at 16 kHz. A window of this
# length gives exactly 187 frames (see MusicnnLogMel), and consecutive windows of
# it start on musicnn's own patch grid (patch k starts at frame 187·k).
PATCH_SECONDS = PATCH_FRAMES * 256 / 16000


class MusicnnLogMel(nn.Module):
    """Waveform ``B×N`` (16 kHz) → musicnn input ``B×T×96`` with ``T = N // hop``.

    Power STFT (periodic Hann, 512 points, hop 256, centred, zero padded as
    librosa >= 0.10 pads), librosa's Slaney mel matrix, optional rounding to
    float16 as musicnn does, then ``log10(10000·x + 1)`` in float32. Of the ``1 + N // hop`` centred frames the
    last is dropped: it is centred on the first sample *after* the input, so it
    belongs to the next window. For ``N = 47872`` this is the 187-frame patch.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, hop_length: int = 256, n_mels: int = 96,
                 pad_mode: str = "constant", float16_mel: bool = True):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.pad_mode = pad_mode
        self.float16_mel = float16_mel
        mel = mel_filters(sample_rate, n_fft, n_mels)  # librosa's default: slaney scale + norm
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel).float().T.contiguous(), persistent=False)

    def n_frames(self, n_samples: int) -> int:
        return max(1, n_samples // self.hop_length)

    def mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Power mel spectrogram ``B×T×n_mels`` in float32 (before rounding and log)."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.float()
            n = x.shape[-1]
            if self.pad_mode == "reflect" and n <= self.n_fft // 2:
                x = F.pad(x, (0, self.n_fft // 2 + 1 - n))
            spec = torch.stft(x, n_fft=self.n_fft, hop_length=self.hop_length, window=self.window,
                              center=True, pad_mode=self.pad_mode, return_complex=True)
            power = spec.real.square() + spec.imag.square()  # B×F×(1 + n//hop)
            power = power[..., : self.n_frames(n)]
            return torch.matmul(power.transpose(1, 2), self.mel_basis)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        mel = self.mel(waveform)
        return compress(mel, self.float16_mel)


def compress(mel: torch.Tensor, float16_mel: bool = True) -> torch.Tensor:
    """musicnn's ``log10(10000·x + 1)``, with its float16 rounding of ``x``, in float32."""
    mel = mel.float()
    if float16_mel:
        # float16 saturates at 65504; a power mel of audio in [-1, 1] stays far below
        mel = mel.clamp(max=65504.0).half().float()
    return torch.log10(10000.0 * mel + 1.0)


class _Conv2dBlock(nn.Module):
    """Conv → ReLU → batch norm → max over all frequency positions: ``B×1×T×F`` → ``B×C×T``.

    ``time_pad`` zero frames go before and after in time (none in frequency).
    In eval mode the batch norm is a per-channel affine map ``a·x + b``, and ReLU
    and ``a·x + b`` are monotonic, so the max over frequency can be taken first
    (of the conv output for ``a ≥ 0``, of its negation for ``a < 0``: the weights
    are negated, which is exact) and ReLU and batch norm applied to ``B×C×T``
    instead of ``B×C×T×F``: the same numbers, without two passes over the largest
    tensors of the network.
    """

    def __init__(self, filters: int, kernel: tuple[int, int], time_pad: tuple[int, int], eps: float):
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = nn.BatchNorm2d(filters, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = self.time_pad
        if self.training:
            x = F.pad(x, (0, 0, before, after))
            return self.bn(F.relu(self.conv(x))).amax(dim=3)
        # symmetric padding inside the convolution; an extra frame before is cut off again
        pad = max(before, after)
        sign = torch.where(self.bn.weight < 0, -1.0, 1.0).to(x.dtype)
        weight = self.conv.weight * sign[:, None, None, None]
        cpu_bf16 = x.device.type == "cpu" and _cpu_bf16_autocast()
        if cpu_bf16 and weight.shape[3] > 1:
            extreme = _bf16_conv_max_over_frequency(x, weight, self.conv.bias * sign, pad)
        elif cpu_bf16:
            extreme = _bf16_temporal_conv_max_over_frequency(x, weight, self.conv.bias * sign, pad)
        else:
            z = F.conv2d(x, weight.to(x.dtype), (self.conv.bias * sign).to(x.dtype), padding=(pad, 0))
            extreme = z.amax(dim=3)
        extreme = extreme[:, :, pad - before : extreme.shape[2] - (pad - after)]
        extreme = extreme * sign[:, None]  # max over frequency where a ≥ 0, min where a < 0
        bn = self.bn
        return F.batch_norm(F.relu(extreme), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _cpu_bf16_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() and torch.get_autocast_cpu_dtype() == torch.bfloat16


def _bf16_conv_max_over_frequency(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pad: int) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=(pad, 0)).amax(dim=3)`` for a one-channel ``B×1×T×F``
    input under CPU bf16 autocast, as one bf16 matrix product of the unfolded patches.

    oneDNN's bf16 convolution is no faster than float32 for these wide one-channel filters
    (7×38: 12.9 vs 12.8 ms per window on an AVX-512 BF16 core), while a bf16 matrix product
    of the same work runs at ~155 GFLOP/s against ~90 (7.7 ms)."""
    c, _, kh, kw = weight.shape
    xp = F.pad(x[:, 0], (0, 0, pad, pad)).to(torch.bfloat16)  # B×T'×F
    cols = xp.unfold(1, kh, 1).unfold(2, kw, 1)  # B×T×F'×kh×kw (a view)
    b, t, f = cols.shape[:3]
    z = cols.reshape(b * t * f, kh * kw) @ weight.reshape(c, kh * kw).t().to(torch.bfloat16)
    z = z.view(b, t, f, c).amax(dim=2).float() + bias.float()  # the bias is the same at every frequency
    return z.transpose(1, 2)  # B×C×T


def _bf16_temporal_conv_max_over_frequency(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pad: int,
                                           block: int = 8) -> torch.Tensor:
    """The same for the temporal filters (``k×1``, one per mel band), as one bf16 matrix
    product against a banded (Toeplitz) matrix that computes ``block`` consecutive frames.

    oneDNN's bf16 convolution and a max over a bf16 last axis are each about twice as slow
    as float32 for these filters, and unfolding every frame's ``k`` taps would copy k times
    the input. Unfolding blocks of 8 frames instead (``k + 7`` samples each, 1.05-1.2x the
    multiply-adds) keeps the copy small: on one AVX-512 BF16 core the three blocks take
    6.2 ms for a batch of 2 windows, against 10.6 ms as float32 convolutions."""
    c, _, k, _ = weight.shape
    b, _, t, f = x.shape
    n_out = t + 2 * pad - k + 1
    n_blocks = -(-n_out // block)
    span = block + k - 1
    # B×F×T': each mel band a row, padded at the end to whole blocks
    xp = F.pad(x[:, 0].transpose(1, 2).to(torch.bfloat16), (pad, pad + n_blocks * block - n_out))
    cols = xp.unfold(2, span, block)  # B×F×blocks×span (a view)
    taps = weight[:, 0, :, 0].t().to(torch.bfloat16)  # k×C
    band = taps.new_zeros(span, block, c)
    for i in range(block):
        band[i : i + k, i] = taps
    z = cols.reshape(-1, span) @ band.view(span, block * c)  # (B·F·blocks)×(block·C)
    z = z.view(b, f, n_blocks * block, c)[:, :, :n_out].amax(dim=1).float() + bias.float()
    return z.transpose(1, 2)  # B×C×T


class _MidendBlock(nn.Module):
    """1-D conv over time with all channels (TF: a [7, C] kernel on a ``T×C×1`` map) → ReLU → batch norm."""

    def __init__(self, c_in: int, c_out: int, length: int, eps: float):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, length, padding=length // 2)
        self.bn = nn.BatchNorm1d(c_out, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


def _same_pad(k: int) -> tuple[int, int]:
    """TensorFlow 'same' padding for stride 1: the extra frame of an even kernel goes after."""
    return (k - 1) // 2, k // 2


class Musicnn(nn.Module):
    """Waveform ``B×N`` at 16 kHz (a 2.992 s window: 187 frames) → tag logits ``B×n_tags``.

    :meth:`patch_logits_from_logmel` runs the network on musicnn's own input
    (``B×T×96`` log-mel patches), as the TensorFlow graph's placeholder takes it.
    The network is convolutional in time with global pooling, so ``T`` may differ
    from 187 (musicnn's ``input_length``), though the models were trained on 187.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        p: MusicnnParams = config.arch_params  # typed and range-checked
        self.config = config
        eps = p.bn_eps
        n_mels = p.n_mels
        with computed_buffers():
            self.frontend = MusicnnLogMel(config.sample_rate, p.n_fft, p.hop_length, n_mels, p.pad_mode, p.float16_mel)
        self.input_bn = nn.BatchNorm2d(1, eps=eps)
        n_timbral = int(p.frontend_filters * 128)
        n_temporal = int(p.frontend_filters * 32)
        t = p.timbral_length
        self.timbral = nn.ModuleList(
            _Conv2dBlock(n_timbral, (t, int(h * n_mels)), (t // 2, t // 2), eps) for h in p.timbral_heights
        )
        self.temporal = nn.ModuleList(
            _Conv2dBlock(n_temporal, (k, 1), _same_pad(k), eps) for k in p.temporal_lengths
        )
        n_front = n_timbral * len(self.timbral) + n_temporal * len(self.temporal)
        m = p.midend_filters
        self.midend = nn.ModuleList(
            _MidendBlock(c_in, m, p.midend_length, eps) for c_in in (n_front, m, m)
        )
        n_pooled = 2 * (n_front + 3 * m)
        self.pool_bn = nn.BatchNorm1d(n_pooled, eps=eps)
        self.dropout = nn.Dropout(p.dropout)
        self.dense = nn.Linear(n_pooled, p.backend_units)
        self.dense_bn = nn.BatchNorm1d(p.backend_units, eps=eps)
        # the output layer is registered last (model files identify it as the last weight)
        self.head = nn.Linear(p.backend_units, config.n_tags)

    def logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        """musicnn's input representation ``B×T×96`` for waveforms ``B×N``."""
        return self.frontend(waveform)

    def embeddings(self, logmel: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate representations, named as musicnn's extractor names them
        (channels first: ``B×C×T`` for the time-varying ones)."""
        x = self.input_bn(logmel.float().unsqueeze(1))  # B×1×T×F
        timbral = [block(x) for block in self.timbral]
        temporal = [block(x) for block in self.temporal]
        front = torch.cat(timbral + temporal, dim=1)  # B×561×T
        n_timbral = sum(t.shape[1] for t in timbral)
        cnn1 = self.midend[0](front)
        cnn2 = self.midend[1](cnn1) + cnn1
        cnn3 = self.midend[2](cnn2) + cnn2
        dense = torch.cat([front, cnn1, cnn2, cnn3], dim=1)  # B×753×T
        max_pool = dense.amax(dim=2)
        mean_pool = dense.mean(dim=2)
        # TF concatenates [max, mean] on a new last axis and flattens: interleaved features
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)
        penultimate = self.dense_bn(F.relu(self.dense(self.dropout(self.pool_bn(pooled)))))
        return {
            "timbral": front[:, :n_timbral], "temporal": front[:, n_timbral:],  # views of front, no copy
            "cnn1": cnn1, "cnn2": cnn2, "cnn3": cnn3,
            "mean_pool": mean_pool, "max_pool": max_pool, "penultimate": penultimate,
        }

    def patch_logits_from_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        """Logits ``B×n_tags`` for log-mel patches ``B×T×96`` (the TF graph's input)."""
        return self.head(self.dropout(self.embeddings(logmel)["penultimate"]))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(waveform)[0]

    def forward_with_embedding(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``B×n_tags`` and the embedding ``B×200`` they are read from: musicnn's
        ``penultimate`` layer, the features its authors publish for similarity and transfer."""
        # The front end always runs in float32 (the original computes its log-mel in float16
        # from a float32 power spectrum; bf16 would lose far more). The network follows the
        # caller's autocast: the tagger leaves it off for musicnn unless asked for bf16.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            logmel = self.logmel(waveform.float())
        embedding = self.embeddings(logmel)["penultimate"]
        return self.head(self.dropout(embedding)).float(), embedding.float()


def split_sources(tags: list[str]) -> list[tuple[str, list[str]]]:
    """``[(source, [name, ...]), ...]`` for a multi-network model's tags ``source:name``, in
    order. Each source's tags must be contiguous (they are the outputs of one head); raises
    ``ValueError`` (one line) otherwise."""
    out: list[tuple[str, list[str]]] = []
    for i, tag in enumerate(tags):
        source, sep, name = tag.partition(":")
        if not sep or not source.isidentifier() or not name:
            raise ValueError(f"tags[{i}] = {tag[:60]!r}: a musicnn-multi model names its tags 'source:name' "
                             "(source: letters, digits and '_')")
        if out and out[-1][0] == source:
            out[-1][1].append(name)
        elif any(s == source for s, _ in out):
            raise ValueError(f"tags[{i}] = {tag[:60]!r}: the tags of source {source!r} must be contiguous")
        else:
            out.append((source, [name]))
    return out


class MusicnnMulti(nn.Module):
    """Several musicnn networks (e.g. the MSD and the MagnaTagATune ones) on one front end:
    waveform ``B×N`` → the networks' logits side by side, ``B×n_tags``.

    All musicnn models take the same 16 kHz log-mel input, so it is computed once per window
    and each network runs from its batch norm on. The tags are ``source:name`` (``msd:rock``,
    ``mtt:violin``), one contiguous block per network, in the networks' order; the networks'
    weights are ``nets.<source>.*``. The embedding is the networks' ``penultimate`` layers
    side by side (200 per network).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        p: MusicnnParams = config.arch_params
        self.config = config
        self.sources = split_sources(config.tags)
        with computed_buffers():
            self.frontend = MusicnnLogMel(config.sample_rate, p.n_fft, p.hop_length, p.n_mels, p.pad_mode, p.float16_mel)
        self.nets = nn.ModuleDict({
            source: Musicnn(dataclasses.replace(config, arch="musicnn", tags=names, provenance={}))
            for source, names in self.sources
        })
        for net in self.nets.values():
            del net.frontend  # the shared one above computes the same input

    @classmethod
    def combine(cls, models: dict[str, "Musicnn"], provenance: dict | None = None) -> "MusicnnMulti":
        """One model from loaded musicnn networks of the same parameters and audio settings
        (``{"msd": msd_model, "mtt": mtt_model}``), their weights copied."""
        first = next(iter(models.values())).config
        for source, model in models.items():
            c = model.config
            if (c.arch, c.params, c.sample_rate, c.crop_seconds) != (first.arch, first.params, first.sample_rate,
                                                                      first.crop_seconds):
                raise ValueError(f"{source}: its parameters or audio settings differ from the first network's")
        tags = [f"{source}:{t}" for source, model in models.items() for t in model.config.tags]
        config = dataclasses.replace(first, arch="musicnn-multi", tags=tags, preset="teacher",
                                     provenance=dict(provenance or {}))
        multi = cls(config)
        for source, model in models.items():
            state = {k: v for k, v in model.state_dict().items()}
            multi.nets[source].load_state_dict(state)
        return multi.eval()

    def logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.frontend(waveform)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(waveform)[0]

    def forward_with_embedding(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # as Musicnn.forward_with_embedding: the front end in float32 whatever the autocast
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            logmel = self.logmel(waveform.float())
        logits, embeddings = [], []
        for net in self.nets.values():
            embedding = net.embeddings(logmel)["penultimate"]
            logits.append(net.head(net.dropout(embedding)).float())
            embeddings.append(embedding.float())
        return torch.cat(logits, dim=1), torch.cat(embeddings, dim=1)
