"""Guided tours: curated, ordered walks through failure kinds, one short explanation per stop.

A tour is a JSON file under ``assets/tours/``::

    {"id": "...", "title": "...", "summary": "...", "model": "<model the run came from>",
     "stops": [{"query_id": "...", "title": "...", "explanation": "..."}, ...]}

:func:`draft_tours` writes first drafts from a real evaluation (paired :class:`Case` objects):
it picks cases from varied tasks and words each explanation from the case's ground truth, so a
person only has to edit the text.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rge_demo.analysis import failures as F
from rge_demo.data import world
from rge_demo.data.items import atomic_write_text

log = logging.getLogger(__name__)

TOUR_FIELDS = ("id", "title", "summary", "model", "stops")
STOP_FIELDS = ("query_id", "title", "explanation")


class TourError(ValueError):
    """A tour that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class TourStop:
    query_id: str
    title: str
    explanation: str


@dataclass
class Tour:
    id: str
    title: str
    summary: str
    model: str  # the model whose saved runs the stops come from
    stops: list[TourStop] = field(default_factory=list)
    path: Path | None = None  # where it was loaded from

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "summary": self.summary, "model": self.model,
                "stops": [asdict(s) for s in self.stops]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path


# ------------------------------------------------------------------------------- loading, stops
def _text_field(data: dict, key: str, where: str, path: Path, allow_empty: bool = False) -> str:
    if key not in data:
        raise TourError(f"{path}: {where}missing field {key!r}")
    value = data[key]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise TourError(f"{path}: {where}field {key!r} must be a non-empty string, got {value!r}")
    return value


