"""Side-by-side comparison of direct and reasoning embeddings for one query (the Compare tab).

:func:`compare_stream` yields :class:`Comparison` snapshots: first the direct top-k, then the
rationale as it grows, and last the reasoning top-k with what moved between the two lists.
:func:`reembed` recomputes the reasoning side from an edited rationale.

Ranks as a person reads them: scores are shown with :data:`DECIMALS` decimals, so two items whose
shown scores are equal share a rank (competition ranking: 0.738, 0.738, 0.701 rank =1, =1, 3) and
are marked as tied (:func:`shown_ranks`, :class:`Place`). What moved between the two lists is read
from these ranks too: two tied items that swap places did not move.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from rge_demo.embedding.index import GalleryIndex, Hit
from rge_demo.embedding.prompts import EmbedInput


DECIMALS = 3  # the precision scores are shown with; equal at this precision is a tie


def shown_ranks(scores: np.ndarray, decimals: int = DECIMALS) -> tuple[np.ndarray, np.ndarray]:
    """((N,) rank, (N,) tied) of every score as shown with ``decimals`` decimals.

    rank = 1 + the number of scores whose shown value is higher; tied = another score shows the same
    value. The shown value is the correctly rounded decimal (``f"{s:.3f}"``), so what reads equal
    on the page ranks equal.
    """
    shown = np.char.mod(f"%.{decimals}f", np.asarray(scores, dtype=np.float64)).astype(np.float64)  # (N,)
    desc = -np.sort(-shown)  # (N,) descending
    higher = np.searchsorted(-desc, -shown, side="left")  # scores shown strictly higher
    same = np.searchsorted(-desc, -shown, side="right") - higher  # this one included
    return higher + 1, same > 1


@dataclass
class Place:
    """Where one gallery item stands in a whole-gallery ranking, as shown (see :func:`shown_ranks`)."""

    rank: int  # shown rank
    tied: bool  # another item shows the same score
    score: float
    index: int  # row in the gallery

    @property
    def label(self) -> str:
        """``"3"``, or ``"=3"`` for a tie."""
        return f"={self.rank}" if self.tied else str(self.rank)


@dataclass
class Side:
    """One mode's result: top-k hits, the right candidate's rank in the whole gallery, cost.

    ``places[i]`` is ``hits[i]``'s shown rank; ``target`` the right candidate's place and
    ``target_hit`` its hit (also when it lies outside the top-k); ``n_items`` the gallery's size.
    """

    hits: list[Hit]
    target_rank: int | None = None  # exact: 1 + items scoring strictly higher (ties favour it)
    seconds: float = 0.0
    tokens: int = 0
    vector: np.ndarray | None = field(default=None, repr=False)
    n_items: int = 0
    places: list[Place] = field(default_factory=list)
    target: Place | None = None
    target_hit: Hit | None = None

    @property
    def target_outside(self) -> bool:
        """The right candidate is known but not among the shown hits."""
        return self.target_hit is not None and all(h.index != self.target_hit.index for h in self.hits)

    def rank_line(self) -> str:
        """``right answer at rank 3 of 11`` (``rank =2 of 11, tied``); empty without a right answer."""
        if self.target is None:
            return ""
        tie = ", tied" if self.target.tied else ""
        return f"right answer at rank {self.target.label} of {self.n_items}{tie}"


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

    model: str = ""  # the model that embedded it
    profile: str = ""  # its prompt profile
    budget: int = 0  # the rationale's token budget
    budget_rule: str = ""  # what the profile does when the budget runs out (append_emb | last_token)
    query: tuple = ()  # what it was computed for (the app's model, gallery, k, right answer and query)

    def cost_line(self) -> str:
        parts = []
        if self.model:
            parts.append(f"model {self.model}" + (f" (profile {self.profile})" if self.profile else ""))
        if self.direct:
            parts.append(f"direct: 1 forward pass, {self.direct.seconds:.2f} s")
        if self.reason and self.done:
            budget = f" (the budget of {self.budget} ran out)" if self.forced and self.budget else \
                " (the budget ran out)" if self.forced else ""  # no "<emb>": the line is Markdown
            parts.append(f"reasoning: {self.reason.tokens} generated tokens{budget}, {self.reason.seconds:.2f} s")
        return " | ".join(parts)


def _side(index: GalleryIndex, vector: np.ndarray, k: int, target_id: str | None, seconds: float,
          tokens: int = 0) -> Side:
    hits = index.search(vector[None, :], k)[0]
    scores = index.matrix @ vector  # (N,) the whole gallery: ties and the right answer's place
    ranks, tied = shown_ranks(scores)
    places = [Place(int(ranks[h.index]), bool(tied[h.index]), h.score, h.index) for h in hits]
    side = Side(hits, None, seconds, tokens, vector, len(index.items), places)
    if target_id:
        t = index.gallery.index_of(target_id)
        side.target_rank = int(index.rank_of(vector[None, :], [target_id])[0])
        side.target = Place(int(ranks[t]), bool(tied[t]), float(scores[t]), t)
        side.target_hit = next((h for h in hits if h.index == t), None) or Hit(
            side.target_rank, t, index.items[t], float(scores[t]))
    return side


def moves(index: GalleryIndex, direct: Side, reason: Side, k: int) -> list[Move]:
    """Every item in either top-k, once: entered / left the top-k, moved up / down, or the same.

    Ranks are the shown ones (:func:`shown_ranks`): tied items that swap places stay "same".
    """
    d_ranks, _ = shown_ranks(index.matrix @ direct.vector)
    r_ranks, _ = shown_ranks(index.matrix @ reason.vector)
    shown = {h.index for h in direct.hits} | {h.index for h in reason.hits}
    out = []
    for i in sorted(shown, key=lambda i: (r_ranks[i], d_ranks[i], i)):
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


def _about(encoder, max_new_tokens: int | None) -> dict:
    """The Comparison fields that describe the encoder: its profile, budget and budget rule."""
    profile = getattr(encoder, "profile", None)
    return {"profile": getattr(profile, "name", "") or "", "budget_rule": getattr(profile, "budget_rule", "") or "",
            "budget": int(max_new_tokens or getattr(encoder, "max_new_tokens", 0) or 0)}


def compare_stream(encoder, index: GalleryIndex, inp: EmbedInput, k: int = 5, target_id: str | None = None,
                   max_new_tokens: int | None = None, min_interval: float = 0.0,
                   model: str = "") -> Iterator[Comparison]:
    """Direct result first, then the streamed rationale, then the reasoning result and the moves.

    ``min_interval``: seconds between two rationale updates at least (the text that arrives in
    between waits for the next one; the final result is never held back). A web page that
    re-renders per update costs the server's event loop a few ms each, and in one process that time
    is taken from the model's generate thread (the GIL): ~10 updates a second read as smooth
    streaming and leave the model its CPU. ``model``: the model's name, shown with the result.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if target_id is not None and target_id not in {it.id for it in index.items}:
        raise ValueError(f"the right candidate {target_id!r} is not in gallery {index.gallery.name!r}")
    state = Comparison(model=model, **_about(encoder, max_new_tokens))
    t0 = time.perf_counter()
    vector, events = encoder.direct_and_stream(inp, max_new_tokens)
    state.direct = _side(index, vector, k, target_id, time.perf_counter() - t0)
    yield state
    shown = time.perf_counter()
    for event in events:
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
            k: int = 5, target_id: str | None = None, model: str | None = None) -> Comparison:
    """The reasoning side recomputed from a user-edited rationale; moves are against the direct side."""
    if previous.direct is None:
        raise ValueError("run a comparison first: there is no direct result to compare against")
    t0 = time.perf_counter()
    vector = encoder.with_rationale([inp], [rationale])[0]
    tokens = len(encoder.tokenizer.encode(rationale, add_special_tokens=False))
    reason = _side(index, vector, k, target_id, time.perf_counter() - t0, tokens)
    return Comparison(direct=previous.direct, reason=reason, rationale=rationale, done=True,
                      moves=moves(index, previous.direct, reason, k),
                      model=previous.model if model is None else model,
                      **_about(encoder, None))


