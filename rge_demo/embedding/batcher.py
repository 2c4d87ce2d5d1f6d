"""Concurrent requests on one model merged into one batch: the request collector.

Several people use the app's model at once: Compare streams a rationale (:meth:`Encoder.stream`),
search embeds one query (:meth:`Encoder.reason` or :meth:`Encoder.direct`). One at a time, four
requests cost four ``generate`` calls and the fourth user waits for all of them. Merged, a GPU runs
the four rows in about the time of one (a decode step is memory-bound), and a CPU still shares the
per-step overhead.

* :class:`Collector` keeps the queue. A :class:`Request` is a list of processed rows plus its kind:
  ``("direct",)`` (one forward) or ``("reason", budget)`` (generate, then embed). A worker thread,
  started by the first request and gone ``idle`` seconds after the queue empties (at once when the
  model is unloaded: :meth:`Collector.close`, so it never keeps an unloaded model alive), gathers a
  batch (when: a short ``window`` for a first request; after a batch, the callers just served, for
  up to ``linger`` seconds; see :class:`Collector`), takes the waiting requests of one kind in
  arrival order up to ``max_rows`` rows and runs them as ONE call (under the encoder's lock, or in
  the model's own process: :mod:`.model_process`). A single request larger than ``max_rows`` runs
  alone, unsplit: a caller's own batch is never reshaped, so its numbers are those of the unbatched
  encoder.
* Compare's two passes share the prompt: its direct request runs with a KV cache
  (:meth:`Encoder._prefill`; the direct prompt is the reasoning prompt plus ``<emb>``), which the
  collector holds until its next call. When that call is the rationales of exactly the compares of
  that direct batch (the usual case: the callers queue them as their vectors come back), it runs
  them in the direct batch's order and ``generate`` continues from the held cache instead of
  reading the prompts again (``prefix_reused`` counts these); otherwise the cache is dropped and the
  call runs as any other. Not with a model process or continuous batching.
* Continuous batching (``continuous``; the app's ``RGE_BATCHING=continuous``, model process off):
  reasoning requests run in a :class:`~.decode.DecodeBatch` instead of one ``generate``. Requests
  that arrive while it runs join at the next step (up to ``max_rows`` rows in flight, whatever
  their budget), direct requests waiting meanwhile run between two steps, and each request is
  answered as soon as its own rows are done: nobody waits for a longer rationale, nor for a batch
  that began before they came.
* :class:`SplitStreamer` is the streamer of a merged ``generate``: it splits each step's (B,) new
  tokens by row and sends each streaming request its own rationale text, a word at a time. Text is
  decoded from the row's ids so far and held back while it ends in an incomplete byte-level
  character (U+FFFD); a row's text ends at its ``<emb>``, or at its budget (the one extra step
  ``generate`` runs past the budget is not text).
* Budgets (merged calls): requests with different budgets are batched separately (the budget is part of the
  kind). Generating to the largest budget and trimming would make short-budget rows wait for the
  longest one, and would change what a forced row embeds under the ``last_token`` rule (its
  state is read at its own budget's last step); in the app every request has the model's budget,
  so nothing is lost.
* Errors: when a merged call raises, each of its requests runs again alone, so an error reaches
  only the caller whose rows cause it (a streaming caller is told to drop the text it had).
  Processing rows (prompt, image) happens in the caller's thread, so those errors never enter the
  queue.

:class:`BatchedEncoder` is an :class:`Encoder` whose ``direct``, ``reason`` and ``stream`` go
through a collector; the model manager builds it (with a :class:`~.model_process.ModelProcess`
when ``Settings.uses_model_process``), so the service, the tabs and the CLI call the same methods
as before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .decode import DecodeBatch, Seq, supports
from .encoder import Encoder, Row, StreamEvent
from .model_process import ModelProcess
from .prompts import EmbedInput

log = logging.getLogger(__name__)

WINDOW_S = 0.005  # how long the oldest request waits for company
MAX_ROWS = 16  # rows merged into one call at most
LINGER_S = 0.25  # after a batch, how long to wait for the callers just served to come back
IDLE_S = 2.0  # an idle worker keeps its expectation this long, then leaves


@dataclass(eq=False)
class Request:
    """Rows to run and the channel their results come back on.

    ``events`` carries ``("text", piece)`` while a streaming request's rationale grows,
    ``("reset", None)`` when its text must be dropped (the merged call failed and it runs again
    alone), then ``("done", payload)`` or ``("error", exception)``. The payload is the (n, D)
    vectors for a direct request, ``(generated, vectors)`` for a reasoning one, ``generated``
    being ``Encoder._generate``'s per-row (rationale ids, forced, state). A compare's direct request
    sets ``keep_prefix``; its reasoning request names it in ``follows``.
    """

    kind: tuple  # ("direct",) or ("reason", budget)
    rows: list[Row]
    stream: bool = False
    keep_prefix: bool = False  # a compare's direct pass: hold its prompts' cache for the rationale
    follows: Request | None = field(default=None, repr=False)  # a compare's rationale: its direct request
    arrived: float = field(default_factory=time.monotonic)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)

    def __post_init__(self):
        if not self.rows:
            raise ValueError("a request needs at least one row")
        if self.stream and len(self.rows) != 1:
            raise ValueError(f"a streaming request has one row, got {len(self.rows)}")

    def messages(self) -> Iterator[tuple[str, object]]:
        """Every event up to and including the final one; an error is raised here, in the caller."""
        while True:
            kind, value = self.events.get()
            if kind == "error":
                raise value
            yield kind, value
            if kind == "done":
                return

    def wait(self):
        """Block until the result is ready and return the payload."""
        for kind, value in self.messages():
            if kind == "done":
                return value


class RowText:
    """One row's rationale text as its tokens arrive, sent a word at a time.

    Each token re-decodes the row's ids; what is new up to the last whitespace is sent (as
    ``TextIteratorStreamer`` does: one update per word, not per token, keeps the UI's update rate
    down). Trailing U+FFFD (a character whose bytes have not all arrived) is never sent;
    :meth:`close` sends the rest.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""
        self.closed = False

    def _new(self, whole: bool) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd")  # incomplete bytes wait
        if not text.startswith(self.sent):  # the decoder rewrote earlier text: the final event carries it
            return ""
        if not whole:
            cut = max(text.rfind(" "), text.rfind("\n")) + 1
            text = text[:max(cut, len(self.sent))]
        piece, self.sent = text[len(self.sent):], text
        return piece

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self._new(whole=False)

    def close(self) -> str:
        self.closed = True
        return self._new(whole=True)

    def feed(self, token: int, emb_id: int, budget: int) -> str:
        """The text a generated token adds: the text ends at ``<emb>`` or at the budget."""
        if self.closed:
            return ""
        if token == emb_id or len(self.ids) >= budget:
            return self.close()
        return self.add(token)


