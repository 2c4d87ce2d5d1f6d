"""The synthetic micro world: determinism, gallery membership, oracle answers, OOD rules, round trips."""

import pytest

from rge_demo.data import world
from rge_demo.data.items import Gallery

N = 40


@pytest.fixture(scope="module")
def data():
    return {(t, s): world.generate(t, s, N, seed=0) for t in world.TASKS for s in world.SPLITS}


def _png(img):
    return None if img is None else world.png_bytes(img)


@pytest.mark.parametrize("task", sorted(world.TASKS))
def test_deterministic(task, data):
    again = world.generate(task, "train", N, seed=0)
    for a, b in zip(data[task, "train"], again):
        assert _png(a.query_image) == _png(b.query_image)
        assert a.rationale == b.rationale and a.target.id == b.target.id and a.query == b.query
    other_seed = world.generate(task, "train", N, seed=1)
    assert [e.query.rationale for e in other_seed] != [e.query.rationale for e in again]


@pytest.mark.parametrize("task", sorted(world.TASKS))
def test_splits_are_disjoint(task, data):
    train = {world.scene_key(e.scene) for e in data[task, "train"]}
    if task == "indirect_colour":  # text-only: disjoint by (thing, template), not by scene
        key = lambda e: (e.query.meta["ask"]["thing_index"], e.query.text)  # noqa: E731
        train = {key(e) for e in data[task, "train"]}
        assert not train & {key(e) for s in ("ind", "ood") for e in data[task, s]}
        return
    for split in ("ind", "ood"):
        test = {world.scene_key(e.scene) for e in data[task, split]}
        assert not train & test, f"{task}: {split} repeats a train scene"


@pytest.mark.parametrize("task", sorted(world.TASKS))
def test_targets_answers_and_rationales(task, data):
    gallery = {it.id: it for it, _ in world.candidates(task)}
    for split in world.SPLITS:
        for ex in data[task, split]:
            q = ex.query
            assert q.target_id in gallery and gallery[q.target_id] == ex.target
            assert q.rationale == ex.rationale and q.task == task and q.split == split
            assert q.meta_task == world.TASKS[task].meta_task
            assert world.answer_of(ex.rationale) == (ex.target.text or ex.target.label)
            assert 10 <= len(ex.rationale.split()) <= 60, ex.rationale
            assert ex.rationale.count("answer") == 1
            assert world.mention_check(ex.rationale, world.scene_facts(q.meta)) == []
            assert (q.image is None) == (ex.query_image is None)
            if ex.query_image is not None:
                assert ex.query_image.size == (84, 84) and ex.query_image.mode == "RGB"


def test_candidate_galleries():
    sizes = {t: len(world.candidates(t)) for t in world.TASKS}
    assert sizes == {"majority_colour": 5, "majority_shape": 4, "count": 7, "relation_colour": 5,
                     "chart_diff": 4, "describe": 50, "text_to_word": 5, "indirect_colour": 5, "ground": 20}
    for it, img in world.candidates("ground"):
        assert it.text == "" and img.size == (84, 84) and it.label.replace(" ", "_") in it.id


def test_count_answers_match_scene(data):
    for split in world.SPLITS:
        for ex in data["count", split]:
            n = world.scene_facts(ex.scene)["counts"][ex.query.meta["ask"]["shape"]]
            assert ex.target.text == world.NUMBERS[n]
    answers = {ex.target.text for ex in data["count", "train"]}
    assert len(answers) >= 6  # answers are spread over zero..six


def test_majority_and_relation_and_chart_truth(data):
    for ex in data["majority_colour", "ind"]:
        colours = [c for c, _, _ in world.scene_facts(ex.scene)["objects"]]
        counts = sorted((colours.count(c), c) for c in set(colours))
        assert len(counts) == 1 or counts[-1][0] > counts[-2][0]  # the majority is unique
        assert ex.target.text == counts[-1][1]
    for ex in data["relation_colour", "train"]:
        ask = ex.query.meta["ask"]
        anchor = [o for o in ex.scene.objects if [o.colour, o.shape] == ask["anchor"]]
        assert len(anchor) == 1
        dr, dc = world.RELATIONS[ask["relation"]]
        other = [o for o in ex.scene.objects if o.cell == anchor[0].cell + 3 * dr + dc]
        assert other[0].colour == ex.target.text
    for ex in data["chart_diff", "train"]:
        h = {b.colour: b.height for b in ex.scene.bars}
        a, b = ex.query.meta["ask"]["colours"]
        assert world.NUMBERS[h[a] - h[b]] == ex.target.text


