"""Front-end numbers against librosa, streaming against offline, CMVN against a direct computation."""

import librosa
import numpy as np
import pytest
import torch

from asr.data.manifest import write_manifest
from asr.audio import write_audio
from asr.features import (FeatureConfig, FeatureExtractor, GlobalCMVN, StreamingFeatureExtractor,
                          compute_cmvn_stats)


def speechlike(seconds=2.0, sr=16000, seed=0):
    """A harmonic signal with formant-like amplitude modulation plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    y = sum(np.sin(k * phase) / k * (1 + np.sin(2 * np.pi * (0.5 + k / 7) * t)) for k in range(1, 30))
    y = 0.1 * y / np.abs(y).max() + 1e-3 * rng.standard_normal(t.size)
    return y.astype(np.float32)


def ours(y, cfg):
    """Our features on ``y`` moved by librosa's window offset, as float64 ``(T, F)``.

    librosa centres the 400-sample window inside the 512-point frame, so its frame t
    starts its window at sample t * hop + 56; ours starts at t * hop.
    """
    shift = (cfg.fft_size - cfg.win_length) // 2
    out = FeatureExtractor(cfg)(torch.from_numpy(y[shift:]))[0][0].numpy().astype(np.float64)
    # librosa needs n_fft samples per frame, we need win: we may have one frame more.
    n_ref = 1 + (len(y) - cfg.fft_size) // cfg.hop_length
    assert len(out) - n_ref in (0, 1)
    return out[:n_ref]


def librosa_mel(y, cfg, power):
    return librosa.feature.melspectrogram(
        y=y.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.fft_size, win_length=cfg.win_length,
        hop_length=cfg.hop_length, center=False, window="hann", power=power, n_mels=cfg.n_mels,
        htk=cfg.mel_scale == "htk", norm="slaney", fmin=cfg.f_min, fmax=cfg.sample_rate / 2,
    )  # (F, T)


@pytest.mark.parametrize("n_mels,mel_scale", [(80, "slaney"), (40, "slaney"), (40, "htk")])
def test_logmel_matches_librosa(n_mels, mel_scale):
    cfg = FeatureConfig(n_mels=n_mels, mel_scale=mel_scale)
    y = speechlike()
    out = ours(y, cfg)  # (T, F)
    ref = librosa_mel(y, cfg, 2.0).T
    assert out.shape == ref.shape and len(ref) > 190
    ref_log = np.log(np.maximum(ref, cfg.log_floor))
    # exp(ours - ref) - 1 is the relative error of the mel energies themselves.
    rel = np.abs(np.expm1(out - ref_log))
    assert rel.max() <= 1e-4, rel.max()


def test_mfcc_matches_librosa():
    cfg = FeatureConfig(kind="mfcc", n_mels=40, n_mfcc=13)
    y = speechlike(seed=1)
    out = ours(y, cfg)
    ref_logmel = np.log(np.maximum(librosa_mel(y, cfg, 2.0), cfg.log_floor))
    ref = librosa.feature.mfcc(S=ref_logmel, n_mfcc=13, dct_type=2, norm="ortho").T
    assert out.shape == ref.shape
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err <= 1e-4, err


def test_pcen_matches_librosa():
    cfg = FeatureConfig(kind="pcen", n_mels=40, power=1.0)
    y = speechlike(seed=2)
    out = ours(y, cfg)
    S = librosa_mel(y, cfg, 1.0) * cfg.pcen_scale
    # Our smoother starts settled on the first frame: librosa's zi scaled by that frame.
    b = FeatureExtractor(cfg).pcen_log_params[0, 3].exp().item()
    import scipy.signal
    zi = scipy.signal.lfilter_zi([b], [1, b - 1])[None, :] * S[:, :1]
    ref = librosa.pcen(S, sr=cfg.sample_rate, hop_length=cfg.hop_length, gain=cfg.pcen_alpha,
                       bias=cfg.pcen_delta, power=cfg.pcen_r, time_constant=cfg.pcen_time_constant,
                       eps=cfg.pcen_eps, b=b, zi=zi).T
    assert out.shape == ref.shape
    rel = np.abs(out - ref) / np.abs(ref).max()
    assert rel.max() <= 1e-4, rel.max()


@pytest.mark.parametrize("kind", ["logmel", "mfcc", "pcen"])
@pytest.mark.parametrize("chunk", [1, 7, 160, 333, 4000, 48000])
def test_streaming_equals_offline(kind, chunk):
    fe = FeatureExtractor(FeatureConfig(kind=kind, n_mels=40))
    y = torch.from_numpy(speechlike(seconds=1.5 if chunk > 1 else 0.3, seed=3))
    offline = fe(y)[0][0]
    stream = StreamingFeatureExtractor(fe)
    pieces = [stream.accept(y[i:i + chunk]) for i in range(0, len(y), chunk)]
    online = torch.cat(pieces)
    assert online.shape == offline.shape
    scale = offline.abs().max()
    assert ((online - offline).abs().max() / scale).item() <= 1e-5


def test_batch_with_lengths_equals_single():
    fe = FeatureExtractor(FeatureConfig(kind="pcen", n_mels=40))
    a, b = torch.from_numpy(speechlike(1.0, seed=4)), torch.from_numpy(speechlike(0.6, seed=5))
    batch = torch.zeros(2, len(a))
    batch[0], batch[1, : len(b)] = a, b
    feats, lengths = fe(batch, torch.tensor([len(a), len(b)]))
    assert lengths.tolist() == [98, 58]
    torch.testing.assert_close(feats[1, :58], fe(b)[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats[0], fe(a)[0][0])
    assert feats[1, 58:].abs().sum() == 0


def test_trainable_pcen_gets_gradients():
    fe = FeatureExtractor(FeatureConfig(kind="pcen", n_mels=40, pcen_trainable=True))
    feats, _ = fe(torch.from_numpy(speechlike(0.5)))
    feats.sum().backward()
    assert fe.pcen_log_params.grad is not None and fe.pcen_log_params.grad.abs().sum() > 0


def test_cmvn_stats_from_manifest(tmp_path):
    fe = FeatureExtractor(FeatureConfig(n_mels=40))
    items, all_feats = [], []
    for i in range(3):
        y = speechlike(0.5 + 0.25 * i, seed=10 + i)
        write_audio(tmp_path / f"u{i}.wav", y, 16000, subtype="FLOAT")
        items.append({"id": f"u{i}", "audio": str(tmp_path / f"u{i}.wav"), "duration": len(y) / 16000})
        all_feats.append(fe(torch.from_numpy(y))[0][0])
    write_manifest(tmp_path / "m.jsonl", items)
    from asr.data.manifest import read_manifest
    mean, std, frames = compute_cmvn_stats(read_manifest(tmp_path / "m.jsonl"), fe, progress=False)
    ref = torch.cat(all_feats).double()
    assert frames == len(ref)
    torch.testing.assert_close(mean, ref.mean(0).float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std, ref.std(0, unbiased=False).float(), rtol=1e-4, atol=1e-4)
    normed = GlobalCMVN(mean, std)(ref.float().unsqueeze(0))[0]
    assert normed.mean(0).abs().max() < 1e-3 and (normed.std(0) - 1).abs().max() < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    fe = FeatureExtractor(FeatureConfig(kind="pcen", n_mels=40))
    y = torch.from_numpy(speechlike(1.0)).unsqueeze(0)
    torch.testing.assert_close(fe.cuda()(y.cuda())[0].cpu(), fe.cpu()(y)[0], rtol=1e-4, atol=1e-4)


def test_cpu_blocking_equals_one_pass():
    fe = FeatureExtractor(FeatureConfig(n_mels=40))
    wav = torch.from_numpy(np.stack([speechlike(12.0, seed=6), speechlike(12.0, seed=7)]))
    frames = wav.unfold(-1, fe.config.win_length, fe.config.hop_length)
    assert frames.shape[0] * frames.shape[1] > 1024  # the blocked path is taken
    torch.testing.assert_close(fe.mel_energies(wav), fe._mel_block(frames), rtol=1e-6, atol=0)
