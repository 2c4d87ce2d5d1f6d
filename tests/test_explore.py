"""The Explore tab's service on the real taught model: fields, colours, search, selection, caching."""

import re

import numpy as np
import pytest

from rge_demo.analysis.projection import NAMED_COLOURS, OTHER, categorical_colours, numeric_colours
from rge_demo.app import explore as X
from rge_demo.app.demo import Demo
from rge_demo.config import Settings


@pytest.fixture(scope="module")
def demo(taught_dir, tmp_path_factory):
    return Demo(Settings(cache_dir=tmp_path_factory.mktemp("cache"), model=str(taught_dir), max_new_tokens=6,
                         warm_maps=False))


@pytest.fixture(scope="module")
def proj(demo):
    return demo.projection("vqa-count", method="pca")


def test_every_query_point_carries_its_rank_outcome_and_rank_change(demo, proj):
    g = demo.gallery("vqa-count")
    n, q = len(g.items), len(g.queries)
    assert len(proj.points) == n + 2 * q and proj.result.coords.shape == (n + 2 * q, 2)
    items = proj.vectors[:n]
    all_scores = proj.vectors[n:] @ items.T  # (2Q, N): direct queries, then reasoning
    for j, query in enumerate(g.queries):
        direct, reason = proj.points[n + j], proj.points[n + q + j]
        target = [it.id for it in g.items].index(query.target_id)
        for p, scores in ((direct, all_scores[j]), (reason, all_scores[q + j])):
            assert p.rank == int((scores > scores[target]).sum()) + 1
            assert p.correct == (p.rank == 1) and p.outcome in ("right", "wrong")
        assert direct.rank_change == reason.rank_change == direct.rank - reason.rank
        assert reason.tokens is not None and reason.task and reason.split
        assert reason.hallucinations is not None  # world scenes: checked
        assert direct.hallucinations is None and direct.tokens is None
    moved = [j for j in range(q) if np.abs(proj.vectors[n + j] - proj.vectors[n + q + j]).max() > 1e-6]
    assert moved and proj.arrows == [(n + j, n + q + j) for j in moved]  # no arrow where reasoning moved nothing


def test_items_that_share_a_name_across_tasks_carry_their_task(demo, proj):
    """QA: the nearest items read "two, two" (count's and chart_diff's): named as Compare's picker names them."""
    g = demo.gallery("vqa-count")
    n = len(g.items)
    labels = [p.label for p in proj.points[:n]]
    assert "two (count)" in labels and "two (chart_diff)" in labels and "four" in labels  # "four": count's only
    assert len(set(labels)) == n
    for j, q in enumerate(g.queries):  # a query's label is its right answer's name
        assert proj.points[n + j].label == labels[[it.id for it in g.items].index(q.target_id)]


def test_colour_and_size_by_every_field_restyle_without_re_projecting(demo, proj):
    misses = demo._projections.stats["misses"]
    for field in X.COLOUR_FIELDS:
        for size in X.SIZE_FIELDS:
            s = X.style(proj, field, size)
            assert len(s["color"]) == len(s["size"]) == len(proj.points)
            assert sum(k[2] for k in s["key"]) == len(proj.points)  # every point in the key once
    assert demo.projection("vqa-count", method="pca") is proj  # the map cache
    assert demo._projections.stats["misses"] == misses
    sized = X.style(proj, "label", "rationale length")["size"]
    assert len(set(sized)) > 1  # rationale lengths differ, items get the smallest size
    n_items = sum(p.kind == "item" for p in proj.points)
    for field in ("outcome", "rank change"):  # the grey group says what it is (QA: "- (20)")
        key = {k[0]: k[2] for k in X.style(proj, field)["key"]}
        assert key["gallery items (no value)"] == n_items and "-" not in key


def test_colour_names_are_drawn_in_their_colour_and_the_palette_stays_readable():
    colours, key = categorical_colours(["green square", "blue cross", "red circle", "two", "three", "two"])
    assert colours[:3] == [NAMED_COLOURS["green"], NAMED_COLOURS["blue"], NAMED_COLOURS["red"]]
    assert colours[3] == colours[5] != colours[4] and key[0] == ["two", colours[3], 2]
    many = [f"label{i}" for i in range(50)]
    colours, key = categorical_colours(many)
    assert len(key) == 21 and key[-1][0] == "other (30 values)" and colours.count(OTHER) == 30
    assert len({k[1] for k in key[:-1]}) == 20  # no colour repeats before "other"
    colours, key = numeric_colours([-3, 0, 3, None], diverging=True)
    assert colours[0] != colours[2] and colours[3] == "#c0c0c0" and sum(k[2] for k in key) == 4


def test_labels_that_are_not_colours_do_not_take_a_named_colours_hue():
    """QA (vqa-ood): "one" was drawn #e15759 beside "red" #d62728, "three" beside "blue", and so on."""
    from rge_demo.analysis.projection import _lab

    values = ["red", "blue", "green", "yellow", "one", "two", "three", "four", "zero", "five"]
    colours, key = categorical_colours(values)
    assert colours[:4] == [NAMED_COLOURS[c] for c in ("red", "blue", "green", "yellow")]
    assert len(set(colours)) == len(values)
    gaps = [float(np.linalg.norm(_lab(a) - _lab(b))) for a in colours[:4] for b in colours[4:]]
    assert min(gaps) >= 30  # CIE76: each number's colour tells apart from every named colour


