"""``make-galleries``: (re)write the sample galleries from the synthetic world."""

from __future__ import annotations

import argparse

from rge_demo.data.galleries import DEFAULT_DIR

from .common import UsageError, arg, command


@command("make-galleries", "write the sample galleries (one or more per meta-task) from the synthetic world's test splits",
         arguments=[arg("--out", default=str(DEFAULT_DIR), path=True, help=f"output folder (default {DEFAULT_DIR})"),
                    arg("--seed", type=int, default=0, help="world seed (default 0, the committed galleries)")])
def cmd_make_galleries(args: argparse.Namespace) -> int:
    from rge_demo.data.galleries import make_sample_galleries

    try:
        galleries = make_sample_galleries(args.out, seed=args.seed)
    except FileExistsError as e:  # a folder there that is not a gallery: refused, not overwritten
        raise UsageError(str(e)) from None
    for g in galleries:
        print(f"{g.root}: {len(g.queries)} queries, {len(g.items)} items ({g.meta_task or 'mixed'})")
    return 0
