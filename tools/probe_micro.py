"""Quick measures of a micro model on a TUNING seed (never the release seeds 101/202).

    python tools/probe_micro.py MODEL_DIR [--n 30] [--seed 7]

Prints one JSON line: overall reasoning and direct P@1, stated-answer accuracy and hallucination
rate of its own rationales (per group), and the share of queries whose top-1 follows a swapped
answer (per group), from the same functions the release script uses (``tools/release_micro.py``).
For probing a recipe change; the released figures come from the release script's held-out seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rge_demo.analysis.evaluate import evaluate, world_tasks
from rge_demo.analysis.reasoning import answer_swap, p1_table, rationale_quality
from rge_demo.embedding.encoder import Encoder
from rge_demo.models.loading import load_checkpoint

RELEASE_SEEDS = (101, 202)


def probe_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Encoder]:
    """A probe's command line (``model`` and a tuning ``--seed`` added to ``parser``'s own options),
    parsed; a release seed is refused. Returns the arguments and the model's encoder (CPU, one thread)."""
    parser.add_argument("model", type=Path)
    parser.add_argument("--seed", type=int, default=7, help="a tuning seed (default 7); the release seeds are refused")
    args = parser.parse_args()
    if args.seed in RELEASE_SEEDS:
        parser.error(f"seed {args.seed} is a release seed: probes must not see it")
    torch.set_num_threads(1)
    return args, Encoder(*load_checkpoint(args.model, device="cpu", dtype="float32"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30, help="queries per task and split (default 30)")
    args, encoder = probe_args(parser)
    tasks = world_tasks(None, ("ind", "ood"), n=args.n, seed=args.seed)
    out: dict = {"model": str(args.model), "seed": args.seed, "n": args.n}
    for mode in ("reason", "direct"):
        run = evaluate(encoder, tasks, mode=mode, model_name=args.model.name)
        out[f"{mode}_p1"] = round(p1_table(run.cases)["overall"]["mean"], 3)
        if mode == "reason":
            out["quality"] = {group: {k: round(v["mean"], 3) for k, v in stats.items()}
                              for group, stats in rationale_quality(run.cases).items()}
    out["swap_follows"] = {group: round(s["follows"]["mean"], 3)
                           for group, s in answer_swap(encoder, tasks, seed=args.seed).items()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