def test_whole_numbers_get_whole_number_bins():
    """Rank changes were keyed "-3.43 .. -2.29": bins a rank change cannot fall in."""
    _, key = numeric_colours([-3, 0, 3, None], diverging=True)
    assert [(k[0], k[2]) for k in key] == [("-3", 1), ("0", 1), ("3", 1), ("-", 1)]  # bins with points only
    colours, key = numeric_colours([-12, 0, 5, 1, -1], diverging=True)
    assert [k[0] for k in key] == ["-12 .. -9", "-4 .. -1", "0", "1 .. 4", "5 .. 8"]  # not "-8 .. -5" nor "9 .. 12"
    assert [k[2] for k in key] == [1, 1, 1, 1, 1] and colours[3] == key[3][1]  # 1 is in "1 .. 4"
    # the scale stays centred on 0; the key names only bins that hold points (QA: a map of gains listed
    # "-40 .. -29", "-28 .. -17", ... each with no point)
    colours, key = numeric_colours([0, 3, 40, 12], diverging=True)
    assert [k[0] for k in key] == ["0", "1 .. 13", "27 .. 40"] and [k[2] for k in key] == [1, 2, 1]
    assert colours[0] == key[0][1] and colours[2] == key[-1][1] != numeric_colours([0, 40])[0][1]
    _, key = numeric_colours([0.25, 0.5], diverging=True)  # fractional bins likewise
    assert key[0][0].startswith("0.143") and key[-1][0].endswith(" 0.714") and len(key) == 2 and sum(k[2] for k in key) == 2
    _, key = numeric_colours([0, 128, 17, 33])  # token counts
    assert [k[0] for k in key] == ["0 .. 17", "18 .. 35", "110 .. 128"] and [k[2] for k in key] == [2, 1, 1]
    _, key = numeric_colours([0.1, 0.5, 0.9])  # fractions keep fractional bins
    assert [k[0] for k in key] == ["0.1 .. 0.214", "0.443 .. 0.557", "0.786 .. 0.9"]


def test_search_selection_neighbours_and_payload(proj):
    hits = X.search(proj, "SQUARE")
    assert hits and all("square" in " ".join((proj.points[i].label, proj.points[i].text, proj.points[i].rationale)).lower()
                        for i in hits)
    assert X.search(proj, "  ") == []
    # every word, in any order (QA: "blue square" found 4 points, "square blue" none)
    a, b = next(p.text for p in proj.points if p.text and len(p.text.split()) >= 3).lower().split()[1:3]
    both = X.search(proj, f"{a} {b}")
    assert both and both == X.search(proj, f"{b} {a}") == X.search(proj, f"{b.upper()}   {a}")
    assert set(both) <= set(X.search(proj, a)) & set(X.search(proj, b))
    assert X.check_points(proj, [3, "3", 1]) == [3, 1]
    for bad in ([10_000], ["x"], [-1]):
        with pytest.raises(X.ExploreError, match="point"):
            X.check_points(proj, bad)
    cells = X.grid(proj, hits)
    assert [c["point"] for c in cells] == hits[:X.MAX_GRID]
    near = X.neighbours(proj, 0)
    assert len(near) >= 5 and all(p.kind == "item" for p, _ in near)
    assert [s for _, s in near] == sorted((s for _, s in near), reverse=True)
    # beyond the 5th, only items tied with it at the 3 decimals shown, and every such item (QA: a twin left out)
    n_items = proj.result.n_items
    twins = 0
    for point in range(n_items, len(proj.points)):
        near = X.neighbours(proj, point)
        fifth = f"{near[4][1]:.3f}"
        assert all(f"{s:.3f}" == fifth for _, s in near[5:])
        listed = {p.id for p, _ in near}
        scores = proj.vectors[:n_items] @ proj.vectors[point]
        assert not [i for i in range(n_items) if proj.points[i].id not in listed and f"{scores[i]:.3f}" == fifth]
        twins += len(near) > 5
    assert twins  # vqa-count's twin items ("two" of count and of chart_diff) do end some lists
    data = X.payload(proj)
    assert len(data["x"]) == len(data["kind"]) == len(data["thumb"]) == data["n"] == len(proj.points)
    assert all(t.startswith("data:image/png;base64,") == (p.image is not None) for t, p in zip(data["thumb"], proj.points))
    assert any(data["thumb"])  # the queries' scenes
    assert np.allclose(data["x"], proj.result.coords[:, 0], atol=1e-3)


def test_bad_fields_are_named(proj):
    with pytest.raises(X.ExploreError, match="colour by one of"):
        X.style(proj, "shoe size")
    with pytest.raises(X.ExploreError, match="size by one of"):
        X.style(proj, "label", "label")


def test_payloads_travel_by_unguessable_tokens_and_expire():
    store = X.Payloads(capacity=2)
    a, b = store.put({"n": 1}), store.put({"n": 2})
    assert a != b and len(a) == 32 and store.get(a) == {"n": 1}
    store.put({"n": 3})  # over capacity: the oldest goes
    with pytest.raises(X.ExploreError, match="expired: press Project again"):
        store.get(a)
    with pytest.raises(X.ExploreError):
        store.get(None)
    assert store.get(b) == {"n": 2}


def test_the_detail_panel_ranks_tied_neighbours_as_compare_does(proj):
    """QA: two "two" items at +0.140 were listed 3rd and 4th; Compare shows them "=3", marked as a tie."""
    from rge_demo.ui.explore import _point_html

    items = [p for p in proj.points if p.kind == "item"][:4]
    page = _point_html(items[0], list(zip(items, (0.5, 0.2, 0.14, 0.1404))))
    cells = re.findall(r"<tr><td>([^<]*)</td>", page)
    assert cells == ["1", "2", "=3", "=3"] and page.count('class="rge-tie"') == 2
