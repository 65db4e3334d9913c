"""Streaming encoders and the streaming recognizer give exactly the offline results."""

import pytest
import torch

from asr.decode.streaming import Recognizer, algorithmic_latency_ms, transcribe_stream
from asr.features import FeatureConfig
from asr.models.config import EncoderConfig, ModelConfig, TransducerConfig
from asr.models.ctc import CTCModel, ctc_greedy
from asr.models.encoders import build_encoder
from asr.models.transducer import TransducerModel, transducer_greedy
from asr.text import CharTokenizer

torch.set_num_threads(1)

FEAT_DIM = 20


def rnn(rnn_type, lookahead, **kw):
    return EncoderConfig(kind="rnn", rnn_type=rnn_type, dim=16, layers=2, bidirectional=False,
                         lookahead=lookahead, dropout=0.0, **kw)


def conformer(chunk_size, left_chunks, **kw):
    return EncoderConfig(kind="conformer", dim=16, layers=2, heads=2, conv_kernel=5, dropout=0.0, causal=True,
                         chunk_size=chunk_size, left_chunks=left_chunks, **kw)


STREAMING_ENCODERS = {
    **{f"{t}-la{la}": rnn(t, la) for t in ("gru", "lstm") for la in (0, 3)},
    **{f"conformer-c{c}-l{lc}": conformer(c, lc) for c in (1, 4) for lc in (-1, 2)},
    "conformer-c0-l3-sub8": conformer(0, 3, subsampling=8),
    "lstm-la2-sub2": rnn("lstm", 2, subsampling=2),
}


def stream_encoder(enc, feats, chunk):
    state, outs = None, []
    for start in range(0, feats.shape[1], chunk):
        out, state = enc.infer(feats[:, start : start + chunk], state)
        outs.append(out)
    out, _ = enc.infer(feats[:, :0], state, final=True)  # flush
    return torch.cat(outs + [out], dim=1)


@pytest.mark.parametrize("name", list(STREAMING_ENCODERS))
def test_streaming_encoder_equals_offline(name):
    torch.manual_seed(0)
    enc = build_encoder(STREAMING_ENCODERS[name], FEAT_DIM).eval()
    T = 113
    feats = torch.randn(2, T, FEAT_DIM)  # a batch of equal-length streams
    with torch.no_grad():
        offline, lengths = enc(feats, torch.tensor([T, T]))
        assert offline.shape[1] == lengths[0] > 0
        for chunk in (1, 3, 7, 50):
            streamed = stream_encoder(enc, feats, chunk)
            assert streamed.shape == offline.shape, chunk
            torch.testing.assert_close(streamed, offline, rtol=0, atol=1e-4, msg=f"feature chunk {chunk}")


def test_streaming_outputs_lag_by_the_lookahead():
    """A forward-only encoder with lookahead L emits frame k once subsampled frame k + L exists."""
    enc = build_encoder(rnn("gru", 3), FEAT_DIM).eval()
    with torch.no_grad():
        out, state = enc.infer(torch.randn(1, 43, FEAT_DIM))  # (43 - 7) // 4 + 1 = 10 subsampled frames
        assert out.shape[1] == 10 - 3
        out, _ = enc.infer(torch.zeros(1, 0, FEAT_DIM), state, final=True)
        assert out.shape[1] == 3


def test_conformer_waits_for_whole_chunks():
    enc = build_encoder(conformer(4, -1), FEAT_DIM).eval()
    with torch.no_grad():
        out, state = enc.infer(torch.randn(1, 43, FEAT_DIM))  # 10 subsampled frames: 2 whole chunks
        assert out.shape[1] == 8 and state["pending"].shape[1] == 2
        out, _ = enc.infer(torch.zeros(1, 0, FEAT_DIM), state, final=True)
        assert out.shape[1] == 2


@pytest.mark.parametrize("cfg", [EncoderConfig(kind="rnn", dim=16, layers=1, bidirectional=True),
                                 EncoderConfig(kind="conformer", dim=16, layers=1, heads=2, causal=False)])
def test_full_context_encoders_refuse_to_stream(cfg):
    enc = build_encoder(cfg, FEAT_DIM).eval()
    with pytest.raises(ValueError, match="cannot stream"):
        enc.infer(torch.randn(1, 20, FEAT_DIM))
    tok = CharTokenizer.english()
    model = CTCModel(ModelConfig(features=FeatureConfig(n_mels=FEAT_DIM), encoder=cfg), tok.vocab_size)
    with pytest.raises(ValueError, match="cannot stream"):
        Recognizer(model, tok)


# ---------------------------------------------------------------------------
# recognizer
# ---------------------------------------------------------------------------
SR = 16000


