"""Continuous batching: a greedy decode loop that rows join and leave between steps.

``generate`` runs a fixed batch to its longest row: a request that arrives one step after a merged
call began waits for the whole call, then runs its own. :class:`DecodeBatch` keeps the KV cache of
the rows in flight instead. :meth:`~DecodeBatch.admit` prefills new rows (one forward over their
prompts) and merges their cache into the running one; :meth:`~DecodeBatch.step` runs one cached
decode step for every row and retires the rows that are done. The request collector
(:mod:`.batcher`) admits waiting requests between steps, so a late request starts at the next step.

It computes exactly what :meth:`Encoder._generate <.encoder.Encoder._generate>` computes for each
row alone (greedy, the same suppressed tokens, the same budget rules; tests compare the two):

* Padding. Rows are left-padded to a common cache length; when rows join, the shorter cache is
  left-padded with zeros under a zero attention mask, and columns every row pads are dropped when
  rows leave. Attention never sees a pad, so a row's numbers do not depend on its neighbours.
* Positions. Each row carries its own next M-RoPE position: the prefill's position ids come from
  the model's ``get_rope_index`` (text-only rows count their tokens), and every decode step feeds
  ``max prompt position + 1 + t`` on all three axes, what ``generate`` derives from its
  ``rope_deltas``. Passing them explicitly leaves ``model.model.rope_deltas`` untouched.
* The embedding. A step's final-layer state at a row's last position is the state of the token the
  step fed in (``last_hidden_state`` is the final norm's output, what :class:`.encoder.EmbCapture`
  reads); a row whose fed token is ``<emb>`` is done with that state. A row whose budget's last
  token is fed without ``<emb>`` is forced: under "last_token" that step's state is its embedding,
  under "append_emb" it has none and the caller re-forwards it with ``<emb>`` appended.
* Only the last position's logits are computed (the ``lm_head`` over one position per row).

Cache layers must be plain :class:`~transformers.cache_utils.DynamicLayer` (full attention); a model
with sliding-window layers is refused with :class:`ValueError` (:func:`supports` tells beforehand).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .encoder import Row, collate


@dataclass(eq=False)
class Seq:
    """One row in flight: its prompt, its budget and the tokens generated so far."""

    row: Row
    budget: int
    on_token: Callable[[int], None] | None = None  # called with each generated token (streaming)
    tokens: list[int] = field(default_factory=list)
    position: int = 0  # M-RoPE position of the next token fed in
    state: torch.Tensor | None = None  # (D,) float32 once done (None: forced under "append_emb")
    forced: bool = False

    @property
    def done(self) -> bool:
        return self.forced or self.state is not None

    def rationale(self, emb_id: int, pad_id: int) -> list[int]:
        """The rationale ids, as :meth:`Encoder._generate` returns them."""
        if not self.forced:
            return self.tokens[:-1]  # the last token fed in was <emb>
        return [t for t in self.tokens[:self.budget] if t != pad_id and t != emb_id]


def supports(model) -> bool:
    """Whether the model's cache is made of full-attention layers (what :class:`DecodeBatch` merges)."""
    text = getattr(model.config, "text_config", model.config)
    return not getattr(text, "use_sliding_window", False) and all(
        kind == "full_attention" for kind in getattr(text, "layer_types", None) or ["full_attention"])


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class DecodeBatch:
    """The rows in flight on one encoder's model and their KV cache.

    Call :meth:`admit` and :meth:`step` under the encoder's lock and ``torch.inference_mode()``.
    """

    def __init__(self, encoder):
        if not supports(encoder.model):
            raise ValueError(f"{type(encoder.model).__name__}: sliding-window attention; continuous batching "
                             "merges full-attention caches only")
        self.encoder = encoder
        self.model = encoder.model
        self.seqs: list[Seq] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, L) attention mask over the cache's columns
        self._suppress = torch.tensor(encoder.suppress, dtype=torch.long, device=encoder.device)

    def __len__(self) -> int:
        return len(self.seqs)

    # -- one forward -------------------------------------------------------------------------------
    def _forward(self, cache: DynamicCache, **inputs) -> torch.Tensor:
        """Final-layer state at each row's last position: (B, D)."""
        out = self.model.model(**inputs, past_key_values=cache, use_cache=True)
        return out.last_hidden_state[:, -1]

    def _choose(self, states: torch.Tensor, seqs: Sequence[Seq]) -> list[int]:
        """Greedy next tokens (generate's ``suppress_tokens``; the benchmarks' forced budget)."""
        logits = self.model.lm_head(states).float()
        if len(self._suppress):
            logits[:, self._suppress] = -float("inf")
        emb = self.encoder.emb_id
        if self.encoder.force_budget:  # EmbAtBudget: <emb> banned until the budget's last token, then forced
            for i, s in enumerate(seqs):
                n = len(s.tokens)
                if n < s.budget - 1:
                    logits[i, emb] = -float("inf")
                elif n == s.budget - 1:
                    logits[i] = -float("inf")
                    logits[i, emb] = 0.0
        return logits.argmax(-1).tolist()

    def _append(self, seq: Seq, token: int) -> None:
        seq.tokens.append(token)
        if seq.on_token is not None:
            seq.on_token(token)

    # -- rows join -------------------------------------------------------------------------------
    def _positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(3, B, L) M-RoPE position ids of a left-padded prompt batch."""
        mask = batch["attention_mask"]
        if "image_grid_thw" in batch:
            positions, _ = self.model.model.get_rope_index(
                batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                image_grid_thw=batch["image_grid_thw"], attention_mask=mask)
            return positions
        text = (mask.cumsum(-1) - 1).clamp(min=0)
        return text.unsqueeze(0).expand(3, -1, -1)

    def admit(self, seqs: Sequence[Seq]) -> None:
        """Prefill ``seqs`` (one forward over their prompts), choose each one's first token and add
        them to the rows in flight."""
        if not seqs:
            return
        batch = collate([s.row for s in seqs], self.encoder.pad_id, device=self.encoder.device, dtype=self.encoder.dtype)
        positions = self._positions(batch)
        cache = DynamicCache(config=self.model.config)
        states = self._forward(cache, position_ids=positions, **batch)
        valid = batch["attention_mask"].bool()
        for i, s in enumerate(seqs):
            s.position = int(positions[:, i, valid[i]].max()) + 1
        for s, token in zip(seqs, self._choose(states, seqs), strict=True):
            self._append(s, token)
        self._merge(cache, batch["attention_mask"])
        self.seqs += seqs

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            if type(old) is not DynamicLayer or type(new) is not DynamicLayer:
                raise ValueError(f"cannot merge a {type(new).__name__} cache layer")
            old.keys = torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)])
            old.values = torch.cat([_pad_left(old.values, width, 2), _pad_left(new.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])

    # -- one step for every row ------------------------------------------------------------------
    def step(self) -> list[Seq]:
        """Feed every row its last token; return the rows that are done (removed from the batch)."""
        if not self.seqs:
            return []
        last = torch.tensor([[s.tokens[-1]] for s in self.seqs], device=self.encoder.device)
        positions = torch.tensor([s.position for s in self.seqs], device=self.encoder.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.seqs), 1))], dim=1)
        states = self._forward(self.cache, input_ids=last, attention_mask=self.mask,
                               position_ids=positions.view(1, -1, 1).expand(3, -1, -1))
        done, going = [], []
        for i, s in enumerate(self.seqs):
            s.position += 1
            if s.tokens[-1] == self.encoder.emb_id:
                s.state = states[i].float()
                done.append(i)
            elif len(s.tokens) >= s.budget:  # the budget's last token was fed without <emb>
                s.forced = True
                if self.encoder.budget_rule == "last_token":
                    s.state = states[i].float()
                done.append(i)
            else:
                going.append(i)
        for i, token in zip(going, self._choose(states[going], [self.seqs[i] for i in going]), strict=True):
            self._append(self.seqs[i], token)
        finished = [self.seqs[i] for i in done]
        if done:
            self._keep(going)
        return finished

    def _keep(self, rows: list[int]) -> None:
        """Drop every other row from the batch and the cache columns no remaining row uses."""
        self.seqs = [self.seqs[i] for i in rows]
        if not rows:
            self.cache = self.mask = None
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.mask = self.mask[index]
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else 0
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
