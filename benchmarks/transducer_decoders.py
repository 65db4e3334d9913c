"""RNN-T beam searches: ours (standard and modified) vs torchaudio's ``RNNTBeamSearch``.

All decoders search the same encoder outputs of the same trained model (the encoder runs
once, up front, and is timed separately), on one CPU thread. torchaudio's searcher gets our
model behind the ``torchaudio.models.RNNT`` interface it calls (``transcribe``, ``predict``,
``join``): see :class:`TorchaudioRNNT`. Prints the search real-time factor (search seconds
per second of audio; lower is faster) and the WER of the best hypothesis against the
normalized references, for beams 1, 4, 8 and 16. torchaudio ranks hypotheses by
log-probability over (length + 1), both when it prunes each frame and at the end; our
standard search ranks by log-probability, or with ``length_norm`` the same way.

    python benchmarks/transducer_decoders.py --model exp/synthetic/transducer/best.pt \\
        --manifest data/synthetic/manifests/asr/test.jsonl [--beams 1 4 8 16] [--limit N]
"""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from typing import List, Optional  # noqa: E402

import torch  # noqa: E402
import torchaudio  # noqa: E402
from torchaudio.models import RNNTBeamSearch  # noqa: E402

from asr.checkpoint import load_model  # noqa: E402
from asr.data import read_manifest  # noqa: E402
from asr.data.dataset import AudioDataset, collate_batch  # noqa: E402
from asr.decode.transducer import modified_beam_search, transducer_beam_search  # noqa: E402
from asr.evaluate import error_rates  # noqa: E402
from asr.models.transducer import transducer_greedy  # noqa: E402
from asr.text import normalize_text  # noqa: E402


