"""Command line: ``python -m rge_demo <command> ...`` (also installed as ``rge-demo``).

One module per command group registers its subcommands with :func:`common.command`:
:mod:`.query` (embed, search), :mod:`.prompts`, :mod:`.sample`, :mod:`.evaluate` (eval),
:mod:`.train` and :mod:`.galleries` (make-galleries). :mod:`.common` holds what they share: the
exit codes (0 ok, 2 a user error as one line ``error: <sentence>``, 1 a bug with its traceback),
the error handling and the one progress bar.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import query, prompts, sample, evaluate, galleries, train  # noqa: F401  (they register their commands, in this order)
from .common import EXIT_USER, COMMANDS, UsageError, build_parser, check_utf8, report, run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (argparse's own exits, such as ``--help``, included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_utf8(argv)
    except UsageError as e:
        return report(str(e))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad command line (2, already reported)
        return e.code if isinstance(e.code, int) else EXIT_USER
    return run_command(args)


__all__ = ["COMMANDS", "main"]
