"""The ``kws`` command. ``kws <subcommand> --help`` explains every flag.

Subcommands available:
  prepare ROOT --out DIR    Speech Commands manifests (12- or 35-class protocol)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.audio import AudioError
from asr.data.manifest import ManifestError
from asr.utils import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kws", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("prepare", help="manifests for a Speech Commands-layout corpus",
                       description="Same as `asr prepare speech-commands`: writes OUT/{train,valid,test}.jsonl.")
    p.add_argument("root", type=Path, help="the extracted Speech Commands folder (or a synthetic one)")
    p.add_argument("--out", type=Path, required=True, help="folder for the manifests")
    p.add_argument("--protocol", type=int, choices=(12, 35), default=12,
                   help="12: ten keywords + _unknown_ + _silence_; 35: every word is a class (default 12)")
    p.add_argument("--silence-fraction", type=float, default=0.1, help="silence windows per split (fraction, default 0.1)")
    p.add_argument("--unknown-fraction", type=float, default=None, help="cap _unknown_ clips (fraction of keyword clips)")
    p.add_argument("--seed", type=int, default=0, help="seed for the silence and unknown choices")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        from asr.data.speech_commands import prepare_speech_commands

        out = prepare_speech_commands(args.root, args.out, protocol=args.protocol, silence_fraction=args.silence_fraction,
                                      unknown_fraction=args.unknown_fraction, seed=args.seed)
    except (AudioError, ManifestError, FileNotFoundError, ValueError) as e:
        print(f"kws {args.command}: error: {e}", file=sys.stderr)
        return 2
    for split, path in out.items():
        print(f"{split}\t{path}")
    return 0