@dataclass
class RationaleNote:
    """What a person should know about the rationale beside it, in plain sentences.

    ``hallucinations`` (colours, shapes, "colour shape" pairs the rationale names but the scene
    lacks) is None when the scene is unknown (not a world gallery's own query), [] when checked clean.
    """

    sentences: list[str] = field(default_factory=list)
    hallucinations: list[str] | None = None
    empty: bool = False
    forced: bool = False


def rationale_note(c: Comparison, facts: dict | None = None) -> RationaleNote:
    """Plain words about ``c``'s rationale: empty (0 tokens), forced (the budget ran out), and the
    hallucination flag from the scene's ground truth ``facts`` (:func:`rge_demo.data.world.scene_facts`;
    the check is :func:`rge_demo.data.world.mention_check`, the one evaluation and Failures use).

    While the rationale streams only its complete words are checked (a half-written word is not
    flagged).
    """
    from rge_demo.data import world

    note = RationaleNote()
    text = c.rationale if c.done else c.rationale[:max(c.rationale.rfind(" "), 0)]
    if facts is not None and facts.get("kind") in ("shapes", "chart"):
        note.hallucinations = world.mention_check(text, facts)
        if note.hallucinations:
            named = ", ".join(f"'{h}'" for h in note.hallucinations)
            note.sentences.append(f"Possible hallucination: the rationale names {named}, which the scene "
                                  "does not contain (checked against the scene's ground truth).")
    if c.done and c.reason is not None and c.reason.tokens == 0 and not c.rationale.strip():
        note.empty = True
        note.sentences.append("The model wrote no rationale (0 tokens): it wrote <emb> at once, so the reasoning side embeds "
                              "the same input as the direct side and the two rankings are the same.")
    elif c.done and c.forced:
        note.forced = True
        budget = f"all {c.budget} tokens of its budget" if c.budget else "its whole token budget"
        how = ("the last written token's state was taken as the embedding" if c.budget_rule == "last_token"
               else "<emb> was appended for it")
        note.sentences.append(f"The rationale is cut off: the model used {budget} without ending it, so {how}. "
                              "The embedding reads an unfinished rationale.")
    return note
