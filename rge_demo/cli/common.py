"""What every command shares: how a command is declared, the exit codes, the error handling and the progress bar.

A command is one function decorated with :func:`command`, which names it, gives its help and its
arguments (``arg(...)``, the arguments of ``add_argument``, plus ``minimum=N`` / ``maximum=N`` for a
number that must lie within bounds, and ``path=True`` for a file or folder flag that must not be
empty: ``""`` would mean the working directory). A command returns an exit code:

* ``0`` (:data:`EXIT_OK`): done.
* ``2`` (:data:`EXIT_USER`): a problem the user can fix (a bad flag, a missing file, a broken
  checkpoint, a non-UTF-8 argument). It is one line on stderr, ``error: <sentence>``, and no
  traceback. Any :class:`rge_demo.errors.RGEUserError` gets this, as do the library's older
  user-facing errors listed in :func:`user_errors` and an ``OSError`` that names a file.
* ``1`` (:data:`EXIT_BUG`): anything else escaped; it is a bug and keeps its traceback.
* ``3`` (:data:`EXIT_STOPPED`): ``train`` stopped early on request (SIGTERM/SIGINT) with a
  checkpoint; the same command resumes it.
* ``130`` (:data:`EXIT_INTERRUPTED`): Ctrl-C anywhere else.

Long work reports ``progress(done, total)`` to one :class:`Progress`, a tqdm bar on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rge_demo.errors import RGEUserError

EXIT_OK = 0
EXIT_BUG = 1  # what Python exits with when an exception escapes: the traceback is printed
EXIT_USER = 2
EXIT_STOPPED = 3  # rge_demo.training.worker reads it as "cancelled"
EXIT_INTERRUPTED = 130

# Kept for the callers of the names the separate CLI modules had.
EXIT_USAGE = EXIT_USER


class UsageError(RGEUserError, ValueError):
    """A problem with the command line or its inputs: one line on stderr, exit code 2."""


# ------------------------------------------------------------------------------ declaring commands


@dataclass
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: list[tuple[tuple, dict]]
    parents: tuple[str, ...]


COMMANDS: dict[str, Command] = {}


def arg(*flags, **kwargs) -> tuple[tuple, dict]:
    """One ``add_argument`` call, written where the command is declared (``minimum=N``: at least N;
    ``maximum=N``: at most N; ``path=True``: a path that must not be empty)."""
    return flags, kwargs


def command(name: str, help: str, arguments: Sequence[tuple[tuple, dict]] = (), parents: tuple[str, ...] = ()):
    """Register ``fn(args) -> exit code`` as subcommand ``name``; ``parents`` name shared argument groups."""
    def register(fn):
        COMMANDS[name] = Command(name, help, fn, list(arguments), tuple(parents))
        return fn
    return register


def comma_list(value: str | None, flag: str) -> list[str] | None:
    """A comma-separated flag as a list (None when the flag is not given); an empty list is refused."""
    if value is None:
        return None
    values = [v.strip() for v in value.split(",") if v.strip()]
    if not values:
        raise UsageError(f"{flag} names nothing (got {value!r}): give one or more values, comma-separated")
    return values


# Argument groups shared by several commands.
SHARED: dict[str, list[tuple[tuple, dict]]] = {
    "model": [
        arg("--model", help="registry name (rge-micro, baseline-micro, MCG-NJU/RGE), local folder or hub id "
                            "(default: RGE_MODEL or rge-micro)"),
        arg("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
            help="weights dtype (default: RGE_DTYPE or auto: bf16 on CUDA, fp32 otherwise)"),
        arg("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes quantization (CUDA only)"),
        arg("--max-new-tokens", type=int, default=None, minimum=1,
            help="rationale budget in reasoning mode (default: RGE_MAX_NEW_TOKENS or 128)"),
    ],
    "query": [
        arg("--text", default="", help="query text"),
        arg("--image", default=None, help="query image file"),
        arg("--reason", action="store_true", help="reasoning mode: generate a rationale, then embed"),
    ],
}


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line ``error: ...`` and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USER, f"error: {message} (see {self.prog} --help)\n")


def prog_name() -> str:
    return "rge-demo" if sys.argv and sys.argv[0].endswith("rge-demo") else "python -m rge_demo"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=prog_name(), description="Reasoning Guided Embeddings demo tools")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-v, -vv)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        bounds, paths = [], []
        for flags, kwargs in [*(a for group in cmd.parents for a in SHARED[group]), *cmd.arguments]:
            kwargs = dict(kwargs)
            minimum, maximum, path = kwargs.pop("minimum", None), kwargs.pop("maximum", None), kwargs.pop("path", False)
            action = p.add_argument(*flags, **kwargs)
            if minimum is not None or maximum is not None:
                bounds.append((action.dest, flags[0], minimum, maximum))
            if path:
                paths.append((action.dest, flags[0]))
        p.set_defaults(_command=cmd, _bounds=bounds, _paths=paths)
    return parser


# ------------------------------------------------------------------------------------ running one


def check_utf8(argv: Sequence[str]) -> None:
    """Refuse an argument that is not valid UTF-8 (Python hands such bytes over as lone surrogates)."""
    for i, a in enumerate(argv):
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            flag = a.split("=", 1)[0] if a.startswith("-") else (argv[i - 1] if i and argv[i - 1].startswith("-")
                                                                 else f"argument {i + 1}")
            raw = a.encode("utf-8", "surrogateescape")
            raise UsageError(f"{flag}: not valid UTF-8 ({raw!r}); give text and paths in UTF-8") from None


def check_bounds(args: argparse.Namespace) -> None:
    """Numbers within their declared bounds, and no empty path (it would mean the working directory)."""
    for dest, flag, minimum, maximum in args._bounds:
        value = getattr(args, dest)
        if value is not None and minimum is not None and value < minimum:
            raise UsageError(f"{flag} must be >= {minimum}, got {value}")
        if value is not None and maximum is not None and value > maximum:
            raise UsageError(f"{flag} must be <= {maximum:,}, got {value:,}")
    for dest, flag in args._paths:
        value = getattr(args, dest)
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty: give a file or folder (an empty path would be the working directory)")


_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def user_message(e: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug."""
    if isinstance(e, _FILE_ERRORS) and (e.filename is not None or e.args):
        text = f"{e.filename}: {e.strerror or e}" if e.filename is not None else str(e)
    elif isinstance(e, RGEUserError):
        text = str(e) or type(e).__name__
    else:
        return None
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def report(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USER


def run_command(args: argparse.Namespace) -> int:
    """``args._command.run(args)`` with the shared error handling."""
    try:
        check_bounds(args)
        setup_logging(args.verbose)  # after the cheap checks: it imports transformers
        return args._command.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise  # a bug: the traceback, exit code 1
        return report(message)


def setup_logging(verbose: int) -> None:
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


# ------------------------------------------------------------------------------------ progress


class Progress:
    """The CLI's one progress bar: ``progress(done, total, **postfix)``, a tqdm bar on stderr.

    The bar appears at the first call, and only when at least ``min_items`` are still to do then
    (a gallery that comes almost whole from the cache shows none). ``close()`` ends it; so does
    leaving a ``with`` block.
    """

    def __init__(self, desc: str, unit: str = "item", min_items: int = 0):
        self.desc, self.unit, self.min_items = desc, unit, min_items
        self.bar = None

    def __call__(self, done: int, total: int, **postfix) -> None:
        if self.bar is None:
            if total - done < self.min_items:
                self.bar = False
                return
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=self.desc, unit=self.unit, file=sys.stderr)
        if self.bar:
            self.bar.total = total
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        self.bar = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
