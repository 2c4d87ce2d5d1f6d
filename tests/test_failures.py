"""Failure cases: pairing runs, outcomes, failure-kind tags from ground truth, guided tours."""

import json
import random

import pytest

from rge_demo.analysis import failures as F
from rge_demo.analysis.tours import TourError, draft_tours, load_tours, tour_stop
from rge_demo.data import world


def _topk(first: str, second: str) -> list[dict]:
    return [{"id": f"t/{first}", "label": first, "score": 0.9}, {"id": f"t/{second}", "label": second, "score": 0.5}]


def _record(ex, rank: int, rationale: str = "", wrong: str = "x") -> dict:
    q = ex.query
    first, second = (ex.target.label, wrong) if rank == 1 else (wrong, ex.target.label)
    return {"query_id": q.id, "task": q.task, "meta_task": q.meta_task, "split": q.split,
            "instruction": q.instruction, "text": q.text, "image": q.image, "target_id": q.target_id,
            "target_label": ex.target.label, "rationale": rationale, "tokens": 20, "seconds": 0.1,
            "forced": False, "rank": rank, "topk": _topk(first, second), "correct": rank == 1,
            "hallucinations": []}


def _with_answer(rationale: str, answer: str) -> str:
    return rationale.rsplit("answer ", 1)[0] + f"answer {answer}"


def _case(ex, reason_rank=1, direct_rank=1, rationale=None, with_meta=True) -> F.Case:
    r = _record(ex, reason_rank, ex.rationale if rationale is None else rationale)
    d = _record(ex, direct_rank)
    return F.pair_runs([r], [d], [ex.query] if with_meta else None)[0]


@pytest.fixture(scope="module")
def count_ex():
    # a count scene with at least one object of the asked shape
    return next(e for e in world.generate("count", "ind", 40, seed=3) if e.target.label not in ("zero", "one"))


def test_outcomes_and_filters(count_ex):
    helps, hurts = _case(count_ex, 1, 4), _case(count_ex, 3, 1)
    both_wrong, both_right = _case(count_ex, 2, 5), _case(count_ex, 1, 1)
    assert [F.outcome(c) for c in (helps, hurts, both_wrong, both_right)] == [F.HELPS, F.HURTS, F.BOTH_WRONG,
                                                                                F.BOTH_RIGHT]
    cases = [helps, hurts, both_wrong, both_right]
    assert F.filter_cases(cases, outcome=F.HURTS) == [hurts]
    assert F.filter_cases(cases, outcome="all", task="count", split="ind") == cases
    assert F.filter_cases(cases, task="relation_colour") == []
    assert F.filter_cases(cases, meta_task=["vqa"], outcome=[F.HELPS, F.HURTS]) == [helps, hurts]
    with pytest.raises(ValueError, match="outcome"):
        F.filter_cases(cases, outcome="nonsense")
    table = F.cases_table(cases)
    assert list(table["outcome"]) == [F.HELPS, F.HURTS, F.BOTH_WRONG, F.BOTH_RIGHT]
    assert {"query_id", "direct rank", "reasoning rank", "tags", "rationale"} <= set(table.columns)


def test_pair_runs_keeps_only_shared_queries(count_ex, tmp_path):
    other = world.generate("count", "ind", 2, seed=9)[1]
    reason = [_record(count_ex, 1, count_ex.rationale), _record(other, 1, other.rationale)]
    run = tmp_path / "reason"
    run.mkdir()
    (run / "cases.jsonl").write_text("\n".join(json.dumps(r) for r in reason) + "\n")
    cases = F.pair_runs(F.read_cases(run), [_record(count_ex, 2)])
    assert [c.query_id for c in cases] == [count_ex.query.id]
    assert cases[0].facts is None and cases[0].reason_rank == 1 and cases[0].direct_rank == 2
    rec = {**_record(count_ex, 1, count_ex.rationale), "meta": count_ex.query.meta, "dataset": "count/ind"}
    case = F.pair_runs([rec], [_record(count_ex, 2)])[0]  # evaluate.py saves the query meta in the record
    assert case.facts is not None and case.ask == {"shape": count_ex.query.meta["ask"]["shape"]}
    assert F.filter_cases([case], dataset="count/ind") == [case]
    (run / "cases.jsonl").write_text('{"query_id": "a", "rank": 1}\n{"query_id": "b"}\n')
    with pytest.raises(F.CaseError, match=r"cases.jsonl:2: missing field 'rank'"):
        F.read_cases(run)


