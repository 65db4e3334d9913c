"""The attention encoder-decoder family: decoders, step/teacher-forcing equivalence, losses, greedy
decoding, and a tiny model that learns to transcribe a few synthesized utterances."""

import math
import shutil
import subprocess
import time

import pytest
import torch
import torch.nn.functional as F

from asr.models import get_family
from asr.models.attention import LocationAwareAttention, LSTMAttentionDecoder, TransformerAttentionDecoder
from asr.models.config import AttentionConfig, EncoderConfig, ModelConfig, SpecAugmentConfig
from asr.models.ctc import CTCModel, ctc_loss
from asr.models.subsampling import length_mask
from asr.models.seq2seq import (
    EOS,
    AttentionModel,
    attention_decode,
    attention_greedy,
    attention_loss,
    guided_attention_penalty,
)

V, D_ENC = 12, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def make_decoder(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "lstm":
        dec = LSTMAttentionDecoder(V, D_ENC, dim=32, layers=2, att_dim=16, conv_channels=4, conv_kernel=7, dropout=0.2)
    else:
        dec = TransformerAttentionDecoder(V, D_ENC, dim=32, layers=2, heads=4, dropout=0.2)
    return dec.eval()


def small_config(**attention) -> ModelConfig:
    att = {"dim": 32, "att_dim": 16, "conv_channels": 4, "conv_kernel": 5, "dropout": 0.0, **attention}
    return ModelConfig(family="attention", encoder=EncoderConfig(dim=16, layers=1, dropout=0.0),
                       attention=AttentionConfig(**att))


def random_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    wav_lengths = torch.tensor([8000, 4800, 2400, 6400])  # the third has too few frames for its labels
    wav = torch.randn(4, 8000, generator=g) * length_mask(wav_lengths, 8000)
    token_lengths = torch.tensor([5, 3, 6, 0])  # the last is empty
    tokens = torch.randint(3, V, (4, 6), generator=g) * length_mask(token_lengths, 6)
    return {"wav": wav, "wav_lengths": wav_lengths, "tokens": tokens, "token_lengths": token_lengths}


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_decoder_shapes(kind):
    dec = make_decoder(kind)
    enc, lengths = torch.randn(3, 9, D_ENC), torch.tensor([9, 5, 1])
    ys_in = torch.randint(0, V, (3, 4))
    assert dec(enc, lengths, ys_in).shape == (3, 4, V)
    state = dec.init_state(enc, lengths)
    log_probs, state = dec.step(ys_in[:, 0], state, enc, length_mask(lengths, 9))
    assert log_probs.shape == (3, V)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_step_matches_teacher_forcing(kind):
    """Decoding step by step on a prefix gives the training (teacher-forced) distribution."""
    dec = make_decoder(kind)
    torch.manual_seed(1)
    enc, lengths = torch.randn(3, 11, D_ENC), torch.tensor([11, 6, 3])
    ys_in = torch.cat([torch.full((3, 1), EOS), torch.randint(3, V, (3, 6))], dim=1)
    with torch.no_grad():
        expect = F.log_softmax(dec(enc, lengths, ys_in), dim=-1)
        state, mask = dec.init_state(enc, lengths), length_mask(lengths, 11)
        for u in range(ys_in.shape[1]):
            log_probs, state = dec.step(ys_in[:, u], state, enc, mask)
            torch.testing.assert_close(log_probs, expect[:, u], atol=1e-5, rtol=1e-5)


def test_location_attention_weights():
    torch.manual_seed(0)
    att = LocationAwareAttention(enc_dim=8, query_dim=6, att_dim=5, conv_channels=3, conv_kernel=5)
    enc, lengths = torch.randn(3, 10, 8), torch.tensor([10, 4, 1])
    mask = length_mask(lengths, 10)
    weights = att.initial_weights(mask)
    enc_proj = att.project_encoder(enc)
    for _ in range(3):  # the location features come from the previous weights
        context, weights = att(torch.randn(3, 6), enc, enc_proj, mask, weights)
        assert torch.allclose(weights.sum(-1), torch.ones(3), atol=1e-6)
        assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
        torch.testing.assert_close(context, torch.einsum("bt,btd->bd", weights, enc))
    assert torch.allclose(context[2], enc[2, 0])  # one valid frame: all weight on it
    # padding frames have no influence at all
    enc2 = enc.clone()
    enc2[~mask] = 100.0
    context2, weights2 = att(torch.zeros(3, 6), enc2, att.project_encoder(enc2), mask, att.initial_weights(mask))
    context1, weights1 = att(torch.zeros(3, 6), enc, enc_proj, mask, att.initial_weights(mask))
    torch.testing.assert_close(weights1, weights2)
    torch.testing.assert_close(context1, context2)


@pytest.mark.parametrize("kind,eos_bias", [("lstm", 1.0), ("transformer", 4.0)])
def test_greedy_batch_equals_single(kind, eos_bias):
    torch.manual_seed(3)
    model = AttentionModel(small_config(decoder=kind, max_len_ratio=0.7), V).eval()
    with torch.no_grad():  # make some hypotheses end with <eos>, others run into the length guard
        model.decoder.output.weight *= 4
        model.decoder.output.bias[EOS] = eos_bias
    enc, lengths = torch.randn(5, 16, model.encoder.output_dim), torch.tensor([16, 11, 5, 1, 8])
    batch = attention_greedy(model, enc, lengths)
    singles = [attention_greedy(model, enc[b : b + 1, : int(n)], lengths[b : b + 1])[0] for b, n in enumerate(lengths)]
    assert batch == singles
    assert all(EOS not in h for h in batch)
    limits = [math.ceil(0.7 * int(n)) for n in lengths]
    assert all(len(h) <= n for h, n in zip(batch, limits))
    assert any(len(h) < n for h, n in zip(batch, limits)) and any(len(h) == n > 1 for h, n in zip(batch, limits))
    assert attention_greedy(model, enc, lengths, max_len=2) == [h[:2] for h in batch]


def test_decode_batch_equals_single():
    torch.manual_seed(0)
    model = AttentionModel(small_config(), V).eval()
    batch = random_batch()
    hyps = attention_decode(model, batch)
    for b, n in enumerate(batch["wav_lengths"].tolist()):
        one = {"wav": batch["wav"][b : b + 1, :n], "wav_lengths": batch["wav_lengths"][b : b + 1]}
        assert attention_decode(model, one) == [hyps[b]]


def test_plain_nll_without_smoothing():
    """label_smoothing 0, no CTC: the loss is the summed token NLL of y + [eos]."""
    torch.manual_seed(0)
    model = AttentionModel(small_config(ctc_weight=0.0, label_smoothing=0.0), V).eval()
    assert model.ctc_head is None
    batch = random_batch()
    out = attention_loss(model, batch)
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    expect = 0.0
    for b in range(4):
        n = int(batch["token_lengths"][b])
        y = batch["tokens"][b, :n]
        ys_in = torch.cat([torch.tensor([EOS]), y]).unsqueeze(0)
        logits = model.decoder(enc[b : b + 1], lengths[b : b + 1], ys_in)[0]
        expect = expect + F.cross_entropy(logits, torch.cat([y, torch.tensor([EOS])]), reduction="sum")
    torch.testing.assert_close(out.loss, expect, atol=1e-4, rtol=1e-5)
    assert out.weight == 4.0
    assert out.metrics["empty"] == 1.0 and out.metrics["tokens"] == float(5 + 3 + 6 + 0 + 4)
    assert 0 <= out.metrics["acc"] <= out.metrics["tokens"]
    # label smoothing makes the loss larger for an untrained model and keeps the same weight
    model.label_smoothing = 0.1
    assert attention_loss(model, batch).loss > out.loss


def test_ctc_weight_one_is_ctc_loss():
    torch.manual_seed(0)
    model = AttentionModel(small_config(ctc_weight=1.0), V).eval()
    ctc_model = CTCModel(small_config(), V).eval()
    state = {k.replace("ctc_head.", "head."): v for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    ctc_model.load_state_dict(state)
    batch = random_batch()
    out, ref = attention_loss(model, batch), ctc_loss(ctc_model, batch)
    torch.testing.assert_close(out.loss, ref.loss)
    assert out.weight == ref.weight == 2.0  # one empty, one too short
    assert out.metrics["empty"] == 1.0 and out.metrics["too_short"] == 1.0
    assert out.metrics["ctc"] == pytest.approx(ref.metrics["ctc"])


def test_joint_loss_mixes_per_utterance():
    torch.manual_seed(0)
    model = AttentionModel(small_config(ctc_weight=0.3), V).eval()
    batch = random_batch()
    out = attention_loss(model, batch)
    expect = 0.3 * out.metrics["ctc"] + 0.7 * out.metrics["att"]
    assert out.loss.item() == pytest.approx(expect, rel=1e-5)
    assert out.weight == 4.0  # every utterance trains the decoder
    out.loss.backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert model.ctc_head.linear.weight.grad is not None


def test_guided_penalty_against_loops():
    """The vectorised penalty equals a loop over utterances, steps and frames; padding costs nothing."""
    g = torch.Generator().manual_seed(3)
    weights = torch.rand(3, 5, 7, generator=g)
    enc_lengths, out_lengths, sigma = torch.tensor([7, 4, 1]), torch.tensor([5, 2, 3]), 0.3
    got = guided_attention_penalty(weights, enc_lengths, out_lengths, sigma)
    for b in range(3):
        T, U = int(enc_lengths[b]), int(out_lengths[b])
        expect = sum(
            float(weights[b, u, t]) * (1 - math.exp(-(((t + 0.5) / T - (u + 0.5) / U) ** 2) / (2 * sigma**2)))
            for u in range(U) for t in range(T)
        )
        assert got[b].item() == pytest.approx(expect, rel=1e-5)
    # attention along the diagonal costs far less than along the anti-diagonal
    diag = torch.eye(6).unsqueeze(0)
    lengths = torch.tensor([6])
    assert guided_attention_penalty(diag, lengths, lengths, 0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert guided_attention_penalty(diag.flip(2), lengths, lengths, 0.2).item() > 3.0


def test_guided_loss_is_added_and_trains_the_attention():
    torch.manual_seed(0)
    batch = random_batch()
    plain = AttentionModel(small_config(ctc_weight=0.3), V).eval()
    guided = AttentionModel(small_config(ctc_weight=0.3, guided_weight=0.5), V).eval()
    guided.load_state_dict(plain.state_dict())
    base, out = attention_loss(plain, batch), attention_loss(guided, batch)
    assert base.metrics["guided"] == 0.0 and out.metrics["guided"] > 0.0
    assert out.metrics["att"] == pytest.approx(base.metrics["att"], rel=1e-5)
    assert out.loss.item() == pytest.approx(base.loss.item() + 0.5 * out.metrics["guided"], rel=1e-5)
    base.loss.backward()
    out.loss.backward()
    # the penalty's own gradient reaches the attention (the two models hold the same weights)
    assert not torch.allclose(guided.decoder.attention.score.weight.grad, plain.decoder.attention.score.weight.grad)
    with pytest.raises(ValueError, match="lstm decoder"):
        AttentionModel(small_config(decoder="transformer", guided_weight=1.0), V)


def test_family_registered():
    family = get_family("attention")
    assert family.loss is attention_loss and family.decode is attention_decode
    model = family.build(small_config(decoder="transformer"), V)
    assert isinstance(model.decoder, TransformerAttentionDecoder)
    with pytest.raises(ValueError, match="decoder"):
        AttentionModel(small_config(decoder="gru"), V)


SENTENCES = ["red box", "red cat", "go home now", "the big cat"]


def synthesize(folder, sentences):
    """Speak each sentence with ``espeak-ng --stdout`` (whose streamed WAV header has no length) into a WAV file."""
    import io

    import soundfile as sf

    from asr.audio import write_audio

    items = []
    for i, text in enumerate(sentences):
        proc = subprocess.run(["espeak-ng", "-s", "150", "--stdout", text], capture_output=True, check=True)
        wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        path = folder / f"utt{i}.wav"
        write_audio(path, wav, sr)
        items.append({"id": f"utt{i}", "audio": str(path), "text": text, "duration": len(wav) / sr})
    return items


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make test installs it)")
def test_tiny_model_learns_to_transcribe(tmp_path):
    from asr.data.dataset import AudioDataset, collate_batch
    from asr.evaluate import error_rates
    from asr.features import compute_cmvn_stats
    from asr.text import CharTokenizer

    torch.manual_seed(0)
    items = synthesize(tmp_path, SENTENCES)
    tok = CharTokenizer.from_texts(SENTENCES)
    cfg = ModelConfig(
        family="attention", specaugment=SpecAugmentConfig(enabled=False),
        encoder=EncoderConfig(kind="rnn", dim=32, layers=1, subsampling=4, dropout=0.0),
        attention=AttentionConfig(decoder="lstm", dim=64, att_dim=32, dropout=0.0, label_smoothing=0.0,
                                  ctc_weight=0.3),
    )
    cfg.features.n_mels = 40
    model = AttentionModel(cfg, tok.vocab_size)
    mean, std, _ = compute_cmvn_stats(items, model.frontend.features, progress=False)
    model.frontend.set_cmvn(mean, std)
    ds = AudioDataset(items, tokenizer=tok)
    batch = collate_batch([ds[i] for i in range(len(ds))])
    refs = [tok.decode(tok.encode(t)) for t in batch["texts"]]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start, cer = time.time(), 1.0
    for step in range(300):
        model.train()
        out = attention_loss(model, batch)
        opt.zero_grad()
        (out.loss / out.weight).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % 25 == 24:
            model.eval()
            hyps = [tok.decode(h) for h in attention_decode(model, batch)]
            cer = error_rates(refs, hyps)["cer"]
            if cer <= 0.1 and out.metrics["acc"] == out.metrics["tokens"]:
                break
    print(f"steps {step + 1}, {time.time() - start:.1f}s, cer {cer:.3f}, hyps {hyps}")
    assert cer <= 0.1, hyps  # measured here: 0.000 after 75 steps