def make_model(family, encoder):
    torch.manual_seed(1)
    tok = CharTokenizer.english()
    cfg = ModelConfig(family=family, features=FeatureConfig(n_mels=FEAT_DIM), encoder=encoder,
                      transducer=TransducerConfig(pred_dim=16, joint_dim=16))
    model = (CTCModel if family == "ctc" else TransducerModel)(cfg, tok.vocab_size)
    model.frontend.set_cmvn(torch.randn(FEAT_DIM) - 8, torch.rand(FEAT_DIM) + 1.5)
    model.eval()
    if family == "ctc":  # centre and scale the random head on this audio, so the best token changes often
        with torch.no_grad():
            wav = waveform()
            enc = model.encode(wav.unsqueeze(0), torch.tensor([wav.shape[0]]))[0][0]
            lin = model.head.linear
            lin.weight.copy_(torch.randn_like(lin.weight) / enc.std(0))
            lin.bias.copy_(-lin.weight @ enc.mean(0))
    return model, tok


@torch.no_grad()
def offline_text(model, tok, wav):
    lengths = torch.tensor([wav.shape[0]])
    if isinstance(model, CTCModel):
        ids = ctc_greedy(*model(wav.unsqueeze(0), lengths))[0]
    else:
        ids = transducer_greedy(model, *model.encode(wav.unsqueeze(0), lengths))[0]
    return tok.decode(ids)


def waveform():
    g = torch.Generator().manual_seed(2)
    t = torch.arange(int(1.37 * SR)) / SR
    tone = torch.sin(2 * torch.pi * (300 + 400 * t) * t) * (t * 7).sin().abs()
    return 0.3 * tone + 0.05 * torch.randn(t.shape[0], generator=g)


PIECES = {"100ms": [1600], "200ms": [3200], "odd": [1, 999, 37, 4801, 160, 2]}


@pytest.mark.parametrize("family", ["ctc", "transducer"])
@pytest.mark.parametrize("encoder", ["gru-la3", "lstm-la0", "conformer-c4-l2", "conformer-c1-l-1"])
def test_recognizer_equals_offline_greedy(family, encoder):
    model, tok = make_model(family, STREAMING_ENCODERS[encoder])
    wav = waveform()
    expected = offline_text(model, tok, wav)
    assert len(expected) >= 5  # the random model says something: the comparison is not vacuous
    for chunk_ms, pieces in [(200, "100ms"), (100, "200ms"), (200, "odd"), (37.5, "odd")]:
        rec = Recognizer(model, tok, chunk_ms=chunk_ms)
        state, start, k, partials = None, 0, 0, []
        sizes = PIECES[pieces]
        while start < wav.shape[0]:
            n = sizes[k % len(sizes)]
            text, state = rec.infer(wav[start : start + n], state)
            partials.append(text)
            start, k = start + n, k + 1
        text, state = rec.infer(wav[:0], state, final=True)
        assert text == expected, (chunk_ms, pieces)
        assert all(b.startswith(a) for a, b in zip(partials, partials[1:] + [text]))  # greedy text only grows
        with pytest.raises(ValueError, match="finished"):
            rec.infer(wav[:10], state)
    assert transcribe_stream(model, tok, wav, chunk_ms=100) == expected


def test_stateless_transducer_and_short_input():
    tok = CharTokenizer.english()
    cfg = ModelConfig(family="transducer", features=FeatureConfig(n_mels=FEAT_DIM), encoder=rnn("gru", 1),
                      transducer=TransducerConfig(predictor="stateless", pred_dim=16, joint_dim=16))
    torch.manual_seed(3)
    model = TransducerModel(cfg, tok.vocab_size).eval()
    wav = waveform()[:9000]
    assert transcribe_stream(model, tok, wav, chunk_ms=60) == offline_text(model, tok, wav)
    assert transcribe_stream(model, tok, wav[:300], chunk_ms=60) == ""  # shorter than one encoder frame


def test_algorithmic_latency():
    # 4x subsampling sees 7 feature frames: 6 hops + one 25 ms window = 85 ms
    model, _ = make_model("ctc", rnn("gru", 3))
    assert algorithmic_latency_ms(model, 200) == pytest.approx(200 + 3 * 4 * 10 + 85)
    model, _ = make_model("ctc", rnn("gru", 0))
    assert algorithmic_latency_ms(model, 100) == pytest.approx(100 + 85)
    model, _ = make_model("transducer", conformer(4, 2))
    assert algorithmic_latency_ms(model, 160) == pytest.approx(160 + 3 * 4 * 10 + 85)
    model, _ = make_model("transducer", conformer(0, -1, subsampling=8))
    assert algorithmic_latency_ms(model, 160) == pytest.approx(160 + 14 * 10 + 25)
