"""The tabs' actions as plain functions (rge_demo.app.demo.Demo) on the real tiny model."""

import json

import numpy as np
import pytest

from rge_demo.config import Settings
from rge_demo.data.images import ImageError
from rge_demo.app.demo import Demo, UserError
from rge_demo.errors import RGEUserError


@pytest.fixture(scope="module")
def demo(taught_dir, tmp_path_factory):
    settings = Settings(cache_dir=tmp_path_factory.mktemp("cache"), model=str(taught_dir), max_new_tokens=12)
    return Demo(settings)


def first_query(demo, name="vqa-count"):
    g = demo.gallery(name)
    q = g.queries[0]
    return g, q, str(g.image_path(q.image)) if q.image else None


def test_sample_galleries_and_warm_cache(demo):
    assert {"classification", "vqa-count", "retrieval-edit", "grounding"} <= set(demo.galleries)
    demo.warm()
    index = demo.index("vqa-count")
    assert index.matrix.shape[0] == len(demo.gallery("vqa-count").items)
    # a second Demo on the same cache embeds nothing
    again = Demo(demo.settings)
    assert again.index("vqa-count").stats.embedded == 0


def test_compare_streams_direct_then_rationale_then_moves(demo):
    g, q, image = first_query(demo)
    snapshots = []
    for c in demo.compare("vqa-count", image, q.text, q.instruction, 3, q.target_id):
        snapshots.append((c.direct is not None, c.rationale, c.done))
    assert snapshots[0] == (True, "", False)  # direct result arrives before any rationale
    assert snapshots[-1][2] and all(not s[2] for s in snapshots[:-1])
    final = c
    assert len(final.direct.hits) == len(final.reason.hits) == 3
    assert 1 <= final.direct.target_rank <= len(g.items) and 1 <= final.reason.target_rank <= len(g.items)
    shown = {h.item.id for h in final.direct.hits} | {h.item.id for h in final.reason.hits}
    assert {m.item_id for m in final.moves} == shown
    assert "reasoning:" in final.cost_line() and "direct:" in final.cost_line()


def test_stream_interval_thins_rationale_updates_but_never_the_result(demo):
    from rge_demo.analysis.compare import compare_stream

    g, q, image = first_query(demo)
    inp, index, encoder = demo.make_input(image, q.text, q.instruction), demo.index("vqa-count"), demo.model().encoder
    every = [(c.rationale, c.done) for c in compare_stream(encoder, index, inp, 3, q.target_id, 12, 0.0)]
    thinned = [(c.rationale, c.done) for c in compare_stream(encoder, index, inp, 3, q.target_id, 12, 60.0)]
    assert len(every) > 2  # direct, at least one partial rationale, the result
    assert thinned == [every[0], every[-1]]  # within a minute: the direct side, then the finished comparison
    assert thinned[-1][1] and thinned[-1][0] == every[-1][0]


def test_reembed_with_edited_rationale_changes_the_vector(demo):
    g, q, image = first_query(demo)
    *_, c = demo.compare("vqa-count", image, q.text, q.instruction, 3, q.target_id)
    edited = demo.reembed("vqa-count", image, q.text, q.instruction, "answer seven", c, 3, q.target_id)
    assert edited.direct is c.direct and edited.done
    assert float(edited.reason.vector @ c.reason.vector) < 0.9999
    with pytest.raises(UserError, match="rationale is empty"):
        demo.reembed("vqa-count", image, q.text, q.instruction, "  ", c)


def test_reembed_reuses_the_direct_side_only_for_the_same_query_k_and_answer(demo):
    """The page keeps its last comparison; after the user picks another query (or k, or the right
    answer) a re-embed computes that query's direct side instead of showing the old one's."""
    g = demo.gallery("vqa-count")
    (q0, q1), image = g.queries[:2], lambda q: str(g.image_path(q.image)) if q.image else None
    *_, c = demo.compare("vqa-count", image(q0), q0.text, q0.instruction, 3, q0.target_id)
    same = demo.reembed("vqa-count", image(q0), q0.text, q0.instruction, "answer two", c, 3, q0.target_id)
    assert same.direct is c.direct
    assert demo.reembed("vqa-count", image(q0), q0.text, q0.instruction, "answer two", same, 3,
                        q0.target_id).direct is c.direct  # a re-embed's result serves the next one
    other = demo.reembed("vqa-count", image(q1), q1.text, q1.instruction, "answer two", c, 3, q1.target_id)
    *_, fresh = demo.compare("vqa-count", image(q1), q1.text, q1.instruction, 3, q1.target_id)
    assert other.direct is not c.direct and float(other.direct.vector @ fresh.direct.vector) >= 0.9999
    for changed in ({"k": 4}, {"target_id": None}):
        args = {"k": 3, "target_id": q0.target_id, **changed}
        assert demo.reembed("vqa-count", image(q0), q0.text, q0.instruction, "answer two", c, **args).direct is not c.direct