def test_ood_rules(data):
    scene_tasks = [t for t in world.TASKS if t not in ("chart_diff", "text_to_word", "indirect_colour")]
    for task in scene_tasks:
        for split in ("train", "ind"):
            for ex in data[task, split]:
                assert not set(world.HELD_OUT_PAIRS) & {(o.colour, o.shape) for o in ex.scene.objects}, task
    for task in ("majority_colour", "majority_shape", "count"):
        for ex in data[task, "ood"]:
            assert set(world.HELD_OUT_PAIRS) & {(o.colour, o.shape) for o in ex.scene.objects}, task
    for ex in data["ground", "ood"]:
        assert tuple(ex.target.label.split()) in world.HELD_OUT_PAIRS
    for ex in data["relation_colour", "ood"]:
        assert tuple(ex.query.meta["ask"]["anchor"]) in world.HELD_OUT_PAIRS
    for split in world.SPLITS:
        for ex in data["chart_diff", split]:
            held = frozenset(ex.query.meta["ask"]["colours"]) in world.HELD_OUT_BAR_PAIRS
            assert held == (split == "ood")
        for ex in data["describe", split]:
            colours = {o.colour for o in ex.scene.objects}
            assert any(p <= colours for p in world.HELD_OUT_CAPTION_PAIRS) == (split == "ood")
        for ex in data["text_to_word", split]:
            assert (ex.scene.ink == "black") == (split != "ood") and ex.scene.ink != ex.scene.text
        for ex in data["indirect_colour", split]:
            assert (ex.query.meta["ask"]["thing_index"] == 4) == (split == "ood")


def test_mention_check_flags_wrong_colour_and_pair(data):
    ex = next(e for e in data["count", "train"] if "purple" not in {o.colour for o in e.scene.objects})
    facts = world.scene_facts(ex.query.meta)
    assert world.mention_check(ex.rationale, facts) == []
    assert "purple" in world.mention_check("top left purple circle. " + ex.rationale, facts)
    o = ex.scene.objects[0]
    wrong = next(c for c in facts["colours"] if (c, o.shape) not in {(x, y) for x, y, _ in facts["objects"]}) \
        if len(facts["colours"]) > 1 else None
    if wrong:
        assert f"{wrong} {o.shape}" in world.mention_check(f"{o.cell_name} {wrong} {o.shape}. answer one", facts)
    assert world.mention_check("purple everything", world.scene_facts(data["text_to_word", "train"][0].query.meta)) == []


def test_mention_check_on_a_built_scene():
    scene = world.Scene("shapes", (world.Obj("red", "circle", "small", 0), world.Obj("blue", "square", "large", 4)))
    facts = world.scene_facts(scene)
    assert facts["counts"] == {"circle": 1, "square": 1, "triangle": 0, "cross": 0}
    assert world.mention_check("top left red circle, centre blue square. answer one", facts) == []
    assert world.mention_check("top left red square, centre green triangle", facts) == [
        "red square", "green", "green triangle", "triangle"]
    # a shape the question introduces (count of an absent shape) is not a hallucination
    meta = {**scene.to_dict(), "question": "How many crosses are there?"}
    assert world.mention_check("crosses: 0. answer zero", world.scene_facts(meta)) == []
    assert world.mention_check("crosses: 0. answer zero", facts) == ["cross"]


def test_answer_of():
    assert world.answer_of("squares: 2. answer two") == "two"
    assert world.answer_of("answer one red shape, two blue shapes.") == "one red shape, two blue shapes"
    assert world.answer_of("no conclusion") is None


def test_write_gallery_round_trip(tmp_path):
    tasks = ["majority_colour", "majority_shape"]
    g = world.write_gallery(tmp_path / "g", tasks, "ind", 3, seed=0, name="cls", meta_task="classification")
    assert isinstance(g, Gallery) and g.name == "cls" and g.meta_task == "classification"
    assert len(g.items) == 9 and len(g.queries) == 6
    assert g.candidate_instruction == world.ANSWER_INSTRUCTION
    for q in g.queries:
        assert g.image_path(q.image).is_file() and q.target_id in {it.id for it in g.items}
        assert world.answer_of(q.rationale) == g.items[g.index_of(q.target_id)].text
    first = (tmp_path / "g" / g.queries[0].image).read_bytes()
    g2 = world.write_gallery(tmp_path / "h", ["ground", "indirect_colour"], "ood", 2, seed=0, meta_task="grounding")
    assert all(g2.image_path(it.image).is_file() for it in g2.items)
    assert any(q.image is None for q in g2.queries)  # indirect_colour queries are text-only
    again = world.write_gallery(tmp_path / "g2", tasks, "ind", 3, seed=0, name="cls", meta_task="classification")
    assert (tmp_path / "g2" / again.queries[0].image).read_bytes() == first
    assert (tmp_path / "g" / "manifest.json").read_text() == (tmp_path / "g2" / "manifest.json").read_text()
