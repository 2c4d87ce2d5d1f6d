"""``python -m rge_demo make-galleries``: (re)write the sample galleries from the synthetic world."""

from __future__ import annotations

import argparse
import sys

from .galleries import DEFAULT_DIR, make_sample_galleries

HELP = "write the sample galleries (one or more per meta-task) from the synthetic world's test splits"

ARGUMENTS: list[tuple[tuple, dict]] = [
    (("--out",), dict(default=str(DEFAULT_DIR), help=f"output folder (default {DEFAULT_DIR})")),
    (("--seed",), dict(type=int, default=0, help="world seed (default 0, the committed galleries)")),
]




def run(args: argparse.Namespace) -> int:
    try:
        galleries = make_sample_galleries(args.out, seed=args.seed)
    except FileExistsError as e:
        print(f"rge_demo make-galleries: error: {e}", file=sys.stderr)
        return 2
    for g in galleries:
        print(f"{g.root}: {len(g.queries)} queries, {len(g.items)} items ({g.meta_task or 'mixed'})")
    return 0
