"""Data augmentation: SpecAugment on features, noise / speed / shift on waveforms.

All randomness goes through an explicit :class:`torch.Generator` argument: the
same seed gives the same output, bit for bit. With ``generator=None`` the global
torch RNG is used. Every operation is batched with tensor ops; the only Python
loops run over the (few) masks of SpecAugment.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> speech = torch.sin(torch.arange(16000) * 0.05)
    >>> noise = torch.randn(8000, generator=g)
    >>> mixed = add_noise(speech, noise, snr_db=5.0, generator=g)
    >>> round(snr(speech, mixed - speech).item(), 3)
    5.0
    >>> speed_perturb(speech, 16000, 1.1).shape
    torch.Size([14546])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import torch
import torchaudio.functional as AF
from torch import nn

from asr.config import ConfigError

__all__ = [
    "SpecAugment",
    "add_noise",
    "snr",
    "speed_perturb",
    "time_shift",
    "WaveformAugment",
]


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float64 numbers drawn on the generator's device, moved to ``device``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(tuple(shape), generator=generator, device=gen_device, dtype=torch.float64).to(device)


def _randint_upto(high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform integer in ``[0, high[i]]`` (inclusive) per element of ``high`` (any shape, int)."""
    high = high.clamp(min=0)
    u = _rand(high.shape, generator, high.device)
    return torch.minimum((u * (high + 1).double()).floor().long(), high.long())