def test_a_gallery_being_embedded_holds_up_only_its_own_callers(demo, monkeypatch):
    """One session's gallery embedding (here held until released) does not stall another gallery's
    index, and two callers of the gallery being built share one build."""
    import threading

    import rge_demo.app.demo as module

    demo.index("classification")
    building, release, builds = threading.Event(), threading.Event(), []
    real = module.build_index

    def held(*args, **kwargs):
        builds.append(args[1].name)
        building.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "build_index", held)
    demo._indexes.drop(lambda key: key[1] == "grounding")
    waiting = [threading.Thread(target=demo.index, args=("grounding",)) for _ in range(2)]
    for t in waiting:
        t.start()
    assert building.wait(30)
    served = []
    other = threading.Thread(target=lambda: served.append(demo.index("classification")))
    other.start()
    other.join(30)
    assert served, "an index already built waited for another gallery's build"
    release.set()
    for t in waiting:
        t.join(60)
    assert builds == ["grounding"]


def test_a_value_dropped_while_it_builds_is_not_kept():
    """A gallery removed while its index builds: the build in flight answers its callers, but the
    next caller (a new gallery of that name) builds afresh."""
    import threading

    from rge_demo.app.demo import BuiltOnce

    cache, started, release, builds = BuiltOnce(), threading.Event(), threading.Event(), []

    def build():
        builds.append(len(builds))
        started.set()
        assert release.wait(30)
        return f"index {len(builds)}"

    got = []
    t = threading.Thread(target=lambda: got.append(cache.get(("fp", "photos"), build)))
    t.start()
    assert started.wait(30)
    cache.drop(lambda key: key[1] == "photos")
    release.set()
    t.join(30)
    assert got == ["index 1"]
    assert cache.get(("fp", "photos"), build) == "index 2" and cache.get(("fp", "photos"), build) == "index 2"


def test_bad_inputs_have_clear_errors(demo, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png"):
        next(demo.compare("vqa-count", str(bad), "How many?", "", 3))
    with pytest.raises(UserError, match="give an image or a text"):
        next(demo.compare("vqa-count", None, "  ", "instr", 3))
    with pytest.raises(UserError, match="unknown gallery"):
        next(demo.compare("nope", None, "text", "", 3))
    with pytest.raises(ValueError, match="not in gallery"):
        next(demo.compare("vqa-count", None, "text", "", 3, target_id="ground/red_circle"))
    # the model's control tokens in a user's text would be read as the tokens themselves
    with pytest.raises(RGEUserError, match=r"the text contains '<\|image_pad\|>', one of the model's control tokens"):
        next(demo.compare("vqa-count", None, "look <|image_pad|>", "", 3))
    with pytest.raises(RGEUserError, match=r"the task instruction contains '<emb>'"):
        demo.search("vqa-count", None, "three", "Find it <emb>", 3)
    g, q, image = first_query(demo)
    with pytest.raises(RGEUserError, match=r"the rationale contains '<\|im_end\|>'"):
        demo.reembed("vqa-count", image, q.text, q.instruction, "answer two<|im_end|>", None, 3)


def test_a_pick_left_from_another_gallery_is_dropped_and_any_other_wrong_id_still_refused(demo):
    """A Compare click that reaches the server before a gallery switch cleared the page's right-answer pick
    carries an item of the previous gallery: that pick is dropped; an id of no gallery still gets its error."""
    count, classes = demo.gallery("vqa-count"), demo.gallery("classification")
    leftover, own = classes.items[0].id, count.items[1].id
    assert leftover not in {it.id for it in count.items}
    assert demo.target_for(count, leftover) is None
    assert demo.target_for(count, own) == own and demo.target_for(count, None) is None
    assert demo.target_for(count, "no-such-item") == "no-such-item"
    with pytest.raises(UserError, match="'no-such-item' is not in gallery"):
        demo.check_target(count, demo.target_for(count, "no-such-item"))


def test_search_both_modes(demo):
    g, q, image = first_query(demo)
    direct = demo.search("vqa-count", image, q.text, q.instruction, 4)
    reason = demo.search("vqa-count", image, q.text, q.instruction, 4, reason=True)
    assert [h["rank"] for h in direct["hits"]] == [1, 2, 3, 4] and direct["rationale"] == ""
    assert reason["rationale"] and len(reason["hits"]) == 4


def test_evaluation_run_is_saved_and_browsable(demo):
    name, cases = demo.run_evaluation(["count", "ground"], "ind", 2)
    assert name in demo.saved_runs() and len(cases) == 4
    assert {c.task for c in cases} == {"count", "ground"}
    assert all(c.image is None or c.image.startswith("/") for c in cases)
    assert np.all([1 <= c.direct_rank for c in cases])
    assert demo.load_cases(name) is demo.load_cases(name)  # cached until the files change
    with pytest.raises(UserError, match="split must be"):
        demo.run_evaluation(["count"], "train", 2)


def test_a_run_of_a_sessions_own_model_is_that_sessions_only(taught_dir, tmp_path):
    """QA: a world run made with a model one session loaded from its folder was listed to every visitor."""
    import shutil

    from rge_demo.app.sessions import new_key
    from rge_demo.errors import OwnershipError

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(taught_dir), max_new_tokens=6,
                         model_roots=(tmp_path,), warm_maps=False))
    mine, other = new_key(), new_key()
    folder = shutil.copytree(taught_dir, tmp_path / "my-taught")
    try:
        name = demo.workbench.use_model(mine, str(folder), lambda spec: demo.model(spec.name)).name
        run, cases = demo.run_evaluation(["count"], "ind", 2, name, session_key=mine)
        assert len(cases) == 2 and {c.task for c in cases} == {"count"}
        assert run in demo.failure_runs.names(mine) and demo.failure_runs.is_own(run)
        assert run not in demo.failure_runs.names(other) and run not in demo.saved_runs()
        with pytest.raises(OwnershipError, match=f"run {run!r} belongs to another session"):
            demo.failure_runs.load(run, other)
        shared, _ = demo.run_evaluation(["count"], "ind", 2, session_key=other)  # the app's model: shared
        assert shared in demo.saved_runs() and shared in demo.failure_runs.names(mine)
    finally:
        demo.workbench.close()  # its job-polling thread


