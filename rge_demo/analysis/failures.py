"""Failure cases: the reasoning-mode and direct-mode records of one query side by side, tagged.

An evaluation run folder holds ``cases.jsonl``, one record per query (``query_id``, ``task``,
``meta_task``, ``split``, ``instruction``, ``text``, ``image``, ``target_id``, ``target_label``,
``rationale``, ``tokens``, ``seconds``, ``forced``, ``rank`` (1-based), ``topk`` [{id, label,
score}], ``correct``, ``hallucinations``, and ``dataset``, ``oracle_rationale``, ``meta`` (the
world query's scene, ``ask`` and ``question``) where known). :func:`pair_runs` joins a reasoning run and a direct run
by ``query_id`` into :class:`Case` objects. Outcomes compare the two ranks; failure kinds follow
the RGE paper's case study (a wrong rationale gives a wrong result; a rationale about irrelevant
content; a right rationale that still retrieves wrongly) plus the hallucination flag, and they are
only given where the synthetic world's ground truth allows. Guided tours live in
:mod:`rge_demo.analysis.tours`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rge_demo.data import world

log = logging.getLogger(__name__)

CASES_FILE = "cases.jsonl"
REQUIRED = ("query_id", "rank")

HELPS, HURTS, BOTH_WRONG, BOTH_RIGHT = "reasoning helps", "reasoning hurts", "both wrong", "both right"
OUTCOMES = (HELPS, HURTS, BOTH_WRONG, BOTH_RIGHT)

WRONG_RATIONALE = "wrong rationale -> wrong result"
MISFOCUS = "rationale focused on irrelevant content"
RIGHT_RATIONALE_WRONG_RESULT = "right rationale, wrong result"
HALLUCINATION = "hallucination"
TAGS = (WRONG_RATIONALE, MISFOCUS, RIGHT_RATIONALE_WRONG_RESULT, HALLUCINATION)


class CaseError(ValueError):
    """A run record that cannot be used; the message names the file, the line and the field."""


@dataclass
class Case:
    """One query seen in both modes. ``topk`` lists hold dicts {id, label, score}, best first."""

    query_id: str
    task: str
    meta_task: str
    split: str
    instruction: str
    text: str
    image: str | None  # path as recorded by the run (relative to the gallery folder, or absolute)
    target_id: str
    target_label: str  # the right answer
    rationale: str  # generated in reasoning mode
    reason_rank: int
    direct_rank: int
    reason_topk: list[dict] = field(default_factory=list)
    direct_topk: list[dict] = field(default_factory=list)
    tokens: int = 0
    forced: bool = False  # the rationale hit the token budget and <emb> was appended
    seconds: float = 0.0  # reasoning-mode time for this query
    hallucinations: list[str] = field(default_factory=list)
    dataset: str = ""  # the evaluated dataset, e.g. "count/ind" (a world task in one split) or an MMEB subset
    oracle_rationale: str = ""  # the world's ground-truth rationale, when known
    meta: dict[str, Any] = field(default_factory=dict)  # the query's meta (scene, ask, question)
    facts: dict[str, Any] | None = None  # world.scene_facts of the scene, when the scene is known

    @property
    def ask(self) -> dict[str, Any] | None:
        """What the question asks about (the world's ``ask`` dict), if the run or gallery saved it."""
        return self.meta.get("ask") if "ask" in self.meta else None

    @property
    def question(self) -> str:
        return self.meta.get("question") or self.text

    @property
    def stated_answer(self) -> str | None:
        """The answer the rationale states ("... answer X"), or None."""
        return world.answer_of(self.rationale) if self.rationale else None

    @property
    def outcome(self) -> str:
        return outcome(self)

    @property
    def tags(self) -> list[str]:
        return tag_case(self)


# ------------------------------------------------------------------------------------ reading
def read_cases(path: str | Path) -> list[dict]:
    """Records of a run: ``path`` is a run folder or its ``cases.jsonl``."""
    path = Path(path)
    if path.is_dir():
        path = path / CASES_FILE
    if not path.is_file():
        raise CaseError(f"{path}: no such cases file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CaseError(f"{path}:{n}: not valid JSON ({e})") from e
        if not isinstance(rec, dict):
            raise CaseError(f"{path}:{n}: expected an object, got {type(rec).__name__}")
        for key in REQUIRED:
            if key not in rec:
                raise CaseError(f"{path}:{n}: missing field {key!r}")
        out.append(rec)
    return out


def _query_metas(queries) -> dict[str, dict]:
    """query_id -> meta dict from Query objects, a mapping of ids to Query/meta, or None."""
    if queries is None:
        return {}
    if isinstance(queries, Mapping):
        return {str(k): dict(getattr(v, "meta", v) or {}) for k, v in queries.items()}
    return {q.id: dict(q.meta) for q in queries}


def pair_runs(reason_cases: Iterable[Mapping], direct_cases: Iterable[Mapping], queries=None) -> list[Case]:
    """Join two runs' records by ``query_id`` (order of the reasoning run).

    ``queries``: optional gallery queries (a list of ``Query`` or ``{query_id: Query | meta}``)
    whose ``meta`` holds the scene ground truth; a record's own ``meta`` / ``ask`` fields are used
    first. Queries present in only one run are logged and left out.
    """
    direct = {str(r["query_id"]): r for r in direct_cases}
    metas = _query_metas(queries)
    out, missing = [], []
    for r in reason_cases:
        qid = str(r["query_id"])
        d = direct.pop(qid, None)
        if d is None:
            missing.append(qid)
            continue
        meta = dict(metas.get(qid, {}))
        meta.update(r.get("meta") or {})
        if r.get("ask") is not None:
            meta["ask"] = r["ask"]
        facts = r.get("facts")
        if facts is None and meta.get("kind"):
            try:
                facts = world.scene_facts(meta)
            except (KeyError, ValueError, TypeError) as e:
                log.warning("query %s: scene meta unusable for facts (%s)", qid, e)
        out.append(Case(
            query_id=qid, task=r.get("task", ""), meta_task=r.get("meta_task", ""), split=r.get("split", ""),
            instruction=r.get("instruction", ""), text=r.get("text", ""), image=r.get("image"),
            target_id=r.get("target_id", ""), target_label=r.get("target_label") or r.get("target_id", ""),
            rationale=r.get("rationale") or "", reason_rank=int(r["rank"]), direct_rank=int(d["rank"]),
            reason_topk=list(r.get("topk") or []), direct_topk=list(d.get("topk") or []),
            tokens=int(r.get("tokens") or 0), forced=bool(r.get("forced")), seconds=float(r.get("seconds") or 0.0),
            hallucinations=list(r.get("hallucinations") or []), dataset=r.get("dataset") or "",
            oracle_rationale=r.get("oracle_rationale") or "", meta=meta, facts=facts))
    if missing or direct:
        log.warning("pair_runs: %d queries only in the reasoning run (e.g. %s), %d only in the direct run (e.g. %s)",
                    len(missing), missing[:3], len(direct), list(direct)[:3])
    return out


def load_pair(reason_run: str | Path, direct_run: str | Path, queries=None) -> list[Case]:
    """:func:`pair_runs` over two run folders (or their ``cases.jsonl`` files)."""
    return pair_runs(read_cases(reason_run), read_cases(direct_run), queries)


# ------------------------------------------------------------------------------ outcomes, filters
def outcome(case: Case) -> str:
    """"reasoning helps" (reasoning rank 1, direct not), "reasoning hurts", "both wrong" or "both right"."""
    r, d = case.reason_rank == 1, case.direct_rank == 1
    return BOTH_RIGHT if r and d else HELPS if r else HURTS if d else BOTH_WRONG


_outcome_of = outcome  # filter_cases' keyword shadows the function


def _match(value: str, wanted) -> bool:
    if wanted is None or wanted == "" or wanted == "all":
        return True
    return value == wanted if isinstance(wanted, str) else value in set(wanted)


def filter_cases(cases: Iterable[Case], outcome: str | Sequence[str] | None = None, task=None, meta_task=None,
                 split=None, tag: str | None = None, dataset=None) -> list[Case]:
    """Cases matching every given filter; each filter is a value, a collection of values, or None/"all"."""
    if isinstance(outcome, str) and outcome not in OUTCOMES and outcome != "all":
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    return [c for c in cases
            if _match(_outcome_of(c), outcome) and _match(c.task, task)
            and _match(c.meta_task, meta_task) and _match(c.split, split) and _match(c.dataset, dataset)
            and (tag is None or tag in tag_case(c))]


def _top1(topk: list[dict]) -> str:
    return str(topk[0].get("label") or topk[0].get("id", "")) if topk else ""


def cases_table(cases: Iterable[Case], max_rationale: int = 80) -> pd.DataFrame:
    """One row per case, compact columns for a UI table."""
    rows = []
    for c in cases:
        r = c.rationale if len(c.rationale) <= max_rationale else c.rationale[: max_rationale - 1] + "…"
        rows.append({"query_id": c.query_id, "task": c.task, "split": c.split, "outcome": outcome(c),
                     "answer": c.target_label, "direct rank": c.direct_rank, "reasoning rank": c.reason_rank,
                     "direct top-1": _top1(c.direct_topk), "reasoning top-1": _top1(c.reason_topk),
                     "tags": ", ".join(tag_case(c)), "rationale": r})
    columns = ["query_id", "task", "split", "outcome", "answer", "direct rank", "reasoning rank",
               "direct top-1", "reasoning top-1", "tags", "rationale"]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------ failure kinds
def normalise(text: str | None) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", (text or "").lower()))


def stated_right(case: Case) -> bool | None:
    """Whether the rationale's stated answer is the right one; None when it states none."""
    stated = case.stated_answer
    if stated is None:
        return None
    return normalise(stated) in {normalise(case.target_label), normalise(case.target_id.split("/")[-1])}


_ATTRIBUTE_WORDS = {"colour": world.COLOUR_NAMES, "color": world.COLOUR_NAMES, "shape": world.SHAPES}


def _shape_terms(shape: str) -> set[str]:
    return {shape, world.PLURALS.get(shape, shape)}


def asked_terms(case: Case) -> list[set[str]]:
    """What the rationale should mention: groups of alternative phrases, one group per asked thing.

    From the saved ``ask`` when there is one, else from the question's words (colour, shape and
    cell names; "colour" / "shape" ask for any colour / shape word). Empty: nothing to check.
    """
    ask = case.ask or {}
    if "shape" in ask:
        return [_shape_terms(ask["shape"])]
    if "anchor" in ask:
        colour, shape = ask["anchor"]
        return [{colour}, _shape_terms(shape)]
    if "colours" in ask:
        return [{c} for c in ask["colours"]]
    if "cell" in ask:
        return [{ask["cell"]}]
    if "thing_index" in ask and case.meta.get("text"):
        thing = re.sub(r"^(a|an|the)\s+", "", case.meta["text"])
        return [{thing}]
    q = case.question.lower()
    groups: list[set[str]] = []
    for cell in world.CELLS:  # "the top left object", "at centre cell"
        if re.search(rf"\b(the|at) {cell} (object|cell)\b", q):
            groups.append({cell})
    words = set(re.findall(r"[a-z]+", q))
    groups += [{c} for c in world.COLOUR_NAMES if c in words]
    groups += [_shape_terms(s) for s in world.SHAPES if words & _shape_terms(s)]
    if not groups:
        groups += [set(vals) for w, vals in _ATTRIBUTE_WORDS.items() if w in words]
    return groups


def misfocused(case: Case) -> list[str]:
    """Asked things the rationale never mentions (one representative phrase each); [] if focused."""
    text = case.rationale.lower()
    if not text.strip():
        return []
    missing = []
    for group in asked_terms(case):
        if not any(re.search(rf"\b{re.escape(t)}\b", text) for t in group):
            missing.append(sorted(group, key=len)[0] if len(group) <= 2 else "/".join(sorted(group)))
    return missing


def hallucinations(case: Case) -> list[str]:
    """Colours, shapes or "colour shape" pairs the rationale names but the scene lacks.

    From the scene facts when known (world.mention_check), else the run's own saved list.
    """
    if case.facts is not None:
        return world.mention_check(case.rationale, case.facts)
    return list(case.hallucinations)


def tag_case(case: Case) -> list[str]:
    """The failure kinds that apply (in :data:`TAGS` order); ground truth decides each one."""
    tags = []
    right = stated_right(case)
    if right is False and case.reason_rank > 1:
        tags.append(WRONG_RATIONALE)
    if misfocused(case):
        tags.append(MISFOCUS)
    if right is True and case.reason_rank > 1:
        tags.append(RIGHT_RATIONALE_WRONG_RESULT)
    if hallucinations(case):
        tags.append(HALLUCINATION)
    return tags


def cases_by_id(cases: Iterable[Case]) -> dict[str, Case]:
    return {c.query_id: c for c in cases}


_TOUR_NAMES = ("Tour", "TourError", "TourStop", "draft_tours", "load_tours", "tour_stop")


def __getattr__(name: str):
    """Tours live in :mod:`rge_demo.analysis.tours` (built on this module); re-exported lazily
    so the Failures tab has one entry point without an import cycle."""
    if name in _TOUR_NAMES:
        from rge_demo.analysis import tours
        return getattr(tours, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
