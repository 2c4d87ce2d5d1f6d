"""The RGE encoder: one code path for every Qwen2.5-VL RGE checkpoint.

* direct: ``prompt + <emb>`` -> one forward -> final-layer hidden state at ``<emb>``, L2-normalised.
* reasoning: ``prompt`` -> greedy rationale that stops at ``<emb>``; generation runs ONE more
  cached step per row, feeding ``<emb>`` back in, and that step's final-layer state is the
  embedding (the reference's "one more cached decode step", done inside ``generate`` so positions
  and padding are handled by transformers). The state is read by :class:`EmbCapture`, a forward
  hook on the text model's final norm that keeps one position per row: (B, D) memory, where
  ``output_hidden_states`` would keep every layer at every prompt position.

Compare asks for both (:meth:`Encoder.direct_and_stream`). The direct prompt is the reasoning prompt
plus ``<emb>`` (:meth:`Row.with_emb`), so the direct forward runs with a KV cache
(:meth:`Encoder._prefill`), which is cut back to the prompt less its last token, and ``generate``
continues from there: the reasoning pass's prefill (prompt, image tokens and all) is then one token
instead of the whole prompt again. Here :meth:`Encoder._compare` does both in one call; in the app
the request collector (:mod:`.batcher`) does it across users, holding a direct batch's cache for
their rationales.

When the budget runs out, the profile's ``budget_rule`` decides: "append_emb" appends ``<emb>``
and runs one forward over ``prompt + rationale + <emb>`` (the path training takes); "last_token"
embeds the final-layer state of the last generated token (MCG-NJU/RGE ``encode_and_generate``:
its extra decode step feeds ``sequences[:, -1:]``, which is the 128th token when no ``<emb>`` came).

Rows are tokenised one at a time and left-padded by :func:`collate`, so a batch and a single row
see identical token ids and positions; the trainer uses the same :func:`collate` and
:func:`emb_states`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from rge_demo.errors import RGEUserError

from .profiles import profile_for
from .prompts import EMB_TOKEN, MMEB_IMAGE_PLACEHOLDER, EmbedInput, prompt_text

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128
BUDGET_RULE = "append_emb"  # when the encoder has no profile


class NotAnRGEModel(RGEUserError, ValueError):
    """The tokenizer has no ``<emb>`` token."""


class ControlTokenInText(RGEUserError, ValueError):
    """A user's text holds one of the tokenizer's added tokens (``<|image_pad|>``, ``<emb>``, ...)."""


@dataclass
class Row:
    """One prompt, processed alone: token ids, multimodal token types and its image tensors."""

    prompt: str
    ids: list[int]
    mm: list[int]
    pixel_values: torch.Tensor | None = None  # (patches, C*T*P*P)
    grid: torch.Tensor | None = None  # (1, 3): t, h, w in patches

    def with_emb(self, emb_id: int) -> Row:
        """This reasoning prompt as a direct one: ``<emb>`` appended (what ``prompt_text(direct=True)``
        gives: an added token, so the ids before it do not change), the image tensors shared."""
        return Row(self.prompt + EMB_TOKEN, self.ids + [emb_id], self.mm + [0], self.pixel_values, self.grid)


@dataclass
class ReasonResult:
    rationale: str
    tokens: int  # generated rationale tokens, <emb> excluded
    seconds: float  # wall time of the row's batch divided by its size
    vector: np.ndarray  # (D,) float32, unit norm
    forced: bool  # True when the budget ran out (the profile's budget_rule made the vector)
    prompt: str  # exact text of the embedded sequence: prompt + rationale (+ <emb> unless "last_token" forced it)


@dataclass
class StreamEvent:
    """The rationale so far; the last event carries ``result``."""

    text: str
    result: ReasonResult | None = None
    meta: dict = field(default_factory=dict)


def process_rows(processor, prompts: Sequence[str], images: Sequence) -> list[Row]:
    rows = []
    for prompt, image in zip(prompts, images, strict=True):
        enc = processor(text=[prompt], images=None if image is None else [image], return_tensors="pt")
        rows.append(Row(
            prompt=prompt,
            ids=enc["input_ids"][0].tolist(),
            mm=enc["mm_token_type_ids"][0].tolist(),
            pixel_values=enc.get("pixel_values"),
            grid=enc.get("image_grid_thw"),
        ))
    return rows


def collate(rows: Sequence[Row], pad_id: int, suffixes: Sequence[Sequence[int]] | None = None,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Left-pad ``row.ids + suffix`` into model inputs (B, L); images concatenated in row order."""
    suffixes = suffixes if suffixes is not None else [[] for _ in rows]
    seqs = [(r.ids + list(s), r.mm + [0] * len(s)) for r, s in zip(rows, suffixes, strict=True)]
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mm = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (ids, types) in enumerate(seqs):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mm[i, width - len(ids):] = torch.tensor(types)
        mask[i, width - len(ids):] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "mm_token_type_ids": mm}
    with_images = [r for r in rows if r.pixel_values is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([r.pixel_values for r in with_images]).to(dtype)
        batch["image_grid_thw"] = torch.cat([r.grid for r in with_images])
    return {k: v.to(device) for k, v in batch.items()}


def emb_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final-layer hidden state at the last position (the ``<emb>`` token under left padding), (B, D)."""
    out = model.model(**batch, use_cache=False)
    return out.last_hidden_state[:, -1].float()


def final_norm(model) -> torch.nn.Module:
    """The text model's final norm: its output is ``last_hidden_state`` (``model.model.language_model.norm``)."""
    norm = getattr(model.get_decoder(), "norm", None)
    if not isinstance(norm, torch.nn.Module):
        raise TypeError(f"{type(model).__name__}: its text model has no final norm to read the embedding from")
    return norm


class EmbCapture(StoppingCriteria):
    """Reads each row's embedding inside ``generate`` and stops the row once it has it.

    A forward hook on the final norm keeps the last position of every forward step, (B, D): the
    state of the token that step consumed. After each step ``generate`` calls this object with the
    ids so far, the token just chosen included, so ``input_ids[:, -2]`` is the token the step
    consumed. Rows whose consumed token is ``<emb>`` copy the step's state into ``states``; with
    ``last_token`` set, rows still without one when the step consumes the budget's last token copy
    that state (marked in ``took_last``). Memory: three (B, D)-sized buffers, whatever the number
    of layers, positions or steps.

    Use it as a context manager around ``generate`` (the hook is removed on exit).
    """

    def __init__(self, norm: torch.nn.Module, emb_id: int, prompt_len: int, budget: int, last_token: bool = False):
        self.norm, self.emb_id, self.prompt_len, self.budget, self.last_token = norm, emb_id, prompt_len, budget, last_token
        self.step: torch.Tensor | None = None  # (B, D) float32: last position of the latest step
        self.states: torch.Tensor | None = None  # (B, D) float32
        self.done: torch.Tensor | None = None  # (B,) bool: states[i] holds an <emb> state
        self.took_last: torch.Tensor | None = None  # (B,) bool: states[i] is the budget's last token
        self._handle = None

    def _hook(self, module, args, output):
        self.step = output[:, -1].to(torch.float32, copy=True)  # a copy: the (B, L, D) output is not kept

    def __enter__(self) -> EmbCapture:
        self._handle = self.norm.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def retained_bytes(self) -> int:
        """Bytes this capture holds (the step buffer included): the read-out's whole memory cost."""
        return sum(t.numel() * t.element_size() for t in (self.step, self.states, self.done, self.took_last)
                   if t is not None)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.states is None:
            self.states = torch.zeros_like(self.step)
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            self.took_last = torch.zeros_like(self.done)
        consumed = input_ids.shape[1] - self.prompt_len - 2  # index of the generated token this step fed in
        if consumed >= 0:
            new = (input_ids[:, -2] == self.emb_id) & ~self.done & ~self.took_last
            if self.last_token and consumed == self.budget - 1:
                last = ~self.done & ~new
                self.states[last] = self.step[last]
                self.took_last |= last
            self.states[new] = self.step[new]
            self.done |= new
        return self.done.clone()


class EmbAtBudget(LogitsProcessor):
    """Benchmarks only: ``<emb>`` is banned until the budget's last token and forced there.

    Every row then writes exactly ``budget - 1`` rationale tokens and ``<emb>``: a fixed amount of
    work per query, independent of what an untrained model would emit.
    """

    def __init__(self, emb_id: int, prompt_len: int, budget: int):
        self.emb_id, self.prompt_len, self.budget = emb_id, prompt_len, budget

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = input_ids.shape[1] - self.prompt_len  # the token being chosen is generated token n
        if n < self.budget - 1:
            scores[:, self.emb_id] = -float("inf")
        elif n == self.budget - 1:
            scores.fill_(-float("inf"))
            scores[:, self.emb_id] = 0.0
        return scores


class RationaleStreamer(TextIteratorStreamer):
    """Streams the rationale only: nothing from ``<emb>`` on, nothing past the budget (``generate``
    runs one step past it, to feed a last ``<emb>`` back in; that step is not text)."""

    def __init__(self, tokenizer, emb_id: int, budget: int, **kwargs):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, **kwargs)
        self.emb_id, self.budget, self.steps, self.ended = emb_id, budget, 0, False

    def put(self, value):
        if not self.next_tokens_are_prompt:
            self.steps += 1
            self.ended = self.ended or self.steps > self.budget or bool((value == self.emb_id).any())
            if self.ended:
                return
        super().put(value)