class SplitStreamer:
    """The streamer of a merged ``generate``: each step's tokens (B,) go to their rows' requests as text.

    ``targets[i]`` is the streaming request of row ``i`` (None for a row nobody watches). ``generate``
    first puts the prompt (B, L), then one (B,) tensor of new tokens per step.
    """

    def __init__(self, tokenizer, emb_id: int, budget: int, targets: Sequence[Request | None]):
        self.emb_id, self.budget, self.targets = emb_id, budget, list(targets)
        self.rows = [RowText(tokenizer) if t is not None else None for t in self.targets]
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, target, token in zip(self.rows, self.targets, value.reshape(-1).tolist(), strict=True):
            if row is not None and (piece := row.feed(token, self.emb_id, self.budget)):
                target.events.put(("text", piece))

    def end(self) -> None:
        """``generate`` is done: rows still open (stopped by the length limit) send their rest."""
        for row, target in zip(self.rows, self.targets, strict=True):
            if row is not None and not row.closed and (piece := row.close()):
                target.events.put(("text", piece))


class Collector:
    """Merges concurrent requests on one encoder into few model calls.

    When to run: a request that finds the worker idle waits ``window`` seconds for company. After a
    batch of k rows, with p rows already waiting, the worker expects k + p rows (the callers it
    just served usually come straight back: a compare's rationale follows its direct vector, then
    the user's next query), or the earlier expectation if that was larger and was met, and waits
    for them, at most ``linger`` seconds from the end of that batch or from the first arrival after
    it, whichever is later; an expectation not met by then is lowered to what came. An idle worker
    keeps its expectation ``idle`` seconds, then leaves. Without this, two groups of users that got
    out of step (one generating while the other waits for its direct vector) stay out of step, each
    batch part full.
    With ``continuous`` set, a reasoning request at the head of the queue only waits ``window``:
    those who come later join its decode.

    What to run: the kind with the most waiting rows (ties: the oldest request's kind), in arrival
    order up to ``max_rows`` rows; a request passed over twice goes first.

    ``calls`` counts the model calls made (``"generate"``, ``"direct"``), ``requests`` the requests
    received, per kind: with merging, calls < requests. ``merged_sizes`` lists requests per call;
    ``prefix_reused`` the generate calls that continued from a held direct batch's cache.
    """

    def __init__(self, encoder: Encoder, window: float = WINDOW_S, max_rows: int = MAX_ROWS,
                 linger: float = LINGER_S, idle: float = IDLE_S, continuous: bool = False):
        if window < 0 or linger < 0 or max_rows < 1:
            raise ValueError(f"collector: window and linger must be >= 0 and max_rows >= 1, "
                             f"got {window}, {linger}, {max_rows}")
        self.encoder, self.window, self.max_rows, self.linger, self.idle = encoder, window, max_rows, linger, idle
        self.continuous = continuous  # reasoning requests by continuous batching (_decode) instead of one generate
        self.calls: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.merged_sizes: list[int] = []
        self.prefix_reused = 0
        self._held: tuple[list[Request], object] | None = None  # the last direct batch's requests and prompt cache
        self._pending: list[Request] = []
        self._skipped: dict[int, int] = {}  # id(request) -> batches chosen over it
        self._expect: int | None = None  # rows expected after the last batch (the callers in play)
        self._batch_end = 0.0
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closing = False  # the model was unloaded: the worker leaves as soon as the queue is empty

    def submit(self, request: Request) -> Request:
        with self._cond:
            self._pending.append(request)
            self.requests[request.kind[0]] += 1
            if self._worker is None:
                self._expect = None
                self._worker = threading.Thread(target=self._loop, name="rge-collector", daemon=True)
                self._worker.start()
            self._cond.notify()
        return request

    def close(self, timeout: float = IDLE_S) -> None:
        """The model is being unloaded: drop the held cache and let the worker leave once the queue
        is empty instead of idling, so that nothing here keeps the model alive. Waits up to
        ``timeout`` for it (a batch in flight finishes first)."""
        with self._cond:
            self._closing, self._held = True, None
            worker = self._worker
            self._cond.notify()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    # -- the worker ------------------------------------------------------------------------------
    def _ready(self, now: float) -> tuple[bool, float, bool]:
        """(run a batch now?, how long to wait otherwise, does the expectation hold?); call with the
        condition held. The expectation holds when the rows it expects are there, and when nothing
        waited for them (a reasoning request under continuous batching); it is lowered only when a
        wait for them ran out."""
        rows = sum(len(r.rows) for r in self._pending)
        if self.continuous and self._pending and self._pending[0].kind[0] == "reason":
            # Nothing to wait for: whoever comes later joins the decode at its next step.
            left = self._pending[0].arrived + self.window - now
            return left <= 0, left, True
        if self._expect is not None:  # after a batch: wait for the callers in play
            met = rows >= min(self._expect, self.max_rows)
            if not self._pending:
                return False, self._batch_end + self.idle - now, met
            deadline = max(self._batch_end, self._pending[0].arrived) + self.linger
            return met or now >= deadline, deadline - now, met
        left = self._pending[0].arrived + self.window - now
        return left <= 0 or rows >= self.max_rows, left, False

    def _take(self) -> tuple[list[Request], bool] | None:
        """The next batch and whether the expectation holds (:meth:`_ready`; None: nothing came, the
        worker leaves)."""
        with self._cond:
            while True:
                now = time.monotonic()
                if not self._pending and (self._expect is None or self._closing or now >= self._batch_end + self.idle):
                    self._worker, self._held = None, None  # the next submit starts a new worker
                    return None
                ready, wait, holds = self._ready(now)
                if ready:
                    break
                self._cond.wait(wait)
            kind = self._choose()
            batch, rows = [], 0
            for r in self._pending:
                if r.kind != kind:
                    continue
                if batch and rows + len(r.rows) > self.max_rows:
                    break
                batch.append(r)
                rows += len(r.rows)
            for r in batch:
                self._pending.remove(r)
                self._skipped.pop(id(r), None)
            for r in self._pending:
                self._skipped[id(r)] = self._skipped.get(id(r), 0) + 1
            return batch, holds

    def _choose(self) -> tuple:
        starved = [r for r in self._pending if self._skipped.get(id(r), 0) >= 2]
        if starved:
            return starved[0].kind
        rows: dict[tuple, int] = {}
        for r in self._pending:  # insertion order: the oldest request's kind first
            rows[r.kind] = rows.get(r.kind, 0) + len(r.rows)
        return max(rows, key=rows.get)  # max keeps the first of equals

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            batch, holds = taken
            try:
                self._run(batch)
            except BaseException as e:  # a bug here must not leave callers waiting forever
                log.exception("request collector failed")
                for r in batch:
                    r.events.put(("error", e))
            with self._cond:
                in_play = self._in_play(batch)
                # Kept while it holds (callers of another kind are still out: a Compare user between
                # its direct vector and its rationale, or on its way back); lowered when it failed.
                self._expect = max(in_play, self._expect or 0) if holds else in_play
                self._batch_end = time.monotonic()

    def _run(self, batch: list[Request], continuous: bool | None = None) -> None:
        """Run ``batch`` (requests of one kind) as one model call and answer each request; when a
        merged call fails, each request runs again alone. ``continuous`` overrides the collector's
        mode for reasoning requests (a failed request runs again alone, by ``generate``)."""
        if batch[0].kind[0] == "reason" and (self.continuous if continuous is None else continuous):
            return self._decode(batch)
        t0 = time.monotonic()
        held, self._held = self._held, None  # a held cache serves the very next call or none
        self.merged_sizes.append(len(batch))
        try:
            payloads = self._run_direct(batch) if batch[0].kind[0] == "direct" else self._run_reason(batch, held)
        except Exception as e:
            if len(batch) == 1:
                batch[0].events.put(("error", e))
                return
            log.warning("a merged call of %d requests failed (%s: %s); running them one at a time",
                        len(batch), type(e).__name__, e)
            self._alone(batch)
            return
        log.debug("%s: %d requests, %d rows in one call, %.3f s (the oldest had waited %.3f s)", batch[0].kind,
                  len(batch), sum(len(r.rows) for r in batch), time.monotonic() - t0,
                  t0 - min(r.arrived for r in batch))
        for r, payload in zip(batch, payloads, strict=True):
            r.events.put(("done", payload))

    def _run_direct(self, batch: list[Request]) -> list:
        """One forward over the batch's direct rows; each request's (n, D) vectors. A batch of
        compares' direct passes (here, merged calls) keeps its prompts' cache for their rationales."""
        enc, rows = self.encoder, [row for r in batch for row in r.rows]
        self.calls["direct"] += 1
        if enc.process is None and not self.continuous and all(r.keep_prefix for r in batch):
            vectors, cache = enc.run_prefill(rows)
            self._held = (batch, cache)
        else:
            vectors = enc.run_direct(rows)  # (N, D)
        return _per_request(batch, vectors)

    def _run_reason(self, batch: list[Request], held: tuple[list[Request], object] | None) -> list:
        """One ``generate`` call over the batch's reasoning rows, continuing from ``held`` (the last
        direct batch's cache) when the batch is those compares' rationales; each request's
        ``(generated, vectors)``, its rows' rationales streamed to it as they grow."""
        enc, budget, cache = self.encoder, batch[0].kind[1], None
        if held is not None and self._follow_held(batch, held[0]):  # batch now in the held cache's order
            cache = held[1]
            self.prefix_reused += 1
        rows = [row for r in batch for row in r.rows]
        targets = [r if r.stream else None for r in batch for _ in r.rows]
        streamer = SplitStreamer(enc.tokenizer, enc.emb_id, budget, targets) if any(targets) else None
        self.calls["generate"] += 1
        generated, vectors = enc.run_reason(rows, budget, streamer, cache)  # per row (ids, forced, _); (N, D)
        return list(zip(_per_request(batch, generated), _per_request(batch, vectors), strict=True))

    def _in_play(self, batch: list[Request]) -> int:
        """Rows of the callers in play after ``batch``: its rows, and those waiting from other callers.
        A compare's rationale already queued counts with its direct request (its callers answer
        before this runs, and one that is quick would otherwise count twice: an expectation no
        batch can meet, and a linger wait every time). Call with the condition held."""
        served = {id(r) for r in batch}
        return sum(len(r.rows) for r in batch) + sum(len(r.rows) for r in self._pending if id(r.follows) not in served)

    def _follow_held(self, batch: list[Request], direct: list[Request]) -> bool:
        """True when ``batch`` is the rationales of exactly the compares of the held direct batch, each
        row its direct row less ``<emb>``; ``batch`` is then put in that batch's order (rows and
        padding as the held cache has them)."""
        order = {id(r): i for i, r in enumerate(direct)}
        if len(batch) != len(direct) or sorted(order.get(id(r.follows), -1) for r in batch) != list(range(len(direct))):
            return False
        emb = [self.encoder.emb_id]
        if any(row.ids + emb != d.ids for r in batch for row, d in zip(r.rows, r.follows.rows, strict=True)):
            return False
        batch.sort(key=lambda r: order[id(r.follows)])
        return True

    # -- continuous batching -----------------------------------------------------------------------
    def _decode(self, batch: list[Request]) -> None:
        """Reasoning requests in one :class:`~.decode.DecodeBatch`: requests that arrive while it runs
        join between steps (as many rows as ``max_rows`` leaves room for, whatever their budget),
        waiting direct requests run between steps, and each request is answered as soon as its
        rows are done. When a step fails, every request still in flight runs again alone."""
        enc = self.encoder
        loop = DecodeBatch(enc)
        seqs: dict[Request, list[Seq]] = {}  # requests in flight -> their rows
        texts: dict[Request, RowText] = {}  # streaming requests -> their text

        def admit(requests: list[Request]) -> None:
            new = []
            for r in requests:
                if r.stream:
                    texts[r] = RowText(enc.tokenizer)
                seqs[r] = [Seq(row, r.kind[1], on_token=self._sender(r, texts.get(r))) for row in r.rows]
                new += seqs[r]
            with enc.lock, torch.inference_mode():
                loop.admit(new)

        self.calls["generate"] += 1
        served = len(batch)
        try:
            admit(batch)
            while len(loop):
                with enc.lock, torch.inference_mode():
                    loop.step()
                for r in [r for r, rows in seqs.items() if all(s.done for s in rows)]:
                    self._answer(r, seqs[r], texts.get(r))
                    del seqs[r]  # answered: a later failure no longer concerns it
                joiners, direct = self._joiners(self.max_rows - len(loop))
                if direct:
                    self._run(direct)
                if joiners:
                    served += len(joiners)
                    admit(joiners)
        except Exception as e:
            log.warning("continuous batching of %d requests failed (%s: %s); running them one at a time",
                        len(seqs), type(e).__name__, e)
            self._alone(list(seqs))
        self.merged_sizes.append(served)

    def _alone(self, requests: list[Request]) -> None:
        """After a failed shared call: each request again by itself (a streaming one drops its text first)."""
        for r in requests:
            if r.stream:
                r.events.put(("reset", None))
            self._run([r], continuous=False)

    def _sender(self, request: Request, text: RowText | None):
        """A row's ``on_token``: a streaming request's text, a word at a time (None: nobody watches)."""
        if text is None:
            return None
        emb_id, budget = self.encoder.emb_id, request.kind[1]

        def send(token: int) -> None:
            if piece := text.feed(token, emb_id, budget):
                request.events.put(("text", piece))

        return send

    def _answer(self, request: Request, rows: list[Seq], text: RowText | None) -> None:
        enc = self.encoder
        if text is not None and not text.closed and (piece := text.close()):
            request.events.put(("text", piece))  # a forced row: the rest of its text
        generated = [(s.rationale(enc.emb_id, enc.pad_id), s.forced, s.state) for s in rows]
        with torch.inference_mode():
            vectors = enc._finish(request.rows, generated)
        request.events.put(("done", (generated, vectors)))

    def _joiners(self, room: int) -> tuple[list[Request], list[Request]]:
        """Waiting requests for a running decode: (reasoning requests that fit in ``room`` rows, in
        arrival order; waiting direct requests, up to ``max_rows`` rows)."""
        with self._cond:
            joiners, direct, direct_rows, full = [], [], 0, False
            for r in self._pending:
                if r.kind[0] == "reason" and not full:
                    full = len(r.rows) > room  # no overtaking: later requests wait behind one that does not fit
                    if not full:
                        joiners.append(r)
                        room -= len(r.rows)
                elif r.kind[0] == "direct" and (not direct or direct_rows + len(r.rows) <= self.max_rows):
                    direct.append(r)
                    direct_rows += len(r.rows)
            for r in joiners + direct:
                self._pending.remove(r)
                self._skipped.pop(id(r), None)
            return joiners, direct


