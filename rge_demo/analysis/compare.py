"""Side-by-side comparison of direct and reasoning embeddings for one query (the Compare tab).

:func:`compare_stream` yields :class:`Comparison` snapshots: first the direct top-k, then the
rationale as it grows, and last the reasoning top-k with what moved between the two lists.
:func:`reembed` recomputes the reasoning side from an edited rationale.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from rge_demo.embedding.index import GalleryIndex, Hit
from rge_demo.embedding.prompts import EmbedInput


@dataclass
class Side:
    """One mode's result: top-k hits, the right candidate's rank in the whole gallery, cost."""

    hits: list[Hit]
    target_rank: int | None = None
    seconds: float = 0.0
    tokens: int = 0
    vector: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Move:
    item_id: str
    label: str
    direct_rank: int  # rank in the whole gallery
    reason_rank: int
    change: str  # "entered", "left", "up 2", "down 1", "same"


@dataclass
class Comparison:
    direct: Side | None = None
    reason: Side | None = None
    rationale: str = ""
    forced: bool = False
    done: bool = False
    moves: list[Move] = field(default_factory=list)

    def cost_line(self) -> str:
        parts = []
        if self.direct:
            parts.append(f"direct: 1 forward pass, {self.direct.seconds:.2f} s")
        if self.reason and self.done:
            budget = " (budget reached, <emb> appended)" if self.forced else ""
            parts.append(f"reasoning: {self.reason.tokens} generated tokens{budget}, {self.reason.seconds:.2f} s")
        return " | ".join(parts)


def full_ranks(index: GalleryIndex, vector: np.ndarray) -> np.ndarray:
    """(N,) 1-based rank of every gallery item for one query vector (ties by lower index)."""
    scores = index.matrix @ vector
    order = np.lexsort((np.arange(len(scores)), -scores))
    ranks = np.empty(len(scores), dtype=int)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def _side(index: GalleryIndex, vector: np.ndarray, k: int, target_id: str | None, seconds: float,
          tokens: int = 0) -> Side:
    hits = index.search(vector[None, :], k)[0]
    rank = int(index.rank_of(vector[None, :], [target_id])[0]) if target_id else None
    return Side(hits, rank, seconds, tokens, vector)


def moves(index: GalleryIndex, direct: Side, reason: Side, k: int) -> list[Move]:
    """Items in either top-k: entered / left the top-k, or moved up / down, by reasoning."""
    d_ranks, r_ranks = full_ranks(index, direct.vector), full_ranks(index, reason.vector)
    shown = {h.index for h in direct.hits} | {h.index for h in reason.hits}
    out = []
    for i in sorted(shown, key=lambda i: (r_ranks[i], d_ranks[i])):
        d, r = int(d_ranks[i]), int(r_ranks[i])
        if d > k >= r:
            change = "entered"
        elif r > k >= d:
            change = "left"
        elif r < d:
            change = f"up {d - r}"
        elif r > d:
            change = f"down {r - d}"
        else:
            change = "same"
        item = index.items[i]
        out.append(Move(item.id, item.label or item.text, d, r, change))
    return out


def compare_stream(encoder, index: GalleryIndex, inp: EmbedInput, k: int = 5, target_id: str | None = None,
                   max_new_tokens: int | None = None, min_interval: float = 0.0) -> Iterator[Comparison]:
    """Direct result first, then the streamed rationale, then the reasoning result and the moves.

    ``min_interval``: seconds between two rationale updates at least (the text that arrives in
    between waits for the next one; the final result is never held back). A web page that
    re-renders per update costs the server's event loop a few ms each, and in one process that time
    is taken from the model's generate thread (the GIL): ~10 updates a second read as smooth
    streaming and leave the model its CPU.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if target_id is not None and target_id not in {it.id for it in index.items}:
        raise ValueError(f"the right candidate {target_id!r} is not in gallery {index.gallery.name!r}")
    state = Comparison()
    t0 = time.perf_counter()
    state.direct = _side(index, encoder.direct([inp])[0], k, target_id, time.perf_counter() - t0)
    yield state
    shown = time.perf_counter()
    for event in encoder.stream(inp, max_new_tokens=max_new_tokens):
        state.rationale = event.text
        if event.result is not None:
            r = event.result
            state.reason = _side(index, r.vector, k, target_id, r.seconds, r.tokens)
            state.rationale, state.forced, state.done = r.rationale, r.forced, True
            state.moves = moves(index, state.direct, state.reason, k)
        elif time.perf_counter() - shown < min_interval:
            continue
        shown = time.perf_counter()
        yield state


def reembed(encoder, index: GalleryIndex, inp: EmbedInput, rationale: str, previous: Comparison,
            k: int = 5, target_id: str | None = None) -> Comparison:
    """The reasoning side recomputed from a user-edited rationale; moves are against the direct side."""
    if previous.direct is None:
        raise ValueError("run a comparison first: there is no direct result to compare against")
    t0 = time.perf_counter()
    vector = encoder.with_rationale([inp], [rationale])[0]
    tokens = len(encoder.tokenizer.encode(rationale, add_special_tokens=False))
    reason = _side(index, vector, k, target_id, time.perf_counter() - t0, tokens)
    return Comparison(direct=previous.direct, reason=reason, rationale=rationale, done=True,
                      moves=moves(index, previous.direct, reason, k))
