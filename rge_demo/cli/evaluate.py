"""``eval``: evaluate a model on the world's test splits or a local MMEB-eval copy.

Prints the markdown table and writes the run folder (cases.jsonl, summary.json, table.md).

Under ``torchrun --nproc_per_node N -m rge_demo eval ...`` (or ``accelerate launch -m rge_demo
eval ...`` on GPUs) every process loads the model on its own device, embeds its share of the
batches (:class:`rge_demo.analysis.evaluate.Shard`) and the results are gathered; the first
process prints the table and writes the run folder, which equals a one-process run's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from .common import Progress, UsageError, arg, comma_list, command

HELP = "evaluate a model (P@1, recall@5 per task) on the synthetic world or a local MMEB-eval download"

ARGUMENTS: list[tuple[tuple, dict]] = [
    arg("--model", default=None, help="model folder, registry name (rge-micro, baseline-micro) or hub id "
                                      "(default: RGE_MODEL or rge-micro)"),
    arg("--reasoner", default=None, help="Embed-RL: a Reasoner model (folder or registry name) writes each query's "
                                         "T-CoT, --model embeds query + T-CoT (reason mode only)"),
    arg("--samples", type=int, default=None, minimum=2,
        help="also sample this many rationales per query at --temperature (reason mode): pass@k, centroid "
             "and oracle P@1, spread, as extra columns (written to sampling.json in the run folder)"),
    arg("--temperature", type=float, default=None, help="sampling temperature for --samples (default 1.0)"),
    arg("--mode", choices=["reason", "direct", "oracle"], default="reason",
        help="query embedding: reason (rationale, then <emb>), direct, or oracle rationale (world)"),
    arg("--split", choices=["ind", "ood", "all"], default="all", help="which test split(s) (default all)"),
    arg("--tasks", default=None, help="comma-separated world tasks (default: all)"),
    arg("--n", "--queries", dest="n", type=int, default=None, minimum=1, maximum=10_000,
        help="queries per world task and split (default 100); under torchrun write "
             "--queries (torchrun reads --n as an abbreviation of its own flags)"),
    arg("--seed", type=int, default=0, help="world seed (default 0)"),
    arg("--wordings", action="store_true",
        help="the worded world: each candidate in the wording of its index (the leakage experiment)"),
    arg("--mmeb", default=None, metavar="DIR", help="evaluate a local MMEB-eval copy instead of the world"),
    arg("--subsets", default=None, help="comma-separated MMEB subsets (default: every one found)"),
    arg("--limit", type=int, default=None, minimum=1, help="first N rows of each MMEB subset"),
    arg("--image-root", dest="image_root", default=None, help="MMEB image folder (default DIR/images)"),
    arg("--out", default=None, path=True, help="run folder, new or empty (default: <cache dir>/eval/"
                                               "<model>-<data>-<mode>-<date>-<time>)"),
    arg("--batch-size", dest="batch_size", type=int, default=32, minimum=1, maximum=1024,
        help="batch size (default 32)"),
    arg("--max-new-tokens", dest="max_new_tokens", type=int, default=None, minimum=1,
        help="rationale budget in reasoning mode (default: the model's, 128)"),
    arg("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: RGE_DEVICE or auto)"),
    arg("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (default: RGE_DTYPE or auto)"),
    arg("--no-cache", dest="no_cache", action="store_true", help="do not use the on-disk embedding cache"),
]


def build_tasks(args: argparse.Namespace):
    """The EvalTasks named by the command line."""
    from rge_demo.analysis.eval_tasks import EVAL_SPLITS, load_mmeb, world_tasks

    splits = EVAL_SPLITS if args.split == "all" else (args.split,)
    if args.mmeb:
        if args.tasks:
            raise UsageError("--tasks is for the world; use --subsets with --mmeb")
        if args.n is not None:
            raise UsageError("--n/--queries is for the world; use --limit with --mmeb")
        if args.wordings:
            raise UsageError("--wordings is for the world, not --mmeb")
        try:
            tasks = load_mmeb(args.mmeb, comma_list(args.subsets, "--subsets"), args.limit, args.image_root)
        except ValueError as e:  # EvalDataError included
            raise UsageError(str(e)) from e
        tasks = [t for t in tasks if t.split in splits]
        if not tasks:
            raise UsageError(f"no MMEB subsets in split {args.split!r} among those loaded from {args.mmeb}")
        return tasks
    from rge_demo.data import world

    if args.subsets or args.limit is not None or args.image_root:
        raise UsageError("--subsets/--limit/--image-root need --mmeb DIR")
    names = comma_list(args.tasks, "--tasks")
    if names is not None:
        unknown = [t for t in names if t not in world.TASKS]
        if unknown or not names:
            raise UsageError(f"unknown task(s) {unknown or names}; known: {', '.join(world.TASKS)}")
    return world_tasks(names, splits, args.n or 100, args.seed, wordings=args.wordings)


def check_new_folder(out: Path) -> None:
    """A run folder must be new or empty: a run written over another would mix their files (an old
    sampling.json beside a run without samples, a larger run's images beside a smaller one's)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder for the run")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out}: the folder is not empty; give a new folder (or remove this one)")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(name: str, device: str, dtype: str):
    """(model, processor, fingerprint, display name) for a folder, registry name or hub id."""
    from rge_demo.models import loading
    from rge_demo.models.manager import default_specs

    source = {s.name: s.source for s in default_specs()}.get(name, name)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{path}: not a model folder (no config.json)")
    elif not _HUB_ID.match(source):
        raise UsageError(f"{source}: no such model folder")
    model, processor = loading.load_checkpoint(source, device=device, dtype=dtype)
    fp = loading.fingerprint(path) if path.is_dir() else loading.fingerprint(model)
    return model, processor, fp, path.name if path.exists() else source