def test_tags_from_ground_truth(count_ex):
    ex = count_ex
    assert F.tag_case(_case(ex, 1, 1)) == []  # the oracle rationale: nothing to flag
    other_number = next(n for n in world.NUMBERS if n != ex.target.label)
    wrong = _case(ex, 3, 1, _with_answer(ex.rationale, other_number))
    assert F.stated_right(wrong) is False
    assert F.WRONG_RATIONALE in F.tag_case(wrong)
    assert F.RIGHT_RATIONALE_WRONG_RESULT in F.tag_case(_case(ex, 2, 1))
    # misfocused: the question asks about one shape, the rationale talks about something else
    shape = ex.query.meta["ask"]["shape"]
    other = next(c for c in world.COLOUR_NAMES if c in ex.rationale)
    misfocus = _case(ex, 2, 2, f"the {other} things are nice. answer {ex.target.label}")
    assert F.misfocused(misfocus) == [shape] and F.MISFOCUS in F.tag_case(misfocus)
    # without the saved ask, the question's words give the asked shape
    no_ask = _case(ex, 2, 2, misfocus.rationale)
    no_ask.meta.pop("ask")
    assert F.misfocused(no_ask) == [shape]
    # hallucinated colour: one the scene does not hold
    absent = next(c for c in world.COLOUR_NAMES if c not in ex.query.meta["question"]
                  and c not in {o["colour"] for o in ex.query.meta["objects"]})
    hal = _case(ex, 1, 1, f"{absent} {shape}. " + ex.rationale)
    assert absent in F.hallucinations(hal) and F.HALLUCINATION in F.tag_case(hal)
    # without scene facts, the run's own hallucination list is used
    rec = _record(ex, 1, ex.rationale)
    rec["hallucinations"] = ["purple"]
    bare = F.pair_runs([rec], [_record(ex, 1)])[0]
    assert F.tag_case(bare) == [F.HALLUCINATION]


def _write(tmp_path, name, data):
    (tmp_path / name).write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_load_tours_names_file_and_field(tmp_path):
    good = {"id": "t1", "title": "T", "summary": "", "model": "m",
            "stops": [{"query_id": "q1", "title": "s", "explanation": "e"}]}
    _write(tmp_path, "a.json", good)
    assert [t.id for t in load_tours(tmp_path)] == ["t1"]
    bad = json.loads(json.dumps(good))
    bad["id"] = "t2"
    del bad["stops"][0]["explanation"]
    _write(tmp_path, "b.json", bad)
    with pytest.raises(TourError, match=r"b\.json: stops\[0\]: missing field 'explanation'"):
        load_tours(tmp_path)
    _write(tmp_path, "b.json", {**good, "id": "t2", "stops": []})
    with pytest.raises(TourError, match=r"b\.json: field 'stops'"):
        load_tours(tmp_path)
    _write(tmp_path, "b.json", "{not json")
    with pytest.raises(TourError, match=r"b\.json: not a readable JSON"):
        load_tours(tmp_path)
    _write(tmp_path, "b.json", good)
    with pytest.raises(TourError, match=r"b\.json: field 'id' 't1' is already used"):
        load_tours(tmp_path)


def _fake_runs(n_per_task=6, seed=0):
    """Runs over every world task: oracle rationales, some with a wrong or a hallucinated answer."""
    rng = random.Random(seed)
    reason, direct, queries = [], [], []
    for task in sorted(world.TASKS):
        labels = [it.label for it, _ in world.candidates(task)]
        for ex in world.generate(task, "ind", n_per_task, seed=seed):
            wrong = rng.choice([lab for lab in labels if lab != ex.target.label])
            rationale = ex.rationale if rng.random() < 0.7 else _with_answer(ex.rationale, wrong)
            rr, dr = (1 if rng.random() < 0.6 else rng.randint(2, 5)), (1 if rng.random() < 0.4 else rng.randint(2, 5))
            queries.append(ex.query)
            reason.append(_record(ex, rr, rationale, wrong))
            direct.append(_record(ex, dr, "", wrong))
    return F.pair_runs(reason, direct, queries)


def test_draft_tours_write_valid_tours_from_real_cases(tmp_path):
    cases = _fake_runs()
    written = draft_tours(cases, tmp_path / "tours", "rge-micro", per_tour=4)
    tours = load_tours(tmp_path / "tours")
    assert len(tours) >= 3 and {t.id for t in tours} == {t.id for t in written}
    by_id = F.cases_by_id(cases)
    titles = {t.title for t in tours}
    assert {"Where reasoning helps", "Where reasoning hurts", "Hallucination and misfocus"} <= titles
    for tour in tours:
        assert tour.model == "rge-micro" and 1 <= len(tour.stops) <= 4
        for i, stop in enumerate(tour.stops):
            case, text = tour_stop(tour, i, by_id)
            assert case.query_id == stop.query_id and text == stop.explanation and len(text) > 40
        if len(tour.stops) > 1:
            assert len({by_id[s.query_id].task for s in tour.stops}) > 1  # varied tasks
    helps = next(t for t in tours if t.title == "Where reasoning helps")
    assert all(F.outcome(by_id[s.query_id]) == F.HELPS for s in helps.stops)
    with pytest.raises(IndexError):
        tour_stop(helps, len(helps.stops), by_id)
    with pytest.raises(TourError, match="not in the loaded run"):
        tour_stop(helps, 0, {})


