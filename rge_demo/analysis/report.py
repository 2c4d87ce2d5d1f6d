"""Markdown tables of evaluation summaries, laid out like the paper's Table 2 (MMEB style).

Rows are datasets grouped by meta-task, then the meta-task averages, IND, OOD and Overall.
Averages are unweighted means over datasets (``macro_*`` from ``grouped_metrics``), the MMEB
convention; numbers are percentages with one decimal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

META_ORDER = ("classification", "vqa", "retrieval", "grounding", "unknown")
META_NAMES = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval",
              "grounding": "Grounding", "unknown": "Other"}
MODE_NAMES = {"reason": "reasoning", "direct": "direct (no reasoning)", "oracle": "oracle rationale"}


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.1f}"


def _task_rows(summaries: list[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(meta_task, task, split) for every task in any summary, grouped by meta-task, first-seen order."""
    seen: dict[str, tuple[str, str]] = {}
    for s in summaries:
        for name, t in s.get("tasks", {}).items():
            seen.setdefault(name, (t.get("meta_task") or "unknown", t.get("split", "")))
    rows = [(meta, name, split) for name, (meta, split) in seen.items()]
    order = {m: i for i, m in enumerate(META_ORDER)}
    return sorted(rows, key=lambda r: order.get(r[0], len(order)))  # stable: keeps first-seen order


def _summary_rows(summaries: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(label, metrics key) of the average rows present in any summary."""
    keys = set().union(*(s.get("metrics", {}).keys() for s in summaries))
    rows = [(f"**{META_NAMES.get(m, m)}** (avg)", f"meta_task={m}") for m in META_ORDER if f"meta_task={m}" in keys]
    rows += [(f"**{s.upper()}** (avg)", f"split={s}") for s in ("ind", "ood") if f"split={s}" in keys]
    rows.append(("**Overall** (avg)", "overall"))
    return rows


def _avg(metrics: Mapping[str, Any], key: str, metric: str) -> Any:
    group = metrics.get(key)
    if not group:
        return None
    return group.get(f"macro_{metric}", group.get(metric))


def run_table(summary: Mapping[str, Any], title: str | None = None) -> str:
    """One run: rows = datasets and averages, columns N, P@1, Recall@5."""
    metrics = summary.get("metrics", {})
    mode = MODE_NAMES.get(summary.get("mode", ""), summary.get("mode", ""))
    title = title or f"{summary.get('model', 'model')} · {mode}"
    lines = [f"### {title}", "",
             "| Meta-task | Dataset | Split | N | P@1 | Recall@5 |",
             "|---|---|---|---:|---:|---:|"]
    for meta, name, split in _task_rows([summary]):
        m = metrics.get(f"task={name}", {})
        n = int(m["n"]) if "n" in m else "–"
        lines.append(f"| {META_NAMES.get(meta, meta)} | {name} | {split.upper()} | {n} | "
                     f"{_pct(m.get('p@1'))} | {_pct(m.get('recall@5'))} |")
    for label, key in _summary_rows([summary]):
        m = metrics.get(key, {})
        n = int(m["n"]) if "n" in m else "–"
        lines.append(f"| {label} | | | {n} | {_pct(_avg(metrics, key, 'p@1'))} | "
                     f"{_pct(_avg(metrics, key, 'recall@5'))} |")
    lines += ["", _footnote(summary)]
    return "\n".join(lines) + "\n"


def _footnote(summary: Mapping[str, Any]) -> str:
    parts = ["Averages are unweighted means over datasets (MMEB convention)."]
    spq = summary.get("seconds_per_query")
    if isinstance(spq, (int, float)) and not math.isnan(spq):
        parts.append(f"{spq:.3f} s/query.")
    if summary.get("mode") == "reason":
        parts.append(f"Rationale: {summary.get('tokens_mean', 0):.1f} tokens on average, "
                     f"{100 * summary.get('forced_rate', 0):.1f}% hit the budget.")
    if summary.get("hallucination_rate") is not None:
        parts.append(f"{100 * summary['hallucination_rate']:.1f}% of rationales mention something not in the scene.")
    return " ".join(parts)


def compare_runs(runs: Mapping[str, Mapping[str, Any]], metric: str = "p@1") -> str:
    """Several run summaries side by side, one column per run (e.g. "RGE reasoning", "baseline").

    Averages are over the datasets each run has; compare them only for runs over the same datasets.
    """
    if not runs:
        raise ValueError("compare_runs: no runs")
    names = list(runs)
    summaries = [runs[n] for n in names]
    label = "P@1" if metric == "p@1" else metric.replace("recall", "Recall")
    lines = ["| Meta-task | Dataset | Split | " + " | ".join(f"{n} ({label})" for n in names) + " |",
             "|---|---|---|" + "---:|" * len(names)]
    for meta, task, split in _task_rows(summaries):
        cells = [_pct(s.get("metrics", {}).get(f"task={task}", {}).get(metric)) for s in summaries]
        lines.append(f"| {META_NAMES.get(meta, meta)} | {task} | {split.upper()} | " + " | ".join(cells) + " |")
    for row_label, key in _summary_rows(summaries):
        cells = [_pct(_avg(s.get("metrics", {}), key, metric)) for s in summaries]
        lines.append(f"| {row_label} | | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
