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
    assert sizes == {"majority_shape": 4, "count": 6, "relation_colour": 5, "chart_diff": 4, "edit": 20, "ground": 20}
    for task in ("edit", "ground"):
        for it, img in world.candidates(task):
            assert it.text == "" and img.size == (84, 84) and it.label.replace(" ", "_") in it.id


def test_count_answers_match_scene(data):
    for split in world.SPLITS:
        for ex in data["count", split]:
            n = world.scene_facts(ex.scene)["counts"][ex.query.meta["ask"]["shape"]]
            assert ex.target.text == world.NUMBERS[n]
    answers = {ex.target.text for ex in data["count", "train"]}
    assert answers == set(world.NUMBERS[:6])  # answers are spread over zero..five


def test_majority_relation_chart_edit_ground_truth(data):
    for ex in data["majority_shape", "ind"]:
        shapes = [s for _, s, _ in world.scene_facts(ex.scene)["objects"]]
        counts = sorted((shapes.count(s), s) for s in set(shapes))
        assert len(counts) == 1 or counts[-1][0] > counts[-2][0]  # the majority is unique
        assert ex.target.text == counts[-1][1]
    beside = {("top left", "right of"): "top", ("centre", "above"): "top", ("centre", "below"): "bottom",
              ("bottom right", "left of"): "bottom", ("right", "left of"): "centre", ("top", "below"): "centre"}
    for ex in data["relation_colour", "train"]:
        ask = ex.query.meta["ask"]
        assert ex.query.text == f"What colour is the shape {ask['relation']} the {ask['cell']} object?"
        assert any(o.cell_name == ask["cell"] for o in ex.scene.objects)  # the anchor cell holds a shape
        if (ask["cell"], ask["relation"]) in beside:
            assert ask["beside"] == beside[ask["cell"], ask["relation"]]
        other = [o for o in ex.scene.objects if o.cell_name == ask["beside"]]
        assert other[0].colour == ex.target.text
        assert ex.rationale.endswith(f"the {ask['beside']} object is the {other[0].colour} {other[0].shape}. "
                                     f"answer {ex.target.text}")
    for ex in data["chart_diff", "train"]:
        h = {b.colour: b.height for b in ex.scene.bars}
        a, b = ex.query.meta["ask"]["colours"]
        assert world.NUMBERS[h[a] - h[b]] == ex.target.text
    for task in ("edit", "ground"):
        for ex in data[task, "train"]:
            there = next(o for o in ex.scene.objects if o.cell_name == ex.query.meta["ask"]["cell"])
            colour = ex.query.meta["ask"].get("colour", there.colour)
            assert ex.target.label == f"{colour} {there.shape}"
            if task == "edit":
                assert colour != there.colour


def _held_out(task: str, ex) -> bool:
    """Each task's OOD rule, restated from its docstring (not read from the sampler)."""
    ask = ex.query.meta["ask"]
    if task == "majority_shape":
        return (ex.target.text, ask["count"]) in {("circle", 4), ("square", 3), ("triangle", 2), ("triangle", 6),
                                                  ("cross", 5)}
    if task == "count":
        return (ask["shape"], ex.target.text) in {("circle", "zero"), ("circle", "four"), ("square", "three"),
                                                  ("triangle", "two"), ("cross", "one"), ("cross", "five")}
    if task == "relation_colour":
        return (ask["relation"], ex.target.text) in {("above", "red"), ("above", "purple"), ("below", "yellow"),
                                                     ("left of", "blue"), ("right of", "green")}
    if task == "chart_diff":
        return frozenset(ask["colours"]) in world.HELD_OUT_BAR_PAIRS
    cell = world.CELLS.index(ask["cell"])
    if task == "edit":
        return (cell + world.COLOUR_NAMES.index(ask["colour"])) % 5 == 0
    return (cell + world.SHAPES.index(ex.target.label.split()[1])) % 4 == 0


@pytest.mark.parametrize("task", sorted(world.TASKS))
def test_ood_rules(task, data):
    for split in world.SPLITS:
        for ex in data[task, split]:
            assert _held_out(task, ex) == (split == "ood"), (task, split, ex.query.text)
    # every ood answer is also a training answer: nothing the model could not have learned to say
    train_answers = {ex.target.id for ex in world.generate(task, "train", 400, seed=0)}
    assert {ex.target.id for ex in data[task, "ood"]} <= train_answers


@pytest.mark.parametrize("task", ["edit", "ground"])
def test_ood_crops_are_not_a_prior(task):
    """No split that only one or two candidates can win."""
    answers = {ex.target.id for ex in world.generate(task, "ood", 200, seed=0)}
    assert len(answers) >= 15


def _with_a_wrong_pair(examples):
    """An example with an object o and a colour c of the scene such that (c, o.shape) is absent."""
    for ex in examples:
        facts = world.scene_facts(ex.query.meta)
        present = {(x, y) for x, y, _ in facts["objects"]}
        if "purple" in facts["colours"]:
            continue
        for o in ex.scene.objects:
            for c in sorted(facts["colours"]):
                if (c, o.shape) not in present:
                    return ex, facts, o, c
    raise AssertionError("no such example")