def test_tour_explanations_state_the_relation_hops_from_the_scene():
    from rge_demo.analysis.tours import _truth, _what_it_did

    for ex in world.generate("relation_colour", "ind", 5, seed=3):
        case = F.pair_runs([_record(ex, 1, ex.rationale)], [_record(ex, 2)], [ex.query])[0]
        ask = ex.query.meta["ask"]
        there = next(o for o in ex.scene.objects if o.cell_name == ask["beside"])
        assert _truth(case) == (f"{ask['relation']} the {ask['cell']} cell is the {ask['beside']} cell, "
                                f"which holds a {there.colour} {there.shape}")
        assert _what_it_did(case) == f"found the cell {ask['relation']} the {ask['cell']} one and looked up its object"
        assert f"{there.colour} {there.shape}" in ex.rationale  # the truth agrees with the oracle rationale


# ------------------------------------------------------------------ the Failures grid, export, bars, links
@pytest.fixture(scope="module")
def mixed_cases(count_ex):
    """Four outcomes on one count query, plus a classification case, with distinct ids."""
    cls = world.generate("majority_shape", "ind", 1, seed=5)[0]
    cases = [_case(count_ex, 1, 4), _case(count_ex, 3, 1), _case(count_ex, 2, 5), _case(count_ex, 1, 1),
             _case(cls, 1, 2)]
    for i, c in enumerate(cases):
        c.query_id = f"q{i}"
    return cases


def test_search_grid_and_export_read_back_equal(mixed_cases, tmp_path):
    cases = mixed_cases
    assert F.search_cases(cases, "") == cases and F.search_cases(cases, None) == cases
    assert F.search_cases(cases, "Q4") == [cases[4]]  # case-insensitive, over the id too
    assert F.search_cases(cases, f"{cases[0].target_label} Reasoning helps") == [cases[0]]  # every word
    assert F.search_cases(cases, "no-such-word anywhere") == []
    grid = F.case_grid(cases)
    assert list(grid.columns) == list(F.GRID_COLUMNS) and list(grid["case"]) == [f"q{i}" for i in range(5)]
    assert list(grid["outcome"]) == [F.HELPS, F.HURTS, F.BOTH_WRONG, F.BOTH_RIGHT, F.HELPS]
    assert grid["direct rank"].dtype == "int64" and list(grid["direct rank"]) == [4, 1, 5, 1, 2]

    csv, parquet = F.write_export(cases[:3], tmp_path / "out", "run a/b: 3 cases")
    assert csv.name == "run_a_b_3_cases.csv" and parquet.name == "run_a_b_3_cases.parquet"
    want = F.export_frame(cases[:3])
    assert list(want.columns) == list(F.EXPORT_COLUMNS) and len(want) == 3
    for path in (csv, parquet):
        back = F.read_export(path)
        assert back.equals(want), path
    assert json.loads(want["reason_topk"][0]) == cases[0].reason_topk
    cases[0].image = "/srv/app/assets/runs/r/reason/images/q0.png"  # an absolute path on the server
    assert F.export_frame(cases[:1])["image"][0] == "q0.png"  # the export names the file, not server folders
    with pytest.raises(ValueError, match="export format"):
        F.write_export(cases, tmp_path / "out", formats=("xlsx",))


def test_p1_bars_per_task_and_meta_task_with_intervals(mixed_cases):
    bars = F.p1_bars(mixed_cases, n_boot=500, seed=1)
    count_direct = bars[(bars.level == "task") & (bars.group == "count") & (bars["mode"] == "direct")].iloc[0]
    count_reason = bars[(bars.level == "task") & (bars.group == "count") & (bars["mode"] == "reasoning")].iloc[0]
    # count: direct ranks 4, 1, 5, 1 -> 2/4; reasoning ranks 1, 3, 2, 1 -> 2/4
    assert (count_direct.p1, count_reason.p1, count_direct.n) == (0.5, 0.5, 4)
    assert 0 <= count_direct.low <= 0.5 <= count_direct.high <= 1 and count_direct.low < count_direct.high
    vqa = bars[(bars.level == "meta-task") & (bars.group == "vqa")]
    classification = bars[(bars.level == "meta-task") & (bars.group == "classification")]
    assert list(vqa["n"]) == [4, 4] and list(classification["p1"]) == [0.0, 1.0]  # direct rank 2, reasoning 1
    assert F.p1_bars(mixed_cases, n_boot=500, seed=1).equals(bars)  # seeded
    fig = F.p1_figure(bars, "run x")
    assert [t.name for t in fig.data] == ["direct", "reasoning", "direct", "reasoning"]
    assert list(fig.data[0].error_y.array) == pytest.approx(list(
        bars[(bars.level == "task") & (bars["mode"] == "direct")]["high"]
        - bars[(bars.level == "task") & (bars["mode"] == "direct")]["p1"]))