def emb_token_id(tokenizer) -> int:
    emb_id = tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    if emb_id is None or emb_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(emb_id) != EMB_TOKEN:
        raise NotAnRGEModel(f"the tokenizer has no {EMB_TOKEN} token: this is not an RGE checkpoint")
    return emb_id


class Encoder:
    """Direct and reasoning embeddings from a loaded model and processor.

    ``lock`` serialises every use of the model: ``generate`` writes ``model.model.rope_deltas``, a
    field shared by all callers.
    """

    def __init__(self, model, processor, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 lock: threading.RLock | None = None, profile=None):
        self.model = model
        self.processor = processor
        self.profile = profile or profile_for(model.config)  # prompts and budget rule (rge_demo.embedding.profiles)
        self.tokenizer = processor.tokenizer
        self.max_new_tokens = max_new_tokens
        self.lock = lock or threading.RLock()
        self.emb_id = emb_token_id(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        specials = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        self.suppress = sorted(specials - {self.emb_id})
        # Added tokens are split out of any text before BPE: in a user's text they would act as the tokens.
        # MMEB's "<|image_1|>" too: the reference profile turns it into an image slot wherever it stands
        self._control = sorted({t.content for t in self.tokenizer.added_tokens_decoder.values()}
                               | {EMB_TOKEN, MMEB_IMAGE_PLACEHOLDER}, key=len, reverse=True)
        self.forward_passes = 0  # counts model calls (the benchmark's warm-cache check reads it)
        self.last_capture: EmbCapture | None = None  # the latest generate's read-out (benchmarks read its size)

    force_budget = False
    """Benchmarks only: every rationale runs to the full budget and ends in ``<emb>`` (:class:`EmbAtBudget`)."""

    # -- helpers -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def budget_rule(self) -> str:
        """What embeds a row whose budget ran out: the profile's rule ("append_emb" or "last_token")."""
        return getattr(getattr(self, "profile", None), "budget_rule", BUDGET_RULE)

    def check_text(self, text: str, what: str) -> None:
        """Refuse text that holds one of the model's control tokens: the processor would read
        ``<|image_pad|>`` or ``<emb>`` in it as that token, not as text."""
        found = sorted((t for t in self._control if t in text), key=text.find)  # as the text has them
        if len(found) == 1:
            raise ControlTokenInText(f"the {what} contains {found[0]!r}, one of the model's control tokens: remove it")
        if found:
            names = ", ".join(map(repr, found[:-1])) + f" and {found[-1]!r}"
            raise ControlTokenInText(f"the {what} contains {names}, the model's control tokens: remove them")

    def rows(self, inputs: Sequence[EmbedInput], *, direct: bool) -> list[Row]:
        for x in inputs:
            self.check_text(x.instruction, "task instruction")
            self.check_text(x.text, "text")
        prompts = [prompt_text(self.processor, x, direct=direct, profile=self.profile) for x in inputs]
        return process_rows(self.processor, prompts, [x.image for x in inputs])

    def _collate(self, rows, suffixes=None):
        return collate(rows, self.pad_id, suffixes, device=self.device, dtype=self.dtype)

    def _vectors(self, rows: Sequence[Row], suffixes=None) -> np.ndarray:
        with self.lock, torch.inference_mode():
            self.forward_passes += 1
            h = emb_states(self.model, self._collate(rows, suffixes))
        return F.normalize(h, dim=-1).cpu().numpy()

    def _generation_config(self, max_new_tokens: int) -> GenerationConfig:
        # One token past the budget: the step that feeds <emb> back in when it is the budget's last token.
        return GenerationConfig(
            max_new_tokens=max_new_tokens + 1, do_sample=False, pad_token_id=self.pad_id,
            suppress_tokens=self.suppress or None, use_cache=True,
        )

    def _generate(self, rows: Sequence[Row], budget: int, streamer=None,
                  cache: DynamicCache | None = None) -> list[tuple[list[int], bool, torch.Tensor | None]]:
        """Per row: (rationale ids, forced, embedding state (D,) or None).

        The state is ``<emb>``'s when the row emitted it within the budget; for a forced row it is
        the last generated token's under the "last_token" rule and None under "append_emb" (then
        :meth:`_finish` re-forwards with ``<emb>`` appended). ``cache``: the KV cache of the same
        batch's prompts but their last token (:meth:`_compare`), which ``generate`` continues from.
        """
        batch = self._collate(rows)
        prompt_len = batch["input_ids"].shape[1]
        if cache is not None:
            # The positions generate gives a prompt it prefills itself (text and M-RoPE; passed in,
            # they skip its path for a filled cache), then no pixels: the image tokens are cached.
            batch["position_ids"] = self.model._prepare_position_ids_for_generation(
                batch["input_ids"], {k: v for k, v in batch.items() if k != "input_ids"})
            batch = {k: v for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
        processors = LogitsProcessorList([EmbAtBudget(self.emb_id, prompt_len, budget)] if self.force_budget else [])
        capture = EmbCapture(final_norm(self.model), self.emb_id, prompt_len, budget,
                             last_token=self.budget_rule == "last_token")
        with capture:
            sequences = self.model.generate(**batch, generation_config=self._generation_config(budget),
                                            past_key_values=cache, streamer=streamer, logits_processor=processors,
                                            stopping_criteria=StoppingCriteriaList([capture]))
        self.last_capture = capture
        results = []
        for i, (new, done, last) in enumerate(zip(sequences[:, prompt_len:].tolist(), capture.done.tolist(),
                                                  capture.took_last.tolist(), strict=True)):
            if done:
                results.append((new[:new.index(self.emb_id)], False, capture.states[i]))
            else:
                ids = [t for t in new[:budget] if t != self.pad_id and t != self.emb_id]
                results.append((ids, True, capture.states[i] if last else None))
        return results

    def _finish(self, rows: Sequence[Row], generated) -> np.ndarray:
        """Unit vectors of the generated rows; rows without a state get ``<emb>`` appended and one forward."""
        vectors = [None if h is None else F.normalize(h, dim=-1).cpu().numpy() for _, _, h in generated]
        forced = [i for i, v in enumerate(vectors) if v is None]
        if forced:
            again = self._vectors([rows[i] for i in forced], [generated[i][0] + [self.emb_id] for i in forced])
            for i, v in zip(forced, again):
                vectors[i] = v
        return np.stack(vectors)

    def _result(self, row: Row, ids: list[int], forced: bool, vector: np.ndarray, seconds: float) -> ReasonResult:
        end = "" if forced and self.budget_rule == "last_token" else EMB_TOKEN
        return ReasonResult(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids), seconds, vector, forced,
                            row.prompt + self.tokenizer.decode(ids) + end)

    def _reason(self, rows: Sequence[Row], budget: int, streamer=None, cache: DynamicCache | None = None):
        """One batch of reasoning rows, one model call: (per-row generation results, (B, D) vectors).
        ``cache``: the rows' prompt cache from :meth:`_prefill`. Call under the lock, in inference mode."""
        self.forward_passes += 1
        generated = self._generate(rows, budget, streamer, cache=cache)
        return generated, self._finish(rows, generated)

    def _prefill(self, rows: Sequence[Row]) -> tuple[np.ndarray, DynamicCache]:
        """Direct vectors (B, D) of direct rows (reasoning rows plus ``<emb>``: :meth:`Row.with_emb`)
        and the KV cache of their prompts less the last token: what :meth:`_generate` continues from
        for the same reasoning rows, in the same order. Call under the lock, in inference mode."""
        self.forward_passes += 1
        cache = DynamicCache(config=self.model.config)
        out = self.model.model(**self._collate(rows), past_key_values=cache, use_cache=True)
        direct = F.normalize(out.last_hidden_state[:, -1].float(), dim=-1).cpu().numpy()
        cache.crop(-2)  # drop <emb> and the prompt's last token: generate feeds that token in
        return direct, cache

    def _compare(self, rows: Sequence[Row], budget: int, streamer=None, on_direct=None):
        """Both passes of a batch of reasoning rows, sharing the prompt: (direct (B, D), generated, vectors).

        One forward over ``prompt + <emb>`` gives the direct vectors (handed to ``on_direct`` at
        once) and the prompts' KV cache (:meth:`_prefill`), where ``generate`` starts, so the
        reasoning pass re-reads one token per row, not the prompt (with the positions it would give
        the whole prompt: :meth:`_generate`).
        """
        with self.lock, torch.inference_mode():
            direct, cache = self._prefill([r.with_emb(self.emb_id) for r in rows])
            if on_direct is not None:
                on_direct(direct)
            return direct, *self._reason(rows, budget, streamer, cache)

    # -- one batch; a subclass may route these elsewhere (the request collector does) --------------
    def _embed_direct(self, rows: Sequence[Row]) -> np.ndarray:
        """Direct-mode vectors of one batch of rows: (B, D)."""
        return self._vectors(rows)

    def _embed_reason(self, rows: Sequence[Row], budget: int):
        """One batch of reasoning rows: (per-row generation results, (B, D) vectors)."""
        with self.lock, torch.inference_mode():
            return self._reason(rows, budget)

    # -- public API ----------------------------------------------------------------------------
    def direct(self, inputs: Sequence[EmbedInput], batch_size: int = 32) -> np.ndarray:
        """Embed items in direct mode: (N, D) float32, unit norm."""
        out = [self._embed_direct(self.rows(inputs[i:i + batch_size], direct=True))
               for i in range(0, len(inputs), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.model.config.text_config.hidden_size), np.float32)

    def reason(self, inputs: Sequence[EmbedInput], batch_size: int = 32,
               max_new_tokens: int | None = None) -> list[ReasonResult]:
        """Generate a rationale per query (batched, greedy) and embed at the ``<emb>`` that ends it."""
        budget = max_new_tokens or self.max_new_tokens
        results: list[ReasonResult] = []
        for i in range(0, len(inputs), batch_size):
            t0 = time.perf_counter()
            rows = self.rows(inputs[i:i + batch_size], direct=False)
            generated, vectors = self._embed_reason(rows, budget)
            seconds = (time.perf_counter() - t0) / len(rows)
            results += [self._result(row, ids, forced, vec, seconds)
                        for row, (ids, forced, _), vec in zip(rows, generated, vectors, strict=True)]
        return results

    def with_rationale(self, inputs: Sequence[EmbedInput], rationales: Sequence[str]) -> np.ndarray:
        """Embed queries with a given rationale (an oracle or a user's edit) instead of generating one."""
        for r in rationales:
            self.check_text(r, "rationale")
        rows = self.rows(inputs, direct=False)
        suffixes = [self.tokenizer.encode(r, add_special_tokens=False) + [self.emb_id] for r in rationales]
        return self._vectors(rows, suffixes)

    def direct_and_stream(self, inp: EmbedInput, max_new_tokens: int | None = None) -> tuple[np.ndarray, Iterator[StreamEvent]]:
        """Compare's two passes on one query: its direct vector (D,), then :meth:`stream`'s events.

        One call, so that the passes share the prompt (:meth:`_compare`): the generate thread starts
        with the direct forward and this returns as soon as its vector is there.
        """
        direct: queue.SimpleQueue = queue.SimpleQueue()
        events = self._stream(self.rows([inp], direct=False), max_new_tokens, on_direct=direct)
        vector = direct.get()
        if isinstance(vector, BaseException):
            raise vector
        return vector[0], events

    def stream(self, inp: EmbedInput, max_new_tokens: int | None = None) -> Iterator[StreamEvent]:
        """Yield the rationale as it grows, then a final event whose ``result`` holds the vector."""
        yield from self._stream(self.rows([inp], direct=False), max_new_tokens)

    def _stream(self, rows: list[Row], max_new_tokens: int | None,
                on_direct: queue.SimpleQueue | None = None) -> Iterator[StreamEvent]:
        """Start the row's generate in a thread and return its events; with ``on_direct``, the thread
        runs :meth:`_compare` and puts the direct vectors (or the error) there first."""
        budget = max_new_tokens or self.max_new_tokens
        streamer = RationaleStreamer(self.tokenizer, self.emb_id, budget, timeout=600)
        box: dict = {}

        def run():
            # The lock is taken in this thread: a generator may be resumed from other threads.
            try:
                if on_direct is None:
                    with self.lock, torch.inference_mode():
                        box["generated"], box["vectors"] = self._reason(rows, budget, streamer)
                else:
                    _, box["generated"], box["vectors"] = self._compare(rows, budget, streamer, on_direct.put)
            except BaseException as e:  # surfaced to the caller below
                box["error"] = e
                streamer.end()
                if on_direct is not None:
                    on_direct.put(e)  # unblocks a caller still waiting for the direct vector

        t0 = time.perf_counter()
        thread = threading.Thread(target=run, name="rge-generate", daemon=True)
        thread.start()
        return self._follow(rows[0], streamer, thread, box, t0)

    def _follow(self, row: Row, streamer, thread: threading.Thread, box: dict, t0: float) -> Iterator[StreamEvent]:
        try:
            text = ""
            for piece in streamer:
                text += piece
                if piece:
                    yield StreamEvent(text=text, meta={"seconds": time.perf_counter() - t0})
        finally:
            thread.join()
        if "error" in box:
            raise box["error"]
        (ids, forced, _), vec = box["generated"][0], box["vectors"][0]
        result = self._result(row, ids, forced, vec, time.perf_counter() - t0)
        yield StreamEvent(text=result.rationale, result=result)