def _per_request(batch: Sequence[Request], values):
    """``values`` (one per row, in the batch's row order) cut into each request's slice."""
    out, start = [], 0
    for r in batch:
        out.append(values[start:start + len(r.rows)])
        start += len(r.rows)
    return out


class BatchedEncoder(Encoder):
    """An :class:`Encoder` whose ``direct``, ``reason`` and ``stream`` requests are merged across threads.

    Results equal the plain encoder's (same rows, same ``_generate`` / ``_finish``); only the batch
    a row runs in differs, which left padding makes immaterial.
    """

    def __init__(self, model, processor, *, window: float = WINDOW_S, max_rows: int = MAX_ROWS,
                 linger: float = LINGER_S, process: ModelProcess | None = None, continuous: bool = False, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.process = process  # where the collector's calls run (None: here, under the encoder's lock)
        # Continuous batching runs the decode loop here: not with a model process, nor on sliding-window models.
        self.collector = Collector(self, window, max_rows, linger,
                                   continuous=continuous and process is None and supports(model))
        self._rows_lock = threading.Lock()  # one processor call at a time (fast tokenizers dislike concurrent use)

    # -- the collector's model calls -------------------------------------------------------------
    def run_direct(self, rows: Sequence[Row]) -> np.ndarray:
        if self.process is not None:
            self.forward_passes += 1
            return self.process.direct(rows)
        return self._vectors(rows)

    def run_prefill(self, rows: Sequence[Row]):
        """Direct vectors of direct rows and their prompts' cache (:meth:`Encoder._prefill`), here."""
        with self.lock, torch.inference_mode():
            return self._prefill(rows)

    def run_reason(self, rows: Sequence[Row], budget: int, streamer=None, cache=None):
        if self.process is not None:
            self.forward_passes += 1
            return self.process.reason(rows, budget, streamer)
        with self.lock, torch.inference_mode():
            return self._reason(rows, budget, streamer, cache)

    def close(self) -> None:
        """The model manager unloads the model: stop the collector's worker and the model process, if any."""
        self.collector.close()
        if self.process is not None:
            self.process.close()

    def rows(self, inputs: Sequence[EmbedInput], *, direct: bool) -> list[Row]:
        with self._rows_lock:
            return super().rows(inputs, direct=direct)

    def _embed_direct(self, rows: Sequence[Row]) -> np.ndarray:
        return self.collector.submit(Request(("direct",), rows)).wait()

    def _embed_reason(self, rows: Sequence[Row], budget: int):
        return self.collector.submit(Request(("reason", budget), rows)).wait()

    def stream(self, inp: EmbedInput, max_new_tokens: int | None = None) -> Iterator[StreamEvent]:
        t0 = time.perf_counter()
        request = self._submit_stream(self.rows([inp], direct=False), max_new_tokens)
        yield from self._events(request, t0)

    def direct_and_stream(self, inp: EmbedInput, max_new_tokens: int | None = None) -> tuple[np.ndarray, Iterator[StreamEvent]]:
        """The query is processed once (tokenizer and image processor: tens of ms for a document
        page); its direct row is the reasoning row plus ``<emb>``. The direct request goes to the
        collector (holding its prompt's cache), and the rationale request is queued the moment the
        direct vector is back (before the caller has shown it), so callers merged in one direct batch
        meet again in one generate call, which continues from that batch's cache."""
        rows = self.rows([inp], direct=False)
        direct = self.collector.submit(Request(("direct",), [r.with_emb(self.emb_id) for r in rows], keep_prefix=True))
        vector = direct.wait()[0]
        t0 = time.perf_counter()
        return vector, self._events(self._submit_stream(rows, max_new_tokens, follows=direct), t0)

    def _submit_stream(self, rows: list[Row], max_new_tokens: int | None, follows: Request | None = None) -> Request:
        return self.collector.submit(Request(("reason", max_new_tokens or self.max_new_tokens), rows, stream=True,
                                             follows=follows))

    def _events(self, request: Request, t0: float) -> Iterator[StreamEvent]:
        text = ""
        for kind, value in request.messages():
            if kind == "text":
                text += value
                yield StreamEvent(text=text, meta={"seconds": time.perf_counter() - t0})
            elif kind == "reset":
                text = ""
            elif kind == "done":
                generated, vectors = value
        (ids, forced, _), vec = generated[0], vectors[0]
        result = self._result(request.rows[0], ids, forced, vec, time.perf_counter() - t0)
        yield StreamEvent(text=result.rationale, result=result)