# ---------------------------------------------------------------------------
# SpecAugment
# ---------------------------------------------------------------------------


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019) on a padded batch of features.

    Each utterance gets its own masks. A frequency mask covers ``w ~ U{0..freq_width}``
    consecutive bins; a time mask covers ``w`` consecutive frames with
    ``w ~ U{0..W_b}``, where ``W_b = floor(time_width * length_b)`` for a float
    ``time_width`` (fraction of the utterance) or ``min(time_width, length_b)`` for an
    int (frames). Every mask lies inside the utterance's valid frames; padded frames
    are never touched.

    Args:
        freq_masks: number of frequency masks per utterance.
        freq_width: largest frequency-mask width in bins.
        time_masks: number of time masks per utterance (the maximum when
            ``max_time_masks_ratio`` is set).
        time_width: largest time-mask width: float = fraction of the utterance
            length, int = frames.
        max_time_masks_ratio: adaptive multiplicity (Park et al. 2020): utterance ``b``
            gets ``min(time_masks, floor(max_time_masks_ratio * length_b))`` time masks,
            so short utterances get fewer. ``None`` = always ``time_masks``.
        fill: value written into masked cells: a number, or ``"mean"`` for the mean
            of the utterance's valid features.

    Only active in training mode; in eval mode ``forward`` returns its input.

    Example:
        >>> aug = SpecAugment(freq_masks=1, freq_width=5, time_masks=1, time_width=10).train()
        >>> feats, lengths = torch.ones(2, 50, 20), torch.tensor([50, 30])
        >>> out = aug(feats, lengths, generator=torch.Generator().manual_seed(0))
        >>> out.shape, bool((out[1, 30:] == 1).all())
        (torch.Size([2, 50, 20]), True)
        >>> aug.eval()(feats, lengths) is feats
        True
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 2,
        time_width: float | int = 0.05,
        max_time_masks_ratio: float | None = None,
        fill: float | str = 0.0,
    ):
        super().__init__()
        if freq_masks < 0 or time_masks < 0 or freq_width < 0:
            raise ConfigError("mask counts and widths must be >= 0")
        if isinstance(time_width, float):
            if not 0.0 <= time_width <= 1.0:
                raise ConfigError(f"a float time_width is a fraction in [0, 1], got {time_width}")
        elif time_width < 0:
            raise ConfigError(f"time_width must be >= 0, got {time_width}")
        if isinstance(fill, str) and fill != "mean":
            raise ConfigError(f"fill must be a number or 'mean', got {fill!r}")
        self.freq_masks = int(freq_masks)
        self.freq_width = int(freq_width)
        self.time_masks = int(time_masks)
        self.time_width = time_width
        self.max_time_masks_ratio = max_time_masks_ratio
        self.fill = fill

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, time_masks={self.time_masks}, "
            f"time_width={self.time_width}, max_time_masks_ratio={self.max_time_masks_ratio}, fill={self.fill!r}"
        )

    def mask(self, feats: torch.Tensor, lengths: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw the boolean mask ``(B, T, F)`` (True = masked) that ``forward`` would apply."""
        B, T, F = feats.shape
        device = feats.device
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=device)
        lengths = lengths.to(device=device, dtype=torch.long).clamp(0, T)
        frames = torch.arange(T, device=device)[None, :]  # (1, T)
        bins = torch.arange(F, device=device)[None, :]  # (1, F)
        fmask = torch.zeros(B, F, dtype=torch.bool, device=device)
        tmask = torch.zeros(B, T, dtype=torch.bool, device=device)

        fw_max = torch.full((B,), min(self.freq_width, F), dtype=torch.long, device=device)
        for _ in range(self.freq_masks):
            w = _randint_upto(fw_max, generator)
            start = _randint_upto(F - w, generator)
            fmask |= (bins >= start[:, None]) & (bins < (start + w)[:, None])

        if isinstance(self.time_width, float):
            tw_max = (self.time_width * lengths.double()).floor().long()
        else:
            tw_max = lengths.clamp(max=int(self.time_width))
        if self.max_time_masks_ratio is None:
            n_masks = torch.full((B,), self.time_masks, dtype=torch.long, device=device)
        else:
            n_masks = (self.max_time_masks_ratio * lengths.double()).floor().long().clamp(max=self.time_masks)
        for k in range(self.time_masks):
            # Draw for every utterance even when unused, so the random stream does not
            # depend on the lengths.
            w = _randint_upto(tw_max, generator)
            start = _randint_upto(lengths - w, generator)
            w = torch.where(k < n_masks, w, torch.zeros_like(w))
            tmask |= (frames >= start[:, None]) & (frames < (start + w)[:, None])

        valid = frames < lengths[:, None]  # (B, T)
        return (fmask[:, None, :] | tmask[:, :, None]) & valid[:, :, None]

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mask ``feats`` ``(B, T, F)`` with valid lengths ``(B,)`` (``None`` = all ``T``).

        Returns a new ``(B, T, F)`` tensor in training mode, ``feats`` itself in eval mode.
        """
        if not self.training or (self.freq_masks == 0 and self.time_masks == 0):
            return feats
        m = self.mask(feats, lengths, generator)
        if self.fill == "mean":
            B, T, F = feats.shape
            n = torch.full((B,), T, device=feats.device) if lengths is None else lengths.to(feats.device).clamp(0, T)
            valid = torch.arange(T, device=feats.device)[None, :] < n[:, None]
            total = (feats * valid[:, :, None]).sum(dim=(1, 2))
            mean = total / (n * F).clamp(min=1).to(feats.dtype)
            return torch.where(m, mean[:, None, None], feats)
        return feats.masked_fill(m, float(self.fill))


# ---------------------------------------------------------------------------
# Waveform augmentation
# ---------------------------------------------------------------------------


def snr(signal: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio in dB of ``signal`` and ``noise``, both ``(..., N)`` -> ``(...)``.

    Powers are mean squares over the last axis (computed in float64).
    """
    ps = signal.double().pow(2).mean(-1)
    pn = noise.double().pow(2).mean(-1)
    return 10.0 * torch.log10(ps / pn)


def add_noise(
    speech: torch.Tensor,
    noise: torch.Tensor,
    snr_db: float | torch.Tensor,
    generator: torch.Generator | None = None,
    silent_level_db: float | None = None,
) -> torch.Tensor:
    """Add a random segment of ``noise`` to ``speech`` at exactly ``snr_db``.

    A segment of ``speech``'s length starts at a random offset in ``noise``; a noise
    shorter than the speech is looped (tiled) from that offset. The segment is scaled so
    that ``10 * log10(P_speech / P_noise) == snr_db``, with powers the mean squares
    over the speech's length (float64 arithmetic).

    Args:
        speech: ``(N,)`` or ``(B, N)``.
        noise: ``(M,)`` shared by the batch, or ``(B, M)`` one per utterance.
        snr_db: a float, or a ``(B,)`` tensor of per-utterance SNRs.
        generator: source of the segment offsets.
        silent_level_db: for all-zero speech, where no SNR is defined: ``None`` returns
            the utterance unchanged; a number adds the noise at that absolute mean-square
            level in dB (e.g. ``-60.0`` = power 1e-6). All-zero noise adds nothing.

    Returns:
        ``speech + scaled_noise`` with ``speech``'s shape and dtype.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> speech = torch.randn(3, 4000, generator=g)
        >>> noise = torch.randn(1000, generator=g)
        >>> out = add_noise(speech, noise, torch.tensor([5.0, 10.0, 20.0]), generator=g)
        >>> snr(speech, out - speech).round(decimals=2).tolist()
        [5.0, 10.0, 20.0]
    """
    single = speech.dim() == 1
    x = speech[None] if single else speech
    if x.dim() != 2:
        raise ValueError(f"speech must be (N,) or (B, N), got {tuple(speech.shape)}")
    B, N = x.shape
    nz = noise.to(x.device)
    if nz.dim() == 1:
        nz = nz[None].expand(B, -1)
    if nz.dim() != 2 or nz.shape[0] != B:
        raise ValueError(f"noise must be (M,) or (B, M) with B={B}, got {tuple(noise.shape)}")
    M = nz.shape[-1]
    if M == 0:
        raise ValueError("noise is empty")
    if N == 0:
        return speech

    # Offset: anywhere a full segment fits; when the noise is shorter, anywhere in it.
    hi = torch.full((B,), M - N if M >= N else M - 1, dtype=torch.long, device=x.device)
    offset = _randint_upto(hi, generator)
    idx = (offset[:, None] + torch.arange(N, device=x.device)[None, :]) % M  # (B, N)
    seg = nz.gather(1, idx).double()

    ps = x.double().pow(2).mean(-1)
    pn = seg.pow(2).mean(-1)
    snr_t = torch.as_tensor(snr_db, dtype=torch.float64, device=x.device).reshape(-1)
    if snr_t.numel() not in (1, B):
        raise ValueError(f"snr_db must be a scalar or have {B} values, got {snr_t.numel()}")
    target = ps / torch.pow(10.0, snr_t / 10.0)
    if silent_level_db is not None:
        target = torch.where(ps > 0, target, torch.full_like(target, 10.0 ** (silent_level_db / 10.0)))
    scale = torch.where(pn > 0, torch.sqrt(target / pn.clamp(min=torch.finfo(torch.float64).tiny)), torch.zeros_like(pn))
    out = x + (scale[:, None] * seg).to(x.dtype)
    return out[0] if single else out


def speed_perturb(wav: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
    """Sox-style ``speed``: play ``factor`` times faster; pitch moves with it.

    The audio is resampled from ``sample_rate`` to ``sample_rate / factor`` and the
    result is read again as ``sample_rate`` audio, so the duration scales by
    ``1 / factor`` and every frequency by ``factor``. ``factor`` is taken as a
    fraction ``p / q`` with ``q <= 100`` (0.9 = 9/10, 1.1 = 11/10), which keeps the
    polyphase filter of :func:`torchaudio.functional.resample` small.

    Args:
        wav: ``(N,)`` or ``(B, N)`` (resampled along the last axis).
        sample_rate: the rate of ``wav`` in Hz (also that of the result).
        factor: speed factor > 0; 1.0 returns ``wav`` unchanged.

    Returns:
        ``(ceil(N / factor),)`` (or ``(B, ...)``) at ``sample_rate``.

    Example:
        >>> speed_perturb(torch.zeros(16000), 16000, 0.9).shape
        torch.Size([17778])
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    ratio = Fraction(factor).limit_denominator(100)
    if ratio == 1:
        return wav
    # Resampling p -> q is the same ratio as sample_rate -> sample_rate * q / p.
    return AF.resample(wav, orig_freq=ratio.numerator, new_freq=ratio.denominator)


def time_shift(wav: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each waveform by a random integer in ``[-max_shift, max_shift]`` samples.

    A positive shift delays the audio (zeros enter at the start); a negative one
    advances it (zeros at the end). Samples pushed off the edge are dropped, not
    wrapped around. Each row of a batch gets its own shift.

    Args:
        wav: ``(N,)`` or ``(B, N)``.
        max_shift: largest absolute shift in samples (>= 0).

    Returns:
        A tensor with ``wav``'s shape.

    Example:
        >>> out = time_shift(torch.arange(1.0, 6.0), 2, torch.Generator().manual_seed(3))
        >>> out.shape, int((out == 0).sum()) <= 2
        (torch.Size([5]), True)
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    single = wav.dim() == 1
    x = wav[None] if single else wav
    B, N = x.shape
    if max_shift == 0 or N == 0:
        return wav
    span = torch.full((B,), 2 * max_shift, dtype=torch.long, device=x.device)
    shift = _randint_upto(span, generator) - max_shift  # (B,) in [-max_shift, max_shift]
    src = torch.arange(N, device=x.device)[None, :] - shift[:, None]  # (B, N)
    inside = (src >= 0) & (src < N)
    out = torch.where(inside, x.gather(1, src.clamp(0, N - 1)), torch.zeros((), dtype=x.dtype, device=x.device))
    return out[0] if single else out


def synthetic_rir(rt60: float, sample_rate: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A room impulse response ``(n,)``: a direct path, then exponentially decaying Gaussian noise
    that falls by 60 dB in ``rt60`` seconds (the statistical late-reverberation model); unit energy.

    Example:
        >>> ir = synthetic_rir(0.3, 16000, torch.Generator().manual_seed(0))
        >>> ir.shape, round(float(ir.pow(2).sum()), 4)
        (torch.Size([4800]), 1.0)
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    n = max(2, int(rt60 * sample_rate))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(n, generator=generator, device=gen_device, dtype=torch.float64).cpu()
    ir = noise * 10.0 ** (-3.0 * t / rt60)  # amplitude -60 dB at t = rt60
    ir[0] = ir[1:].abs().max() * 4.0  # the direct sound dominates
    return (ir / ir.pow(2).sum().sqrt()).float()


def reverberate(wav: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """Convolve ``wav`` ``(N,)`` with ``ir`` (FFT), keep the first ``N`` samples and the input's RMS."""
    n = wav.shape[-1] + ir.shape[-1] - 1
    size = 1 << (n - 1).bit_length()
    out = torch.fft.irfft(torch.fft.rfft(wav.double(), size) * torch.fft.rfft(ir.double(), size), size)[..., : wav.shape[-1]]
    rms_in, rms_out = wav.double().pow(2).mean().sqrt(), out.pow(2).mean().sqrt()
    return (out * (rms_in / rms_out.clamp(min=1e-12))).to(wav.dtype)


@dataclass
class WaveformAugment:
    """Random reverberation, speed change, time shift, additive noise and gain for one waveform ``(N,)``.

    Each step runs with its own probability, in the order reverb -> speed -> shift -> noise -> gain
    (so the SNR refers to the speech as it is finally heard).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> aug = WaveformAugment(noises=[torch.randn(8000, generator=g)], noise_prob=1.0,
        ...                       speed_factors=(1.1,), speed_prob=1.0, max_shift=160)
        >>> aug(torch.randn(16000, generator=g), g).shape
        torch.Size([14546])
    """

    noises: list[torch.Tensor] = field(default_factory=list)  # noise waveforms (M,), at sample_rate
    snr_range: tuple[float, float] = (5.0, 20.0)  # SNR in dB, drawn uniformly
    noise_prob: float = 0.5  # probability of adding noise (needs `noises`)
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)  # speed factors, one drawn uniformly
    speed_prob: float = 0.5  # probability of a speed change
    max_shift: int = 0  # largest time shift in samples (0 = off)
    shift_prob: float = 0.5  # probability of a time shift
    sample_rate: int = 16000  # rate of the waveforms in Hz
    gain_db: tuple[float, float] = (0.0, 0.0)  # random gain range in dB, applied last (0, 0 = off)
    gain_prob: float = 0.0  # probability of a gain change
    rt60: tuple[float, float] = (0.2, 0.8)  # reverberation time range in seconds of the synthetic room
    reverb_prob: float = 0.0  # probability of reverberation (applied first, before speed and noise)

    def __call__(self, wav: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``wav`` ``(N,)``; the result is ``(N',)`` (N' differs after a speed change)."""
        # The coin flips and choices are drawn up front, in a fixed order.
        if self.reverb_prob > 0:
            r = _rand((2,), generator, torch.device("cpu")).tolist()
            if r[0] < self.reverb_prob:
                lo, hi = self.rt60
                wav = reverberate(wav, synthetic_rir(lo + (hi - lo) * r[1], self.sample_rate, generator))
        u = _rand((6,), generator, torch.device("cpu")).tolist()
        if self.speed_factors and u[0] < self.speed_prob:
            factor = self.speed_factors[min(int(u[1] * len(self.speed_factors)), len(self.speed_factors) - 1)]
            wav = speed_perturb(wav, self.sample_rate, factor)
        if self.max_shift > 0 and u[2] < self.shift_prob:
            wav = time_shift(wav, self.max_shift, generator)
        if self.noises and u[3] < self.noise_prob:
            noise = self.noises[min(int(u[4] * len(self.noises)), len(self.noises) - 1)]
            lo, hi = self.snr_range
            wav = add_noise(wav, noise, lo + (hi - lo) * u[5], generator)
        if self.gain_prob > 0 and self.gain_db != (0.0, 0.0):
            g = _rand((2,), generator, torch.device("cpu")).tolist()
            if g[0] < self.gain_prob:
                lo, hi = self.gain_db
                wav = wav * 10.0 ** ((lo + (hi - lo) * g[1]) / 20.0)
        return wav
