"""Log-mel features in numpy, equal to :class:`asr.features.FeatureExtractor` (``kind: logmel``).

The same conventions: frames of ``win_length`` samples every ``hop_length`` (no padding, only
full frames), a periodic Hann window, an FFT of ``fft_size`` points, the power (or magnitude)
spectrum, Slaney-normalised mel filters (the Slaney or HTK mel scale, as torchaudio's
``melscale_fbanks`` builds them) and ``log(max(mel, log_floor))``. A streaming extractor
carries the samples not yet framed, so that its frames over a stream equal one pass over
the whole stream.

Example:
    >>> import numpy as np
    >>> fe = LogMel({"sample_rate": 16000, "n_mels": 40})
    >>> x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    >>> fe(x).shape
    (98, 40)
    >>> state, parts = None, []
    >>> for i in range(0, 16000, 1234):
    ...     frames, state = fe.infer(x[i:i + 1234], state)
    ...     parts.append(frames)
    >>> bool(np.allclose(np.concatenate(parts), fe(x), atol=1e-5))
    True
"""

from __future__ import annotations

import numpy as np
import scipy.fft

BLOCK_FRAMES = 1024  # frames per FFT call: keeps the intermediates in cache


def _hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                   mel_scale: str = "slaney") -> np.ndarray:
    """Triangular mel filters ``(n_freqs, n_mels)`` with Slaney area normalisation."""
    freqs = np.linspace(0, sample_rate // 2, n_freqs)
    pts = _mel_to_hz(np.linspace(_hz_to_mel(f_min, mel_scale), _hz_to_mel(f_max, mel_scale), n_mels + 2), mel_scale)
    diff = np.diff(pts)
    slopes = pts[None, :] - freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= 2.0 / (pts[2: n_mels + 2] - pts[:n_mels])
    return fb.astype(np.float32)


class LogMel:
    """Waveform ``(N,)`` float32 -> log-mel frames ``(T, n_mels)``, from a feature config dict
    (the fields of :class:`asr.features.FeatureConfig`; missing ones take its defaults)."""

    def __init__(self, config: dict):
        c = dict(sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None, f_min=0.0, f_max=None,
                 power=2.0, mel_scale="slaney", log_floor=1e-10, kind="logmel")
        c.update({k: v for k, v in config.items() if k in c})
        if c["kind"] != "logmel":
            raise ValueError(f"the numpy front-end computes log-mel features, not {c['kind']!r}")
        self.sample_rate = int(c["sample_rate"])
        self.win_length = int(round(self.sample_rate * c["win_ms"] / 1000))
        self.hop_length = int(round(self.sample_rate * c["hop_ms"] / 1000))
        self.n_fft = c["n_fft"] or 1 << (self.win_length - 1).bit_length()
        self.power, self.log_floor = float(c["power"]), float(c["log_floor"])
        n = np.arange(self.win_length)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / self.win_length)).astype(np.float32)  # periodic Hann
        self.mel_fb = mel_filterbank(self.n_fft // 2 + 1, c["f_min"], c["f_max"] or self.sample_rate / 2, c["n_mels"],
                                     self.sample_rate, c["mel_scale"])
        self.dim = int(c["n_mels"])

    def num_frames(self, num_samples: int) -> int:
        return max(0, (num_samples - self.win_length) // self.hop_length + 1)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        return self.features(wav)[0]

    def features(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log-mel frames (T, n_mels), log energy of each frame (T,))``; the energy is the log of
        the sum of the (floored) mel energies, i.e. the log-sum-exp of the frame's log-mel values."""
        wav = np.ascontiguousarray(wav, dtype=np.float32).reshape(-1)
        T = self.num_frames(wav.size)
        if T == 0:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(wav, self.win_length)[:: self.hop_length][:T]
        out = np.empty((T, self.dim), dtype=np.float32)
        for s in range(0, T, BLOCK_FRAMES):  # float32 FFTs (scipy keeps the precision; numpy's are float64)
            spec = scipy.fft.rfft(frames[s: s + BLOCK_FRAMES] * self.window, n=self.n_fft, axis=-1)
            if self.power == 2.0:
                power = spec.real * spec.real + spec.imag * spec.imag
            else:
                power = np.abs(spec) ** self.power
            out[s: s + BLOCK_FRAMES] = power @ self.mel_fb
        np.maximum(out, self.log_floor, out=out)
        energy = np.log(out.sum(axis=1))
        return np.log(out, out=out), energy

    def infer(self, chunk: np.ndarray, state: np.ndarray | None = None, energy: bool = False):
        """Streaming: ``chunk`` of any size -> ``(new frames (t, n_mels), state)``; start with ``None``.
        The state is the samples not yet framed. With ``energy``: ``(frames, energies (t,), state)``."""
        buf = np.concatenate([state if state is not None else np.zeros(0, np.float32),
                              np.asarray(chunk, dtype=np.float32).reshape(-1)])
        n = self.num_frames(buf.size)
        feats, e = self.features(buf[: (n - 1) * self.hop_length + self.win_length] if n else buf[:0])
        rest = buf[n * self.hop_length:]
        return (feats, e, rest) if energy else (feats, rest)
