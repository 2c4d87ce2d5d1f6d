"""Metrics against hand-checked cases and a naive loop on seeded random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rge_demo.analysis.metrics import PRIMARY, grouped_metrics, retrieval_metrics


def test_hand_checked():
    m = retrieval_metrics([1, 2, 6, 1], ks=(1, 5))
    assert m == {"n": 4.0, "p@1": 0.5, "recall@5": 0.75, "mrr": pytest.approx((1 + 0.5 + 1 / 6 + 1) / 4)}
    assert PRIMARY in m
    m = retrieval_metrics(np.array([3]), ks=(1, 3, 10))
    assert m == {"n": 1.0, "p@1": 0.0, "recall@3": 1.0, "recall@10": 1.0, "mrr": pytest.approx(1 / 3)}
    assert all(isinstance(v, float) for v in m.values())


def test_empty_and_bad_ranks():
    m = retrieval_metrics([])
    assert m["n"] == 0 and math.isnan(m["p@1"]) and math.isnan(m["mrr"])
    with pytest.raises(ValueError, match="1-based"):
        retrieval_metrics([1, 0])
    with pytest.raises(ValueError, match="integers"):
        retrieval_metrics([1.5])
    with pytest.raises(ValueError, match="k must be"):
        retrieval_metrics([1], ks=(0,))


@pytest.mark.parametrize("seed", range(3))
def test_random_against_naive_loop(seed):
    rng = np.random.default_rng(seed)
    ranks = rng.integers(1, 30, 200)
    m = retrieval_metrics(ranks, ks=(1, 5, 10))
    hits = {k: 0 for k in (1, 5, 10)}
    rr = 0.0
    for r in ranks:
        for k in hits:
            hits[k] += int(r <= k)
        rr += 1.0 / r
    assert m["p@1"] == pytest.approx(hits[1] / 200)
    assert m["recall@5"] == pytest.approx(hits[5] / 200)
    assert m["recall@10"] == pytest.approx(hits[10] / 200)
    assert m["mrr"] == pytest.approx(rr / 200)


def test_grouped_hand_checked():
    records = [
        {"rank": 1, "task": "count", "meta_task": "vqa", "split": "test"},
        {"rank": 3, "task": "count", "meta_task": "vqa", "split": "ood"},
        {"rank": 1, "task": "color", "meta_task": "classification", "split": "test"},
        {"rank": 1, "task": "color", "meta_task": "classification", "split": "test"},
        {"rank": 1, "task": "color", "meta_task": "classification", "split": "ood"},
        {"rank": 9, "task": "", "meta_task": "", "split": "test"},  # ungrouped except split/overall
    ]
    g = grouped_metrics(records)
    assert set(g) == {"overall", "task=count", "task=color", "meta_task=vqa",
                      "meta_task=classification", "split=test", "split=ood"}
    assert g["overall"]["n"] == 6 and g["overall"]["p@1"] == pytest.approx(4 / 6)
    assert g["task=count"] == {"n": 2.0, "p@1": 0.5, "recall@5": 1.0, "mrr": pytest.approx(2 / 3)}
    assert g["task=color"]["p@1"] == 1.0 and g["task=color"]["n"] == 3
    assert g["split=ood"]["p@1"] == 0.5 and g["split=test"]["n"] == 4
    assert g["split=test"]["p@1"] == pytest.approx(3 / 4)
    # macro = mean over tasks (MMEB convention): overall (0.5 + 1.0) / 2, not 4/6
    assert g["overall"]["macro_p@1"] == pytest.approx(0.75) and g["overall"]["n_tasks"] == 2
    assert g["meta_task=vqa"]["macro_p@1"] == 0.5
    assert "macro_p@1" not in g["task=count"]


def test_grouped_random_against_naive_loop():
    rng = np.random.default_rng(7)
    tasks = ["a", "b", "c", "d"]
    meta = {"a": "vqa", "b": "vqa", "c": "retrieval", "d": "grounding"}
    records = []
    for _ in range(300):
        t = tasks[rng.integers(0, 4)]
        records.append({"rank": int(rng.integers(1, 12)), "task": t, "meta_task": meta[t],
                        "split": ["test", "ood"][rng.integers(0, 2)]})
    g = grouped_metrics(records, ks=(1, 5))
    for key in ("task", "meta_task", "split"):
        for value in {r[key] for r in records}:
            sel = [r["rank"] for r in records if r[key] == value]
            want_p1 = sum(1 for r in sel if r == 1) / len(sel)
            want_r5 = sum(1 for r in sel if r <= 5) / len(sel)
            got = g[f"{key}={value}"]
            assert got["n"] == len(sel)
            assert got["p@1"] == pytest.approx(want_p1) and got["recall@5"] == pytest.approx(want_r5)
    vqa_tasks = [g["task=a"]["p@1"], g["task=b"]["p@1"]]
    assert g["meta_task=vqa"]["macro_p@1"] == pytest.approx(sum(vqa_tasks) / 2)


def test_grouped_errors_and_custom_keys():
    with pytest.raises(ValueError, match="record 1 has no 'rank'"):
        grouped_metrics([{"rank": 1}, {"task": "x"}])
    g = grouped_metrics([{"rank": 2, "mode": "reasoning"}, {"rank": 1, "mode": "direct"}], keys=("mode",))
    assert g["mode=direct"]["p@1"] == 1.0 and g["mode=reasoning"]["p@1"] == 0.0
    assert "macro_p@1" not in g["overall"]