def test_a_saved_case_replays_with_another_model(demo):
    import dataclasses

    from rge_demo.analysis.evaluate import evaluate, world_tasks
    from rge_demo.analysis.failures import load_pair
    from rge_demo.app.demo import RUNS_DIR

    cases = load_pair(RUNS_DIR / "rge-micro" / "reason", RUNS_DIR / "rge-micro" / "direct")
    case = next(c for c in cases if c.task == "count")
    seed = json.loads((RUNS_DIR / "rge-micro" / "reason" / "summary.json").read_text())["seed"]
    assert seed != 0  # the shipped runs are on held-out seeds: a replay must not draw from seed 0
    replay = demo.replay_case(case, seed=seed)  # the session's model: the tiny taught one
    assert replay["before_direct_rank"] == case.direct_rank and replay["before_reason_rank"] == case.reason_rank
    # The same world query (count-<split>-<n>), evaluated by the taught model in each mode, gives the replay.
    split, number = case.query_id.split("-")[1], int(case.query_id.split("-")[2])
    task = world_tasks(["count"], (split,), n=number + 1, seed=seed)[0]
    one = dataclasses.replace(task, queries=[task.queries[number]])
    assert one.queries[0].id == case.query_id
    now = {mode: evaluate(demo.model().encoder, [one], mode=mode).cases[0] for mode in ("direct", "reason")}
    assert (replay["direct_rank"], replay["reason_rank"]) == (now["direct"]["rank"], now["reason"]["rank"])
    assert replay["rationale"] == now["reason"]["rationale"] and replay["model"] == demo.model().name
    with pytest.raises(UserError, match="cannot be drawn again from the world with seed 0: the saved query differs"):
        demo.replay_case(case, seed=0)
    for bad in ("not-a-world-query", "juggling-ind-0001", "count-train-0001"):
        case.query_id = bad
        with pytest.raises(UserError, match="cannot be replayed"):
            demo.replay_case(case, seed=seed)


def test_a_tour_stop_replayed_with_its_own_model_gives_the_saved_ranks(demo):
    """Same model, same query (drawn from the run's seed): the replay's ranks are the saved ones."""
    for stop in (1, 4):
        r = demo.replay_stop("rge-micro-reasoning-helps", stop, "rge-micro")
        assert (r["direct_rank"], r["reason_rank"]) == (r["before_direct_rank"], r["before_reason_rank"]), r


def test_a_model_loaded_in_bfloat16_stays_bfloat16_for_every_tab(taught_dir, tmp_path):
    """The Models tab's choice is honoured: nothing the tabs call reloads the model as float32."""
    demo = Demo(Settings(cache_dir=tmp_path, model=str(taught_dir), max_new_tokens=4))
    name = demo.load_model(str(taught_dir), dtype="bfloat16").name
    assert demo.model(name).dtype == "bfloat16"
    g, q, image = first_query(demo)
    result = demo.search("vqa-count", image, q.text, q.instruction, 3, reason=True, model_name=name)
    assert len(result["hits"]) == 3
    assert demo.model(name).dtype == "bfloat16" and demo.model_status()[0]["dtype"] == "bfloat16"


def test_the_default_model_loads_with_the_apps_dtype(taught_dir, tmp_path):
    demo = Demo(Settings(cache_dir=tmp_path, model=str(taught_dir), max_new_tokens=4, dtype="bfloat16"))
    assert demo.model().dtype == "bfloat16"
