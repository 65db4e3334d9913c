"""Tests for asr.augment: exact SNR, reproducibility, SpecAugment bounds, speed, shift."""

import math

import pytest
import torch

from asr.augment import SpecAugment, WaveformAugment, add_noise, snr, speed_perturb, time_shift


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sine(freq: float, sr: int = 16000, n: int = 16000) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n) / sr)


def peak_hz(wav: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(wav.double() * torch.hann_window(wav.numel(), dtype=torch.float64)).abs()
    return spec.argmax().item() * sr / wav.numel()


# ----------------------------------------------------------------------- add_noise


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 5.0, 10.0, 20.0, 40.0])
@pytest.mark.parametrize("noise_len", [3000, 16000, 50000])  # shorter (tiled), equal, longer
def test_add_noise_exact_snr_scalar(snr_db, noise_len):
    g = gen(0)
    speech = 0.3 * sine(220.0) + 0.05 * torch.randn(16000, generator=g)
    noise = 2.0 * torch.randn(noise_len, generator=g)
    mixed = add_noise(speech, noise, snr_db, generator=g)
    assert mixed.shape == speech.shape and mixed.dtype == speech.dtype
    assert abs(snr(speech, mixed - speech).item() - snr_db) < 0.1


def test_add_noise_exact_snr_batched():
    g = gen(1)
    speech = torch.randn(4, 8000, generator=g) * torch.tensor([[0.01], [0.1], [1.0], [3.0]])
    noise = torch.randn(4, 5000, generator=g)  # one noise per utterance, shorter than speech
    target = torch.tensor([5.0, 0.0, 12.5, 30.0])
    mixed = add_noise(speech, noise, target, generator=g)
    measured = snr(speech, mixed - speech)
    assert torch.allclose(measured, target.double(), atol=0.1)
    # A shared (M,) noise and a scalar SNR broadcast over the batch.
    mixed = add_noise(speech, noise[0], 5.0, generator=g)
    assert torch.allclose(snr(speech, mixed - speech), torch.full((4,), 5.0, dtype=torch.float64), atol=0.1)


def test_add_noise_segment_comes_from_noise():
    # With a long ramp as noise, the added signal must be a scaled contiguous piece of it.
    speech = torch.ones(100)
    noise = torch.arange(1.0, 1001.0)
    added = add_noise(speech, noise, 0.0, generator=gen(2)) - speech
    steps = added[1:] - added[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-3)


def test_add_noise_silent_speech():
    noise = torch.randn(1000, generator=gen(3))
    silent = torch.zeros(2, 500)
    assert torch.equal(add_noise(silent, noise, 5.0, generator=gen(4)), silent)
    out = add_noise(silent, noise, 5.0, generator=gen(4), silent_level_db=-40.0)
    power = out.double().pow(2).mean(-1)
    assert torch.allclose(10 * torch.log10(power), torch.full((2,), -40.0, dtype=torch.float64), atol=0.1)
    # Silent noise adds nothing.
    speech = torch.randn(500, generator=gen(5))
    assert torch.equal(add_noise(speech, torch.zeros(100), 5.0, generator=gen(6)), speech)