def load_tour(path: str | Path) -> Tour:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TourError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict):
        raise TourError(f"{path}: a tour must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TOUR_FIELDS))
    if unknown:
        raise TourError(f"{path}: unknown field(s) {unknown}")
    head = {k: _text_field(data, k, "", path, allow_empty=k == "summary") for k in TOUR_FIELDS[:4]}
    stops = data.get("stops")
    if not isinstance(stops, list) or not stops:
        raise TourError(f"{path}: field 'stops' must be a non-empty list")
    parsed = []
    for i, s in enumerate(stops):
        where = f"stops[{i}]: "
        if not isinstance(s, dict):
            raise TourError(f"{path}: stops[{i}] must be an object, got {type(s).__name__}")
        extra = sorted(set(s) - set(STOP_FIELDS))
        if extra:
            raise TourError(f"{path}: {where}unknown field(s) {extra}")
        parsed.append(TourStop(*(_text_field(s, k, where, path) for k in STOP_FIELDS)))
    return Tour(**head, stops=parsed, path=path)


def load_tours(directory: str | Path) -> list[Tour]:
    """Every ``*.json`` tour in ``directory`` (sorted by file name); a bad file raises TourError."""
    directory = Path(directory)
    if not directory.is_dir():
        log.info("no tours folder at %s", directory)
        return []
    tours, seen = [], {}
    for path in sorted(directory.glob("*.json")):
        tour = load_tour(path)
        if tour.id in seen:
            raise TourError(f"{path}: field 'id' {tour.id!r} is already used by {seen[tour.id]}")
        seen[tour.id] = path
        tours.append(tour)
    return tours


def tour_stop(tour: Tour, i: int, cases_by_id: Mapping[str, F.Case]) -> tuple[F.Case, str]:
    """Stop ``i`` (0-based) of ``tour``: its case from the loaded run, and its explanation."""
    if not 0 <= i < len(tour.stops):
        raise IndexError(f"tour {tour.id!r} has {len(tour.stops)} stops; no stop {i}")
    stop = tour.stops[i]
    if stop.query_id not in cases_by_id:
        raise TourError(f"tour {tour.id!r} stop {i}: query {stop.query_id!r} is not in the loaded run "
                        f"(the tour was written for model {tour.model!r})")
    return cases_by_id[stop.query_id], stop.explanation


# ---------------------------------------------------------------------------- explanations
def _nice(task: str) -> str:
    return task.replace("_", " ")


def _at(rank: int) -> str:
    return "first" if rank == 1 else f"at {rank}"


def _top1(topk: list[dict]) -> str:
    return str(topk[0].get("label") or topk[0].get("id", "?")) if topk else "?"


def _short(text: str, n: int = 90) -> str:
    return F.shorten(" ".join(text.split()), n)


def _step(rationale: str) -> str:
    """The intermediate step: the sentences between the object list and "answer ..."."""
    body = [s for s in re.split(r"\.\s+", rationale.strip().rstrip(".")) if s and not s.startswith("answer")]
    if not body:
        return ""
    return _short(". ".join(body[1:]) if len(body) > 1 else body[0])


def _join(words: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def _amount(n: int, shape: str, colour: str = "") -> str:
    """"two squares", "one green shape"."""
    noun = shape if n == 1 else world.PLURALS.get(shape, shape + "s")
    number = world.NUMBERS[n] if n < len(world.NUMBERS) else str(n)
    return " ".join(w for w in (number, colour, noun) if w)


def _objects(facts: dict) -> list[tuple[str, str, str]]:
    return list(facts.get("objects") or [])


def _counted(c: F.Case) -> tuple[str, str]:
    """(the shapes a count rationale's step counts, the shapes the question asks about): its step
    ("squares 2") need not count what was asked (QA: the tour said "counted the circles ("squares 2")")."""
    asked = world.PLURALS[(c.ask or {})["shape"]]
    words = re.findall(r"[a-z]+", _step(c.rationale))
    return next((w for w in words if w in world.PLURALS.values()), asked), asked


def _what_it_did(c: F.Case) -> str:
    ask = c.ask or {}
    if c.task == "count" and "shape" in ask:
        return f"counted the {_counted(c)[0]}"
    if c.task == "relation_colour" and "cell" in ask:
        return f"found the cell {ask.get('relation', 'next to')} the {ask['cell']} one and looked up its object"
    if c.task == "ground" and "cell" in ask:
        return f"looked up the {ask['cell']} object"
    if c.task == "edit" and "cell" in ask:
        return f"looked up the {ask['cell']} object and recoloured it {ask.get('colour', '')}".rstrip()
    return {"majority_shape": "tallied the shapes", "chart_diff": "read the two bar heights and subtracted",
            "count": "counted"}.get(c.task, "reasoned")


def _truth(c: F.Case) -> str | None:
    """One clause of ground truth that the right answer rests on, from the scene facts."""
    facts, ask = c.facts or {}, c.ask or {}
    objs = _objects(facts)
    if c.task == "count" and "shape" in ask and facts:
        cells = [cell for _, s, cell in objs if s == ask["shape"]]
        return f"the scene holds {_amount(len(cells), ask['shape'])}" + (f" ({_join(cells)})" if cells else "")
    if c.task == "majority_shape" and objs:
        tally = Counter(s for _, s, _ in objs).most_common()
        return "the scene holds " + _join([_amount(k, v) for v, k in tally])
    if c.task == "chart_diff" and "colours" in ask and facts.get("bars"):
        h = {colour: height for _, colour, height in facts["bars"]}
        a, b = ask["colours"]
        if a in h and b in h:
            return f"the {a} bar is {h[a]} high and the {b} bar {h[b]}, a difference of {h[a] - h[b]}"
    if c.task == "relation_colour" and {"cell", "beside", "relation"} <= ask.keys() and objs:
        obj = next((f"{col} {s}" for col, s, cell in objs if cell == ask["beside"]), None)
        if obj:
            return f"{ask['relation']} the {ask['cell']} cell is the {ask['beside']} cell, which holds a {obj}"
    if c.task in ("ground", "edit") and "cell" in ask:
        obj = next((f"{col} {s}" for col, s, cell in objs if cell == ask["cell"]), None)
        if obj and c.task == "edit":
            return f"the {ask['cell']} object is a {obj}, so made {ask.get('colour')} it is a {c.target_label}"
        if obj:
            return f"the {ask['cell']} object is a {obj}"
    return None


def _reasoning_clause(c: F.Case) -> str:
    """'The rationale counted the squares ("squares: 2") and stated 'two''."""
    step, stated = _step(c.rationale), c.stated_answer
    s = f"The rationale {_what_it_did(c)}"
    if step:
        s += f' ("{step}")'
    if c.task == "count" and "shape" in (c.ask or {}) and (shapes := _counted(c))[0] != shapes[1]:
        s += f", not the {shapes[1]},"
    return s + (f" and stated '{stated}'" if stated else " but never stated an answer")


def _flaw_sentences(c: F.Case) -> list[str]:
    out = []
    bad = F.hallucinations(c)
    bad = [b for b in bad if not any(b != o and b in o.split() for o in bad)]  # "cross" is in "red cross"
    if bad:
        out.append(f"It names {_join([repr(b) for b in bad])}, which the scene does not contain.")
    missing = F.misfocused(c)
    if missing:
        out.append(f"It never mentions the {_join(missing)}, which the question asks about.")
    if c.forced:
        out.append("It ran out of its token budget, so <emb> was appended.")
    return out


def explain(c: F.Case, focus: str) -> str:
    """A short paragraph on one case; ``focus``: "helps", "hurts", "flaws" or "both wrong"."""
    t, truth, right = c.target_label, _truth(c), F.stated_right(c)
    verdict = ""
    if right is True and F.hallucinations(c):  # praise only a rationale that is right throughout
        verdict = ", the right answer, though from evidence the scene does not hold"
    elif right is True:
        verdict = f", which is right ({truth})" if truth else ", which is right"
    elif right is False:
        verdict = f", but {truth}" if truth else f", but the answer is '{t}'"
    parts = []
    if focus == "helps":
        parts.append(f"The direct embedding ranked '{t}' {_at(c.direct_rank)} and put '{_top1(c.direct_topk)}' first.")
        parts.append(_reasoning_clause(c) + verdict + ".")
        parts += _flaw_sentences(c)
        parts.append(f"With that step in the query, the reasoning embedding put '{t}' first."
                     if right is not False else f"Even so, the reasoning embedding put '{t}' first.")
    elif focus == "hurts":
        parts.append(f"The direct embedding already put '{t}' first; with reasoning it fell to {c.reason_rank}, "
                     f"behind '{_top1(c.reason_topk)}'.")
        parts.append(_reasoning_clause(c) + verdict + ".")
        parts += _flaw_sentences(c)
        if right is True:
            parts.append("The rationale was right, yet the embedding did not follow it.")
        elif right is False:
            parts.append("A wrong rationale leads to a wrong result.")
    else:
        parts.append(_reasoning_clause(c) + verdict + ".")
        parts += _flaw_sentences(c)
        if right is True and c.reason_rank > 1:
            parts.append("The stated answer was right, yet the embedding did not follow it.")
        parts.append(f"Reasoning ranked '{t}' {_at(c.reason_rank)} (direct: {_at(c.direct_rank)}).")
    return " ".join(parts)


# ---------------------------------------------------------------------------------- drafting
def _pick(cases: Iterable[F.Case], key: Callable[[F.Case], tuple], n: int) -> list[F.Case]:
    """Up to ``n`` cases, best ``key`` first, alternating between tasks so that the tour varies."""
    by_task: dict[str, list[F.Case]] = {}
    for c in sorted(cases, key=lambda c: (key(c), c.query_id), reverse=True):
        by_task.setdefault(c.task, []).append(c)
    queues = sorted(by_task.values(), key=lambda q: (key(q[0]), q[0].task), reverse=True)
    out: list[F.Case] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _stop_title(c: F.Case, focus: str) -> str:
    task, t = _nice(c.task), c.target_label
    if focus == "helps":
        return f"{task}: '{t}' from rank {c.direct_rank} to 1"
    if focus == "hurts":
        return f"{task}: '{t}' falls from 1 to {c.reason_rank}"
    bad, missing = F.hallucinations(c), F.misfocused(c)
    if focus == "flaws" and bad:
        return f"{task}: a rationale that sees {bad[0]!r}"
    if focus == "flaws" and missing:
        return f"{task}: never looks at the {missing[0]}"
    return f"{task}: {F.tag_case(c)[0] if F.tag_case(c) else 'both modes miss'}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def draft_tours(cases: list[F.Case], out_dir: str | Path, model_name: str, per_tour: int = 5) -> list[Tour]:
    """Write draft tours (``<model>-<kind>.json``) from real cases into ``out_dir``; return them.

    Kinds: where reasoning helps, where it hurts, hallucination and misfocus, and where both modes
    miss. A kind with no matching case is skipped with a warning.
    """
    cases = list(cases)
    n = len(cases)
    count = Counter(F.outcome(c) for c in cases)
    tags = {c.query_id: F.tag_case(c) for c in cases}
    n_hal = sum(F.HALLUCINATION in t for t in tags.values())
    n_mis = sum(F.MISFOCUS in t for t in tags.values())
    wrong_stated = lambda c: F.stated_right(c) is False  # noqa: E731

    def pct(k: int) -> str:
        return f"{k} of {n} queries ({100 * k / max(n, 1):.0f} %)"

    specs = [
        ("reasoning-helps", "Where reasoning helps", "helps",
         [c for c in cases if F.outcome(c) == F.HELPS],
         lambda c: (F.stated_right(c) is True, not tags[c.query_id], c.direct_rank),
         f"With reasoning, {pct(count[F.HELPS])} reach rank 1 that the direct embedding misses "
         f"(the other way round: {count[F.HURTS]}). Each stop shows the intermediate step that made the difference."),
        ("reasoning-hurts", "Where reasoning hurts", "hurts",
         [c for c in cases if F.outcome(c) == F.HURTS],
         lambda c: (bool(tags[c.query_id]), wrong_stated(c), c.reason_rank),
         f"Reasoning loses {pct(count[F.HURTS])} that the direct embedding gets right. The stops show how: "
         "a wrong stated answer, something the scene does not hold, or a right rationale the embedding ignores."),
        ("hallucination-and-misfocus", "Hallucination and misfocus", "flaws",
         [c for c in cases if {F.HALLUCINATION, F.MISFOCUS} & set(tags[c.query_id])],
         lambda c: (c.reason_rank > 1, len(tags[c.query_id]), c.reason_rank),
         f"{n_hal} rationales name a colour or shape the scene lacks, and {n_mis} never mention what the "
         "question asks about. The scene's ground truth makes both checkable."),
        ("both-wrong", "When both modes miss", "both wrong",
         [c for c in cases if F.outcome(c) == F.BOTH_WRONG],
         lambda c: (bool(tags[c.query_id]), F.stated_right(c) is True, -c.reason_rank),
         f"Neither mode finds the answer for {pct(count[F.BOTH_WRONG])}. Some rationales are wrong; "
         "some are right and the embedding still misses."),
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tours = []
    for kind, title, focus, pool, key, summary in specs:
        chosen = _pick(pool, key, per_tour)
        if not chosen:
            log.warning("draft_tours: no case for tour %r; skipped", kind)
            continue
        tasks = sorted({_nice(c.task) for c in chosen})
        tour = Tour(id=f"{_slug(model_name)}-{kind}", title=title, model=model_name,
                    summary=f"{summary} Tasks: {', '.join(tasks)}.",
                    stops=[TourStop(c.query_id, _stop_title(c, focus), explain(c, focus)) for c in chosen])
        tour.path = tour.save(out_dir / f"{tour.id}.json")
        tours.append(tour)
        log.info("draft_tours: wrote %s (%d stops)", tour.path, len(tour.stops))
    return tours
