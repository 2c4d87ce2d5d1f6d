"""Does the model reason, and does its embedding read the reasoning? Measured on evaluation cases.

* :func:`rationale_quality`: per task, the share of self-generated rationales whose stated answer
  (``answer X``, last) is the right candidate, and the share that names something the scene lacks
  (a hallucination, :func:`rge_demo.data.world.mention_check`).
* :func:`answer_swap`: replace ``answer X`` in each oracle rationale by another candidate and embed
  the query with that rationale: the share of queries whose top-1 follows the swap says how much
  ``<emb>`` reads the answer it was given rather than the image.
* :func:`p1_table`: P@1 per task, meta-task, split and overall with bootstrap confidence intervals,
  and :func:`paired_gain` the difference of two modes on the same queries, with its interval.

Every interval is a percentile bootstrap over queries (95 %, seeded): a statement about these
queries' sampling noise, not about other seeds of training.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rge_demo.data import world
from rge_demo.embedding.index import top_k

from .eval_tasks import EvalTask

N_BOOT = 2000
LEVEL = 0.95


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                 level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile bootstrap interval."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)  # (n_boot,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def _stat(values, seed: int = 0) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": mean, "low": lo, "high": hi, "n": float(len(values))}


def _groups(cases: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Cases per group: overall, ``task=``, ``meta_task=``, ``split=`` and ``task=x/split=y``."""
    out: dict[str, list] = {"overall": []}
    for c in cases:
        out["overall"].append(c)
        for key in ("task", "meta_task", "split"):
            out.setdefault(f"{key}={c[key]}", []).append(c)
        out.setdefault(f"task={c['task']}/split={c['split']}", []).append(c)
    return out


def stated_answer(case: Mapping[str, Any]) -> bool:
    """True when the rationale's ``answer X`` names the right candidate."""
    return world.answer_of(case.get("rationale") or "") == case["target_label"]


def rationale_quality(cases: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per group: ``stated_answer_acc`` and ``hallucination_rate`` of reasoning-mode world cases."""
    scored = [c for c in cases if c.get("hallucinations") is not None]
    out = {}
    for group, rows in _groups(scored).items():
        out[group] = {"stated_answer_acc": _stat([stated_answer(c) for c in rows]),
                      "hallucination_rate": _stat([bool(c["hallucinations"]) for c in rows])}
    return out


def p1_table(cases: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """P@1 with its 95 % interval per group (overall is the mean over queries)."""
    return {group: _stat([bool(c["correct"]) for c in rows]) for group, rows in _groups(cases).items()}


def paired_gain(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """P@1(a) - P@1(b) on the same queries, per group, with a paired bootstrap interval."""
    by_id = {(c["dataset"], c["query_id"]): c for c in b}
    pairs = [(c, by_id[(c["dataset"], c["query_id"])]) for c in a if (c["dataset"], c["query_id"]) in by_id]
    if len(pairs) != len(a) or len(pairs) != len(b):
        raise ValueError(f"paired_gain needs the same queries in both runs ({len(a)} vs {len(b)}, {len(pairs)} shared)")
    out = {}
    for group, rows in _groups([dict(x, _other=y) for x, y in pairs]).items():
        out[group] = _stat([float(r["correct"]) - float(r["_other"]["correct"]) for r in rows])
    return out


def answer_swap(encoder, tasks: Sequence[EvalTask], seed: int = 0, batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Per group: the share of queries whose top-1 is the swapped-in candidate.

    For each query, another candidate of its task is drawn (seeded); its label replaces the answer
    in the oracle rationale, the query is embedded with that rationale, and ranked against all
    the task's candidates (direct embeddings).
    """
    rng = random.Random(seed)
    cases = []
    for task in tasks:
        matrix = encoder.direct([c.item.to_input() for c in task.candidates], batch_size=batch_size)  # (N, D)
        qs = [q for q in task.queries if q.rationale and world.answer_of(q.rationale)]
        swaps = [rng.choice([i for i in range(len(task.candidates)) if i != q.target]) for q in qs]
        for start in range(0, len(qs), batch_size):
            chunk, picks = qs[start:start + batch_size], swaps[start:start + batch_size]
            rationales = [world.swap_answer(q.rationale, task.candidates[j].label) for q, j in zip(chunk, picks)]
            vecs = encoder.with_rationale([q.item.to_input() for q in chunk], rationales)  # (B, D)
            _, idx = top_k(vecs, matrix, 1)
            for q, j, top in zip(chunk, picks, idx[:, 0]):
                cases.append({"task": task.task, "meta_task": task.meta_task, "split": task.split,
                              "follows": int(top) == j, "stays": int(top) == q.target})
    out = {}
    for group, rows in _groups(cases).items():
        out[group] = {"follows": _stat([r["follows"] for r in rows]), "stays": _stat([r["stays"] for r in rows])}
    return out


def fmt(stat: Mapping[str, float], scale: float = 100.0, digits: int = 1) -> str:
    """``47.9 [44.2, 51.6]``."""
    if stat["n"] == 0 or np.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean'] * scale:.{digits}f} [{stat['low'] * scale:.{digits}f}, {stat['high'] * scale:.{digits}f}]"