def test_add_noise_reproducible():
    speech = torch.randn(2, 4000, generator=gen(7))
    noise = torch.randn(20000, generator=gen(8))
    a = add_noise(speech, noise, 5.0, generator=gen(11))
    b = add_noise(speech, noise, 5.0, generator=gen(11))
    c = add_noise(speech, noise, 5.0, generator=gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ----------------------------------------------------------------------- SpecAugment


def test_specaugment_masks_within_lengths_and_bounds():
    B, T, F = 16, 200, 40
    lengths = torch.randint(20, T + 1, (B,), generator=gen(0))
    lengths[0] = T
    feats = torch.rand(B, T, F, generator=gen(1)) + 1.0  # strictly positive: 0 marks a mask
    aug = SpecAugment(freq_masks=2, freq_width=8, time_masks=2, time_width=0.1).train()
    m = aug.mask(feats, lengths, generator=gen(2))
    out = aug(feats, lengths, generator=gen(2))
    assert torch.equal(out == 0, m)  # forward applies exactly the drawn mask, fill 0
    assert m.any()
    valid = torch.arange(T)[None, :] < lengths[:, None]
    assert not (m & ~valid[:, :, None]).any()  # nothing masked in the padding
    assert torch.equal(out[~valid], feats[~valid])  # padding untouched

    # A masked bin is masked on every valid frame; a masked frame on every bin.
    full_bins = (m | ~valid[:, :, None]).all(dim=1)  # (B, F)
    full_frames = m.all(dim=2)  # (B, T)
    for b in range(B):
        # Two masks of width <= 8 cover at most 16 bins; two time masks of width
        # <= floor(0.1 * length) cover at most twice that many frames.
        assert full_bins[b].sum() <= 2 * 8
        assert full_frames[b].sum() <= 2 * int(0.1 * lengths[b])
        # Masked cells that are not on a masked bin lie on masked frames only.
        partial = m[b] & ~full_bins[b][None, :]
        assert torch.equal(partial.any(dim=1), full_frames[b] & partial.any(dim=1))


def test_specaugment_int_width_single_mask_bounds():
    B, T, F = 32, 100, 20
    lengths = torch.full((B,), 60)
    aug = SpecAugment(freq_masks=1, freq_width=5, time_masks=1, time_width=7).train()
    m = aug.mask(torch.zeros(B, T, F), lengths, generator=gen(3))
    valid = (torch.arange(T) < 60)[None, :, None]
    fbins = m[:, :60].all(dim=1)  # (B, F) masked bins
    assert (fbins.sum(-1) <= 5).all()
    tframes = m.all(dim=2)  # (B, T) masked frames
    assert (tframes.sum(-1) <= 7).all()
    assert not tframes[:, 60:].any()
    # Each single mask is one contiguous run.
    for rows in (fbins, tframes):
        runs = (rows[:, 1:] & ~rows[:, :-1]).sum(-1) + rows[:, 0].long()
        assert (runs <= 1).all()
    assert not (m & ~valid).any()
    assert tframes.any() and fbins.any()


def test_specaugment_eval_identity_and_reproducible():
    feats = torch.randn(4, 80, 30, generator=gen(0))
    lengths = torch.tensor([80, 70, 50, 10])
    aug = SpecAugment()
    aug.eval()
    assert aug(feats, lengths, generator=gen(1)) is feats
    aug.train()
    a = aug(feats, lengths, generator=gen(5))
    b = aug(feats, lengths, generator=gen(5))
    c = aug(feats, lengths, generator=gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a == 0).sum() > 0
    assert not torch.equal(a, feats)


def test_specaugment_mean_fill_and_adaptive_count():
    feats = torch.rand(3, 100, 10, generator=gen(0)) + 1.0
    lengths = torch.tensor([100, 40, 5])
    aug = SpecAugment(freq_masks=1, freq_width=3, time_masks=4, time_width=10, fill="mean").train()
    m = aug.mask(feats, lengths, generator=gen(1))
    out = aug(feats, lengths, generator=gen(1))
    for b, n in enumerate(lengths.tolist()):
        mean = feats[b, :n].mean()
        assert torch.allclose(out[b][m[b]], mean.expand(int(m[b].sum())))
    # Adaptive multiplicity: floor(0.05 * 5) = 0 time masks for the 5-frame utterance.
    aug = SpecAugment(freq_masks=0, time_masks=4, time_width=3, max_time_masks_ratio=0.05).train()
    m = aug.mask(feats, lengths, generator=gen(2))
    assert not m[2].any()
    assert m[0].any()


# ----------------------------------------------------------------------- speed_perturb


@pytest.mark.parametrize("factor", [0.9, 0.95, 1.1, 1.2])
def test_speed_perturb_length_and_pitch(factor):
    sr, n, f0 = 16000, 16000, 1000.0
    out = speed_perturb(sine(f0, sr, n), sr, factor)
    assert abs(out.numel() - n / factor) <= 1
    # FFT bin spacing is sr / len(out) ~ 1 Hz.
    assert abs(peak_hz(out, sr) - f0 * factor) <= 2.0


def test_speed_perturb_identity_and_batch():
    wav = torch.randn(2, 8000, generator=gen(0))
    assert speed_perturb(wav, 16000, 1.0) is wav
    out = speed_perturb(wav, 16000, 1.1)
    assert out.shape[0] == 2 and abs(out.shape[1] - 8000 / 1.1) <= 1
    with pytest.raises(ValueError):
        speed_perturb(wav, 16000, 0.0)


# ----------------------------------------------------------------------- time_shift


def test_time_shift_zero_fill_and_bounds():
    B, N, max_shift = 64, 50, 7
    wav = torch.arange(1.0, N + 1).expand(B, N).contiguous()
    out = time_shift(wav, max_shift, generator=gen(0))
    idx = torch.arange(N)
    shifts = set()
    for b in range(B):
        nz = out[b] != 0
        # Non-zero samples are the original ones moved by one constant shift s.
        s = set((idx[nz] + 1 - out[b][nz].long()).tolist())
        assert len(s) == 1
        s = s.pop()
        shifts.add(s)
        assert -max_shift <= s <= max_shift
        assert int((~nz).sum()) == abs(s)  # zero-filled, not wrapped
        if s > 0:
            assert not nz[:s].any()
        elif s < 0:
            assert not nz[s:].any()
    assert len(shifts) > 3  # the shift really varies per utterance


def test_time_shift_single_and_reproducible():
    wav = torch.randn(1000, generator=gen(0))
    a = time_shift(wav, 100, generator=gen(1))
    assert a.shape == wav.shape
    assert torch.equal(a, time_shift(wav, 100, generator=gen(1)))
    assert time_shift(wav, 0, generator=gen(1)) is wav


# ----------------------------------------------------------------------- WaveformAugment


def test_waveform_augment_reproducible():
    noise = torch.randn(4000, generator=gen(0))
    aug = WaveformAugment(noises=[noise], snr_range=(5.0, 20.0), noise_prob=1.0, speed_prob=0.5, max_shift=100, shift_prob=0.5)
    wav = sine(300.0)
    outs = [aug(wav, gen(s)) for s in range(6)]
    assert torch.equal(aug(wav, gen(3)), outs[3])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    for o in outs:
        assert o.numel() in {16000, math.ceil(16000 / 0.9), math.ceil(16000 / 1.1)}
        assert torch.isfinite(o).all()


def test_waveform_augment_noise_snr_in_range():
    noise = torch.randn(4000, generator=gen(0))
    aug = WaveformAugment(noises=[noise], snr_range=(5.0, 20.0), noise_prob=1.0, speed_prob=0.0)
    wav = sine(300.0)
    for s in range(5):
        out = aug(wav, gen(s))
        assert 5.0 - 0.1 <= snr(wav, out - wav).item() <= 20.0 + 0.1
    # All probabilities zero: identity.
    off = WaveformAugment(noises=[noise], noise_prob=0.0, speed_prob=0.0, max_shift=10, shift_prob=0.0)
    assert torch.equal(off(wav, gen(0)), wav)
