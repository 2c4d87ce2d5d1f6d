"""The Compare tab's extra views on the real test models (rge_demo.app.compare_views): the model line,
the world scene of a gallery query (hallucination flag), sampled rationales and attribution."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rge_demo.analysis.compare import rationale_note
from rge_demo.app import compare_views as V
from rge_demo.app.demo import Demo, UserError
from rge_demo.config import Settings
from rge_demo.data import world
from rge_demo.ui.render import attribution_html, samples_html


@pytest.fixture(scope="module")
def demo(taught_dir, tmp_path_factory):
    return Demo(Settings(cache_dir=tmp_path_factory.mktemp("cache"), model=str(taught_dir), max_new_tokens=12))


@pytest.fixture(scope="module")
def random_demo(tiny_dir, tmp_path_factory):
    """The random test model: its samples at a high temperature differ from one another."""
    return Demo(Settings(cache_dir=tmp_path_factory.mktemp("cache"), model=str(tiny_dir), max_new_tokens=8))


def query(demo, name="vqa-count", i=0):
    g = demo.gallery(name)
    q = g.queries[i]
    return g, q, str(g.image_path(q.image)) if q.image else None


def test_model_line_names_the_model_and_its_profile(demo, taught_dir):
    line = V.model_line(demo)
    assert line.startswith(f"Model: **{demo.manager.resolve(str(taught_dir)).name}**")
    assert "prompt profile: **micro**" in line and "task presets" in line


def test_scene_facts_of_a_world_gallery_query_only(demo, tmp_path):
    g, q, image = query(demo)
    facts = V.scene_facts_of(g, image, q.text)
    assert facts == world.scene_facts(q.meta)
    copy = tmp_path / "upload.png"  # the page uploads a copy: the same bytes are the same scene
    shutil.copy(image, copy)
    assert V.scene_facts_of(g, str(copy), q.text) == facts
    assert V.scene_facts_of(g, str(copy), q.text + " please") is None  # another question
    q1 = g.queries[1]
    other = str(g.image_path(q1.image))
    assert q1.image != q.image and q1.text != q.text
    assert V.scene_facts_of(g, other, q.text) is None  # another scene asked this query's question
    assert V.scene_facts_of(g, other, q1.text) == world.scene_facts(q1.meta)
    assert V.scene_facts_of(g, None, q.text) is None


def test_compare_on_a_world_query_checks_the_streamed_rationale(demo):
    g, q, image = query(demo)
    facts = V.scene_facts_of(g, image, q.text)
    notes = [rationale_note(c, facts) for c in demo.compare(g.name, image, q.text, q.instruction, 3, q.target_id)]
    assert all(n.hallucinations is not None for n in notes)  # checked while it streams, not only at the end
    *_, c = demo.compare(g.name, image, q.text, q.instruction, 3, q.target_id)
    final = rationale_note(c, facts)
    assert final.hallucinations == world.mention_check(c.rationale, facts)
    assert c.model == demo.model().name and c.profile == "micro" and c.budget == 12
    assert c.direct.n_items == len(g.items) and f" of {len(g.items)}" in c.direct.rank_line()
    # the right answer is always placed, inside the top-3 or below it
    assert c.direct.target_hit.item.id == q.target_id and c.reason.target_hit.item.id == q.target_id


def test_samples_are_the_same_under_a_seed(random_demo):
    g, q, image = query(random_demo)
    args = (random_demo, g.name, image, q.text, q.instruction, q.target_id)
    a = V.sample_view(*args, n=4, temperature=1.5, seed=3)
    b = V.sample_view(*args, n=4, temperature=1.5, seed=3)
    c = V.sample_view(*args, n=4, temperature=1.5, seed=4)
    assert a.to_dict() == b.to_dict()
    assert [p.rationale for p in a.result.samples] != [p.rationale for p in c.result.samples]
    coldest = V.sample_view(*args, n=2, temperature=V.MIN_TEMPERATURE, seed=3)  # no inf / nan in the softmax
    assert len(coldest.result.samples) == 2
    d = a.to_dict()
    assert d["n"] == 4 and len(d["samples"]) == 4 and d["n_items"] == len(g.items) and d["target_id"] == q.target_id
    assert set(d["pass_at"]) == {"1", "2", "4"} and d["spread"] is not None
    assert all(1 <= s["rank"] <= len(g.items) for s in d["samples"])
    assert len(d["projection"]["samples"]) == 4
    json.dumps(d)
    html = samples_html(a)
    assert html.count("<tr") == 1 + 4 + 3  # header, the samples, then direct, greedy, centroid
    assert f"of {len(g.items)}" in html and "Spread (mean pairwise cosine)" in html and "pass@4" in html


@pytest.mark.parametrize("n, temperature, seed, match", [
    (0, 1.0, 0, r"number of samples must be in 1\.\.32, got 0"),
    (1000, 1.0, 0, r"number of samples must be in 1\.\.32, got 1000"),
    (2.5, 1.0, 0, r"number of samples must be a whole number"),
    (4, 0, 0, r"temperature must be above 0"),
    (4, -1, 0, r"temperature must be above 0"),
    (4, float("nan"), 0, r"temperature must be above 0"),
    (4, "hot", 0, r"temperature must be a number above 0"),
    (4, 50, 0, r"temperature must be at most 5"),
    (4, 1e-300, 0, r"temperature must be at least 0.01 \(for greedy reasoning use the Compare button\), got 1e-300"),
    (4, 1.0, -1, r"seed must be in 0\.\.2147483647, got -1"),
    (4, 1.0, 1e30, r"seed must be in 0\.\.2147483647, got 1e\+30$"),  # not 1000000000000000019884624838656
])
def test_bad_sampling_requests_get_one_sentence(demo, n, temperature, seed, match):
    g, q, image = query(demo)
    with pytest.raises(UserError, match=match):
        V.sample_view(demo, g.name, image, q.text, q.instruction, q.target_id, n, temperature, seed)


def test_sampling_and_attribution_need_the_right_answer(demo):
    g, q, image = query(demo)
    with pytest.raises(UserError, match="choose the right answer first"):
        V.sample_view(demo, g.name, image, q.text, q.instruction, None, 4, 1.0, 0)
    with pytest.raises(UserError, match="choose the right answer first"):
        V.attribution_view(demo, g.name, image, q.text, q.instruction, "", "answer two")
    with pytest.raises(UserError, match="rationale is empty"):
        V.attribution_view(demo, g.name, image, q.text, q.instruction, q.target_id, "   ")


def test_attribution_view_labels_and_its_rival(demo):
    g, q, image = query(demo)  # vqa-count mixes count and chart_diff: two items are called "three"
    rationale = "top left red circle, centre blue square. circles 1. answer three"
    att = V.attribution_view(demo, g.name, image, q.text, q.instruction, q.target_id, rationale)
    right = g.items[g.index_of(q.target_id)]
    assert att.right == g.index_of(q.target_id) and att.right_label.startswith(right.label)
    assert att.wrong is not None and g.items[att.wrong].label != right.label  # a namesake is no rival
    assert [p.text for p in att.sentences] == ["top left red circle, centre blue square", "circles 1", "answer three"]
    assert att.rows == 1 + 3 + 2  # one forward: full, 3 sentences out, 2 clauses of the first out
    html = attribution_html(att)
    assert html.count('class="rge-part"') == 3 + 4  # every sentence, then every clause, shaded
    for p in att.sentences:
        assert f"{p.delta_right:+.4f}" in html
    assert np.isfinite([p.delta_right for p in att.clauses]).all()


def test_tcot_view_embeds_a_reasoners_tcot_with_the_model_in_use(demo, taught_dir, tiny_dir):
    from rge_demo.app.sessions import new_key
    from rge_demo.errors import FolderNotAllowed

    g, q, img = query(demo)
    key = new_key()
    # The Reasoner field is free text: a folder the Models tab would refuse is refused here too.
    with pytest.raises(FolderNotAllowed, match="models from folders on the server are off"):
        V.tcot_view(demo, g.name, img, q.text, q.instruction, 4, q.target_id, str(tiny_dir), session_key=key)
    demo.manager.register(tiny_dir, name="tiny-reasoner")  # a shared model, as the operator's are
    same = V.tcot_view(demo, g.name, img, q.text, q.instruction, 4, q.target_id, str(taught_dir), session_key=key)
    *_, c = demo.compare(g.name, img, q.text, q.instruction, 4, q.target_id)
    assert same.tcot == c.rationale and same.side.target_rank == c.reason.target_rank  # one model in both roles
    assert [h.item.id for h in same.side.hits] == [h.item.id for h in c.reason.hits]

    other = V.tcot_view(demo, g.name, img, q.text, q.instruction, 4, q.target_id, "tiny-reasoner",
                        session_key=key)  # another Reasoner
    assert other.reasoner != other.embedder and other.tokens <= 12 and len(other.side.hits) == 4
    vec = demo.model().encoder.with_rationale([demo.make_input(img, q.text, q.instruction)], [other.tcot])[0]
    np.testing.assert_allclose(other.side.vector, vec, atol=1e-5)  # the model in use embedded its T-CoT
    with pytest.raises(UserError, match="choose a Reasoner model first"):
        V.tcot_view(demo, g.name, img, q.text, q.instruction, 4, q.target_id, "", session_key=key)


def test_counts_carry_their_noun_in_the_right_number():
    """QA: "Sampled 1 rationales", "Attributed 1 sentences and 1 clauses"."""
    from rge_demo.app.messages import counted

    assert [counted(n, "rationale") for n in (0, 1, 2)] == ["0 rationales", "1 rationale", "2 rationales"]
    assert counted(1, "query", "queries") == "1 query" and counted(3, "query", "queries") == "3 queries"
    from rge_demo.app.demo import k_note  # QA: "the gallery has 1 items"

    assert k_note(5, 1) == "k=5 but the gallery has 1 item: showing 1." and k_note(5, 5) == ""
