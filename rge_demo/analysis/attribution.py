"""What each part of a rationale does to the embedding: leave-one-out re-embedding.

A rationale is split into sentences (separated by ``". "``) and each sentence into clauses
(``", "``). For every part, the query is embedded again with that part removed (the rest joined
by the same separator) and compared with the full rationale's embedding:

    delta_right(part) = cos(e_full, t_right) - cos(e_without_part, t_right)
    delta_wrong(part) = cos(e_full, t_wrong) - cos(e_without_part, t_wrong)

``t_right`` is the right candidate, ``t_wrong`` the best-scoring other candidate under the full
rationale (the top-1 wrong one). ``delta_right > 0``: the part pulls the embedding towards the
right answer; ``delta_wrong > 0``: towards the rival. All variants (the full rationale, every
sentence left out, every clause left out of sentences that have several) are embedded in ONE
batched forward through :meth:`Encoder.with_rationale`. A sentence with a single clause is its own
clause (its clause numbers are the sentence's, no extra row).

:meth:`Attribution.spans` is the structure a view shades: ``[{text, start, end, delta_right,
delta_wrong}]`` with ``rationale[start:end] == text``; separators lie between spans.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.errors import RGEUserError

log = logging.getLogger(__name__)

SENTENCE_SEP = ". "
CLAUSE_SEP = ", "
MAX_PARTS = 64  # parts left out at most: the batched forward holds one row per part (RGE rationales have ~5-30)
LEVELS = ("sentence", "clause")


class AttributionError(RGEUserError, ValueError):
    """An attribution request that cannot run (no candidates, a target outside them, an unknown level)."""


@dataclass
class Part:
    """One sentence or clause: ``rationale[start:end] == text``; deltas as in the module docstring."""

    text: str
    start: int
    end: int
    level: str  # "sentence" | "clause"
    sentence: int  # index of the sentence it is (or lies in)
    without: str = ""  # the rationale with this part removed
    cos_right: float = 0.0  # cos(e_without, t_right)
    cos_wrong: float | None = None  # cos(e_without, t_wrong); None without a wrong candidate
    delta_right: float = 0.0
    delta_wrong: float | None = None

    def span(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end,
                "delta_right": self.delta_right, "delta_wrong": self.delta_wrong}


@dataclass
class Attribution:
    """A rationale's parts with their contributions; ``right`` / ``wrong`` index the candidates."""

    rationale: str
    right: int
    wrong: int | None
    cos_right: float  # full rationale
    cos_wrong: float | None
    sentences: list[Part]
    clauses: list[Part]
    rows: int = 0  # variants embedded in the one forward (the full rationale included)
    vectors: np.ndarray | None = field(default=None, repr=False)  # (rows, D): full first, then in variant order
    right_label: str | None = None  # what the candidates are called, for a view (filled by the caller)
    wrong_label: str | None = None

    def parts(self, level: str = "sentence") -> list[Part]:
        if level not in LEVELS:
            raise AttributionError(f"level must be one of {LEVELS}, got {level!r}")
        return self.sentences if level == "sentence" else self.clauses

    def spans(self, level: str = "sentence") -> list[dict[str, Any]]:
        """``[{text, start, end, delta_right, delta_wrong}]`` in reading order, for shading."""
        return [p.span() for p in self.parts(level)]

    def strongest(self, level: str = "sentence") -> Part | None:
        """The part whose removal moves the right candidate's cosine most (largest |delta_right|)."""
        parts = self.parts(level)
        return max(parts, key=lambda p: abs(p.delta_right)) if parts else None

    def to_dict(self) -> dict[str, Any]:
        return {"rationale": self.rationale, "right": self.right, "wrong": self.wrong,
                "right_label": self.right_label, "wrong_label": self.wrong_label,
                "cos_right": self.cos_right, "cos_wrong": self.cos_wrong, "rows": self.rows,
                "sentences": self.spans("sentence"), "clauses": self.spans("clause")}


def split(text: str, sep: str, offset: int = 0) -> list[tuple[str, int, int]]:
    """``text.split(sep)`` with each piece's (start, end) in the original (plus ``offset``)."""
    out, start = [], 0
    for piece in text.split(sep):
        out.append((piece, offset + start, offset + start + len(piece)))
        start += len(piece) + len(sep)
    return out


def _without(pieces: Sequence[str], i: int, sep: str) -> str:
    return sep.join(p for j, p in enumerate(pieces) if j != i)


