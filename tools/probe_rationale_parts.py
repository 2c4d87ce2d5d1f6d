"""Which part of a micro model's own rationale goes wrong, per task, on a TUNING seed.

    python tools/probe_rationale_parts.py MODEL_DIR [--tasks relation_colour,ground,edit] [--n 60] [--seed 7]

Every world rationale has the form ``<object list>. <step>. answer <X>`` (``rge_demo.data.world``).
For each task this greedy-generates the model's rationale for ``--n`` in-domain queries and prints
one JSON line: the share whose object list equals the oracle's (perception), whose step sentence
equals the oracle's (the intermediate step), whose list and step both do among those with a right
list (``step_given_list``), and whose answer does; for relation_colour the same per relation
(``by_relation``), and its step's three hops: the share that names the question's cell
(``anchor_cell``: copied from the question), of those the share that names the right cell beside
it (``beside_given_anchor_cell``: the 9 x 4 cell table), and of those the share that names the
object there right (``object_given_beside_cell``: the look-up in its own list, as ground does).
The relation form probed before 2026-12-07's third session (an anchor named by colour and shape)
is in configs/rge-micro.md, its figures in assets/runs/probes/. The release seeds 101/202 are refused.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter

from probe_micro import probe_args  # run as a script: tools/ is on the path

from rge_demo.data import world
from rge_demo.embedding.prompts import EmbedInput


RELATION_STEP = re.compile(r"(?:above|below|left of|right of) the ([a-z ]+?) cell is the ([a-z ]+?) cell, "
                           r"the ([a-z ]+?) object is the (\w+ \w+)")


def relation_hops(rationale: str) -> tuple[str, str, str] | None:
    """(anchor cell, cell beside it, object named there) of a relation_colour step (None: no such step)."""
    m = RELATION_STEP.search(rationale)
    return (m.group(1), m.group(2), m.group(4)) if m else None


def parts(rationale: str) -> tuple[str, str, str | None]:
    """(object list, step, answer) of a ``list. step. answer X`` rationale ('' for a missing part)."""
    body = rationale[: rationale.rfind("answer")].rstrip(". ") if "answer" in rationale else rationale
    head, _, step = body.partition(". ")
    return head, step, world.answer_of(rationale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="relation_colour,ground,edit")
    parser.add_argument("--n", type=int, default=60, help="in-domain queries per task (default 60)")
    args, encoder = probe_args(parser)
    for task in args.tasks.split(","):
        examples = world.generate(task, "ind", args.n, seed=args.seed)
        got = encoder.reason([EmbedInput(e.query.instruction, e.query.text, e.query_image) for e in examples])
        n = len(examples)
        counts = Counter()
        by_relation: dict[str, Counter] = {}
        for e, r in zip(examples, got):
            oracle, mine = parts(e.rationale), parts(r.rationale)
            for key, o, m in zip(("list", "step", "answer"), oracle, mine):
                counts[key] += o == m
            counts["step_given_list"] += oracle[:2] == mine[:2]
            if task == "relation_colour":
                rel = next(r for r in world.RELATIONS if f" {r} the " in e.query.text)
                c = by_relation.setdefault(rel, Counter())
                c.update(n=1, list=oracle[0] == mine[0], step_given_list=oracle[:2] == mine[:2],
                         answer=oracle[2] == mine[2])
                (at, beside, obj), hops = relation_hops(e.rationale), relation_hops(r.rationale) or (None,) * 3
                counts["anchor_cell"] += hops[0] == at
                counts["beside_cell"] += hops[0] == at and hops[1] == beside
                counts["object_given_beside_cell"] += hops[0] == at and hops[1] == beside and hops[2] == obj
        shares = {k: counts[k] / n for k in ("list", "step", "answer")}
        shares["step_given_list"] = counts["step_given_list"] / max(1, counts["list"])
        if task == "relation_colour":
            shares["anchor_cell"] = counts["anchor_cell"] / n
            shares["beside_given_anchor_cell"] = counts["beside_cell"] / max(1, counts["anchor_cell"])
            shares["object_given_beside_cell"] = counts["object_given_beside_cell"] / max(1, counts["beside_cell"])
        out = {"model": str(args.model), "task": task, "seed": args.seed, "n": n,
               **{f"{k}_right": round(v, 3) for k, v in shares.items()}}
        if by_relation:  # per relation: n, and the list / step given the list / answer right
            out["by_relation"] = {rel: {"n": c["n"], "list_right": round(c["list"] / c["n"], 3),
                                        "step_given_list_right": round(c["step_given_list"] / max(1, c["list"]), 3),
                                        "answer_right": round(c["answer"] / c["n"], 3)}
                                  for rel, c in sorted(by_relation.items())}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