def test_mention_check_flags_wrong_colour_and_pair(data):
    ex, facts, o, wrong = _with_a_wrong_pair(data["count", "train"])
    assert world.mention_check(ex.rationale, facts) == []
    assert "purple" in world.mention_check("top left purple circle. " + ex.rationale, facts)
    assert f"{wrong} {o.shape}" in world.mention_check(f"{o.cell_name} {wrong} {o.shape}. answer one", facts)
    chart = data["chart_diff", "train"][0]
    absent = next(c for c in world.COLOUR_NAMES if c not in {b.colour for b in chart.scene.bars})
    assert world.mention_check(chart.rationale, world.scene_facts(chart.query.meta)) == []
    assert world.mention_check(f"left {absent} 3", world.scene_facts(chart.query.meta)) == [absent]


def test_edit_result_is_not_a_hallucination(data):
    ex = data["edit", "train"][0]
    facts = world.scene_facts(ex.query.meta)
    assert world.mention_check(ex.rationale, facts) == []  # "made blue it is a blue circle"
    colour, shape = ex.query.meta["ask"]["result"]
    other = next(s for s in sorted(facts["shapes"]) if (colour, s) not in {(c, t) for c, t, _ in facts["objects"]}
                 and s != shape)
    assert world.mention_check(f"a {colour} {other}", facts) == [f"{colour} {other}"]


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
    tasks = ["majority_shape", "count"]
    g = world.write_gallery(tmp_path / "g", tasks, "ind", 3, seed=0, name="mixed", meta_task="vqa")
    assert isinstance(g, Gallery) and g.name == "mixed" and g.meta_task == "vqa"
    assert len(g.items) == 10 and len(g.queries) == 6
    assert g.candidate_instruction == world.ANSWER_INSTRUCTION
    for q in g.queries:
        assert g.image_path(q.image).is_file() and q.target_id in {it.id for it in g.items}
        assert world.answer_of(q.rationale) == g.items[g.index_of(q.target_id)].text
    first = (tmp_path / "g" / g.queries[0].image).read_bytes()
    g2 = world.write_gallery(tmp_path / "h", ["ground", "edit"], "ood", 2, seed=0, meta_task="grounding")
    assert all(g2.image_path(it.image).is_file() for it in g2.items) and len(g2.items) == 40
    again = world.write_gallery(tmp_path / "g2", tasks, "ind", 3, seed=0, name="mixed", meta_task="vqa")
    assert (tmp_path / "g2" / again.queries[0].image).read_bytes() == first
    assert (tmp_path / "g" / "manifest.json").read_text() == (tmp_path / "g2" / "manifest.json").read_text()


# ------------------------------------------------------------------- the worded world (leakage)
@pytest.fixture(scope="module")
def worded():
    return {(t, s): world.generate(t, s, N, seed=0, wordings=True) for t in world.TASKS for s in world.SPLITS}


def test_the_worded_world_has_the_plain_worlds_scenes_and_words_its_targets(data, worded):
    """Same scenes, questions and rationale bodies as the plain world; a test target is its worded
    gallery candidate, a training target its answer in a wording of its own, the rationale ending
    with the target as written; the stated answer is read without the wording."""
    for task in world.TASKS:
        gallery = {it.id: it for it, _ in world.candidates(task, wordings=True)}
        for split in world.SPLITS:
            for plain, ex in zip(data[task, split], worded[task, split]):
                assert world.scene_key(plain.scene) == world.scene_key(ex.scene) and plain.query.text == ex.query.text
                assert ex.target.id == plain.target.id and ex.target.label == plain.target.label
                written = world.worded(ex.target.label, ex.target.meta["wording"])
                head = plain.rationale[: plain.rationale.rfind("answer ")]
                assert ex.rationale == f"{head}answer {written}" and world.answer_of(ex.rationale) == ex.target.label
                if split != "train":
                    assert ex.target == gallery[ex.target.id]
                elif ex.target.text:
                    assert ex.target.text == written
                else:  # a crop in the style of its wording
                    want = world.render_single(*ex.target.label.split(), ex.target.meta["wording"])
                    assert world.png_bytes(ex.target_image) == world.png_bytes(want)
        assert {ex.target.meta["wording"] for ex in worded[task, "train"]} == set(range(len(world.WORDINGS)))
    assert all("wording" not in ex.target.meta for exs in data.values() for ex in exs)  # the plain world records none


def test_worded_galleries_and_the_wording_round_trip():
    for task in world.TASKS:
        plain = world.candidates(task)
        for i, ((it, img), (p, p_img)) in enumerate(zip(world.candidates(task, wordings=True), plain)):
            k = it.meta["wording"]
            assert it.id == p.id and it.label == p.label and p.text in ("", p.label)
            for j in range(len(world.WORDINGS)):
                assert world.unworded(world.worded(it.label, j)) == it.label
                assert world.answer_of(f"x. answer {world.worded(it.label, j)}.") == it.label
            if it.text:  # a word answer: the wording of its index
                assert k == i % len(world.WORDINGS) and it.text == world.worded(it.label, k)
            else:  # a crop: the style of (colour index + shape index)
                colour, shape = it.label.split()
                assert k == (world.COLOUR_NAMES.index(colour) + world.SHAPES.index(shape)) % len(world.WORDINGS)
                assert world.png_bytes(img) == world.png_bytes(world.render_single(colour, shape, k))
    styles = {world.png_bytes(world.render_single("red", "cross", k)) for k in range(len(world.WORDINGS))}
    assert len(styles) == len(world.WORDINGS)  # every style draws another picture
    assert world.unworded("red circle") == "red circle" and world.answer_of("answer for sure") == "for sure"
