"""Retrieval metrics as plain functions returning ``dict[str, float]``; ``p@1`` is the primary one.

Inputs are 1-based ranks of the right candidate (see ``embedding.index.rank_of``). MMEB reports
P@1 (precision at 1 = hit rate at 1, one right candidate per query); a meta-task's and the
overall MMEB score are the mean over tasks, given here as ``macro_p@1`` next to the per-query mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

PRIMARY = "p@1"
OVERALL = "overall"


def metric_name(k: int) -> str:
    return "p@1" if k == 1 else f"recall@{k}"


def retrieval_metrics(ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """ranks (Q,) 1-based -> {"n", "p@1", "recall@k" for each other k, "mrr"}.

    recall@k = mean(rank <= k); mrr = mean(1 / rank). With no ranks every metric is NaN.
    """
    r = np.asarray(ranks).reshape(-1)
    if r.size and (not np.issubdtype(r.dtype, np.integer) and not np.all(r == np.round(r))):
        raise ValueError("ranks must be integers")
    r = r.astype(np.int64)
    if r.size and r.min() < 1:
        raise ValueError(f"ranks are 1-based; got {int(r.min())}")
    out: dict[str, float] = {"n": float(r.size)}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out[metric_name(k)] = float(np.mean(r <= k)) if r.size else float("nan")
    out["mrr"] = float(np.mean(1.0 / r)) if r.size else float("nan")
    return out


def grouped_metrics(
    records: Iterable[Mapping[str, Any]],
    keys: Sequence[str] = ("task", "meta_task", "split"),
    ks: Sequence[int] = (1, 5),
) -> dict[str, dict[str, float]]:
    """Metrics overall and per value of each key: {"overall": {...}, "task=foo": {...}, ...}.

    Each record is a mapping with "rank" (1-based) and the grouping keys; a record whose value
    for a key is missing or empty is left out of that key's groups (it still counts overall).
    Where records carry "task", groups other than single tasks also get ``macro_<metric>``:
    the unweighted mean over the tasks inside the group (the MMEB convention).
    """
    records = list(records)
    ranks = np.empty(len(records), np.int64)
    for i, rec in enumerate(records):
        if "rank" not in rec:
            raise ValueError(f"record {i} has no 'rank': {dict(rec)}")
        ranks[i] = int(rec["rank"])

    def group_metrics(rows: list[int]) -> dict[str, float]:
        m = retrieval_metrics(ranks[rows], ks)
        by_task: dict[str, list[int]] = {}
        for j in rows:
            task = records[j].get("task")
            if task:
                by_task.setdefault(str(task), []).append(j)
        if by_task:
            per_task = [retrieval_metrics(ranks[js], ks) for js in by_task.values()]
            for name in list(m):
                if name != "n":
                    m[f"macro_{name}"] = float(np.mean([t[name] for t in per_task]))
            m["n_tasks"] = float(len(by_task))
        return m

    out = {OVERALL: group_metrics(list(range(len(records))))}
    for key in keys:
        groups: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            value = rec.get(key)
            if value is not None and value != "":
                groups.setdefault(str(value), []).append(i)
        for value in sorted(groups):
            m = group_metrics(groups[value])
            if key == "task":
                m = {k: v for k, v in m.items() if not k.startswith("macro_") and k != "n_tasks"}
            out[f"{key}={value}"] = m
    return out
