"""The RGE encoder: one code path for every Qwen2.5-VL RGE checkpoint.

* direct: ``prompt + <emb>`` -> one forward -> final-layer hidden state at ``<emb>``, L2-normalised.
* reasoning: ``prompt`` -> greedy rationale that stops at ``<emb>`` (appended when the budget runs
  out) -> one forward over ``prompt + rationale + <emb>`` -> the same read-out. The re-forward is
  the path training takes, and unlike a cached decode step it is exact under left padding in
  transformers 5 (no ``cache_position``; see STACK.md).

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
from transformers import GenerationConfig, TextIteratorStreamer

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
        return GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.emb_id,
            pad_token_id=self.pad_id, suppress_tokens=self.suppress or None, use_cache=True,
        )

    def _split_generated(self, new_ids: list[int]) -> tuple[list[int], bool]:
        """Rationale ids up to the first ``<emb>``; ``forced`` when no ``<emb>`` was emitted."""
        if self.emb_id in new_ids:
            return new_ids[: new_ids.index(self.emb_id)], False
        return [t for t in new_ids if t != self.pad_id], True

    # -- public API ----------------------------------------------------------------------------
    def direct(self, inputs: Sequence[EmbedInput], batch_size: int = 32) -> np.ndarray:
        """Embed items in direct mode: (N, D) float32, unit norm."""
        out = [self._vectors(self.rows(inputs[i:i + batch_size], direct=True))
               for i in range(0, len(inputs), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.model.config.text_config.hidden_size), np.float32)

    def reason(self, inputs: Sequence[EmbedInput], batch_size: int = 32,
               max_new_tokens: int | None = None) -> list[ReasonResult]:
        """Generate a rationale per query (batched, greedy), then embed ``prompt + rationale + <emb>``."""
        budget = max_new_tokens or self.max_new_tokens
        results: list[ReasonResult] = []
        for i in range(0, len(inputs), batch_size):
            t0 = time.perf_counter()
            rows = self.rows(inputs[i:i + batch_size], direct=False)
            batch = self._collate(rows)
            with self.lock, torch.inference_mode():
                self.forward_passes += 1
                out = self.model.generate(**batch, generation_config=self._generation_config(budget))
            new = out[:, batch["input_ids"].shape[1]:].tolist()
            splits = [self._split_generated(ids) for ids in new]
            vectors = self._vectors(rows, [ids + [self.emb_id] for ids, _ in splits])
            seconds = (time.perf_counter() - t0) / len(rows)
            for row, (ids, forced), vec in zip(rows, splits, vectors):
                rationale = self.tokenizer.decode(ids, skip_special_tokens=True)
                results.append(ReasonResult(rationale, len(ids), seconds, vec, forced,
                                            row.prompt + self.tokenizer.decode(ids) + EMB_TOKEN))
        return results

    def with_rationale(self, inputs: Sequence[EmbedInput], rationales: Sequence[str]) -> np.ndarray:
        """Embed queries with a given rationale (an oracle or a user's edit) instead of generating one."""
        rows = self.rows(inputs, direct=False)
        suffixes = [self.tokenizer.encode(r, add_special_tokens=False) + [self.emb_id] for r in rationales]
        return self._vectors(rows, suffixes)

    def stream(self, inp: EmbedInput, max_new_tokens: int | None = None) -> Iterator[StreamEvent]:
        """Yield the rationale as it grows, then a final event whose ``result`` holds the vector."""
        budget = max_new_tokens or self.max_new_tokens
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        rows = self.rows([inp], direct=False)
        batch = self._collate(rows)
        box: dict = {}

        def run():
            try:
                with torch.inference_mode():
                    box["out"] = self.model.generate(**batch, generation_config=self._generation_config(budget),
                                                     streamer=streamer)
            except BaseException as e:  # surfaced to the caller below
                box["error"] = e
                streamer.end()

        with self.lock:
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
            self.forward_passes += 1
            ids, forced = self._split_generated(box["out"][0, batch["input_ids"].shape[1]:].tolist())
            vec = self._vectors(rows, [ids + [self.emb_id]])[0]
        rationale = self.tokenizer.decode(ids, skip_special_tokens=True)
        result = ReasonResult(rationale, len(ids), time.perf_counter() - t0, vec, forced,
                              rows[0].prompt + self.tokenizer.decode(ids) + EMB_TOKEN)
        yield StreamEvent(text=rationale, result=result)
