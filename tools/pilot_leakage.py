"""Pilot: does rationale leakage show once targets carry a detail the query does not determine?

In the shipped world a candidate is its answer and nothing else, so an oracle rationale leaks
nothing the model cannot write itself, and the leakage ablation scores like RGE (issue 9). Here each
training target of the four word tasks is its answer in one of four wordings drawn at random per
pair (``world.WORDINGS``), and the oracle rationale ends with the target as written ("answer i would
say three"), as a rationale written with the target in view would. The wording is noise to a model that
writes its own rationale, and a perfect cue to one trained with the oracle in the InfoNCE pass. The
test galleries give each answer one fixed wording (candidate index mod 4), so a guessed wording
points at another answer's candidate.

    python tools/pilot_leakage.py data --out runs/pilot-wording           # pairs.jsonl + images
    python -m rge_demo train --config configs/pilots/wording-rge.json      # and -leakage, -baseline
    python tools/pilot_leakage.py data --out runs/pilot-wording-text --keys text   # second pilot:
    python -m rge_demo train --config configs/pilots/wording-rge.json \
        --data runs/pilot-wording-text/pairs.jsonl --output-dir runs/pilot-text-rge     # (and the others)
    python tools/pilot_leakage.py eval --model runs/pilot-wording-rge/model --mode reason --seed 101

The pilot continues the shipped models for a short joint phase (it does not retrain the recipe),
so it tests the mechanism, not the recipe; ``eval`` prints P@1 with a 95 % bootstrap interval on the
worded and the plain test galleries.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rge_demo.analysis.eval_tasks import world_tasks  # noqa: E402
from rge_demo.data import world  # noqa: E402

TASKS = ("count", "majority_shape", "relation_colour", "chart_diff")


def write_pairs(out: Path, n: int, seed: int = 0, keys: str = "answer") -> Path:
    """``n`` train pairs per task: a random wording per target, the oracle ending with it.

    ``keys``: what makes two targets the same, so that they are not each other's negatives:
    ``answer`` (another wording of the same answer is not a negative) or ``text`` (it is, as two
    different captions are in MMEB's training pairs)."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for task in TASKS:
        spec = world.TASKS[task]
        for i, ex in enumerate(world.generate(task, "train", n, seed)):
            target = world.worded(ex.target.text, rng.randrange(len(world.WORDINGS)))
            image = f"images/{task}_{i:05d}.png"
            (out / image).write_bytes(world.png_bytes(ex.query_image))
            lines.append(json.dumps({
                "task": task, "query_instruction": ex.query.instruction, "query_text": ex.query.text,
                "query_image": image, "target_instruction": spec.candidate_instruction, "target_text": target,
                "target_id": ex.target.id if keys == "answer" else f"{ex.target.id}|{target}", "rationale": world.swap_answer(ex.rationale, target)}))
    path = out / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tasks(seed: int, n: int, plain: bool):
    """The four tasks' ind and ood queries; candidates worded by their index (the worded world's
    galleries) unless ``plain``."""
    return world_tasks(TASKS, n=n, seed=seed, wordings=not plain)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", type=Path, default=REPO / "runs" / "pilot-wording")
    d.add_argument("--n", type=int, default=2000)
    d.add_argument("--keys", choices=("answer", "text"), default="answer")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--mode", choices=("reason", "direct"), default="reason")
    e.add_argument("--seed", type=int, default=101)
    e.add_argument("--n", type=int, default=100)
    e.add_argument("--json", type=Path, help="append the figures to this JSON Lines file")
    args = ap.parse_args(argv)
    if args.cmd == "data":
        print(write_pairs(args.out, args.n, keys=args.keys))
        return 0

    import torch

    from rge_demo.analysis.evaluate import evaluate
    from rge_demo.analysis.reasoning import fmt, p1_table
    from rge_demo.embedding.encoder import Encoder
    from rge_demo.models.loading import load_checkpoint

    torch.set_num_threads(1)
    model, processor = load_checkpoint(args.model, device="cpu", dtype="float32")
    encoder = Encoder(model, processor)
    row = {"model": args.model, "mode": args.mode, "seed": args.seed, "n": args.n}
    for gallery in ("worded", "plain"):
        run = evaluate(encoder, test_tasks(args.seed, args.n, plain=gallery == "plain"), mode=args.mode)
        table = p1_table(run.cases)
        row[gallery] = table["overall"]
        said = [c.get("rationale", "") for c in run.cases[:3]]
        print(f"{args.model} {args.mode} seed {args.seed} {gallery} gallery: overall P@1 {fmt(table['overall'])}; "
              + "; ".join(f"{k} {fmt(v)}" for k, v in table.items() if k in ("split=ind", "split=ood")), flush=True)
        if args.mode == "reason":
            print("  e.g.", said)
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
