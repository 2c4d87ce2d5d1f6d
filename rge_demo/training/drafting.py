"""Oracle rationale drafting for uploaded pairs that have none.

The paper writes oracle rationales by showing a strong MLLM the query AND the right target, with a
prompt that sets an expert role, explains the task, and fixes the format (short, the relevant
content first, the answer last, a word limit, never say the answer was given). Here the loaded
model plays that role (:func:`draft_rationales`); a micro model drafts poor text, so the drafts go
to an editable table, and :func:`template_rationale` is a deterministic fallback for world-like
rows. Every draft ends in ``answer <target>`` so the ``<emb>`` after it can read the answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image

from rge_demo.data.images import load_image
from rge_demo.data.items import atomic_write_text
from rge_demo.embedding.prompts import EmbedInput

log = logging.getLogger(__name__)

MAX_WORDS = 40
MAX_CHARS = 2_000
PAIRS = Path("data") / "pairs.jsonl"
DRAFTS = Path("data") / "drafts.json"

TASK_EXPLANATIONS = {
    "classification": "The task is image classification: the query asks which class or label fits the image.",
    "vqa": "The task is visual question answering: the query asks a question about the image.",
    "retrieval": "The task is retrieval: the query must be matched with the text or image that fits it.",
    "grounding": "The task is visual grounding: the query describes one object or region of the image.",
}
GENERIC_EXPLANATION = "The task is to match the query with its right target."


def target_label(row: Mapping) -> str:
    """Words for the row's target: its text, else its id after the last ``/``, else its image name."""
    if row.get("target_text"):
        return str(row["target_text"]).strip()
    source = str(row.get("target_id") or "").rsplit("/", 1)[-1]
    if not source and isinstance(row.get("target_image"), str):
        source = PurePosixPath(row["target_image"]).stem
    return re.sub(r"[_\-]+", " ", source).strip() or "the target image"


def draft_prompt(task_kind: str, query_text: str, target_text: str, max_words: int = MAX_WORDS) -> str:
    """The oracle prompt: expert role, task explanation, the query and its answer, format rules."""
    explanation = TASK_EXPLANATIONS.get(task_kind, GENERIC_EXPLANATION)
    return (
        "You are an expert in visual reasoning who writes short, faithful reasoning for a retrieval model.\n"
        f"{explanation}\n"
        f"Query: {query_text.strip() or '(the image alone)'}\n"
        f"Correct answer: {target_text.strip()}\n"
        "Write the reasoning that leads from the query (and the image) to the correct answer.\n"
        "Rules: first list the content of the image that matters for the query, then the step that "
        f"decides, and end with \"answer {target_text.strip()}\". Use at most {max_words} words. "
        "Do not mention that the answer is given."
    )


def ensure_answer(text: str, target: str, max_words: int = MAX_WORDS) -> str:
    """One line, at most ``max_words`` words before a final ``answer <target>``."""
    text = "".join(c for c in text if c.isprintable() and c != "\ufffd" or c.isspace())  # byte-level junk
    words = " ".join(text.split()).split(" ")
    body = " ".join(w for w in words[:max_words] if w)
    body = re.sub(r"\banswer\s+.*$", "", body).strip().rstrip(".,;: ")  # any answer the draft wrote goes
    return f"{body}. answer {target}" if body else f"answer {target}"


def states_answer(rationale: str, target: str) -> bool:
    """Whether ``rationale`` ends in ``answer <target>`` (spacing, case and a final full stop aside)."""
    def norm(text: str) -> str:
        return " ".join(str(text).lower().split()).rstrip(".!")

    return norm(rationale).endswith(norm(f"answer {target}"))


def template_rationale(row: Mapping) -> str:
    """A deterministic rationale for world-like rows: the question restated, then ``answer <target>``."""
    question = " ".join(str(row.get("query_text") or "").split()).rstrip("?.! ").lower()
    target = target_label(row)
    if not question:
        return f"the image shows {target}. answer {target}"
    return f"the question is: {question}. looking at the image, the right one is {target}. answer {target}"


def _query_image(row: Mapping, root: str | os.PathLike | None) -> Image.Image | None:
    img = row.get("query_image")
    if img is None or img == "":
        return None
    if isinstance(img, Image.Image):
        return img
    if root is None:
        raise ValueError(f"row has an image path {img!r} but no image root was given")
    return load_image(Path(root).joinpath(*PurePosixPath(img).parts))