def variants(rationale: str) -> tuple[list[Part], list[Part]]:
    """The sentence and clause parts of ``rationale``, each with ``without`` filled (no scores yet).

    Blank pieces (e.g. from ``". . "``) are kept in the text but not attributed. Clause parts of a
    one-clause sentence are the sentence's own part (the same object).
    """
    sentences = split(rationale, SENTENCE_SEP)
    texts = [s for s, _, _ in sentences]
    sent_parts, clause_parts = [], []
    for i, (text, start, end) in enumerate(sentences):
        if not text.strip():
            continue
        part = Part(text, start, end, "sentence", i, without=_without(texts, i, SENTENCE_SEP))
        sent_parts.append(part)
        clauses = split(text, CLAUSE_SEP, start)
        if len([c for c, _, _ in clauses if c.strip()]) < 2:
            clause_parts.append(part)
            continue
        pieces = [c for c, _, _ in clauses]
        for j, (ctext, cstart, cend) in enumerate(clauses):
            if ctext.strip():
                edited = texts[:i] + [_without(pieces, j, CLAUSE_SEP)] + texts[i + 1:]
                clause_parts.append(Part(ctext, cstart, cend, "clause", i, without=SENTENCE_SEP.join(edited)))
    return sent_parts, clause_parts


def attribute(encoder: Encoder, inp: EmbedInput, rationale: str, candidates: np.ndarray, target: int,
              wrong: int | None = None, not_rivals: Sequence[int] = ()) -> Attribution:
    """Leave-one-sentence-out and leave-one-clause-out contributions for one query, in one forward.

    ``candidates`` (N, D) are unit candidate embeddings (direct mode, as a gallery index holds
    them), ``candidates[target]`` the right one. ``wrong`` picks the rival; by default the
    best-scoring other candidate under the full rationale, skipping ``not_rivals`` (e.g. items
    that name the same answer; None when no candidate is left).
    """
    candidates = np.asarray(candidates, dtype=np.float32)
    if candidates.ndim != 2 or len(candidates) == 0:
        raise AttributionError(f"need a (N, D) matrix of candidate embeddings, got shape {candidates.shape}")
    if not 0 <= target < len(candidates):
        raise AttributionError(f"target index {target} is outside the {len(candidates)} candidates")
    if wrong is not None and not (0 <= wrong < len(candidates) and wrong != target):
        raise AttributionError(f"wrong candidate {wrong} must be another of the {len(candidates)} candidates")
    sentences, clauses = variants(rationale)
    own = [p for p in clauses if p.level == "clause"]  # clauses of multi-clause sentences: rows of their own
    if len(sentences) + len(own) > MAX_PARTS:
        raise AttributionError(f"the rationale has {len(sentences)} sentences and {len(own)} clauses within them; "
                               f"attribution leaves out at most {MAX_PARTS} parts (one row each in one forward): "
                               "shorten it")
    texts = [rationale] + [p.without for p in sentences] + [p.without for p in own]
    vecs = encoder.with_rationale([inp] * len(texts), texts)  # (1 + S + C, D): ONE forward
    scores = vecs @ candidates.T  # (rows, N)
    eligible = np.ones(len(candidates), dtype=bool)
    eligible[[target, *[int(i) for i in not_rivals]]] = False
    if wrong is None and eligible.any():
        full = np.where(eligible, scores[0], -np.inf)
        wrong = int(np.argmax(full))
    for row, part in enumerate([*sentences, *own], start=1):
        part.cos_right = float(scores[row, target])
        part.delta_right = float(scores[0, target] - scores[row, target])
        if wrong is not None:
            part.cos_wrong = float(scores[row, wrong])
            part.delta_wrong = float(scores[0, wrong] - scores[row, wrong])
    log.debug("attributed %d sentences, %d clauses in one forward of %d rows", len(sentences), len(clauses), len(texts))
    return Attribution(rationale, int(target), wrong, float(scores[0, target]),
                       None if wrong is None else float(scores[0, wrong]), sentences, clauses, len(texts), vecs)


def attribute_labelled(encoder: Encoder, inp: EmbedInput, rationale: str, candidates: np.ndarray, target: int,
                       labels: Sequence[str], shown: Sequence[str] | None = None) -> Attribution:
    """:func:`attribute` against candidates with ``labels``: a candidate with the right answer's label
    is not a rival (a mixed gallery's "three" of another task embeds the same text as the right
    "three"); ``right_label`` / ``wrong_label`` are filled from ``shown`` (default: ``labels``)."""
    same = [i for i, label in enumerate(labels) if i != target and label == labels[target]]
    att = attribute(encoder, inp, rationale, candidates, target, not_rivals=same)
    shown = labels if shown is None else shown
    att.right_label = shown[att.right]
    att.wrong_label = shown[att.wrong] if att.wrong is not None else None
    return att
