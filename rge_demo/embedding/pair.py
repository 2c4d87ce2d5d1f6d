"""Embed-RL inference (arXiv 2602.13823): a Reasoner writes the T-CoT, an Embedder embeds query + T-CoT.

The Traceability CoT is the evidence in the query that matters for retrieval, then the
intermediate result, answer last; in the micro world that is exactly the world's rationale format
(``<objects>. <count or relation>. answer X``), so the Reasoner keeps its reasoning-mode prompt.
The Embedder reads the T-CoT the way an RGE model reads its own rationale: the query's prompt,
then the T-CoT, then ``<emb>``, whose final hidden state is the embedding. Candidates are embedded
by the Embedder alone (direct mode).

:class:`ReasonerEmbedder` has the encoder methods the evaluation, the index and the app use
(``direct``, ``reason``, ``with_rationale``), so a pair evaluates and serves wherever one RGE
model does. Both models must share the tokenizer (the T-CoT's token ids go from one to the other).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from rge_demo.errors import RGEUserError

from .encoder import Encoder, ReasonResult
from .prompts import EMB_TOKEN, EmbedInput


class PairError(RGEUserError, ValueError):
    """A Reasoner and an Embedder that cannot work together; the message says why."""


class ReasonerEmbedder:
    """A Reasoner :class:`Encoder` that generates, an Embedder :class:`Encoder` that embeds."""

    def __init__(self, reasoner: Encoder, embedder: Encoder):
        if reasoner.tokenizer.get_vocab() != embedder.tokenizer.get_vocab():
            raise PairError("the Reasoner and the Embedder must share one tokenizer (their vocabularies differ)")
        self.reasoner, self.embedder = reasoner, embedder
        self.max_new_tokens = reasoner.max_new_tokens

    def __getattr__(self, name):  # device, dtype, tokenizer, model, ...: the Embedder's
        return getattr(self.embedder, name)

    def direct(self, inputs: Sequence[EmbedInput], batch_size: int = 32) -> np.ndarray:
        return self.embedder.direct(inputs, batch_size=batch_size)

    def with_rationale(self, inputs: Sequence[EmbedInput], rationales: Sequence[str]) -> np.ndarray:
        return self.embedder.with_rationale(inputs, rationales)

    def reason(self, inputs: Sequence[EmbedInput], batch_size: int = 32,
               max_new_tokens: int | None = None) -> list[ReasonResult]:
        """The Reasoner's T-CoT per query (batched, greedy), embedded by the Embedder at ``<emb>``.

        ``seconds`` is both models' time per query; ``prompt`` the Embedder's sequence."""
        out: list[ReasonResult] = []
        for i in range(0, len(inputs), batch_size):
            chunk = list(inputs[i:i + batch_size])
            t0 = time.perf_counter()
            thought = self.reasoner.reason(chunk, batch_size=len(chunk), max_new_tokens=max_new_tokens)
            rationales = [r.rationale for r in thought]
            vectors = self.embedder.with_rationale(chunk, rationales)
            seconds = (time.perf_counter() - t0) / len(chunk)
            rows = self.embedder.rows(chunk, direct=False)
            out += [replace(r, vector=v, seconds=seconds, prompt=row.prompt + r.rationale + EMB_TOKEN)
                    for r, v, row in zip(thought, vectors, rows, strict=True)]
        return out


__all__ = ["PairError", "ReasonerEmbedder"]