# Models that cannot follow an instruction-style oracle prompt (they only ever saw their own task
# prompts) draft by reasoning on the query itself: their own evidence, then the known answer.
SELF_DRAFTING_PROFILES = frozenset({"micro"})


def drafting_style(encoder) -> str:
    """"oracle" (the paper's prompt: the query and its answer shown) or "self" (the query's own prompt)."""
    profile = getattr(encoder, "profile", None)
    return "self" if getattr(profile, "name", None) in SELF_DRAFTING_PROFILES else "oracle"


def draft_rationales(encoder, rows: Sequence[Mapping], max_new_tokens: int = 64, *,
                     root: str | os.PathLike | None = None, batch_size: int = 8) -> list[str]:
    """Draft a rationale per row with the loaded model; every draft ends in ``answer <target>``.

    ``rows`` are pairs records (``query_image`` a PIL image or a path relative to ``root``).
    Generation is :meth:`Encoder.reason` (greedy, stops at ``<emb>``) on the oracle prompt, or, for
    models of :data:`SELF_DRAFTING_PROFILES`, on the row's own query prompt: the model states what
    it sees and its step, and its own answer is replaced by the right one (edit the drafts where
    the evidence then disagrees with the answer).
    """
    from rge_demo.embedding.prompts import instruction_for

    style = drafting_style(encoder)
    inputs, targets = [], []
    for row in rows:
        target = target_label(row)
        meta_task = str(row.get("meta_task") or "")
        if style == "self":
            instruction = str(row.get("query_instruction") or "") or (
                instruction_for(meta_task) if meta_task else "")
            inputs.append(EmbedInput(instruction, str(row.get("query_text") or ""), _query_image(row, root)))
        else:
            prompt = draft_prompt(meta_task, str(row.get("query_text") or ""), target)
            inputs.append(EmbedInput("", prompt, _query_image(row, root)))
        targets.append(target)
    results = encoder.reason(inputs, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return [ensure_answer(r.rationale, t) for r, t in zip(results, targets)]


# ----------------------------------------------------------------------------------- job files
def load_rows(job_dir: str | os.PathLike, missing_only: bool = True) -> list[dict]:
    """Records of ``job_dir/data/pairs.jsonl`` with their index as ``row`` (default: no rationale yet)."""
    path = Path(job_dir) / PAIRS
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"row": i, **r} for i, r in enumerate(rows) if not (missing_only and r.get("rationale"))]


def drafts_table(rows: Sequence[Mapping], drafts: Sequence[str]) -> pd.DataFrame:
    """An editable table: row, task, query_text, target, rationale."""
    return pd.DataFrame([{"row": r["row"], "task": r.get("task", ""), "query_text": r.get("query_text", ""),
                          "target": target_label(r), "rationale": d} for r, d in zip(rows, drafts, strict=True)],
                        columns=["row", "task", "query_text", "target", "rationale"])


def save_drafts(job_dir: str | os.PathLike, drafts: Mapping[int, str] | pd.DataFrame) -> Path:
    """Write drafts (``{row: rationale}`` or a table with ``row``/``rationale``) into pairs.jsonl.

    Empty drafts are left out (the row stays without a rationale); a copy goes to ``data/drafts.json``.
    """
    if isinstance(drafts, pd.DataFrame):
        drafts = dict(zip(drafts["row"].astype(int), drafts["rationale"].fillna("").astype(str)))
    path = Path(job_dir) / PAIRS
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    saved = {}
    for i, text in drafts.items():
        if not 0 <= int(i) < len(rows):
            raise ValueError(f"draft for row {i}: {path} has rows 0..{len(rows) - 1}")
        text = " ".join(str(text).split())
        if len(text) > MAX_CHARS:
            raise ValueError(f"draft for row {i}: {len(text):,} characters, over the limit of {MAX_CHARS:,}")
        if text:
            rows[int(i)]["rationale"] = saved[int(i)] = text
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    previous = json.loads((Path(job_dir) / DRAFTS).read_text()) if (Path(job_dir) / DRAFTS).exists() else {}
    previous.update({str(k): v for k, v in saved.items()})
    atomic_write_text(Path(job_dir) / DRAFTS, json.dumps(previous, indent=1, ensure_ascii=False) + "\n")
    log.info("saved %d drafted rationale(s) into %s", len(saved), path)
    return path
