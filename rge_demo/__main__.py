"""Command line: ``python -m rge_demo <command> ...``.

Each subcommand is one function decorated with :func:`command`, which names it, gives its help and
its arguments; adding ``eval``, ``train`` or ``bench`` is one more decorated function here (or in a
module imported here). A command returns an exit code. User errors (a missing file, an unknown
model, a bad manifest) become one line on stderr and exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rge_demo.config import SettingsError, get_settings

log = logging.getLogger("rge_demo")

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the command line or its inputs; reported as one line, exit code 2."""


@dataclass
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: list[tuple[tuple, dict]]
    parents: tuple[str, ...]


COMMANDS: dict[str, Command] = {}


def arg(*flags, **kwargs) -> tuple[tuple, dict]:
    """One ``add_argument`` call, written where the command is declared."""
    return flags, kwargs


def command(name: str, help: str, arguments: list[tuple[tuple, dict]] = (), parents: tuple[str, ...] = ()):
    """Register ``fn(args) -> exit code`` as subcommand ``name``; ``parents`` name shared argument groups."""
    def register(fn):
        COMMANDS[name] = Command(name, help, fn, list(arguments), tuple(parents))
        return fn
    return register


# Argument groups shared by several commands.
SHARED: dict[str, list[tuple[tuple, dict]]] = {
    "model": [
        arg("--model", help="registry name (rge-micro, baseline-micro, MCG-NJU/RGE), local folder or hub id "
                            "(default: RGE_MODEL or rge-micro)"),
        arg("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
            help="weights dtype (default: RGE_DTYPE or auto: bf16 on CUDA, fp32 otherwise)"),
        arg("--quantization", default=None, choices=["8bit", "4bit"], help="bitsandbytes quantization (CUDA only)"),
        arg("--max-new-tokens", type=int, default=None,
            help="rationale budget in reasoning mode (default: RGE_MAX_NEW_TOKENS or 128)"),
    ],
    "query": [
        arg("--text", default="", help="query text"),
        arg("--image", default=None, help="query image file"),
        arg("--reason", action="store_true", help="reasoning mode: generate a rationale, then embed"),
    ],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rge_demo", description="Reasoning Guided Embeddings demo tools")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-v, -vv)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for group in cmd.parents:
            for flags, kwargs in SHARED[group]:
                p.add_argument(*flags, **kwargs)
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose < 2:
        _quiet_libraries()
    try:
        return args._command.run(args)
    except _user_errors() as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def _user_errors() -> tuple[type[BaseException], ...]:
    from rge_demo.data.images import ImageError
    from rge_demo.data.items import ManifestError
    from rge_demo.embedding.encoder import NotAnRGEModel
    from rge_demo.models.loading import ModelError

    return UsageError, SettingsError, ModelError, NotAnRGEModel, ImageError, ManifestError


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ------------------------------------------------------------------------------------ helpers


def load_model(args):
    """The LoadedModel named by ``--model`` (settings from RGE_* with the flags on top)."""
    from rge_demo.models.manager import ModelManager

    settings = get_settings()
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        settings.max_new_tokens = args.max_new_tokens
    manager = ModelManager(settings)
    return manager.load(args.model or settings.model, dtype=args.dtype or settings.dtype,
                        quantization=args.quantization), settings


def query_input(args, instruction: str):
    """An EmbedInput from ``--text``/``--image``; the image goes through the safe loader."""
    from rge_demo.data.images import load_image
    from rge_demo.embedding.prompts import EmbedInput

    image = None
    if args.image is not None:
        image = load_image(args.image)  # ImageError names the file
    if not (args.text or image is not None):
        raise UsageError("give a query: --text and/or --image")
    return EmbedInput(instruction=instruction, text=args.text, image=image)


def instruction_arg(args, default: str = "", side: str = "query") -> str:
    from rge_demo.embedding.prompts import instruction_for

    if getattr(args, "instruction", None) is not None:
        return args.instruction
    if getattr(args, "task", None):
        return instruction_for(args.task, side)
    return default


def embed_query(loaded, inp, reason: bool) -> dict:
    """Embed one query; the fields of ``embed --json``."""
    from rge_demo.embedding.prompts import prompt_text

    enc = loaded.encoder
    if reason:
        r = enc.reason([inp], batch_size=1)[0]
        return {"mode": "reasoning", "prompt": r.prompt, "rationale": r.rationale, "tokens": r.tokens,
                "forced": r.forced, "seconds": r.seconds, "vector": r.vector}
    t0 = time.perf_counter()
    vec = enc.direct([inp], batch_size=1)[0]
    return {"mode": "direct", "prompt": prompt_text(loaded.processor, inp, direct=True), "rationale": "",
            "tokens": 0, "forced": False, "seconds": time.perf_counter() - t0, "vector": vec}


TASKS = ["classification", "vqa", "retrieval", "grounding"]


# ----------------------------------------------------------------------------------- commands


@command("embed", "embed one query (image and/or text) in direct or reasoning mode",
         parents=("model", "query"), arguments=[
             arg("--instruction", default=None, help="task instruction placed before the text"),
             arg("--task", choices=TASKS, default=None, help="use the MMEB instruction of this meta-task"),
             arg("--side", choices=["query", "candidate"], default="query", help="instruction side for --task"),
             arg("--json", action="store_true", help="print one JSON object"),
         ])
def cmd_embed(args) -> int:
    if args.instruction is not None and args.task:
        raise UsageError("give --instruction or --task, not both")
    inp = query_input(args, instruction_arg(args, side=args.side))
    loaded, _ = load_model(args)
    out = embed_query(loaded, inp, args.reason)
    vec = out["vector"]
    if args.json:
        print(json.dumps({**out, "vector": [round(float(x), 7) for x in vec], "dim": int(vec.shape[0]),
                          "model": loaded.spec.name, "fingerprint": loaded.fingerprint}))
        return 0
    print(f"model: {loaded.spec.name}  mode: {out['mode']}  tokens: {out['tokens']}  "
          f"seconds: {out['seconds']:.3f}")
    if args.reason:
        print(f"rationale: {out['rationale']}" + ("  [budget ran out; <emb> appended]" if out["forced"] else ""))
    print(f"vector ({vec.shape[0]}): " + " ".join(f"{x:.5f}" for x in vec))
    return 0


@command("search", "rank a gallery's items for one query (gallery vectors cached on disk)",
         parents=("model", "query"), arguments=[
             arg("--gallery", required=True, help="gallery folder holding manifest.json"),
             arg("--query", dest="text", default="", help="query text (same as --text)"),
             arg("--instruction", default=None, help="query instruction (default: the gallery's meta-task's)"),
             arg("--task", choices=TASKS, default=None, help="use the MMEB query instruction of this meta-task"),
             arg("-k", type=int, default=5, help="number of hits (default 5)"),
             arg("--batch-size", type=int, default=32, help="gallery embedding batch size"),
             arg("--json", action="store_true", help="print one JSON object"),
         ])
def cmd_search(args) -> int:
    from rge_demo.data.items import Gallery
    from rge_demo.embedding.gallery import embed_fn
    from rge_demo.embedding.index import EmbeddingCache, GalleryIndex

    if args.k < 1:
        raise UsageError(f"-k must be >= 1, got {args.k}")
    if not Path(args.gallery).is_dir():
        raise UsageError(f"{args.gallery}: no such gallery folder")
    gallery = Gallery.load(args.gallery)
    default_instruction = ""
    if gallery.meta_task:
        from rge_demo.embedding.prompts import instruction_for
        default_instruction = instruction_for(gallery.meta_task, "query")
    inp = query_input(args, instruction_arg(args, default_instruction))
    loaded, settings = load_model(args)
    index = GalleryIndex.build(gallery, embed_fn(loaded.encoder, gallery), fingerprint=loaded.fingerprint,
                               instruction=gallery.candidate_instruction,
                               cache=EmbeddingCache(settings.embeddings_dir), batch_size=args.batch_size,
                               progress=TqdmProgress(f"embedding {gallery.name}"))
    out = embed_query(loaded, inp, args.reason)
    hits = index.search(out["vector"], k=args.k)[0]
    s = index.stats
    if args.json:
        print(json.dumps({
            "model": loaded.spec.name, "gallery": gallery.name, "mode": out["mode"], "prompt": out["prompt"],
            "rationale": out["rationale"], "seconds": out["seconds"],
            "index": {"items": s.total, "embedded": s.embedded, "cached": s.cached},
            "hits": [{"rank": h.rank, "id": h.item.id, "score": h.score, "label": h.item.label,
                      "text": h.item.text, "image": h.item.image} for h in hits],
        }))
        return 0
    print(f"gallery {gallery.name}: {s.total} items ({s.embedded} embedded, {s.cached} from cache)")
    print(f"model: {loaded.spec.name}  mode: {out['mode']}  seconds: {out['seconds']:.3f}")
    if args.reason:
        print(f"rationale: {out['rationale']}")
    for h in hits:
        what = h.item.text or h.item.image or ""
        print(f"{h.rank:>3}  {h.score:+.4f}  {h.item.id}  {h.item.label}  {what}".rstrip())
    return 0


class TqdmProgress:
    """``progress(done, total)`` for GalleryIndex.build: a tqdm bar once more than a batch is missing."""

    MIN_ITEMS = 64

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if total - done < self.MIN_ITEMS:
                self.bar = False
                return
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="item", file=sys.stderr)
        if self.bar:
            self.bar.update(done - self.bar.n)
            if done >= total:
                self.bar.close()


def _register_tool_commands() -> None:
    """Subcommands whose code lives beside the library they drive."""
    from rge_demo.analysis import eval_cli
    from rge_demo.data import galleries_cli
    from rge_demo.training import cli as train_cli

    command("eval", eval_cli.HELP, eval_cli.ARGUMENTS)(eval_cli.run)
    command("make-galleries", galleries_cli.HELP, galleries_cli.ARGUMENTS)(galleries_cli.run)
    command("train", train_cli.HELP, train_cli.ARGUMENTS)(train_cli.run)


_register_tool_commands()

if __name__ == "__main__":
    sys.exit(main())