class TorchaudioRNNT(torch.nn.Module):
    """Our :class:`~asr.models.transducer.TransducerModel` behind ``torchaudio.models.RNNT``'s
    ``transcribe`` / ``predict`` / ``join``, as ``RNNTBeamSearch`` calls them.

    torchaudio's search takes blank to be the LAST output (it slices ``[:, :-1]`` and
    ``[:, -1]``), ours is 0: torchaudio index ``i`` is our token ``(i + 1) % V`` and the
    searcher is built with ``blank=V-1``. ``transcribe`` takes already computed encoder
    outputs ``(B, T, H_enc)`` and returns them projected into the joint space, and
    ``predict`` returns projected predictor outputs, so ``join`` does only
    ``out(tanh(a + b))`` -- the same work per call as our searches.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.V = model.vocab_size

    def transcribe(self, sources: torch.Tensor, source_lengths: torch.Tensor):
        """Encoder outputs ``(B, T, H_enc)`` -> projected ``(B, T, J)``, lengths ``(B,)``."""
        return self.model.joiner.project_encoder(sources), source_lengths

    def predict(self, targets: torch.Tensor, target_lengths: torch.Tensor,
                state: Optional[List[List[torch.Tensor]]]):
        """Targets ``(B, U)`` (torchaudio ids) -> outputs ``(B, U, J)``, lengths, ``[[state tensors]]``."""
        predictor = self.model.predictor
        ours = (targets + 1) % self.V
        st = tuple(state[0]) if state is not None else predictor.init_state(targets.shape[0], targets.device)
        outs = []
        for u in range(targets.shape[1]):
            out, st = predictor.step(ours[:, u], st)
            outs.append(out)
        return self.model.joiner.project_predictor(torch.stack(outs, 1)), target_lengths, [list(st)]

    def join(self, source_encodings: torch.Tensor, source_lengths: torch.Tensor,
             target_encodings: torch.Tensor, target_lengths: torch.Tensor):
        """``(B, T, J)`` and ``(B, U, J)`` -> logits ``(B, T, U, V)`` with blank moved last."""
        logits = self.model.joiner.joint(source_encodings.unsqueeze(2), target_encodings.unsqueeze(1))
        return torch.cat([logits[..., 1:], logits[..., :1]], dim=-1), source_lengths, target_lengths


def encode_all(model, items, batch_size: int):
    """Encoder outputs ``(T_i, H)`` per utterance (in manifest order), audio seconds, encoder seconds."""
    sr = model.frontend.features.config.sample_rate
    ds = AudioDataset(items, sample_rate=sr)
    order = sorted(range(len(items)), key=lambda i: float(items[i].get("duration", 0.0)))
    encs: list = [None] * len(items)
    audio_s, enc_s = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate_batch([ds[i] for i in idx])
            t0 = time.perf_counter()
            enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
            enc_s += time.perf_counter() - t0
            audio_s += float(batch["wav_lengths"].sum()) / sr
            for j, i in enumerate(idx):
                encs[i] = enc[j, : int(lengths[j])].clone()
    return encs, audio_s, enc_s


def padded(encs):
    lengths = torch.tensor([e.shape[0] for e in encs])
    return torch.nn.utils.rnn.pad_sequence(encs, batch_first=True), lengths


def run_greedy(model, encs, batch_size):
    out = []
    for s in range(0, len(encs), batch_size):
        enc, lengths = padded(encs[s : s + batch_size])
        out += transducer_greedy(model, enc, lengths)
    return out


def run_ours_beam(model, encs, beam, length_norm=False):
    return [transducer_beam_search(model, e, beam, nbest=1, length_norm=length_norm)[0].tokens for e in encs]


def run_ours_modified(model, encs, beam, batch_size):
    out = []
    for s in range(0, len(encs), batch_size):
        enc, lengths = padded(encs[s : s + batch_size])
        out += [n[0].tokens for n in modified_beam_search(model, enc, lengths, beam, nbest=1)]
    return out


def run_torchaudio(searcher, V, encs, beam):
    out = []
    for e in encs:
        hyps = searcher(e, torch.tensor(e.shape[0]), beam)
        out.append([(t + 1) % V for t in hyps[0][0][1:]])  # drop the start symbol, back to our ids
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="exp/synthetic/transducer/best.pt", help="transducer checkpoint")
    ap.add_argument("--manifest", default="data/synthetic/manifests/asr/test.jsonl", help="test manifest")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--limit", type=int, default=0, help="first N utterances only (0 = all)")
    ap.add_argument("--batch", type=int, default=16, help="utterances per batch for encoding, greedy and "
                                                          "batched modified beam search")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per row; the fastest is kept")
    args = ap.parse_args()
    torch.set_num_threads(1)

    model, family, tokenizer, _ = load_model(args.model)
    if family.name != "transducer":
        raise SystemExit(f"{args.model} is a {family.name!r} model, not a transducer")
    model.eval()
    items = read_manifest(args.manifest, needs_text=True)
    if args.limit:
        items = items[: args.limit]
    refs = [normalize_text(it["text"]) for it in items]
    encs, audio_s, enc_s = encode_all(model, items, args.batch)
    V = model.vocab_size
    searcher = RNNTBeamSearch(TorchaudioRNNT(model), blank=V - 1)

    def measure(fn):
        """``fn(encs) -> token lists``: warmed up on 3 utterances, then timed on all."""
        with torch.no_grad():
            fn(encs[:3])
        best, tokens = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                tokens = fn(encs)
            best = min(best, time.perf_counter() - t0)
        hyps = [normalize_text(tokenizer.decode(t)) for t in tokens]
        return best / audio_s, error_rates(refs, hyps)["wer"]

    rows = [("greedy (batched, <= 5 symbols/frame)", "-", *measure(lambda es: run_greedy(model, es, args.batch)))]
    for beam in args.beams:
        rows.append(("ours beam (Graves)", beam, *measure(lambda es: run_ours_beam(model, es, beam))))
        rows.append(("ours beam (Graves), length_norm", beam,
                     *measure(lambda es: run_ours_beam(model, es, beam, length_norm=True))))
        rows.append(("torchaudio RNNTBeamSearch", beam, *measure(lambda es: run_torchaudio(searcher, V, es, beam))))
        rows.append(("ours modified_beam, 1 utt at a time", beam, *measure(lambda es: run_ours_modified(model, es, beam, 1))))
        rows.append((f"ours modified_beam, batch {args.batch}", beam,
                     *measure(lambda es: run_ours_modified(model, es, beam, args.batch))))

    print(f"{len(items)} utterances, {audio_s / 60:.1f} min of audio, vocab {V}, 1 thread, torch {torch.__version__}, "
          f"torchaudio {torchaudio.__version__}; encoder (run once, not in the RTFs): RTF {enc_s / audio_s:.4f}")
    print(f"| {'decoder':<38} | {'beam':>4} | {'search RTF':>10} | {'WER %':>6} |")
    print(f"|{'-' * 40}|{'-' * 6}|{'-' * 12}|{'-' * 8}|")
    for name, beam, rtf, wer in rows:
        print(f"| {name:<38} | {beam:>4} | {rtf:>10.4f} | {100 * wer:>6.2f} |")


if __name__ == "__main__":
    main()