def test_case_links_round_trip_and_bad_links_are_sentences():
    from rge_demo.app.failure_runs import LinkError, case_link, parse_case_link

    link = case_link("http://host:7860/app/?__theme=dark#x", "rge micro&co", "count/ind/7")
    assert link == "http://host:7860/app/?run=rge%20micro%26co&case=count%2Find%2F7"
    from urllib.parse import parse_qsl, urlsplit

    assert parse_case_link(dict(parse_qsl(urlsplit(link).query))) == ("rge micro&co", "count/ind/7")
    assert case_link("", "r") == "?run=r" and parse_case_link({}) == (None, None)
    assert parse_case_link({"run": "  "}) == (None, None)
    with pytest.raises(LinkError, match="names case 'c' but no run"):
        parse_case_link({"case": "c"})
    with pytest.raises(LinkError, match="'run' parameter is not a usable name"):
        parse_case_link({"run": "x" * 301})


def test_cost_points_pair_each_method_with_direct_on_the_same_queries(mixed_cases):
    from rge_demo.analysis.cost import cost_figure, run_point, sampling_points

    p = run_point("run a", mixed_cases)
    # reasoning right on q0, q3, q4; direct right on q1, q3: gain (3 - 2) / 5
    assert (p.gain, p.n, p.kind) == (pytest.approx(0.2), 5, "rge")
    assert p.low <= p.gain <= p.high and p.tokens == 20 and p.seconds == pytest.approx(0.1)
    rec = lambda centroid, direct, tokens: {"centroid": {"rank": centroid}, "direct": {"rank": direct},  # noqa: E731
                                            "samples": [{"tokens": t} for t in tokens]}
    one, four = sampling_points({4: [rec(1, 2, [5, 5, 5, 5]), rec(1, 1, [3, 3, 3, 3])],
                                 1: [rec(2, 1, [7]), rec(1, 1, [9])]})
    assert (one.name, one.gain, one.tokens) == ("sampling, N=1 (centroid)", -0.5, 8.0)
    assert (four.gain, four.tokens, four.kind) == (0.5, 16.0, "sampling")
    fig = cost_figure([p, one, four], highlight="run a")
    assert [t.name for t in fig.data] == ["rge", "sampling"] and list(fig.data[0].y) == [pytest.approx(20)]
    with pytest.raises(ValueError, match="has no cases"):
        run_point("empty", [])


def test_cost_labels_of_close_points_stack_and_edge_labels_grow_inwards():
    """QA: four names piled up near 22-30 tokens and the rightmost was cut ("...N=8 (c")."""
    from rge_demo.analysis.cost import CostPoint, cost_figure

    def point(name, kind, tokens, gain):
        return CostPoint(name, kind, tokens, None, gain, gain - 0.05, gain + 0.05, 100)

    fig = cost_figure([point("rge-micro", "rge", 28.0, 0.61), point("embed-rl-micro", "embed-rl", 29.0, 0.62),
                       point("sampled, N=1 (centroid)", "sampling", 29.5, 0.60),
                       point("sampled, N=4 (centroid)", "sampling", 118.0, 0.60),
                       point("sampled, N=8 (centroid)", "sampling", 236.0, 0.60)])
    texts = {name: (text, pos) for trace in fig.data
             for name, text, pos in zip(trace.hovertext, trace.text, trace.textposition)}
    assert texts["rge-micro"][0] == "rge-micro<br>embed-rl-micro<br>sampled, N=1 (centroid)"
    assert texts["embed-rl-micro"][0] == "" and texts["sampled, N=1 (centroid)"][0] == ""
    assert texts["rge-micro"][1] == "top right" and texts["sampled, N=8 (centroid)"][1] == "top left"
    assert texts["sampled, N=4 (centroid)"] == ("sampled, N=4 (centroid)", "top center")
    low, high = fig.layout.xaxis.range
    assert low < 28.0 and high > 236.0
