"""Encoders and the CTC family: shapes, padding invariance, streaming receptive fields, losses."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from asr.models.config import EncoderConfig, ModelConfig
from asr.models.conformer import chunk_attention_mask
from asr.models.ctc import CTCModel, ctc_greedy, ctc_loss, ctc_loss_per_utt, ctc_min_frames
from asr.models.encoders import build_encoder

torch.manual_seed(0)

ENCODERS = {
    "bi-gru": EncoderConfig(kind="rnn", dim=16, layers=2, dropout=0.0),
    "uni-lstm-lookahead": EncoderConfig(kind="rnn", rnn_type="lstm", dim=16, layers=2, bidirectional=False,
                                        lookahead=3, dropout=0.0),
    "conformer": EncoderConfig(kind="conformer", dim=16, layers=2, heads=2, dropout=0.0),
    "causal-conformer": EncoderConfig(kind="conformer", dim=16, layers=2, heads=2, dropout=0.0, causal=True,
                                      chunk_size=4),
}


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("sub", [2, 4, 8])
def test_shapes_and_lengths(name, sub):
    cfg = ENCODERS[name]
    cfg = EncoderConfig(**{**cfg.__dict__, "subsampling": sub})
    enc = build_encoder(cfg, 40).eval()
    lengths = torch.tensor([120, 77])
    out, out_len = enc(torch.randn(2, 120, 40), lengths)
    expect = lengths.clone()
    for _ in range(int(math.log2(sub))):
        expect = (expect - 3) // 2 + 1
    assert out_len.tolist() == expect.tolist() and out.shape[:2] == (2, expect[0])
    assert out.shape[2] == enc.output_dim


@pytest.mark.parametrize("name", list(ENCODERS))
def test_padding_does_not_change_outputs(name):
    enc = build_encoder(ENCODERS[name], 40).eval()
    x = torch.randn(1, 90, 40)
    alone, n = enc(x, torch.tensor([90]))
    padded = torch.cat([x, 5 * torch.randn(1, 30, 40)], 1)
    batch, m = enc(torch.cat([padded, torch.randn(1, 120, 40)]), torch.tensor([90, 120]))
    assert m[0] == n[0]
    torch.testing.assert_close(batch[0, : n[0]], alone[0, : n[0]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,future", [("uni-lstm-lookahead", 3), ("causal-conformer", None)])
def test_streaming_encoders_do_not_peek_past_their_lookahead(name, future):
    """Changing input after frame t leaves every output frame that may not see it unchanged."""
    enc = build_encoder(ENCODERS[name], 40).eval()
    x = torch.randn(1, 160, 40)
    base, n = enc(x, torch.tensor([160]))
    cut = 100  # input frames >= cut are changed
    y = x.clone()
    y[:, cut:] = torch.randn(1, 60, 40)
    changed, _ = enc(y, torch.tensor([160]))
    # output frame k of 4x subsampling uses input frames [4k, 4k + 6]
    last_clean_frame = (cut - 7) // 4
    if future is not None:  # the row convolution looks `future` frames ahead
        last_clean_frame -= future
    else:  # chunked attention: a frame sees its whole chunk
        chunk = ENCODERS[name].chunk_size
        last_clean_frame = (last_clean_frame + 1) // chunk * chunk - 1
    torch.testing.assert_close(changed[0, : last_clean_frame + 1], base[0, : last_clean_frame + 1])
    assert not torch.allclose(changed[0, last_clean_frame + 1 + (future or 4)], base[0, last_clean_frame + 1 + (future or 4)])


def test_bidirectional_encoder_does_peek():
    enc = build_encoder(ENCODERS["bi-gru"], 40).eval()
    x = torch.randn(1, 160, 40)
    y = x.clone()
    y[:, 100:] += 3
    a, _ = enc(x, torch.tensor([160]))
    b, _ = enc(y, torch.tensor([160]))
    assert not torch.equal(a[0, 0], b[0, 0])  # the backward direction carries the future to frame 0


def test_chunk_mask_left_context():
    m = chunk_attention_mask(6, 2, left_chunks=1)
    allowed = (~m).int().tolist()
    assert allowed[5] == [0, 0, 1, 1, 1, 1]
    assert allowed[0] == [1, 1, 0, 0, 0, 0]
    assert (~chunk_attention_mask(3, 0)).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def brute_force_ctc_nll(log_probs, target):
    """-log sum over every frame labelling that collapses to target."""
    T, V = log_probs.shape
    total = []
    for path in itertools.product(range(V), repeat=T):
        collapsed = [p for i, p in enumerate(path) if p != 0 and (i == 0 or p != path[i - 1])]
        if collapsed == target:
            total.append(sum(log_probs[t, p] for t, p in enumerate(path)))
    return -torch.logsumexp(torch.stack(total), 0)


def test_ctc_loss_matches_brute_force_and_skips_infeasible():
    lp = torch.randn(3, 5, 3).log_softmax(-1)
    tokens = torch.tensor([[1, 2, 0], [1, 1, 2], [0, 0, 0]])
    token_lengths = torch.tensor([2, 3, 0])
    lengths = torch.tensor([5, 3, 5])  # the second needs 4 frames (1 _ 1 2)
    assert ctc_min_frames(tokens, token_lengths).tolist() == [2, 4, 0]
    losses, keep, counts = ctc_loss_per_utt(lp, lengths, tokens, token_lengths)
    assert keep.tolist() == [True, False, False] and counts == {"empty": 1.0, "too_short": 1.0}
    torch.testing.assert_close(losses[0], brute_force_ctc_nll(lp[0], [1, 2]), rtol=1e-5, atol=1e-5)


def test_ctc_greedy_collapses_and_respects_lengths():
    ids = torch.tensor([[0, 3, 3, 0, 3, 4, 4, 0], [5, 5, 0, 5, 6, 6, 6, 6]])
    lp = F.one_hot(ids, 8).float().log_softmax(-1)
    assert ctc_greedy(lp, torch.tensor([8, 4])) == [[3, 3, 4], [5, 5]]


def test_ctc_model_loss_and_backward():
    cfg = ModelConfig(encoder=EncoderConfig(dim=16, layers=1))
    model = CTCModel(cfg, vocab_size=10)
    batch = {"wav": torch.randn(2, 16000), "wav_lengths": torch.tensor([16000, 12000]),
             "tokens": torch.tensor([[3, 4, 5], [6, 0, 0]]), "token_lengths": torch.tensor([3, 1])}
    out = ctc_loss(model, batch)
    assert out.weight == 2 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.head.linear.weight.grad.abs().sum() > 0


def test_causal_conformer_batches_short_and_long_utterances():
    """A short utterance batched with a long one gives its own output (no NaN from padding frames
    whose chunked attention history holds only padding)."""
    from asr.models.config import EncoderConfig
    from asr.models.encoders import build_encoder

    cfg = EncoderConfig(kind="conformer", dim=32, layers=3, heads=2, conv_channels=8, causal=True, chunk_size=4,
                        left_chunks=2, conv_kernel=5, dropout=0.0)
    torch.manual_seed(0)
    enc = build_encoder(cfg, input_dim=20).eval()
    feats = torch.randn(2, 400, 20)
    lengths = torch.tensor([400, 60])
    with torch.no_grad():
        both, out_lengths = enc(feats, lengths)
        alone, _ = enc(feats[1:, :60], lengths[1:])
    n = int(out_lengths[1])
    assert torch.isfinite(both).all()
    assert torch.allclose(both[1, :n], alone[0, :n], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lstm_encoder_runs_under_cpu_autocast(dtype):
    """CPU autocast sends nn.LSTM to oneDNN's reduced-precision LSTM, which AVX2-only CPUs lack (the
    call raises there); the toolkit's recurrent layers run it in float32 instead, so training with
    --amp works on any CPU and gives what float32 gives (the convolutions before it run in ``dtype``)."""
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(rnn_type="lstm", dim=16, layers=2, subsampling=4, bidirectional=False), input_dim=20).eval()
    feats, lengths = torch.randn(2, 60, 20), torch.tensor([60, 41])
    ref, ref_len = enc(feats, lengths)
    with torch.autocast("cpu", dtype=dtype):
        out, out_len = enc(feats, lengths)
        chunks = [enc.infer(feats[:1, :30])[0]]
    assert out.dtype == torch.float32 and torch.equal(out_len, ref_len)
    assert torch.allclose(out, ref, atol=0.1) and chunks[0].shape[1] > 0
    out.sum().backward()