def distributed(device: str):
    """(Shard, accelerate PartialState) when started by a launcher with WORLD_SIZE > 1, else (None, None)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, None
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from rge_demo.analysis.evaluate import Shard

    # Joins the launcher's process group: nccl on GPUs, gloo on CPU (without cpu=True accelerate
    # ignores the CPU processes and each one would run the whole evaluation alone).
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    return Shard(state.process_index, state.num_processes, lambda obj: gather_object([obj])), state


@command("eval", HELP, ARGUMENTS)
def cmd_eval(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    finally:
        dist = sys.modules.get("torch.distributed")  # not imported here: an interrupt can land mid-import of torch
        if dist is not None and dist.is_available() and dist.is_initialized():
            # Every rank past its last collective before any tears gloo down: one rank closing its
            # pairs while the other still reads them aborted the reader at exit (1 run in 4).
            dist.barrier()
            dist.destroy_process_group()


def _run(args: argparse.Namespace) -> int:
    from rge_demo.analysis.evaluate import evaluate
    from rge_demo.analysis.sampling import check_options
    from rge_demo.config import get_settings
    from rge_demo.embedding.encoder import Encoder
    from rge_demo.embedding.index import EmbeddingCache

    settings = get_settings()
    tasks = build_tasks(args)  # cheap checks before the (slow) model load
    if args.mode == "oracle" and any(not q.rationale for t in tasks for q in t.queries):
        raise UsageError("--mode oracle embeds each query with its oracle rationale: world tasks only "
                         "(MMEB rows have none)")
    if args.samples and args.mode != "reason":
        raise UsageError(f"--samples samples rationales: it needs --mode reason, not {args.mode!r}")
    if args.temperature is not None and not args.samples:
        raise UsageError("--temperature is for --samples (the evaluation itself decodes greedily)")
    args.temperature = 1.0 if args.temperature is None else args.temperature
    if args.samples:
        check_options(args.samples, args.temperature, args.seed)  # before the model loads and the run is written
    if args.out:
        check_new_folder(Path(args.out))
    if args.samples and args.reasoner:
        raise UsageError("--samples samples one model's rationales; it does not combine with --reasoner")
    if args.reasoner and args.mode != "reason":
        raise UsageError(f"--reasoner writes T-CoTs: it needs --mode reason, not {args.mode!r}")
    device = args.device or settings.device
    shard, state = distributed(device)
    if state is not None and device in ("auto", "cuda") and state.device.type == "cuda":
        device = str(state.device)  # one GPU per process
    main = state is None or state.is_main_process
    model, processor, fp, name = load_model(args.model or settings.model, device, args.dtype or settings.dtype)
    budget = args.max_new_tokens or settings.max_new_tokens
    encoder = Encoder(model, processor, max_new_tokens=budget)
    if args.reasoner:
        from rge_demo.embedding.pair import ReasonerEmbedder

        r_model, r_processor, _, r_name = load_model(args.reasoner, device, args.dtype or settings.dtype)
        encoder = ReasonerEmbedder(Encoder(r_model, r_processor, max_new_tokens=budget), encoder)
        name = f"{r_name}+{name}"  # the cache keys stay the Embedder's: it embeds the candidates
    cache = None if args.no_cache else EmbeddingCache(settings.embeddings_dir)
    with Progress(f"eval {name} ({args.mode})") as progress:
        result = evaluate(encoder, tasks, mode=args.mode, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, progress=progress if main else None, cache=cache,
                          fingerprint=fp, model_name=name, shard=shard)
    if not main:
        return 0
    data = "mmeb" if args.mmeb else f"world-{args.split}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else settings.cache_dir / "eval" / f"{name}-{data}-{args.mode}-{stamp}"
    result.save(out)
    print(result.table())
    if args.samples:
        import json

        from rge_demo.analysis.sampling import sampling_columns, sampling_markdown

        table = sampling_columns(encoder, tasks, args.samples, args.temperature, args.seed,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        (out / "sampling.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"\nSampled rationales: {args.samples} per query at T={args.temperature:g} (seed {args.seed})\n")
        print(sampling_markdown(table))
    print(f"run folder: {out}")
    return 0
