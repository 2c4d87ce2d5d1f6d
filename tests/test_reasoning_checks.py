"""The measures of whether a model reasons: bootstrap intervals, stated answers, paired gains, answer swap."""

import numpy as np
import pytest

from rge_demo.analysis.eval_tasks import world_tasks
from rge_demo.analysis.reasoning import answer_swap, bootstrap_ci, fmt, p1_table, paired_gain, rationale_quality
from rge_demo.data.world import swap_answer
from rge_demo.embedding.encoder import Encoder


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = np.r_[np.ones(30), np.zeros(70)]
    mean, lo, hi = bootstrap_ci(values, seed=1)
    assert mean == pytest.approx(0.3) and lo < 0.3 < hi
    assert (lo, hi) == bootstrap_ci(values, seed=1)[1:]
    # the normal approximation of a proportion's 95 % interval: 0.3 +- 1.96 * sqrt(.3 * .7 / 100) = +- 0.09
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 100), abs=0.03)
    assert np.isnan(bootstrap_ci([])[0])


def _case(qid, task, split, correct, rationale, label, hall=()):
    return {"dataset": f"{task}/{split}", "query_id": qid, "task": task, "meta_task": "vqa", "split": split,
            "correct": correct, "rationale": rationale, "target_label": label, "hallucinations": list(hall)}


def test_stated_answers_hallucinations_and_paired_gain():
    reason = [_case("a", "count", "ind", True, "squares 2. answer two", "two"),
              _case("b", "count", "ind", False, "squares 1. answer one", "two", ["green"]),
              _case("c", "count", "ood", True, "no answer here", "three")]
    direct = [dict(c, correct=False, rationale="") for c in reason]
    q = rationale_quality(reason)
    assert q["task=count/split=ind"]["stated_answer_acc"]["mean"] == 0.5
    assert q["task=count/split=ind"]["hallucination_rate"]["mean"] == 0.5
    assert q["task=count/split=ood"]["stated_answer_acc"]["mean"] == 0.0
    assert p1_table(reason)["overall"]["mean"] == pytest.approx(2 / 3)
    g = paired_gain(reason, direct)
    assert g["overall"]["mean"] == pytest.approx(2 / 3) and g["split=ood"]["mean"] == 1.0
    with pytest.raises(ValueError, match="same queries"):
        paired_gain(reason, direct[:2])
    assert fmt(g["split=ind"]) == "50.0 [0.0, 100.0]"


def test_swap_answer_replaces_only_the_last_answer():
    assert swap_answer("the answer is near. squares 2. answer two", "five") == "the answer is near. squares 2. answer five"
    with pytest.raises(ValueError, match="no 'answer X'"):
        swap_answer("squares 2", "five")


def test_answer_swap_on_the_tiny_model(tiny):
    tasks = world_tasks(["count", "ground"], ("ind",), n=6, seed=5)
    out = answer_swap(Encoder(*tiny), tasks, seed=0)
    for key in ("overall", "task=count", "task=ground/split=ind"):
        assert out[key]["follows"]["n"] == (12 if key == "overall" else 6)
    assert out == answer_swap(Encoder(*tiny), tasks, seed=0)  # deterministic
    # That the swapped rationale is what gets embedded: tests/test_shipped.py, on rge-micro.
