"""The one error base of the toolkit, and the one command runner of ``asr`` and ``kws``.

Every error raised on purpose (bad audio, manifest, config, checkpoint, training set-up,
download, a bad command-line value) is a :class:`ToolkitError` whose message names the
file (and line) it is about. :func:`run_cli` turns one into ``<command>: error: <message>``
and exit status 2; any other exception is a bug and keeps its traceback.

The concrete classes also derive from the built-in type they used to be (``ValueError``,
``RuntimeError``, ``FileNotFoundError``), so ``except ValueError`` in user code still works.

Example:
    >>> try:
    ...     raise UsageError("--budget: expected a number, got 'x'")
    ... except ToolkitError as e:
    ...     print(e)
    --budget: expected a number, got 'x'
    >>> issubclass(UsageError, ValueError) and issubclass(MissingFileError, FileNotFoundError)
    True
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Mapping, Sequence

__all__ = ["ToolkitError", "UsageError", "MissingFileError", "run_cli"]


class ToolkitError(Exception):
    """An error raised on purpose: the input (a file, a value) cannot be used. The message names it."""


class UsageError(ToolkitError, ValueError):
    """A value given by the user (an option, a config entry, a combination of them) cannot be used."""


class MissingFileError(ToolkitError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def _stdout_closed() -> int:
    """Exit status for a command whose reader went away (``cmd | head``): quietly stop writing.

    Points stdout at the null device so that the interpreter's final flush cannot fail
    again, and returns 141, the shell's status for a process ended by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def run_cli(prog: str, parser: argparse.ArgumentParser, commands: Mapping[str, Callable[[argparse.Namespace], int]],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the sub-command and turn the toolkit's errors into exit statuses.

    * :class:`ToolkitError` -> ``<prog> <command>: error: <message>`` on stderr, status 2;
    * a closed output pipe (``... | head``) -> quiet stop, status 141;
    * Ctrl-C -> ``interrupted``, status 130;
    * anything else propagates with its traceback (a bug to report).
    """
    from asr.utils import setup_logging

    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        return commands[args.command](args)
    except ToolkitError as e:
        sys.stdout.flush()
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130
