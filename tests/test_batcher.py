"""The request collector: concurrent requests merged into one model call, each caller its own result."""

import dataclasses
import threading
import time

import pytest
import torch

from conftest import TAUGHT, colour_image, taught_inputs
from rge_demo.config import Settings
from rge_demo.embedding.batcher import BatchedEncoder, Request, SplitStreamer
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.model_process import ChildSpec, ModelProcess, ModelProcessError
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.models.manager import ModelManager

WINDOW = 0.5  # generous: the four threads must land in one window even on a busy CPU


def four_inputs():
    return taught_inputs() + [EmbedInput("Represent the given image with the following question:", "short",
                                         colour_image("green"))]


def at_once(jobs):
    """Run each job in its own thread, all released together; (results, errors) in job order."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), [None] * len(jobs)

    def run(i, job):
        barrier.wait()
        try:
            results[i] = job()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


def streamed(encoder, inp, budget=None):
    events = list(encoder.stream(inp, max_new_tokens=budget))
    return [e.text for e in events[:-1]], events[-1].result


@pytest.fixture(scope="module")
def child(taught_dir):
    """The taught model in its own process (the app's default on CPU), shared by this module's tests."""
    process = ModelProcess(ChildSpec(str(taught_dir), "cpu", "float32", None, 128, 1))
    process.start()
    yield process
    process.close()


@pytest.fixture(params=["continuous", "merged", "model-process"])
def batched(taught, request):
    """A collector that runs its calls here (reasoning by continuous batching, or merged into one
    generate call) or in the model's own process (merged)."""
    process = request.getfixturevalue("child") if request.param == "model-process" else None
    return BatchedEncoder(*taught, window=WINDOW, process=process, continuous=request.param == "continuous")


def test_four_concurrent_requests_run_in_one_generate_and_equal_one_at_a_time(taught, batched):
    plain = Encoder(*taught)
    inputs = four_inputs()
    alone = [plain.reason([x])[0] for x in inputs]
    assert [r.rationale for r in alone[:3]] == [TAUGHT[x.text] for x in inputs[:3]]  # rows stop at different steps
    jobs = [lambda x=inputs[0]: streamed(batched, x), lambda x=inputs[1]: batched.reason([x])[0],
            lambda x=inputs[2]: streamed(batched, x), lambda x=inputs[3]: batched.reason([x])[0]]
    results, errors = at_once(jobs)
    assert errors == [None] * 4
    assert batched.collector.requests["reason"] == 4 and batched.collector.calls["generate"] == 1
    for i, (ref, got) in enumerate(zip(alone, results)):
        if i in (0, 2):
            texts, got = got
            assert texts and texts[-1] == ref.rationale  # the stream carried this row's whole text ...
            assert all(ref.rationale.startswith(t) for t in texts)  # ... and only its own
        assert got.rationale == ref.rationale
        assert got.tokens == ref.tokens and got.forced is ref.forced is False and got.prompt == ref.prompt
        assert float(got.vector @ ref.vector) >= 0.9999


def test_concurrent_direct_requests_share_one_forward(taught, batched):
    plain = Encoder(*taught)
    inputs = four_inputs()
    results, errors = at_once([lambda x=x: batched.direct([x]) for x in inputs])
    assert errors == [None] * 4 and batched.collector.calls["direct"] == 1
    for x, got in zip(inputs, results):
        assert got.shape == (1, 64) and float(got[0] @ plain.direct([x])[0]) >= 0.9999


def test_compares_through_direct_and_stream_meet_in_one_direct_and_one_generate_call(taught, batched):
    """Compare's passes through direct_and_stream: four users' direct vectors in one forward, their
    rationales in one generate call, queued before any caller reads its stream, which (merged, in
    this process) continues from the direct batch's prompt cache; the plain encoder's vectors and
    rationales either way."""
    plain = Encoder(*taught)
    inputs = four_inputs()

    def compare(x):
        vector, events = batched.direct_and_stream(x)
        events = list(events)
        return vector, [e.text for e in events[:-1]], events[-1].result

    results, errors = at_once([lambda x=x: compare(x) for x in inputs])
    assert errors == [None] * 4
    assert dict(batched.collector.calls) == {"direct": 1, "generate": 1}
    shared = batched.process is None and not batched.collector.continuous
    assert batched.collector.prefix_reused == (1 if shared else 0)
    for x, (vector, texts, got) in zip(inputs, results):
        ref = plain.reason([x])[0]
        assert got.rationale == ref.rationale and got.prompt == ref.prompt and float(got.vector @ ref.vector) >= 0.9999
        assert texts and texts[-1] == ref.rationale
        assert float(vector @ plain.direct([x])[0]) >= 0.9999
    # One caller: the rationale is queued as the call returns, before its stream is read.
    before = batched.collector.requests["reason"]
    vector, events = batched.direct_and_stream(inputs[1])
    assert batched.collector.requests["reason"] == before + 1
    assert list(events)[-1].result.rationale == TAUGHT[inputs[1].text]
    assert batched.collector.prefix_reused == (2 if shared else 0)


def test_a_compare_processes_its_query_once(taught, monkeypatch):
    """The tokenizer and image processor run once per compare (a document page costs tens of ms
    each time, one caller at a time): the direct row is the reasoning row plus <emb>."""
    batched, plain = BatchedEncoder(*taught, window=WINDOW), Encoder(*taught)
    x = taught_inputs()[0]
    processed = []
    rows = batched.rows
    monkeypatch.setattr(batched, "rows", lambda inputs, *, direct: processed.append(direct) or rows(inputs, direct=direct))
    vector, events = batched.direct_and_stream(x)
    assert list(events)[-1].result.rationale == TAUGHT[x.text]
    assert processed == [False]
    assert float(vector @ plain.direct([x])[0]) >= 0.9999


def test_a_rationale_batch_that_is_not_the_held_direct_batch_reads_its_prompts(taught):
    """Two compares' direct batch is held; their rationales meet a third reasoning request in one
    generate call, which then reads every prompt itself (the held cache does not fit that batch)
    and still gives the plain encoder's results. A later direct call drops what was held."""
    batched = BatchedEncoder(*taught, window=WINDOW, continuous=False)
    plain = Encoder(*taught)
    inputs = four_inputs()
    directs = [batched.collector.submit(Request(("direct",), batched.rows([x], direct=True), keep_prefix=True))
               for x in inputs[:2]]
    assert [float(d.wait()[0] @ plain.direct([x])[0]) >= 0.9999 for d, x in zip(directs, inputs)] == [True, True]
    assert batched.collector._held is not None and batched.collector.calls["direct"] == 1
    budget = batched.max_new_tokens
    rationales = [Request(("reason", budget), batched.rows([x], direct=False), follows=d) for x, d in zip(inputs, directs)]
    rationales.append(Request(("reason", budget), batched.rows([inputs[2]], direct=False)))
    for r in reversed(rationales):  # not in the direct batch's order either
        batched.collector.submit(r)
    for r, x in zip(rationales, inputs):
        (ids, forced, _), = r.wait()[0]
        assert batched.tokenizer.decode(ids) == TAUGHT[x.text] and not forced
    assert batched.collector.calls["generate"] == 1 and batched.collector.prefix_reused == 0
    assert batched.collector._held is None


def test_users_out_of_step_fall_into_step(taught):
    """Two pairs of Compare-like users (direct, then reasoning, three times), the second pair starting while
    the first generates. Served oldest-first they would stay two half-full batches apart (6 generate calls);
    waiting for the callers just served merges all four from the second cycle on."""
    batched = BatchedEncoder(*taught, window=0.05, linger=1.0, continuous=False)  # linger=0 gives 6 calls of 2
    inputs = four_inputs()

    def user(x, late):
        while late and not batched.collector.calls["generate"]:  # start while the first pair generates
            time.sleep(0.001)
        for _ in range(3):
            batched.direct([x])
            batched.reason([x])

    threads = [threading.Thread(target=user, args=(x, i >= 2)) for i, x in enumerate(inputs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert batched.collector.requests["reason"] == 12
    assert batched.collector.calls["generate"] <= 4 and 4 in batched.collector.merged_sizes


def test_a_late_request_joins_the_running_decode(taught):
    batched = BatchedEncoder(*taught, window=0.0, continuous=True)
    plain = Encoder(*taught)
    long, short = taught_inputs()[2], taught_inputs()[0]
    first = batched.collector.submit(Request(("reason", 128), batched.rows([long], direct=False), stream=True))
    assert next(first.messages())[0] == "text"  # the decode runs ...
    second = batched.reason([short])[0]  # ... and the second request joins it
    rest = list(first.messages())
    (ids, forced, _), vector = rest[-1][1][0][0], rest[-1][1][1][0]
    assert batched.collector.calls["generate"] == 1 and batched.collector.merged_sizes == [2]
    ref = plain.reason([long])[0]
    assert batched.tokenizer.decode(ids) == ref.rationale == TAUGHT["long"] and not forced
    assert float(vector @ ref.vector) >= 0.9999 and ref.rationale.endswith("".join(v for k, v in rest if k == "text"))
    alone = plain.reason([short])[0]
    assert second.rationale == alone.rationale == TAUGHT["short"] and float(second.vector @ alone.vector) >= 0.9999


def test_a_bad_request_joining_a_running_decode_fails_alone(taught):
    batched = BatchedEncoder(*taught, window=0.0, continuous=True)
    long = taught_inputs()[2]
    first = batched.collector.submit(Request(("reason", 128), batched.rows([long], direct=False), stream=True))
    assert next(first.messages())[0] == "text"
    bad_row = batched.rows([taught_inputs()[0]], direct=False)[0]
    bad_row = dataclasses.replace(bad_row, pixel_values=bad_row.pixel_values[:-4])  # fewer patches than image tokens
    with pytest.raises((ValueError, IndexError)):
        batched.collector.submit(Request(("reason", 128), [bad_row])).wait()
    events = list(first.messages())
    assert ("reset", None) in events  # the decode failed when the bad row joined: the first request ran again alone
    after_reset = events[events.index(("reset", None)) + 1:]
    ids, forced, _ = events[-1][1][0][0]
    assert batched.tokenizer.decode(ids) == TAUGHT["long"] == "".join(v for k, v in after_reset if k == "text")


def test_different_budgets_run_with_their_own_budget(taught, batched):
    plain = Encoder(*taught)
    inputs = four_inputs()
    budgets = [3, 100, 3, 100]
    results, errors = at_once([lambda x=x, b=b: batched.reason([x], max_new_tokens=b)[0]
                               for x, b in zip(inputs, budgets)])
    # merged: one generate call per budget; continuous: one decode whose rows have their own budget
    assert errors == [None] * 4 and batched.collector.calls["generate"] == (1 if batched.collector.continuous else 2)
    for x, b, got in zip(inputs, budgets, results):
        ref = plain.reason([x], max_new_tokens=b)[0]
        assert got.forced is ref.forced is (b == 3) and got.rationale == ref.rationale and got.tokens == ref.tokens
        assert float(got.vector @ ref.vector) >= 0.9999


def test_forced_stream_stops_at_the_budget(taught, batched):
    x = taught_inputs()[2]
    texts, result = streamed(batched, x, budget=4)
    assert result.forced and result.tokens == 4
    assert texts[-1] == result.rationale == Encoder(*taught).reason([x], max_new_tokens=4)[0].rationale


def test_an_error_reaches_only_its_caller(taught, batched):
    inputs = four_inputs()
    good = Encoder(*taught).reason(inputs[:2])
    bad_row = batched.rows([inputs[0]], direct=False)[0]
    bad_row = dataclasses.replace(bad_row, pixel_values=bad_row.pixel_values[:-4])  # fewer patches than image tokens
    jobs = [lambda: streamed(batched, inputs[0]), lambda: batched.reason([inputs[1]])[0],
            lambda: batched.collector.submit(Request(("reason", batched.max_new_tokens), [bad_row])).wait()]
    results, errors = at_once(jobs)
    assert errors[:2] == [None, None] and errors[2] is not None
    assert batched.collector.calls["generate"] == 4  # the merged call failed, then each request ran alone
    texts, first = results[0]
    assert first.rationale == good[0].rationale and texts[-1] == first.rationale
    assert results[1].rationale == good[1].rationale
    assert float(first.vector @ good[0].vector) >= 0.9999


def test_split_streamer_sends_words_holds_partial_characters_and_ends_at_emb(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    enc = Encoder(*tiny)
    text = "café ☕ naïve 日本"
    ids = tok.encode(text, add_special_tokens=False)
    assert any("\ufffd" in tok.decode(ids[:k]) for k in range(1, len(ids)))  # some prefixes end mid-character
    watch = [Request(("reason", 64), enc.rows([EmbedInput("", "x")], direct=False), stream=True) for _ in range(2)]
    streamer = SplitStreamer(tok, enc.emb_id, budget=len(ids) + 5, targets=[watch[0], None, watch[1]])
    streamer.put(torch.zeros((3, 7), dtype=torch.long))  # the prompt: ignored
    for i, t in enumerate(ids):
        second = enc.emb_id if i == 3 else t  # row 2 ends at <emb> after three tokens
        streamer.put(torch.tensor([t, t, second]))
    streamer.end()
    pieces = [[], []]
    for k, r in enumerate(watch):
        while not r.events.empty():
            kind, piece = r.events.get()
            assert kind == "text" and "\ufffd" not in piece
            pieces[k].append(piece)
    assert "".join(pieces[0]) == text
    assert len(pieces[0]) == len(text.split()) and all(p.endswith(" ") for p in pieces[0][:-1])  # a word at a time
    assert "".join(pieces[1]) == tok.decode(ids[:3], skip_special_tokens=True).rstrip("\ufffd")


def test_worker_leaves_when_the_queue_is_empty_and_the_manager_builds_a_batched_encoder(tiny_dir, tmp_path):
    manager = ModelManager(Settings(cache_dir=tmp_path, device="cpu"), specs=[])
    enc = manager.load(str(tiny_dir)).encoder
    assert isinstance(enc, BatchedEncoder) and not enc.collector.continuous  # the default: RGE_BATCHING=merged
    continuous = ModelManager(Settings(cache_dir=tmp_path, device="cpu", batching="continuous"), specs=[])
    assert continuous.load(str(tiny_dir)).encoder.collector.continuous
    enc.reason([EmbedInput("", "short")], max_new_tokens=2)
    for _ in range(1000):  # the worker stays IDLE_S (2 s) after its last batch
        if enc.collector._worker is None:
            break
        threading.Event().wait(0.01)
    assert enc.collector._worker is None  # no thread keeps an unloaded model alive


def test_the_model_process_serves_from_another_pid_and_a_dead_one_is_replaced(taught, child):
    import os
    import signal

    batched = BatchedEncoder(*taught, window=WINDOW, process=child)
    x = taught_inputs()[1]
    ref = Encoder(*taught).reason([x])[0]
    assert batched.reason([x])[0].rationale == ref.rationale
    assert child.alive() and child.pid != os.getpid()
    starts = child.starts
    os.kill(child.pid, signal.SIGKILL)
    child._proc.join(10)
    got = batched.reason([x])[0]  # the next call starts a new child
    assert child.starts == starts + 1 and child.alive()
    assert got.rationale == ref.rationale and float(got.vector @ ref.vector) >= 0.9999


class ExitWhenUnpickled:
    """A row that ends the process that receives it (as a crash or an out-of-memory kill would)."""

    def __reduce__(self):
        import os

        return os._exit, (3,)


def test_a_child_that_dies_mid_call_fails_that_call_with_a_sentence(taught, taught_dir):
    process = ModelProcess(ChildSpec(str(taught_dir), "cpu", "float32", None, 128, 1))
    process.start()
    try:
        with pytest.raises(ModelProcessError, match=r"exited during a call \(exit code 3\)"):
            process.direct([ExitWhenUnpickled()])
        assert not process.alive()
        x = taught_inputs()[0]
        rows = Encoder(*taught).rows([x], direct=True)
        assert float(process.direct(rows)[0] @ Encoder(*taught).direct([x])[0]) >= 0.9999  # a new child
    finally:
        process.close()


def test_a_child_that_cannot_load_the_model_raises_the_load_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    process = ModelProcess(ChildSpec(str(tmp_path), "cpu", "float32", None, 128, 1))
    with pytest.raises(Exception, match="config.json"):
        process.start()
    assert not process.alive()


def test_the_manager_runs_a_model_process_when_asked_and_stops_it_on_unload(tiny_dir, tmp_path):
    manager = ModelManager(Settings(cache_dir=tmp_path, device="cpu", model_process="on"), specs=[])
    loaded = manager.load(str(tiny_dir))
    enc = loaded.encoder
    vec = enc.direct([EmbedInput("", "short")])
    plain = ModelManager(Settings(cache_dir=tmp_path, device="cpu"), specs=[]).load(str(tiny_dir)).encoder
    assert plain.process is None and float(vec[0] @ plain.direct([EmbedInput("", "short")])[0]) >= 0.9999
    assert enc.process.alive()
    manager.unload(loaded.name)
    assert not enc.process.alive()


def test_unloading_a_model_releases_it_at_once(tiny_dir, tmp_path):
    """The collector's worker idles after a batch; an unload stops it, so that nothing keeps the
    model's weights alive once the manager has let go of them (on a GPU: before the next model loads)."""
    import gc
    import weakref

    manager = ModelManager(Settings(cache_dir=tmp_path, device="cpu"), specs=[])
    loaded = manager.load(str(tiny_dir))
    loaded.encoder.reason([EmbedInput("", "short")], max_new_tokens=2)
    assert loaded.encoder.collector._worker is not None  # idling, IDLE_S after its last batch
    model = weakref.ref(loaded.encoder.model)
    manager.unload(loaded.name)
    del loaded
    gc.collect()
    assert model() is None


def test_a_closed_model_process_refuses_calls_instead_of_starting_another_copy(taught, taught_dir):
    process = ModelProcess(ChildSpec(str(taught_dir), "cpu", "float32", None, 128, 1))
    process.start()
    process.close()
    rows = Encoder(*taught).rows(taught_inputs()[:1], direct=True)
    with pytest.raises(ModelProcessError, match="was unloaded"):
        process.direct(rows)  # e.g. a request queued before the unload
    assert not process.alive() and process.starts == 1


def test_a_call_left_mid_reply_does_not_answer_the_next_call(taught, taught_dir):
    """A streamer that raises leaves the rest of the child's reply unread: the child is replaced, so
    each later call gets its own answer, not the previous call's."""
    process = ModelProcess(ChildSpec(str(taught_dir), "cpu", "float32", None, 128, 1))
    plain = Encoder(*taught)
    x, y = taught_inputs()[:2]

    class Breaks:
        def put(self, tokens):
            if len(tokens):  # the first generated step
                raise RuntimeError("streamer broke")

        def end(self):
            pass

    try:
        with pytest.raises(RuntimeError, match="streamer broke"):
            process.reason(plain.rows([x], direct=False), 8, Breaks())
        for inp in (y, x):
            got = process.direct(plain.rows([inp], direct=True))
            assert got.shape == (1, 64) and float(got[0] @ plain.direct([inp])[0]) >= 0.9999
    finally:
        process.close()


def test_a_queued_rationale_counts_with_its_direct_request_in_the_callers_in_play(taught):
    """After a direct batch, a compare's rationale that is already queued is the same caller: the
    expectation is the batch's rows plus other callers' waiting rows, not one more per quick caller."""
    collector = BatchedEncoder(*taught, window=WINDOW, continuous=False).collector
    rows = [object()]  # the count reads only len(rows)
    served = [Request(("direct",), rows, keep_prefix=True) for _ in range(2)]
    follow_up = Request(("reason", 8), rows, follows=served[0])
    other = Request(("reason", 8), rows)
    with collector._cond:
        collector._pending = [follow_up, other]
        assert collector._in_play(served) == 3  # two served, plus the other caller; the follow-up is served[0]'s
        collector._pending = []
