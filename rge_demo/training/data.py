"""Training pairs: a query, its right target and an oracle rationale, from the world or a file.

A pairs file is JSON Lines, one object per line with the fields of :data:`PAIR_FIELDS`
(``query_image`` / ``target_image`` are paths relative to the file's folder). Every problem is
reported with its line and field before any training starts.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from rge_demo.data import world
from rge_demo.data.images import ImageError, load_image
# The pairs schema and its text rules live with the upload validator.
from rge_demo.data.upload import MODEL_TEXT_FIELDS, PAIR_FIELDS, control_token_in, holds_control_token
from rge_demo.embedding.prompts import INSTRUCTIONS, EmbedInput, instruction_for
from rge_demo.errors import RGEUserError


class DataError(RGEUserError, ValueError):
    """Training data that cannot be used; the message names the file, line and field."""


@dataclass
class Pair:
    query: EmbedInput
    target: EmbedInput
    rationale: str  # oracle rationale ("" when unknown: cold-start/rge need one)
    target_key: str  # identity of the target, so equal targets are not each other's negatives
    task: str = ""
    line: int = 0  # the line of a pair read from a file (for messages)


def world_pairs(tasks: list[str], split: str, n: int, seed: int = 0, wordings: bool = False) -> dict[str, list[Pair]]:
    """World examples as pairs, grouped by task. In the worded world (``wordings``) a target in
    another wording is another target (a negative), as two captions of one thing are in MMEB's
    training pairs."""
    out = {}
    for task in tasks or list(world.TASKS):
        spec = world.TASKS[task]
        out[task] = [
            Pair(
                query=EmbedInput(ex.query.instruction, ex.query.text, ex.query_image),
                target=EmbedInput(spec.candidate_instruction, ex.target.text, ex.target_image),
                rationale=ex.rationale, task=task,
                target_key=f"{ex.target.id}|{ex.target.meta['wording']}" if wordings else ex.target.id,
            )
            for ex in world.generate(task, split, n, seed, wordings)
        ]
    return out


def load_pairs(path: str | Path, max_pixels: int = 4_000_000,
               where: Callable[[int], str] | None = None) -> list[Pair]:
    """Read a pairs .jsonl file; raise :class:`DataError` listing every bad line and field.

    ``where(n)`` names line ``n`` (1-based) in messages (default ``<path>:<n>``; the app names a
    dataset's row instead of its file)."""
    path = Path(path)
    where = where or (lambda n: f"{path}:{n}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give its pairs .jsonl file")
    if not path.is_file():
        raise DataError(f"{path}: no such pairs file")
    pairs, problems = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where(n)}: not valid JSON ({e.msg})")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{where(n)}: a line must hold a JSON object")
            continue
        unknown = sorted(set(rec) - set(PAIR_FIELDS))
        if unknown:
            problems.append(f"{where(n)}: unknown field(s) {unknown}")
            continue
        try:
            pairs.append(_pair(rec, path.parent, max_pixels, line=n))
        except (DataError, ImageError) as e:
            problems.append(f"{where(n)}: {e}")
    if problems:
        raise DataError("\n".join(problems[:50]) + (f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""))
    if not pairs:
        raise DataError(f"{path}: no pairs in the file")
    return pairs


def _pair(rec: dict, root: Path, max_pixels: int, line: int = 0) -> Pair:
    def image(field: str) -> Image.Image | None:
        rel = rec.get(field)
        if not rel:
            return None
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DataError(f"field {field!r}: image path must be relative inside the data folder, got {rel!r}")
        return load_image(root / rel, max_pixels=max_pixels)

    for field, value in rec.items():  # every field is text (an image field: its path), or absent / null
        if value is not None and not isinstance(value, str):
            raise DataError(f"field {field!r} must be a string, got {type(value).__name__} {value!r}")
    for field in MODEL_TEXT_FIELDS:  # the upload validator's rule: a control token would be read as one
        if rec.get(field) and (token := control_token_in(rec[field])):
            raise DataError(f"field {field!r} {holds_control_token(token)}")
    if rec.get("meta_task") and rec["meta_task"] not in INSTRUCTIONS:
        raise DataError(f"field 'meta_task': unknown task kind {rec['meta_task']!r}; use one of {sorted(INSTRUCTIONS)}")
    meta_task = rec.get("meta_task") or "retrieval"
    try:
        q_instr = rec.get("query_instruction") or instruction_for(meta_task, "query")
        t_instr = rec.get("target_instruction") or instruction_for(meta_task, "candidate")
    except ValueError as e:
        raise DataError(f"field 'meta_task': {e}") from None
    q_img, t_img = image("query_image"), image("target_image")
    q_text, t_text = str(rec.get("query_text") or "").strip(), str(rec.get("target_text") or "").strip()
    if not q_text and q_img is None:
        raise DataError("empty query: give query_text and/or query_image")
    if not t_text and t_img is None:
        raise DataError("empty target: give target_text and/or target_image")
    key = rec.get("target_id") or f"{t_text}|{rec.get('target_image') or ''}"
    return Pair(EmbedInput(q_instr, q_text, q_img), EmbedInput(t_instr, t_text, t_img),
                str(rec.get("rationale") or "").strip(), str(key), str(rec.get("task") or meta_task), line)


def check_pools(pools: dict[str, list[Pair]], stage: str, one_task_per_batch: bool = True, data: str = "") -> None:
    """What ``stage`` needs of its training pools (``data``: where they come from, for messages):
    pairs in every task, an oracle rationale on every pair for the stages that learn to write one,
    and at least two different targets wherever a contrastive batch is drawn from."""
    needs_rationale = stage in ("cold-start", "rge", "leakage")
    contrastive = stage != "cold-start"
    for task, ps in pools.items():
        if not ps:
            raise DataError(f"task {task!r}: no training pairs")
        if needs_rationale and (without := sorted(p.line for p in ps if not p.rationale)):
            more = f" and {len(without) - 5} more" if len(without) > 5 else ""
            raise DataError(f"task {task!r}: stage {stage!r} needs an oracle rationale on every pair; "
                            f"{len(without)} have none: line(s) {', '.join(map(str, without[:5]))}{more} "
                            f"of {data}")
    # Equal targets are not each other's negatives, so a batch drawn from pairs of one target leaves
    # InfoNCE nothing to tell apart (a batch is drawn from one task's pairs, or from all of them).
    groups = pools.items() if one_task_per_batch else [("(all)", [p for ps in pools.values() for p in ps])]
    for task, ps in groups if contrastive else ():
        if len({p.target_key for p in ps}) < 2:
            raise DataError(f"task {task!r}: its {len(ps)} training pair(s) share one target; stage {stage!r} "
                            "learns by telling targets apart in a batch: give pairs with at least 2 different targets")


def split_pairs(pairs: list[Pair], val_share: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """A seeded train/validation split of a pairs list."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(pairs) * val_share))
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def by_task(pairs: list[Pair]) -> dict[str, list[Pair]]:
    groups: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        groups[p.task].append(p)
    return dict(groups)
