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


def shorten(text: str, n: int) -> str:
    """``text`` cut to at most ``n`` characters, an ellipsis marking the cut."""
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def cases_table(cases: Iterable[Case], max_rationale: int = 80) -> pd.DataFrame:
    """One row per case, compact columns for a UI table."""
    rows = []
    for c in cases:
        r = shorten(c.rationale, max_rationale)
        rows.append({"query_id": c.query_id, "task": c.task, "split": c.split, "outcome": outcome(c),
                     "answer": c.target_label, "direct rank": c.direct_rank, "reasoning rank": c.reason_rank,
                     "direct top-1": _top1(c.direct_topk), "reasoning top-1": _top1(c.reason_topk),
                     "tags": ", ".join(tag_case(c)), "rationale": r})
    columns = ["query_id", "task", "split", "outcome", "answer", "direct rank", "reasoning rank",
               "direct top-1", "reasoning top-1", "tags", "rationale"]
    return pd.DataFrame(rows, columns=columns)



def query_of(case: Case) -> str:
    """What the query asks, for a person: its text, else the world's question."""
    return case.text or case.question or ""


def _haystack(case: Case) -> str:
    parts = [case.query_id, case.task, case.meta_task, case.split, case.instruction, query_of(case), case.question,
             case.target_label, case.target_id, case.rationale, _top1(case.direct_topk), _top1(case.reason_topk),
             outcome(case), *tag_case(case)]
    return " ".join(p for p in parts if p).lower()


def search_cases(cases: Iterable[Case], text: str | None) -> list[Case]:
    """Cases whose query text, instruction, labels (right answer, both top-1s), rationale, id, task or
    failure kinds contain every word of ``text`` (case-insensitive); all of them for an empty text."""
    words = (text or "").lower().split()
    cases = list(cases)
    if not words:
        return cases
    return [c for c in cases if all(w in _haystack(c) for w in words)]


GRID_COLUMNS = ("task", "meta-task", "split", "query", "right answer", "direct rank", "reasoning rank", "outcome",
                "failure kind", "case")


def case_grid(cases: Iterable[Case]) -> pd.DataFrame:
    """The Failures grid: one row per case, the columns of :data:`GRID_COLUMNS` (``case`` is the query id)."""
    rows = [(c.task, c.meta_task, c.split, query_of(c), c.target_label, c.direct_rank, c.reason_rank, outcome(c),
             ", ".join(tag_case(c)), c.query_id) for c in cases]
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS)).astype({"direct rank": "int64", "reasoning rank": "int64"})


# ---------------------------------------------------------------------------------------- export
EXPORT_COLUMNS = ("query_id", "dataset", "task", "meta_task", "split", "instruction", "text", "image", "target_id",
                  "target_label", "direct_rank", "reason_rank", "outcome", "failure_kinds", "rationale", "tokens",
                  "forced", "seconds", "hallucinations", "direct_top1", "reason_top1", "direct_topk", "reason_topk")


def export_frame(cases: Iterable[Case]) -> pd.DataFrame:
    """Every case as one flat row (:data:`EXPORT_COLUMNS`): lists joined by ``"; "``, the top-k lists as
    JSON text, so a CSV and a Parquet file of the same cases read back equal."""
    rows = []
    for c in cases:
        rows.append({"query_id": c.query_id, "dataset": c.dataset, "task": c.task, "meta_task": c.meta_task,
                     "split": c.split, "instruction": c.instruction, "text": query_of(c),
                     "image": Path(c.image).name if c.image else "",  # the file's name: no server folders
                     "target_id": c.target_id, "target_label": c.target_label, "direct_rank": c.direct_rank,
                     "reason_rank": c.reason_rank, "outcome": outcome(c), "failure_kinds": "; ".join(tag_case(c)),
                     "rationale": c.rationale, "tokens": c.tokens, "forced": c.forced, "seconds": float(c.seconds),
                     "hallucinations": "; ".join(hallucinations(c)), "direct_top1": _top1(c.direct_topk),
                     "reason_top1": _top1(c.reason_topk),
                     "direct_topk": json.dumps(c.direct_topk, sort_keys=True),
                     "reason_topk": json.dumps(c.reason_topk, sort_keys=True)})
    frame = pd.DataFrame(rows, columns=list(EXPORT_COLUMNS))
    return frame.astype({"direct_rank": "int64", "reason_rank": "int64", "tokens": "int64", "forced": "bool",
                         "seconds": "float64"})


