"""Which part of a micro model's own rationale goes wrong, per task, on a TUNING seed.

    python tools/probe_rationale_parts.py MODEL_DIR [--tasks relation_colour,ground,edit] [--n 60] [--seed 7]

Every world rationale has the form ``<object list>. <step>. answer <X>`` (``rge_demo.data.world``).
For each task this greedy-generates the model's rationale for ``--n`` in-domain queries and prints
one JSON line: the share whose object list equals the oracle's (perception), whose step sentence
equals the oracle's (the intermediate step), whose list and step both do among those with a right
list (``step_given_list``), and whose answer does; for relation_colour the same per relation
(``by_relation``), the share whose step names the question's anchor ("the red square is at ...":
copying from the question) and the share that gives the anchor's true cell ("... is at top left":
finding the anchor in the object list); where the oracle's step names the cell beside the anchor
("right of it is the top blue square", the form probed on 2026-12-07, configs/rge-micro.md), also
the share of those with the right anchor cell that name the right cell beside it (the cell
arithmetic). The release seeds 101/202 are refused.
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


RELATION_STEP = re.compile(r"the (\w+ \w+) is at ([a-z ]+?), (?:above|below|left of|right of) it is the ([a-z ]+)")


def relation_cells(rationale: str) -> tuple[str | None, str | None]:
    """(anchor cell, cell beside it) named by a relation_colour step (None where it names none)."""
    m = RELATION_STEP.search(rationale)
    if not m:
        return None, None
    beside = m.group(3).split()[:-2]  # "<cell> <colour> <shape>": the cell
    return m.group(2), " ".join(beside) or None


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
        n, names_beside = len(examples), False
        counts = {"list": 0, "step": 0, "answer": 0, "anchor": 0, "anchor_cell": 0, "beside_given_anchor_cell": 0,
                  "step_given_list": 0}
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
                anchor = re.search(r"the (\w+ \w+)\?$", e.query.text).group(1)
                counts["anchor"] += mine[1].startswith(f"the {anchor} is at ")
                (true_at, true_beside), (at, beside) = relation_cells(e.rationale), relation_cells(r.rationale)
                counts["anchor_cell"] += at == true_at
                names_beside = names_beside or true_beside is not None
                counts["beside_given_anchor_cell"] += at == true_at and beside == true_beside
        shares = {k: counts[k] / n for k in ("list", "step", "answer")}
        shares["step_given_list"] = counts["step_given_list"] / max(1, counts["list"])
        if task == "relation_colour":
            shares |= {k: counts[k] / n for k in ("anchor", "anchor_cell")}
            if names_beside:
                shares["beside_given_anchor_cell"] = counts["beside_given_anchor_cell"] / max(1, counts["anchor_cell"])
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
