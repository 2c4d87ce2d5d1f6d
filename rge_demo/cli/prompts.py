"""``prompts``: the exact text a model is given for each item, without loading its weights."""

from __future__ import annotations

import json

from .common import UsageError, arg, comma_list, command
from .query import TASK_HELP, model_profile, query_input


def load_prompting(args):
    """``(spec, profile, processor)`` of ``--model`` without loading its weights: what ``prompts`` needs."""
    from rge_demo.models.loading import load_processor

    spec, profile = model_profile(args)
    folder = spec.folder()
    try:
        processor = load_processor(folder, min_pixels=profile.min_pixels, max_pixels=profile.max_pixels)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{folder}: cannot load the processor/tokenizer ({type(e).__name__}: {e})") from None
    return spec, profile, processor


@command("prompts", "print the exact text the model is given for each item (MMEB rows, or one query)", arguments=[
    arg("--model", help="registry name, local folder or hub id (default: RGE_MODEL or rge-micro); no weights are loaded"),
    arg("--mmeb", default=None, metavar="DIR", help="a local MMEB-eval copy: every query and candidate prompt"),
    arg("--subsets", default=None, help="comma-separated MMEB subsets (default: every one found)"),
    arg("--limit", type=int, default=None, minimum=1, help="first N rows of each MMEB subset"),
    arg("--image-root", dest="image_root", default=None, help="MMEB image folder (default DIR/images)"),
    arg("--image", default=None, help="one item's image file"),
    arg("--text", default="", help="one item's text"),
    arg("--task", default=None, help=TASK_HELP + " (for --side)"),
    arg("--instruction", default=None, help="the instruction, instead of --task"),
    arg("--side", choices=["query", "candidate"], default=None, help="side of the one item (default query)"),
    arg("--direct", action="store_true", help="query prompts in direct mode (ending in <emb>); "
                                              "default: the reasoning prompt the rationale grows from"),
    arg("--json", action="store_true", help='one JSON object per line: {"subset", "row", "side", "prompt"}'),
])
def cmd_prompts(args) -> int:
    from rge_demo.analysis.eval_tasks import load_mmeb, prompt_records
    from rge_demo.embedding.prompts import prompt_text

    single = args.image is not None or args.text or args.task or args.instruction is not None
    if args.mmeb and single:
        raise UsageError("give --mmeb DIR or one item (--image/--text/--task/--instruction), not both")
    if not args.mmeb and (args.subsets or args.limit is not None or args.image_root):
        raise UsageError("--subsets/--limit/--image-root need --mmeb DIR")
    if args.mmeb and args.side is not None:
        raise UsageError("--side is for one item; with --mmeb every row's query and candidate are printed")
    args.side = args.side or "query"
    if args.task and args.instruction is not None:
        raise UsageError("give --task or --instruction, not both")
    if not args.mmeb and not single:
        raise UsageError("give --mmeb DIR or one item (--image and/or --text, with --task or --instruction)")
    spec, profile, processor = load_prompting(args)
    if args.mmeb:
        try:
            tasks = load_mmeb(args.mmeb, comma_list(args.subsets, "--subsets"), args.limit, args.image_root)
        except ValueError as e:  # EvalDataError included
            raise UsageError(str(e)) from None
        records = prompt_records(tasks, processor, profile, direct_queries=args.direct)
    else:
        instruction = profile.task(args.task)[args.side] if args.task else args.instruction or ""
        inp = query_input(args, instruction, side=args.side)
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