EXPORT_FORMATS = ("csv", "parquet")


def write_export(cases: Iterable[Case], folder: str | Path, stem: str = "cases",
                 formats: Sequence[str] = EXPORT_FORMATS) -> list[Path]:
    """Write :func:`export_frame` of ``cases`` as ``<folder>/<stem>.csv`` and ``.parquet`` (pyarrow); the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._") or "cases"
    frame = export_frame(cases)
    out = []
    for fmt in formats:
        path = folder / f"{stem}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            frame.to_parquet(path, index=False, engine="pyarrow")
        else:
            raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
        out.append(path)
    return out


def read_export(path: str | Path) -> pd.DataFrame:
    """An exported file read back with the column types :func:`export_frame` wrote."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path, engine="pyarrow")
    text_cols = [c for c in EXPORT_COLUMNS if c not in ("direct_rank", "reason_rank", "tokens", "forced", "seconds")]
    return pd.read_csv(path, keep_default_na=False, dtype={c: str for c in text_cols})


# ---------------------------------------------------------------------------- P@1 per group, with CIs
MODES = (("direct", "direct_rank"), ("reasoning", "reason_rank"))


def p1_bars(cases: Sequence[Case], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """P@1 per task and per meta-task in both modes, with 95 % percentile bootstrap intervals over the
    group's queries (:func:`rge_demo.analysis.reasoning.bootstrap_ci`, seeded): columns ``level``
    ("task" | "meta-task"), ``group``, ``mode`` ("direct" | "reasoning"), ``p1``, ``low``, ``high``, ``n``."""
    from .reasoning import bootstrap_ci

    rows = []
    for level, key in (("task", "task"), ("meta-task", "meta_task")):
        groups: dict[str, list[Case]] = {}
        for c in cases:
            groups.setdefault(getattr(c, key) or "(none)", []).append(c)
        for group in sorted(groups):
            for mode, rank in MODES:
                hits = [getattr(c, rank) == 1 for c in groups[group]]
                mean, lo, hi = bootstrap_ci(hits, n_boot=n_boot, seed=seed)
                rows.append({"level": level, "group": group, "mode": mode, "p1": mean, "low": lo, "high": hi,
                             "n": len(hits)})
    return pd.DataFrame(rows, columns=["level", "group", "mode", "p1", "low", "high", "n"])


MODE_COLOURS = {"direct": "#64748b", "reasoning": "#4f46e5"}


def p1_figure(bars: pd.DataFrame, title: str = ""):
    """Grouped bars of :func:`p1_bars` (per task left, per meta-task right) with the intervals as error bars."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tasks = bars[bars["level"] == "task"]["group"].nunique()
    metas = bars[bars["level"] == "meta-task"]["group"].nunique()
    fig = make_subplots(rows=1, cols=2, column_widths=[max(tasks, 1), max(metas, 1)], horizontal_spacing=0.06,
                        subplot_titles=("P@1 per task", "P@1 per meta-task"), shared_yaxes=True)
    for col, level in ((1, "task"), (2, "meta-task")):
        for mode in ("direct", "reasoning"):
            part = bars[(bars["level"] == level) & (bars["mode"] == mode)]
            fig.add_trace(go.Bar(
                x=list(part["group"]), y=list(part["p1"]), name=mode, legendgroup=mode, showlegend=col == 1,
                marker_color=MODE_COLOURS[mode],
                error_y={"type": "data", "symmetric": False, "array": list(part["high"] - part["p1"]),
                         "arrayminus": list(part["p1"] - part["low"]), "thickness": 1.2, "width": 3},
                customdata=list(zip(part["low"], part["high"], part["n"])),
                hovertemplate=(f"{mode}<br>%{{x}}: P@1 %{{y:.2f}}<br>95% CI [%{{customdata[0]:.2f}}, "
                               "%{customdata[1]:.2f}]<br>%{customdata[2]} queries<extra></extra>")), row=1, col=col)
    fig.update_yaxes(range=[0, 1.05], title_text="P@1 (95% bootstrap CI)", row=1, col=1)
    fig.update_layout(barmode="group", height=400, margin={"l": 60, "r": 20, "t": 90, "b": 90},
                      legend={"orientation": "h", "y": 1.25, "yanchor": "bottom", "x": 1, "xanchor": "right"},
                      title={"text": title} if title else None, template="plotly_white")
    fig.update_xaxes(tickangle=-35)
    return fig

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
