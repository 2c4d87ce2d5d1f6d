"""``python -m rge_demo eval``: evaluate a model on the world's test splits or a local MMEB-eval copy.

Prints the markdown table and writes the run folder (cases.jsonl, summary.json, table.md).
User errors (a missing model folder, an unknown task, an empty split, a bad MMEB folder) are one
line on stderr and exit code 2.

Under ``torchrun --nproc_per_node N -m rge_demo eval ...`` (or ``accelerate launch -m rge_demo
eval ...`` on GPUs) every process loads the model on its own device, embeds its share of the
batches (:class:`rge_demo.analysis.evaluate.Shard`) and the results are gathered; the first
process prints the table and writes the run folder, which equals a one-process run's.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_USAGE = 2
HELP = "evaluate a model (P@1, recall@5 per task) on the synthetic world or a local MMEB-eval download"


class EvalUsageError(Exception):
    """A bad command line or input; reported as one line, exit code 2."""


# (flags, kwargs) pairs: usable with argparse directly and with rge_demo.__main__'s ``command``.
ARGUMENTS: list[tuple[tuple, dict]] = [
    (("--model",), dict(default=None, help="model folder, registry name (rge-micro, baseline-micro) or hub id "
                                          "(default: RGE_MODEL or rge-micro)")),
    (("--mode",), dict(choices=["reason", "direct", "oracle"], default="reason",
                       help="query embedding: reason (rationale, then <emb>), direct, or oracle rationale (world)")),
    (("--split",), dict(choices=["ind", "ood", "all"], default="all", help="which test split(s) (default all)")),
    (("--tasks",), dict(default=None, help="comma-separated world tasks (default: all)")),
    (("--n", "--queries"), dict(dest="n", type=int, default=100,
                                help="queries per world task and split (default 100); under torchrun write "
                                     "--queries (torchrun reads --n as an abbreviation of its own flags)")),
    (("--seed",), dict(type=int, default=0, help="world seed (default 0)")),
    (("--mmeb",), dict(default=None, metavar="DIR", help="evaluate a local MMEB-eval copy instead of the world")),
    (("--subsets",), dict(default=None, help="comma-separated MMEB subsets (default: every one found)")),
    (("--limit",), dict(type=int, default=None, help="first N rows of each MMEB subset")),
    (("--image-root",), dict(dest="image_root", default=None, help="MMEB image folder (default DIR/images)")),
    (("--out",), dict(default=None, help="run folder (default: <cache dir>/eval/<model>-<data>-<mode>)")),
    (("--batch-size",), dict(dest="batch_size", type=int, default=32, help="batch size (default 32)")),
    (("--max-new-tokens",), dict(dest="max_new_tokens", type=int, default=None,
                                 help="rationale budget in reasoning mode (default: the model's, 128)")),
    (("--device",), dict(default=None, help="cpu, cuda, cuda:N, mps or auto (default: RGE_DEVICE or auto)")),
    (("--dtype",), dict(default=None, choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights dtype (default: RGE_DTYPE or auto)")),
    (("--no-cache",), dict(dest="no_cache", action="store_true", help="do not use the on-disk embedding cache")),
]




def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def build_tasks(args: argparse.Namespace):
    """The EvalTasks named by the command line."""
    from .eval_tasks import EVAL_SPLITS, EvalDataError, load_mmeb, world_tasks

    splits = EVAL_SPLITS if args.split == "all" else (args.split,)
    if args.mmeb:
        if args.tasks:
            raise EvalUsageError("--tasks is for the world; use --subsets with --mmeb")
        try:
            tasks = load_mmeb(args.mmeb, _csv(args.subsets), args.limit, args.image_root)
        except (EvalDataError, ValueError) as e:
            raise EvalUsageError(str(e)) from e
        tasks = [t for t in tasks if t.split in splits]
        if not tasks:
            raise EvalUsageError(f"no MMEB subsets in split {args.split!r} among those loaded from {args.mmeb}")
        return tasks
    from rge_demo.data import world

    if args.subsets or args.limit is not None or args.image_root:
        raise EvalUsageError("--subsets/--limit/--image-root need --mmeb DIR")
    names = _csv(args.tasks)
    if names is not None:
        unknown = [t for t in names if t not in world.TASKS]
        if unknown or not names:
            raise EvalUsageError(f"unknown task(s) {unknown or names}; known: {', '.join(world.TASKS)}")
    if args.n < 1:
        raise EvalUsageError(f"--n must be >= 1 (an empty split has nothing to evaluate), got {args.n}")
    return world_tasks(names, splits, args.n, args.seed)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(name: str, device: str, dtype: str):
    """(model, processor, fingerprint, display name) for a folder, registry name or hub id."""
    source = name
    try:
        from rge_demo.models.manager import default_specs
        source = {s.name: s.source for s in default_specs()}.get(name, name)
    except ImportError:
        pass
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EvalUsageError(f"{path}: not a model folder (no config.json)")
    elif not _HUB_ID.match(source):
        raise EvalUsageError(f"{source}: no such model folder")
    try:
        from rge_demo.models import loading
    except ImportError:
        loading = None
    if loading is not None:
        model, processor = loading.load_checkpoint(source, device=device, dtype=dtype)
        fp = loading.fingerprint(path) if path.is_dir() else loading.fingerprint(model)
    else:  # the models package without its loader: plain transformers
        import hashlib

        import rge_demo.models.processor  # noqa: F401  registers the image-only processor
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
        processor = AutoProcessor.from_pretrained(source)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(source).eval()
        fp = hashlib.sha256(str(path.resolve() if path.exists() else source).encode()).hexdigest()
    return model, processor, fp, path.name if path.exists() else source


class TqdmProgress:
    """``progress(done, total)`` as a tqdm bar on stderr."""

    def __init__(self, desc: str):
        from tqdm import tqdm
        self.bar = tqdm(desc=desc, unit="item", file=sys.stderr)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _user_errors() -> tuple[type[BaseException], ...]:
    from rge_demo.data.images import ImageError
    from rge_demo.embedding.encoder import NotAnRGEModel

    from .eval_tasks import EvalDataError

    errors: list[type[BaseException]] = [EvalUsageError, EvalDataError, ImageError, NotAnRGEModel]
    try:
        from rge_demo.models.loading import ModelError
        errors.append(ModelError)
    except ImportError:
        pass
    return tuple(errors)


def distributed(device: str):
    """(Shard, accelerate PartialState) when started by a launcher with WORLD_SIZE > 1, else (None, None)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, None
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from .evaluate import Shard

    # Joins the launcher's process group: nccl on GPUs, gloo on CPU (without cpu=True accelerate
    # ignores the CPU processes and each one would run the whole evaluation alone).
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    return Shard(state.process_index, state.num_processes, lambda obj: gather_object([obj])), state


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except _user_errors() as e:  # bugs keep their traceback
        print(f"rge_demo eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise EvalUsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise EvalUsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    from rge_demo.config import get_settings

    settings = get_settings()
    tasks = build_tasks(args)  # cheap checks before the (slow) model load
    device = args.device or settings.device
    shard, state = distributed(device)
    if state is not None and device in ("auto", "cuda") and state.device.type == "cuda":
        device = str(state.device)  # one GPU per process
    main = state is None or state.is_main_process
    model, processor, fp, name = load_model(args.model or settings.model, device, args.dtype or settings.dtype)
    from rge_demo.embedding.encoder import Encoder
    from rge_demo.embedding.index import EmbeddingCache

    from .evaluate import evaluate

    encoder = Encoder(model, processor, max_new_tokens=args.max_new_tokens or settings.max_new_tokens)
    cache = None if args.no_cache else EmbeddingCache(settings.embeddings_dir)
    progress = TqdmProgress(f"eval {name} ({args.mode})") if main else None
    try:
        result = evaluate(encoder, tasks, mode=args.mode, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, progress=progress, cache=cache,
                          fingerprint=fp, model_name=name, shard=shard)
    finally:
        if progress is not None:
            progress.close()
    if not main:
        return 0
    data = "mmeb" if args.mmeb else f"world-{args.split}"
    out = Path(args.out) if args.out else settings.cache_dir / "eval" / f"{name}-{data}-{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    result.save(out)
    print(result.table())
    print(f"run folder: {out}")
    return 0
