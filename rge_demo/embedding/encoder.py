"""The RGE encoder: one code path for every Qwen2.5-VL RGE checkpoint.

* direct: ``prompt + <emb>`` -> one forward -> final-layer hidden state at ``<emb>``, L2-normalised.
* reasoning: ``prompt`` -> greedy rationale that stops at ``<emb>``; generation runs ONE more
  cached step per row, feeding ``<emb>`` back in, and that step's final-layer state is the
  embedding (the reference's "one more cached decode step", done inside ``generate`` so positions
  and padding are handled by transformers). Rows whose budget runs out get ``<emb>`` appended and
  one forward over ``prompt + rationale + <emb>`` (the path training takes) instead.

Rows are tokenised one at a time and left-padded by :func:`collate`, so a batch and a single row
see identical token ids and positions; the trainer uses the same :func:`collate` and
:func:`emb_states`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .prompts import EMB_TOKEN, EmbedInput, prompt_text

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128


class NotAnRGEModel(ValueError):
    """The tokenizer has no ``<emb>`` token."""


@dataclass
class Row:
    """One prompt, processed alone: token ids, multimodal token types and its image tensors."""

    prompt: str
    ids: list[int]
    mm: list[int]
    pixel_values: torch.Tensor | None = None  # (patches, C*T*P*P)
    grid: torch.Tensor | None = None  # (1, 3): t, h, w in patches


@dataclass
class ReasonResult:
    rationale: str
    tokens: int  # generated rationale tokens, <emb> excluded
    seconds: float  # wall time of the row's batch divided by its size
    vector: np.ndarray  # (D,) float32, unit norm
    forced: bool  # True when the budget ran out and <emb> was appended
    prompt: str  # exact text of the final forward: prompt + rationale + <emb>


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


class StopAfterEmb(StoppingCriteria):
    """Per row: stop once ``<emb>`` has been fed back in (so its hidden state has been computed)."""

    def __init__(self, emb_id: int, prompt_len: int):
        self.emb_id, self.prompt_len = emb_id, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return (input_ids[:, self.prompt_len:-1] == self.emb_id).any(dim=1)


class RationaleStreamer(TextIteratorStreamer):
    """Streams the rationale only: nothing from ``<emb>`` on (the step after it is not text)."""

    def __init__(self, tokenizer, emb_id: int, **kwargs):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, **kwargs)
        self.emb_id, self.seen_emb = emb_id, False

    def put(self, value):
        if self.next_tokens_are_prompt or not self.seen_emb and not (value == self.emb_id).any():
            return super().put(value)
        self.seen_emb = True


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
                 lock: threading.RLock | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_new_tokens = max_new_tokens
        self.lock = lock or threading.RLock()
        self.emb_id = emb_token_id(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        specials = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        self.suppress = sorted(specials - {self.emb_id})
        self.forward_passes = 0  # counts model calls (the benchmark's warm-cache check reads it)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def rows(self, inputs: Sequence[EmbedInput], *, direct: bool) -> list[Row]:
        prompts = [prompt_text(self.processor, x, direct=direct) for x in inputs]
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
            suppress_tokens=self.suppress or None, use_cache=True, return_dict_in_generate=True,
            output_hidden_states=True,
        )

    def _generate(self, rows: Sequence[Row], budget: int, streamer=None) -> list[tuple[list[int], bool, torch.Tensor | None]]:
        """Per row: (rationale ids, forced, ``<emb>`` state (D,) or None when forced)."""
        batch = self._collate(rows)
        prompt_len = batch["input_ids"].shape[1]
        out = self.model.generate(**batch, generation_config=self._generation_config(budget), streamer=streamer,
                                  stopping_criteria=StoppingCriteriaList([StopAfterEmb(self.emb_id, prompt_len)]))
        # hidden_states[s]: per layer, the states of step s; step s >= 1 consumes generated token s - 1.
        results = []
        for i, new in enumerate(out.sequences[:, prompt_len:].tolist()):
            j = new.index(self.emb_id) if self.emb_id in new else None
            if j is not None and j < budget and j + 1 < len(out.hidden_states):
                results.append((new[:j], False, out.hidden_states[j + 1][-1][i, -1].float()))
            else:
                results.append(([t for t in new[:budget] if t != self.pad_id and t != self.emb_id], True, None))
        return results

    def _finish(self, rows: Sequence[Row], generated) -> np.ndarray:
        """Unit vectors for generated rows; budget-forced rows get ``<emb>`` appended and one forward."""
        vectors = [None if h is None else F.normalize(h, dim=-1).cpu().numpy() for _, _, h in generated]
        forced = [i for i, (_, f, _) in enumerate(generated) if f]
        if forced:
            again = self._vectors([rows[i] for i in forced], [generated[i][0] + [self.emb_id] for i in forced])
            for i, v in zip(forced, again):
                vectors[i] = v
        return np.stack(vectors)

    def _result(self, row: Row, ids: list[int], forced: bool, vector: np.ndarray, seconds: float) -> ReasonResult:
        return ReasonResult(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids), seconds, vector, forced,
                            row.prompt + self.tokenizer.decode(ids) + EMB_TOKEN)

    # -- public API ----------------------------------------------------------------------------
    def direct(self, inputs: Sequence[EmbedInput], batch_size: int = 32) -> np.ndarray:
        """Embed items in direct mode: (N, D) float32, unit norm."""
        out = [self._vectors(self.rows(inputs[i:i + batch_size], direct=True))
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
            with self.lock, torch.inference_mode():
                self.forward_passes += 1
                generated = self._generate(rows, budget)
                vectors = self._finish(rows, generated)
            seconds = (time.perf_counter() - t0) / len(rows)
            results += [self._result(row, ids, forced, vec, seconds)
                        for row, (ids, forced, _), vec in zip(rows, generated, vectors)]
        return results

    def with_rationale(self, inputs: Sequence[EmbedInput], rationales: Sequence[str]) -> np.ndarray:
        """Embed queries with a given rationale (an oracle or a user's edit) instead of generating one."""
        rows = self.rows(inputs, direct=False)
        suffixes = [self.tokenizer.encode(r, add_special_tokens=False) + [self.emb_id] for r in rationales]
        return self._vectors(rows, suffixes)

    def stream(self, inp: EmbedInput, max_new_tokens: int | None = None) -> Iterator[StreamEvent]:
        """Yield the rationale as it grows, then a final event whose ``result`` holds the vector."""
        budget = max_new_tokens or self.max_new_tokens
        streamer = RationaleStreamer(self.tokenizer, self.emb_id, timeout=600)
        rows = self.rows([inp], direct=False)
        box: dict = {}

        def run():
            # The lock is taken in this thread: a generator may be resumed from other threads.
            try:
                with self.lock, torch.inference_mode():
                    self.forward_passes += 1
                    box["generated"] = self._generate(rows, budget, streamer)
                    box["vectors"] = self._finish(rows, box["generated"])
            except BaseException as e:  # surfaced to the caller below
                box["error"] = e
                streamer.end()

        t0 = time.perf_counter()
        thread = threading.Thread(target=run, name="rge-generate", daemon=True)
        thread.start()
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
        result = self._result(rows[0], ids, forced, vec, time.perf_counter() - t0)
        yield StreamEvent(text=result.rationale, result=result)
