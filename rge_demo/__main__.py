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
    return {"mode": "direct", "prompt": prompt_text(loaded.processor, inp, direct=True, profile=enc.profile), "rationale": "",
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


def load_prompting(args):
    """``(spec, profile, processor)`` of ``--model`` without loading its weights: what ``prompts`` needs."""
    from rge_demo.embedding.profiles import ProfileError, profile_for_folder
    from rge_demo.models.loading import check_checkpoint, load_processor, resolve_source
    from rge_demo.models.manager import ModelManager

    settings = get_settings()
    spec = ModelManager(settings).resolve(args.model or settings.model)
    folder = resolve_source(spec.source)
    check_checkpoint(folder)
    try:
        profile = profile_for_folder(folder)
    except ProfileError as e:
        raise UsageError(str(e)) from None
    try:
        processor = load_processor(folder, min_pixels=profile.min_pixels, max_pixels=profile.max_pixels)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{folder}: cannot load the processor/tokenizer ({type(e).__name__}: {e})") from None
    return spec, profile, processor


@command("prompts", "print the exact text the model is given for each item (MMEB rows, or one query)", arguments=[
    arg("--model", help="registry name, local folder or hub id (default: RGE_MODEL or rge-micro); no weights are loaded"),
    arg("--mmeb", default=None, metavar="DIR", help="a local MMEB-eval copy: every query and candidate prompt"),
    arg("--subsets", default=None, help="comma-separated MMEB subsets (default: every one found)"),
    arg("--limit", type=int, default=None, help="first N rows of each MMEB subset"),
    arg("--image-root", dest="image_root", default=None, help="MMEB image folder (default DIR/images)"),
    arg("--image", default=None, help="one item's image file"),
    arg("--text", default="", help="one item's text"),
    arg("--task", default=None, help="a task preset of the model's prompt profile: its instruction for --side"),
    arg("--instruction", default=None, help="the instruction, instead of --task"),
    arg("--side", choices=["query", "candidate"], default="query", help="side of the one item (default query)"),
    arg("--direct", action="store_true", help="query prompts in direct mode (ending in <emb>); "
                                              "default: the reasoning prompt the rationale grows from"),
    arg("--json", action="store_true", help='one JSON object per line: {"subset", "row", "side", "prompt"}'),
])
def cmd_prompts(args) -> int:
    from rge_demo.analysis.eval_tasks import EvalDataError, load_mmeb, prompt_records
    from rge_demo.embedding.profiles import ProfileError
    from rge_demo.embedding.prompts import prompt_text

    single = args.image is not None or args.text or args.task or args.instruction is not None
    if args.mmeb and single:
        raise UsageError("give --mmeb DIR or one item (--image/--text/--task/--instruction), not both")
    if not args.mmeb and (args.subsets or args.limit is not None or args.image_root):
        raise UsageError("--subsets/--limit/--image-root need --mmeb DIR")
    if args.task and args.instruction is not None:
        raise UsageError("give --task or --instruction, not both")
    if not args.mmeb and not single:
        raise UsageError("give --mmeb DIR or one item (--image and/or --text, with --task or --instruction)")
    spec, profile, processor = load_prompting(args)
    if args.mmeb:
        try:
            tasks = load_mmeb(args.mmeb, [s.strip() for s in args.subsets.split(",") if s.strip()]
                              if args.subsets else None, args.limit, args.image_root)
        except (EvalDataError, ValueError) as e:
            raise UsageError(str(e)) from None
        records = prompt_records(tasks, processor, profile, direct_queries=args.direct)
    else:
        try:
            instruction = profile.task(args.task)[args.side] if args.task else args.instruction or ""
        except ProfileError as e:
            raise UsageError(str(e)) from None
        inp = query_input(args, instruction)
        if args.side == "candidate":
            inp = type(inp)(inp.instruction, inp.text, inp.image, side="candidate")
        direct = args.direct or args.side == "candidate"  # candidates are always embedded directly
        records = [{"subset": None, "row": 0, "side": args.side,
                    "prompt": prompt_text(processor, inp, direct=direct, profile=profile)}]
    if not args.json:
        print(f"model: {spec.name}  prompt profile: {profile.name}")
    for r in records:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            print(f"--- {r['subset'] or '(one item)'} row {r['row']} {r['side']}\n{r['prompt']}")
    return 0


@command("sample", "sample N rationales per query: stated answers, ranks, spread, pass@k (one JSON line per query)",
         parents=("model",), arguments=[
             arg("--text", default="", help="query text (with --gallery)"),
             arg("--image", default=None, help="query image file (with --gallery)"),
             arg("--world", default=None, help="world task(s), comma-separated: sample their evaluation queries"),
             arg("--split", choices=["ind", "ood"], default="ind", help="world split (default ind)"),
             arg("--limit", type=int, default=4, help="queries per world task (default 4)"),
             arg("--gallery", default=None, help="gallery folder: rank its items for --text/--image"),
             arg("--target", default=None, help="id of the right gallery item (with --gallery)"),
             arg("--instruction", default=None, help="query instruction (default: the gallery's meta-task's)"),
             arg("-n", type=int, default=8, help="samples per query (default 8)"),
             arg("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)"),
             arg("--seed", type=int, default=0, help="seed of the draws (default 0)"),
             arg("--k", default="1,2,4,8", help="pass@k values, comma-separated (default 1,2,4,8; n is added)"),
             arg("--batch-size", type=int, default=32, help="generated rows per generate call (default 32)"),
         ])
def cmd_sample(args) -> int:
    from rge_demo.analysis import sampling

    if (args.world is None) == (args.gallery is None):
        raise UsageError("give --world TASKS or --gallery DIR (with --target and a query)")
    if args.n < 1 or args.limit < 1 or args.batch_size < 1:
        raise UsageError("-n, --limit and --batch-size must be >= 1")
    if not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {args.temperature}")
    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers, got {args.k!r}") from None
    opts = {"n": args.n, "temperature": args.temperature, "seed": args.seed, "ks": ks,
            "batch_size": args.batch_size}
    if args.world is not None:
        from rge_demo.analysis.eval_tasks import world_tasks

        try:
            tasks = world_tasks([t.strip() for t in args.world.split(",") if t.strip()], (args.split,), args.limit)
        except KeyError as e:
            raise UsageError(e.args[0]) from None
        loaded, _ = load_model(args)
        records = sampling.evaluate_sampling(loaded.encoder, tasks, **opts)
        for r in records:
            print(json.dumps({"model": loaded.spec.name, **r}))
        table = sampling.sampling_table(records)
        print(json.dumps({"model": loaded.spec.name, "summary": {
            name: {k: (None if v != v else round(v, 6)) for k, v in row.items()} for name, row in table.items()}}))
        return 0

    from rge_demo.data.items import Gallery
    from rge_demo.embedding.gallery import embed_fn
    from rge_demo.embedding.index import EmbeddingCache, GalleryIndex
    from rge_demo.embedding.prompts import instruction_for

    if not Path(args.gallery).is_dir():
        raise UsageError(f"{args.gallery}: no such gallery folder")
    gallery = Gallery.load(args.gallery)
    if args.target is None:
        raise UsageError("--gallery needs --target ID: the right item to rank")
    try:
        target = gallery.index_of(args.target)
    except KeyError:
        raise UsageError(f"gallery {gallery.name}: no item {args.target!r} (--target)") from None
    default = instruction_for(gallery.meta_task, "query") if gallery.meta_task else ""
    inp = query_input(args, args.instruction if args.instruction is not None else default)
    loaded, settings = load_model(args)
    index = GalleryIndex.build(gallery, embed_fn(loaded.encoder, gallery), fingerprint=loaded.fingerprint,
                               instruction=gallery.candidate_instruction,
                               cache=EmbeddingCache(settings.embeddings_dir), batch_size=args.batch_size,
                               progress=TqdmProgress(f"embedding {gallery.name}"))
    result = sampling.sample_queries(loaded.encoder, [inp], index.matrix, [target], **opts)[0]
    print(json.dumps({"model": loaded.spec.name, "gallery": gallery.name, "target_id": args.target,
                      "target_label": gallery.items[target].label, **result.to_dict()}))
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
