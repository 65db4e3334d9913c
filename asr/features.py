"""Audio front-ends as batched ``nn.Module``s: log-mel filterbank, MFCC and PCEN.

Conventions (identical for every kind, so models can swap front-ends):

* Framing is Kaldi-style: frame ``t`` covers samples ``[t * hop, t * hop + win)``; no
  centre padding, no dither, no pre-emphasis. An input of ``N`` samples gives
  ``1 + (N - win) // hop`` frames (0 when ``N < win``).
* Each frame is multiplied by a periodic Hann window of ``win`` samples and
  zero-padded at its end to ``n_fft`` (the next power of two by default) for the FFT.
  The magnitude spectrum therefore equals librosa's ``stft(center=False)`` with the same
  ``n_fft``/``win_length`` up to librosa's centring of the window (a pure time shift of
  ``(n_fft - win) // 2`` samples).
* Mel filterbank: Slaney mel scale with Slaney area normalisation by default (librosa's
  default; ``mel_scale="htk"`` for the HTK formula), applied to ``|X|^power`` (power 2).
* Log-mel is the natural log of ``max(mel, log_floor)`` with ``log_floor = 1e-10``.
* MFCC is the orthonormal DCT-II of that log-mel (librosa ``mfcc(S=logmel, norm="ortho")``).
* PCEN (Wang et al. 2017) runs on the mel energies times ``pcen_scale``:
  ``M_t = (1 - s) M_{t-1} + s E_t`` with ``M_{-1} = E_0`` (the smoother starts settled on
  the first frame), ``PCEN = (E / (eps + M)^alpha + delta)^r - delta^r``; ``s`` comes from
  ``pcen_time_constant`` as in librosa. Its parameters can be made trainable.

Every module takes ``(B, N)`` waveforms with ``(B,)`` lengths and returns ``(B, T, F)``
features with ``(B,)`` frame counts; frames past an utterance's length are zero.
``infer(chunk, state) -> (frames, state)`` extracts features from a stream fed in chunks
of any size and gives exactly the offline frames.

Example:
    >>> fe = FeatureExtractor(FeatureConfig(n_mels=40))
    >>> feats, lengths = fe(torch.zeros(2, 16000), torch.tensor([16000, 8000]))
    >>> feats.shape, lengths.tolist()
    (torch.Size([2, 98, 40]), [98, 48])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF

from asr.config import ConfigError
from asr.errors import UsageError

CPU_BLOCK_FRAMES = 1024  # frames per FFT block on CPU (cache-sized)

__all__ = ["FeatureConfig", "FeatureExtractor", "StreamingFeatureExtractor", "GlobalCMVN", "compute_cmvn_stats"]


@dataclass
class FeatureConfig:
    kind: str = "logmel"  # logmel | mfcc | pcen
    sample_rate: int = 16000  # input audio is resampled to this rate on reading
    n_mels: int = 80  # mel bins (40 for keyword spotting)
    win_ms: float = 25.0  # analysis window length
    hop_ms: float = 10.0  # frame shift
    n_fft: int | None = None  # FFT size; None = next power of two >= window
    f_min: float = 0.0  # lowest mel filter edge (Hz)
    f_max: float | None = None  # highest mel filter edge (Hz); None = Nyquist
    power: float = 2.0  # 2 = power spectrum, 1 = magnitude
    mel_scale: str = "slaney"  # slaney (librosa default) | htk
    log_floor: float = 1e-10  # log(max(mel, log_floor))
    n_mfcc: int = 13  # cepstra kept by kind=mfcc
    pcen_time_constant: float = 0.4  # seconds, PCEN smoother
    pcen_alpha: float = 0.98  # PCEN gain exponent
    pcen_delta: float = 2.0  # PCEN bias
    pcen_r: float = 0.5  # PCEN compression exponent
    pcen_eps: float = 1e-6  # PCEN stabiliser
    pcen_scale: float = 2.0**31  # mel energies are scaled by this before PCEN (int32 range, as librosa suggests)
    pcen_trainable: bool = False  # learn alpha, delta, r, s per channel (Wang et al. 2017)

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def fft_size(self) -> int:
        return self.n_fft or 1 << (self.win_length - 1).bit_length()

    @property
    def dim(self) -> int:
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    def num_frames(self, num_samples: torch.Tensor | int):
        """Frames produced from ``num_samples`` samples (elementwise for tensors)."""
        if isinstance(num_samples, torch.Tensor):
            return torch.clamp((num_samples - self.win_length) // self.hop_length + 1, min=0)
        return max(0, (num_samples - self.win_length) // self.hop_length + 1)

    def to_dict(self) -> dict:
        return asdict(self)


def pcen_smoothing_coef(time_constant: float, sample_rate: int, hop_length: int) -> float:
    """The smoother's ``s`` for a time constant in seconds (librosa's formula)."""
    t = time_constant * sample_rate / hop_length
    return (math.sqrt(1 + 4 * t**2) - 1) / (2 * t**2)


class FeatureExtractor(nn.Module):
    """Waveforms ``(B, N)`` -> features ``(B, T, F)``; see the module docstring for conventions."""

    def __init__(self, config: FeatureConfig | None = None):
        super().__init__()
        self.config = c = config or FeatureConfig()
        if c.kind not in ("logmel", "mfcc", "pcen"):
            raise ConfigError(f"unknown feature kind {c.kind!r} (logmel, mfcc or pcen)")
        if c.win_length > c.fft_size:
            raise ConfigError(f"n_fft={c.fft_size} is shorter than the window ({c.win_length} samples)")
        self.register_buffer("window", torch.hann_window(c.win_length, periodic=True), persistent=False)
        fb = AF.melscale_fbanks(
            c.fft_size // 2 + 1, c.f_min, c.f_max or c.sample_rate / 2, c.n_mels, c.sample_rate,
            norm="slaney", mel_scale=c.mel_scale,
        )
        self.register_buffer("mel_fb", fb, persistent=False)  # (n_freqs, n_mels)
        if c.kind == "mfcc":
            self.register_buffer("dct", AF.create_dct(c.n_mfcc, c.n_mels, norm="ortho"), persistent=False)
        if c.kind == "pcen":
            s = pcen_smoothing_coef(c.pcen_time_constant, c.sample_rate, c.hop_length)
            init = torch.tensor([c.pcen_alpha, c.pcen_delta, c.pcen_r, s]).log().repeat(c.n_mels, 1)
            if c.pcen_trainable:
                self.pcen_log_params = nn.Parameter(init)  # (F, 4): log alpha, delta, r, s
            else:
                self.register_buffer("pcen_log_params", init, persistent=False)

    @property
    def dim(self) -> int:
        return self.config.dim

    def mel_energies(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` -> mel energies ``(B, T, n_mels)``, no log, every full frame."""
        c = self.config
        frames = wav.unfold(-1, c.win_length, c.hop_length)  # (B, T, win), a view
        B, T, _ = frames.shape
        if wav.is_cuda or B * T <= CPU_BLOCK_FRAMES:
            return self._mel_block(frames)
        # On CPU, blocks of about a thousand frames keep the FFT intermediates in cache:
        # about 3x faster than one pass over a long signal.
        step = max(1, CPU_BLOCK_FRAMES // B)
        return torch.cat([self._mel_block(frames[:, s : s + step]) for s in range(0, T, step)], dim=1)

    def _mel_block(self, frames: torch.Tensor) -> torch.Tensor:
        c = self.config
        windowed = F.pad(frames * self.window, (0, c.fft_size - c.win_length))
        spec = torch.fft.rfft(windowed)
        if c.power == 2.0:  # |X|^2 without the square root of abs()
            power = torch.addcmul(spec.real * spec.real, spec.imag, spec.imag)
        else:
            power = spec.abs().pow(c.power)
        return power @ self.mel_fb

    def _pcen(self, energies: torch.Tensor, init: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """PCEN of ``(B, T, F)`` energies. ``init`` is ``M_{-1}`` ``(B, F)`` (None: the first frame)."""
        c = self.config
        alpha, delta, r, s = self.pcen_log_params.exp().unbind(-1)  # each (F,)
        e = energies * c.pcen_scale
        if init is None:
            init = e[:, 0]
        x = e.transpose(1, 2)  # (B, F, T): filter along time, one filter per channel
        a_coeffs = torch.stack([torch.ones_like(s), s - 1], dim=-1)
        b_coeffs = torch.stack([s, torch.zeros_like(s)], dim=-1)
        smooth = AF.lfilter(x, a_coeffs, b_coeffs, clamp=False, batching=True)
        steps = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
        smooth = smooth + init.unsqueeze(-1) * (1 - s).unsqueeze(-1) ** steps  # decay of M_{-1}
        smooth = smooth.transpose(1, 2)
        out = (e * torch.exp(-alpha * torch.log(c.pcen_eps + smooth)) + delta) ** r - delta**r
        return out, smooth[:, -1]

    def _finish(self, mel: torch.Tensor, pcen_state: torch.Tensor | None = None):
        c = self.config
        if c.kind == "pcen":
            return self._pcen(mel, pcen_state)
        feats = torch.log(torch.clamp(mel, min=c.log_floor))
        if c.kind == "mfcc":
            feats = feats @ self.dct
        return feats, None

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``wav`` ``(B, N)`` or ``(N,)``, ``lengths`` ``(B,)`` samples -> ``(B, T, F)``, ``(B,)`` frames."""
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        B, N = wav.shape
        if lengths is None:
            lengths = torch.full((B,), N, dtype=torch.long, device=wav.device)
        c = self.config
        out_lengths = c.num_frames(lengths.to(wav.device))
        if N < c.win_length:
            return wav.new_zeros(B, 0, self.dim), out_lengths
        feats, _ = self._finish(self.mel_energies(wav))
        mask = torch.arange(feats.shape[1], device=wav.device) < out_lengths.unsqueeze(1)
        return feats * mask.unsqueeze(-1), out_lengths

    @torch.no_grad()
    def infer(self, chunk: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Streaming: ``chunk`` ``(B, n)`` or ``(n,)`` of any size -> new frames ``(B, t, F)``.

        ``state`` carries the samples not yet framed and the PCEN smoother; start with ``None``.
        Concatenating the outputs over a stream gives exactly ``forward`` on the whole stream.
        """
        if chunk.dim() == 1:
            chunk = chunk.unsqueeze(0)
        c = self.config
        state = state or {"buffer": chunk.new_zeros(chunk.shape[0], 0), "pcen": None}
        buf = torch.cat([state["buffer"], chunk], dim=1)
        n = c.num_frames(buf.shape[1])
        if n == 0:
            return buf.new_zeros(buf.shape[0], 0, self.dim), {"buffer": buf, "pcen": state["pcen"]}
        used = (n - 1) * c.hop_length + c.win_length
        feats, pcen = self._finish(self.mel_energies(buf[:, :used]), state["pcen"])
        return feats, {"buffer": buf[:, n * c.hop_length :], "pcen": pcen}


class StreamingFeatureExtractor:
    """Stateful wrapper around :meth:`FeatureExtractor.infer` for one stream.

    Example:
        >>> fe = FeatureExtractor()
        >>> s = StreamingFeatureExtractor(fe)
        >>> x = torch.randn(4000)
        >>> frames = torch.cat([s.accept(x[i:i + 333]) for i in range(0, 4000, 333)])
        >>> torch.allclose(frames, fe(x)[0][0], atol=1e-5)
        True
    """

    def __init__(self, extractor: FeatureExtractor):
        self.extractor = extractor
        self.state: dict | None = None

    def reset(self) -> None:
        self.state = None

    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples ``(n,)`` -> the frames ``(t, F)`` they complete (possibly none)."""
        frames, self.state = self.extractor.infer(samples.reshape(1, -1), self.state)
        return frames[0]


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation with statistics from a training manifest.

    ``forward(feats (B, T, F), lengths (B,)) -> (B, T, F)`` with frames past each length zeroed.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clamp(min=1e-5).clone())

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out = (feats - self.mean) / self.std
        if lengths is not None:
            mask = torch.arange(feats.shape[1], device=feats.device) < lengths.unsqueeze(1)
            out = out * mask.unsqueeze(-1)
        return out


@torch.no_grad()
def compute_cmvn_stats(
    items: Iterable[dict], extractor: FeatureExtractor, max_items: int | None = None, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-dimension mean and standard deviation of features over manifest items.

    Accumulates in float64 over every frame. Returns ``(mean (F,), std (F,), frames)``.
    """
    from tqdm import tqdm

    from asr.audio import read_audio

    items = list(items)[:max_items] if max_items else list(items)
    total = torch.zeros(extractor.dim, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for item in tqdm(items, desc="cmvn stats", unit="utt", disable=not progress):
        wav, _ = read_audio(item["audio"], extractor.config.sample_rate, item.get("offset", 0.0),
                            item.get("duration") if "offset" in item else None)
        feats, _ = extractor(wav)
        f = feats[0].double()
        total += f.sum(0)
        total_sq += (f * f).sum(0)
        count += f.shape[0]
    if count == 0:
        raise UsageError("no frames to compute normalisation statistics from")
    mean = total / count
    var = (total_sq / count - mean**2).clamp(min=0)
    return mean.float(), var.sqrt().float(), count
