"""Leave-one-out attribution of a rationale's sentences and clauses (rge_demo.analysis.attribution)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TAUGHT, taught_inputs

from rge_demo.analysis import attribution as A
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EmbedInput

LONG = TAUGHT["long"]  # "top left red circle, top blue square, centre green cross, bottom yellow triangle. squares 1. answer one"


def test_parts_and_their_leave_one_out_texts():
    sentences, clauses = A.variants(LONG)
    assert [p.text for p in sentences] == [
        "top left red circle, top blue square, centre green cross, bottom yellow triangle", "squares 1", "answer one"]
    assert [p.text for p in clauses] == ["top left red circle", "top blue square", "centre green cross",
                                         "bottom yellow triangle", "squares 1", "answer one"]
    for p in [*sentences, *clauses]:
        assert LONG[p.start:p.end] == p.text
    assert (sentences[2].start, sentences[2].end) == (len(LONG) - len("answer one"), len(LONG))
    assert sentences[2].without == "top left red circle, top blue square, centre green cross, bottom yellow triangle. squares 1"
    assert sentences[0].without == "squares 1. answer one"
    assert clauses[1].without == "top left red circle, centre green cross, bottom yellow triangle. squares 1. answer one"
    assert clauses[1].level == "clause" and clauses[1].sentence == 0
    assert clauses[5] is sentences[2]  # a one-clause sentence is its own clause
    # a single sentence without separators: removing it leaves the empty rationale
    (only,), (same,) = A.variants("answer two")
    assert only.without == "" and same is only
    assert A.variants("") == ([], [])


@pytest.fixture()
def setup(taught):
    enc = Encoder(*taught)
    cands = enc.direct([EmbedInput("Represent the given text.", t, None) for t in ("one", "two", "three", "red")])
    return enc, taught_inputs()[2], cands  # the "long" query (with an image)


def test_one_batched_forward_for_all_variants(setup, monkeypatch):
    enc, inp, cands = setup
    inner = enc.model.model
    seen = []
    real = inner.forward
    monkeypatch.setattr(inner, "forward", lambda *a, **k: (seen.append(k["input_ids"].shape[0]), real(*a, **k))[1])
    before = enc.forward_passes
    att = A.attribute(enc, inp, LONG, cands, target=0)
    assert enc.forward_passes - before == 1
    assert seen == [8]  # full + 3 sentences left out + 4 clauses of the first sentence left out
    assert att.rows == 8 and att.vectors.shape == (8, cands.shape[1])


def test_contributions_equal_separate_embeddings(setup):
    enc, inp, cands = setup
    att = A.attribute(enc, inp, LONG, cands, target=0)
    full = enc.with_rationale([inp], [LONG])[0]  # (D,)
    scores = cands @ full  # (4,)
    others = [j for j in range(len(cands)) if j != 0]
    assert att.wrong == others[int(np.argmax(scores[others]))]  # the top-1 wrong candidate
    assert att.cos_right == pytest.approx(float(scores[0]), abs=1e-4)
    for p in [*att.sentences, *att.clauses]:
        alone = enc.with_rationale([inp], [p.without])[0]
        assert p.cos_right == pytest.approx(float(cands[0] @ alone), abs=1e-4)
        assert p.delta_right == pytest.approx(float(scores[0] - cands[0] @ alone), abs=1e-4)
        assert p.delta_wrong == pytest.approx(float(scores[att.wrong] - cands[att.wrong] @ alone), abs=1e-4)
    # leaving a part out changes the embedding: not every delta is zero
    assert max(abs(p.delta_right) for p in att.sentences) > 1e-4


def test_spans_for_shading(setup):
    enc, inp, cands = setup
    att = A.attribute(enc, inp, LONG, cands, target=0, wrong=2)
    assert att.wrong == 2
    spans = att.spans("clause")
    assert [s["text"] for s in spans] == [p.text for p in att.clauses]
    for s in spans:
        assert set(s) == {"text", "start", "end", "delta_right", "delta_wrong"}
        assert LONG[s["start"]:s["end"]] == s["text"]
    assert [s["start"] for s in spans] == sorted(s["start"] for s in spans)
    json.dumps(att.to_dict())
    assert att.strongest("sentence") in att.sentences
    with pytest.raises(A.AttributionError, match="level"):
        att.spans("word")


def test_bad_requests(setup, monkeypatch):
    enc, inp, cands = setup
    with pytest.raises(A.AttributionError, match="target index 9"):
        A.attribute(enc, inp, LONG, cands, target=9)
    with pytest.raises(A.AttributionError, match="wrong candidate"):
        A.attribute(enc, inp, LONG, cands, target=0, wrong=0)
    one = A.attribute(enc, inp, "answer one", cands[:1], target=0)
    assert one.wrong is None and one.sentences[0].delta_wrong is None
    # A pasted wall of parts is refused before anything is embedded (QA: 1021 parts took 9 GB and 139 s).
    embedded, real = [], enc.with_rationale
    monkeypatch.setattr(enc, "with_rationale", lambda inputs, texts: embedded.append(len(texts)) or real(inputs, texts))
    wall = ". ".join(f"s{i}, t{i}" for i in range(22))  # 22 sentences + 44 clauses = 66 parts
    with pytest.raises(A.AttributionError, match=r"the rationale has 22 sentences and 44 clauses within them; "
                                                  r"attribution leaves out at most 64 parts"):
        A.attribute(enc, inp, wall, cands, target=0)
    assert embedded == []
    A.attribute(enc, inp, ". ".join(f"s{i}, t{i}" for i in range(21)), cands, target=0)  # 63 parts: allowed
    assert embedded == [1 + 63]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rge_micro_answer_part_moves_the_score_more_than_a_neutral_part():
    """On the shipped model (whose <emb> reads the answer) the `answer X` sentence matters most."""
    from rge_demo.analysis.eval_tasks import world_tasks
    from rge_demo.config import ASSETS_DIR
    from rge_demo.models.loading import load_checkpoint

    model, processor = load_checkpoint(ASSETS_DIR / "models" / "rge-micro", device="cpu", dtype="float32")
    enc = Encoder(model, processor)
    answer, neutral, signed = [], [], []
    for task in world_tasks(["relation_colour", "ground"], splits=("ind",), n=8):
        cands = enc.direct([c.item.to_input() for c in task.candidates])
        for q in task.queries:
            att = A.attribute(enc, q.item.to_input(), q.rationale, cands, q.candidate_index(task))
            last = att.clauses[-1]
            assert last.text.startswith("answer ")
            said = last.text.removeprefix("answer ")
            # neutral: a clause of the scene listing that does not name the answer (one bystander object);
            # a scene whose every object has the answer's colour has none, and is left out
            listing = [p for p in att.clauses if p.sentence == 0 and said not in p.text]
            if not listing:
                continue
            answer.append(abs(last.delta_right))
            signed.append(last.delta_right)
            neutral.append(float(np.mean([abs(p.delta_right) for p in listing])))
    assert len(answer) >= 12, len(answer)  # of 16 queries
    answer, neutral = np.array(answer), np.array(neutral)
    print(f"|delta_right| answer {answer.mean():.4f}, neutral {neutral.mean():.4f}, "
          f"answer > neutral in {np.mean(answer > neutral):.2f}, signed answer {np.mean(signed):+.4f}")
    assert answer.mean() > neutral.mean()
    assert np.mean(signed) > 0  # leaving the right answer out lowers the cosine to it
    assert np.mean(answer > neutral) > 0.5, (answer, neutral)  # in most queries, not only on average


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_failures_case_is_attributed_against_the_candidates_it_was_ranked_against(tmp_path):
    """The Failures case view's shading: the shipped run's case, its world task's candidates, rge-micro."""
    from rge_demo.analysis.eval_tasks import world_tasks
    from rge_demo.app.demo import Demo
    from rge_demo.app.failure_runs import CaseNotFound
    from rge_demo.config import Settings

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model="rge-micro"))
    runs = demo.failure_runs
    case = next(c for c in runs.load("rge-micro") if c.task == "count" and ". " in c.rationale)
    att = runs.attribute_case("rge-micro", case.query_id)
    assert att.rationale == case.rationale and len(att.sentences) >= 2
    assert att.right_label == case.target_label and att.wrong_label not in (None, case.target_label)

    # by hand: the world task's candidates, embedded directly, and the same query
    enc = demo.model().encoder
    (task,) = world_tasks([case.task], splits=(case.split,), n=1)
    cands = enc.direct([c.item.to_input() for c in task.candidates])
    target = [c.id for c in task.candidates].index(case.target_id)
    ref = A.attribute(enc, demo.make_input(case.image, case.text, case.instruction), case.rationale, cands, target)
    assert task.candidates[ref.wrong].label == att.wrong_label
    assert att.cos_right == pytest.approx(ref.cos_right, abs=1e-5)
    assert [p.delta_right for p in att.clauses] == pytest.approx([p.delta_right for p in ref.clauses], abs=1e-5)
    with pytest.raises(CaseNotFound, match="has no case 'nope'"):
        runs.attribute_case("rge-micro", "nope")
