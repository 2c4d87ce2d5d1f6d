"""The Compare tab's read-outs (rge_demo.analysis.compare and ui/render): ties, rank of N, the right
answer outside the top-k, one badge per moved item, the rationale's note. Hand-made vectors, no model."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rge_demo.analysis.compare import Comparison, Side, _side, moves, rationale_note, shown_ranks
from rge_demo.data import world
from rge_demo.data.items import Gallery, Item
from rge_demo.embedding.index import GalleryIndex
from rge_demo.ui.render import hits_html, moves_html, note_html

IDS = ["count/three", "count/two", "chart_diff/two", "count/one", "count/four", "count/zero"]
SCORES = [0.9, 0.7384, 0.7381, 0.5, 0.2, -0.1]  # the two "two"s are equal at 3 decimals


def unit_rows(scores) -> np.ndarray:
    """(N, 1 + N) unit rows ``(s_i, sqrt(1 - s_i^2) e_i)``: their cosine with ``e_0`` is ``scores``, and
    :func:`query_for` finds a query for any other scores."""
    s = np.asarray(scores, dtype=np.float64)
    rows = np.zeros((len(s), 1 + len(s)))
    rows[:, 0] = s
    rows[np.arange(len(s)), 1 + np.arange(len(s))] = np.sqrt(1 - s ** 2)
    return rows.astype(np.float32)


def query_for(target_scores, base=SCORES, x: float = 0.0) -> np.ndarray:
    """A unit query whose cosines with ``unit_rows(base)`` are ``target_scores`` up to one positive scale."""
    s, t = np.asarray(base, dtype=np.float64), np.asarray(target_scores, dtype=np.float64)
    q = np.concatenate([[x], (t - x * s) / np.sqrt(1 - s ** 2)])
    return (q / np.linalg.norm(q)).astype(np.float32)


@pytest.fixture()
def index(tmp_path):
    items = [Item(i, text=i.split("/")[1], label=i.split("/")[1]) for i in IDS]
    return GalleryIndex(Gallery("mixed", tmp_path, items), unit_rows(SCORES))


QUERY = np.eye(1 + len(IDS), dtype=np.float32)[0]


def test_shown_ranks_share_a_rank_when_equal_at_three_decimals():
    ranks, tied = shown_ranks(np.array([0.9, 0.7384, 0.7381, 0.7376, 0.7374, 0.5]))
    # 0.738, 0.738, 0.738 (0.7376 rounds up) tie at =2; 0.737 is the next rank after three of them
    assert ranks.tolist() == [1, 2, 2, 2, 5, 6]
    assert tied.tolist() == [False, True, True, True, False, False]
    ranks, tied = shown_ranks(np.array([0.1, 0.1, 0.1]))
    assert ranks.tolist() == [1, 1, 1] and tied.all()


def test_side_gives_tied_ranks_rank_of_n_and_the_right_answer_outside_the_top_k(index):
    side = _side(index, QUERY, 3, "count/one", 0.0)
    assert [h.item.id for h in side.hits] == IDS[:3]
    assert [p.label for p in side.places] == ["1", "=2", "=2"]
    assert side.n_items == 6 and side.target_rank == 4
    assert side.rank_line() == "right answer at rank 4 of 6"
    assert side.target_outside and side.target_hit.item.id == "count/one"
    assert side.target_hit.score == pytest.approx(0.5, abs=1e-6)
    tied = _side(index, QUERY, 3, "chart_diff/two", 0.0)
    assert tied.rank_line() == "right answer at rank =2 of 6, tied" and not tied.target_outside
    assert _side(index, QUERY, 3, None, 0.0).rank_line() == ""


def test_hits_html_marks_ties_and_adds_a_separate_row_for_the_right_answer(index, tmp_path):
    html = hits_html(_side(index, QUERY, 3, "count/one", 0.0), tmp_path, "count/one", "Direct (no reasoning)")
    table = html.split('<table class="rge-hits">')[1].split("</table>")[0]
    assert table.count("<tr") == 1 + 3  # header + the top-3: the right answer is not a row of the table
    assert re.findall(r"<tr(?: class=\"target\")?><td>(=?\d+)</td>", table) == ["1", "=2", "=2"]
    assert table.count('class="rge-tie"') == 2
    assert "right answer at rank 4 of 6" in html
    extra = html.split("</table>")[1]
    assert 'class="rge-offtop"' in extra and "one" in extra and "+0.500" in extra and "outside the top 3" in extra
    inside = hits_html(_side(index, QUERY, 5, "count/one", 0.0), tmp_path, "count/one", "Direct")
    assert 'class="rge-offtop"' not in inside and '<tr class="target"><td>4</td>' in inside


def test_one_badge_per_moved_item_each_named_apart(index):
    direct = _side(index, QUERY, 3, None, 0.0)  # three 1, two =2, two =2
    reason = _side(index, query_for([0.6, 0.95, 0.94, 0.1, 0.3, 0.2]), 3, None, 0.0)  # two, two, three
    m = moves(index, direct, reason, 3)
    assert sorted(x.item_id for x in m) == sorted(IDS[:3])  # every shown item once
    assert {x.item_id: x.change for x in m} == {"count/two": "up 1", "chart_diff/two": "same", "count/three": "down 2"}
    html = moves_html(m)
    badges = re.findall(r'<span class="rge-badge rge-(?!same)[^"]*"[^>]*>([^<]*)</span>', html)
    assert badges == ["two (count): up 1", "three: down 2"]  # one per moved item; the two "two"s told apart
    same = re.findall(r'<span class="rge-badge rge-same"[^>]*>([^<]*)</span>', html)
    assert same == ["two (chart_diff) (2)"] and "unchanged (rank):" in html  # the rest once each, in grey


def test_tied_items_that_swap_places_did_not_move(index):
    direct = _side(index, QUERY, 3, None, 0.0)
    # the same ranking, the two "two"s swapped inside their tie (0.7381 vs 0.7384 the other way round)
    reason = _side(index, query_for(np.array(SCORES)[[0, 2, 1, 3, 4, 5]], x=1.0), 3, None, 0.0)
    assert [h.item.id for h in reason.hits] == ["count/three", "chart_diff/two", "count/two"]
    m = moves(index, direct, reason, 3)
    assert all(x.change == "same" for x in m)
    assert "nothing: both lists hold the same items" in moves_html(m)
    assert moves_html(m).count('class="rge-badge rge-same"') == 3


def scene_meta():
    """A world scene (as a gallery query's meta): a red circle and a blue square; asks for circles."""
    return {"kind": "shapes", "ask": {"shape": "circle"}, "bars": [], "font_size": 0, "ink": "black", "offset": [0, 0],
            "text": "", "question": "How many circles are there?",
            "objects": [{"cell": "top left", "colour": "red", "dx": 0, "dy": 0, "shape": "circle", "size": "small"},
                        {"cell": "centre", "colour": "blue", "dx": 0, "dy": 0, "shape": "square", "size": "small"}]}


def done(rationale: str, tokens: int = 5, forced: bool = False, budget: int = 16, rule: str = "append_emb") -> Comparison:
    return Comparison(reason=Side([], tokens=tokens), rationale=rationale, forced=forced, done=True, budget=budget,
                      budget_rule=rule)


def test_rationale_note_flags_a_hallucination_from_the_scene():
    facts = world.scene_facts(scene_meta())
    bad = rationale_note(done("top left red circle, centre green cross. circles 1. answer one"), facts)
    assert bad.hallucinations == ["green", "green cross", "cross"]
    assert "Possible hallucination" in bad.sentences[0] and "'green cross'" in bad.sentences[0]
    assert "rge-halluc" in note_html(bad)
    clean = rationale_note(done("top left red circle, centre blue square. circles 1. answer one"), facts)
    assert clean.hallucinations == [] and clean.sentences == []
    assert "every colour and shape the rationale names is in the scene" in note_html(clean)
    unknown = rationale_note(done("centre green cross. answer one"), None)  # not a world query: no check
    assert unknown.hallucinations is None and note_html(unknown) == ""
    # while streaming, a half-written last word is not checked ("gre" may become "grey" or "green")
    streaming = Comparison(rationale="top left red circle, centre green", done=False)
    assert rationale_note(streaming, facts).hallucinations == []
    streaming.rationale = "top left red circle, centre green cross"
    assert rationale_note(streaming, facts).hallucinations == ["green"]


def test_rationale_note_explains_an_empty_and_a_cut_off_rationale():
    empty = rationale_note(done("", tokens=0))
    assert empty.empty and "wrote no rationale" in empty.sentences[0] and "same input as the direct side" in empty.sentences[0]
    cut = rationale_note(done("top left red circle, top left red circle, top", tokens=16, forced=True, budget=16))
    assert cut.forced and "all 16 tokens of its budget" in cut.sentences[0] and "<emb> was appended" in cut.sentences[0]
    last = rationale_note(done("top left", tokens=16, forced=True, budget=16, rule="last_token"))
    assert "last written token's state" in last.sentences[0]
    assert rationale_note(done("answer one")).sentences == []
    assert "&lt;emb&gt;" in note_html(empty)  # escaped in the page


def test_cost_line_names_the_model_and_its_profile():
    c = Comparison(direct=Side([], seconds=0.1), model="rge-micro", profile="micro")
    assert c.cost_line().startswith("model rge-micro (profile micro) | direct: 1 forward pass")
