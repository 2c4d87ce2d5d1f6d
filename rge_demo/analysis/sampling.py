"""Sampled rationales: N per query at a temperature, what each says, and how far their embeddings spread.

Greedy reasoning gives one rationale per query. Sampling ``n`` of them at temperature ``T`` shows
how much the embedding depends on the particular rationale: each sample's stated answer
(``answer X``, :func:`rge_demo.data.world.answer_of`), the rank of the right candidate and its
cosine; the spread of the ``n`` unit vectors (mean pairwise cosine: 1.0 = all the same point);
a 2-D PCA of the samples beside the direct, greedy and centroid points; pass@k; the rank of the
centroid (the normalised mean of the ``n`` vectors); and the oracle that takes, per query, the
better of direct and greedy reasoning.

Generation is the encoder's own (:meth:`Encoder._generate`: the ``<emb>`` state is read inside
``generate``, the profile's budget rule applies) with a sampling generation config: each query's
row is repeated ``n`` times and a chunk of rows is ONE ``generate`` call. Under a seed the draws
are deterministic: the same inputs, ``n``, ``temperature``, ``seed`` and ``batch_size`` give the
same samples (a query's samples depend on the rows it shares a call with, as with any batched
sampler). The embedding of a sample is the state at the ``<emb>`` that ends it, i.e.
``prompt + sampled ids + <emb>`` - what :meth:`Encoder.with_rationale` gives for the rationale,
up to re-tokenisation of the decoded text.

pass@k is the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374): with ``c`` of ``n``
samples at rank 1, ``pass@k = 1 - C(n - c, k) / C(n, k)``, the chance that at least one of ``k``
samples drawn without replacement is right; ``pass@n`` is "any sample right".
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rge_demo.data import world
from rge_demo.embedding.encoder import Encoder, ReasonResult
from rge_demo.embedding.index import rank_of
from rge_demo.errors import RGEUserError
from rge_demo.embedding.prompts import EmbedInput

from .eval_tasks import EvalTask
from .projection import pca_2d

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 2, 4, 8)
MIN_TEMPERATURE = 0.01  # below it softmax(logits / t) overflows to inf / nan; greedy is temperature 0
MAX_TEMPERATURE = 5.0
MAX_SAMPLES = 256  # per query: the sampler generates a query's n rows in one call


class SamplingError(RGEUserError, ValueError):
    """A sampling request that cannot run (n, temperature, k, targets); the message names the value."""


# ------------------------------------------------------------------------------------- sampling
def _sampling_view(encoder: Encoder, temperature: float) -> Encoder:
    """A shallow copy of ``encoder`` (same model, processor, lock, profile) whose generate samples.

    Only ``_generation_config`` differs: ``do_sample`` at ``temperature`` over the whole
    distribution (top_k 0, top_p 1), still suppressing the special tokens and stopping at ``<emb>``.
    """
    base = encoder._generation_config
    view = copy.copy(encoder)

    def sampling_config(max_new_tokens: int):
        cfg = base(max_new_tokens)
        cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p = True, float(temperature), 0, 1.0
        return cfg

    view._generation_config = sampling_config
    return view


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([int(seed), chunk]).generate_state(1)[0])


def check_options(n: int, temperature: float, seed: int = 0) -> None:
    """Refuse what sampling cannot do, with a sentence (callers check before loading a model)."""
    if n < 1:
        raise SamplingError(f"need at least one sample per query, got n={n}")
    if n > MAX_SAMPLES:
        raise SamplingError(f"at most {MAX_SAMPLES} samples per query (one generate call holds a query's n rows), "
                            f"got n={n:,}")
    if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:  # also nan; below the minimum the softmax overflows
        raise SamplingError(f"the temperature must be in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] for sampling "
                            f"(greedy is the encoder's reason()), got {temperature:g}")
    if not 0 <= seed < 2**63:
        raise SamplingError(f"the seed must be a whole number in [0, 2**63), got {seed}")


def sample(encoder: Encoder, inputs: Sequence[EmbedInput], n: int = 8, temperature: float = 1.0, seed: int = 0,
           max_new_tokens: int | None = None, batch_size: int = 32) -> list[list[ReasonResult]]:
    """``n`` sampled rationales per query, each embedded at its ``<emb>``: one list of ``n`` per input.

    ``batch_size`` counts generated rows: ``max(1, batch_size // n)`` queries (``n`` rows each) go
    into one ``generate`` call. ``seed`` fixes the draws (see the module docstring); the global
    torch RNG is left as it was.
    """
    check_options(n, temperature, seed)
    budget = max_new_tokens or encoder.max_new_tokens
    view = _sampling_view(encoder, temperature)
    per_call = max(1, batch_size // n)
    out: list[list[ReasonResult]] = []
    for chunk, start in enumerate(range(0, len(inputs), per_call)):
        t0 = time.perf_counter()
        rows = encoder.rows(inputs[start:start + per_call], direct=False)
        rows = [r for r in rows for _ in range(n)]  # (Q * n) rows: each query n times, in order
        devices = [encoder.device] if encoder.device.type == "cuda" else []
        with encoder.lock, torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(_chunk_seed(seed, chunk))
            encoder.forward_passes += 1
            generated = view._generate(rows, budget)
            vectors = view._finish(rows, generated)
        encoder.last_capture = view.last_capture
        seconds = (time.perf_counter() - t0) / len(rows)
        results = [encoder._result(row, ids, forced, vec, seconds)
                   for row, (ids, forced, _), vec in zip(rows, generated, vectors, strict=True)]
        out += [results[i:i + n] for i in range(0, len(results), n)]
    log.info("sampled %d x %d rationales at temperature %.2f (seed %d)", len(inputs), n, temperature, seed)
    return out


# ------------------------------------------------------------------------------------- read-outs
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: ``1 - C(n - c, k) / C(n, k)`` for ``c`` right of ``n`` samples, ``k <= n``."""
    if not 1 <= k <= n:
        raise SamplingError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise SamplingError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pairwise_cosine(vectors: np.ndarray) -> float | None:
    """Mean cosine over the ``n (n - 1) / 2`` pairs of unit rows (n, D); None for fewer than 2 rows."""
    n = len(vectors)
    if n < 2:
        return None
    sims = vectors @ vectors.T  # (n, n)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def ks_for(n: int, ks: Sequence[int] | None = None) -> list[int]:
    """The k of pass@k reported for ``n`` samples: ``ks`` (default 1, 2, 4, 8) up to n, and n itself."""
    ks = sorted({int(k) for k in (ks if ks is not None else DEFAULT_KS)} | {n})
    bad = [k for k in ks if k < 1]
    if bad:
        raise SamplingError(f"pass@k needs k >= 1, got {bad[0]}")
    return [k for k in ks if k <= n]


def _rank(vec: np.ndarray, pool: np.ndarray, target: int) -> tuple[int, float]:
    """(1-based rank of ``pool[target]``, its cosine) for a unit query ``vec`` (D,); ties favour the target."""
    return int(rank_of(vec, pool, np.array([target]))[0]), float((pool @ vec)[target])


@dataclass
class Point:
    """One embedding of the query and where it puts the right candidate."""

    rank: int
    cosine: float
    vector: np.ndarray = field(repr=False)  # (D,) unit
    rationale: str = ""
    answer: str | None = None  # the rationale's "answer X"
    tokens: int = 0
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "cosine": round(self.cosine, 6), "rationale": self.rationale,
                "answer": self.answer, "tokens": self.tokens, "forced": self.forced}


@dataclass
class SampleSet:
    """One query's ``n`` samples beside its direct, greedy and centroid embeddings.

    ``projection`` holds 2-D PCA coordinates fitted on the samples, direct, greedy and centroid
    points together: ``{"samples": (n, 2), "direct": (2,), "greedy": (2,), "centroid": (2,)}``.
    """

    samples: list[Point]
    direct: Point
    greedy: Point
    centroid: Point
    spread: float | None  # mean pairwise cosine of the samples
    pass_at: dict[int, float]
    projection: dict[str, np.ndarray]
    temperature: float
    seed: int

    @property
    def correct(self) -> int:
        """How many samples put the right candidate at rank 1."""
        return sum(p.rank == 1 for p in self.samples)

    @property
    def oracle_rank(self) -> int:
        """The better of direct and greedy reasoning for this query."""
        return min(self.direct.rank, self.greedy.rank)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (vectors left out; projection as lists)."""
        return {
            "n": len(self.samples), "temperature": self.temperature, "seed": self.seed,
            "samples": [p.to_dict() for p in self.samples],
            "direct": self.direct.to_dict(), "greedy": self.greedy.to_dict(), "centroid": self.centroid.to_dict(),
            "correct": self.correct, "spread": None if self.spread is None else round(self.spread, 6),
            "pass_at": {str(k): round(v, 6) for k, v in self.pass_at.items()},
            "oracle_rank": self.oracle_rank,
            "projection": {k: np.round(v, 5).tolist() for k, v in self.projection.items()},
        }


def _point(vec: np.ndarray, pool: np.ndarray, target: int, r: ReasonResult | None = None) -> Point:
    rank, cos = _rank(vec, pool, target)
    if r is None:
        return Point(rank, cos, vec)
    return Point(rank, cos, vec, r.rationale, world.answer_of(r.rationale), r.tokens, r.forced)


def sample_set(samples: Sequence[ReasonResult], direct: np.ndarray, greedy: ReasonResult, pool: np.ndarray,
               target: int, ks: Sequence[int] | None = None, temperature: float = 1.0, seed: int = 0) -> SampleSet:
    """Read one query's samples against its candidate pool (N, D), ``pool[target]`` being right."""
    if not 0 <= target < len(pool):
        raise SamplingError(f"target index {target} is outside the {len(pool)} candidates")
    vecs = np.stack([r.vector for r in samples]).astype(np.float32)  # (n, D)
    mean = vecs.mean(axis=0)
    centroid = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    points = [_point(r.vector, pool, target, r) for r in samples]
    c = sum(p.rank == 1 for p in points)
    xy = pca_2d(np.concatenate([vecs, direct[None], greedy.vector[None], centroid[None]]))  # (n + 3, 2)
    n = len(samples)
    return SampleSet(
        samples=points, direct=_point(direct, pool, target), greedy=_point(greedy.vector, pool, target, greedy),
        centroid=_point(centroid, pool, target), spread=mean_pairwise_cosine(vecs),
        pass_at={k: pass_at_k(n, c, k) for k in ks_for(n, ks)},
        projection={"samples": xy[:n], "direct": xy[n], "greedy": xy[n + 1], "centroid": xy[n + 2]},
        temperature=float(temperature), seed=int(seed),
    )


def sample_queries(encoder: Encoder, inputs: Sequence[EmbedInput], candidates: np.ndarray, targets: Sequence[int],
                   n: int = 8, temperature: float = 1.0, seed: int = 0, ks: Sequence[int] | None = None,
                   pools: Sequence[Sequence[int] | None] | None = None, max_new_tokens: int | None = None,
                   batch_size: int = 32) -> list[SampleSet]:
    """Direct, greedy and ``n`` sampled embeddings per query, ranked against ``candidates`` (N, D) unit rows.

    ``targets[i]`` indexes the right row of ``candidates``; ``pools[i]``, when given, restricts
    query i to those rows (MMEB's per-query lists) and must contain its target.
    """
    if len(targets) != len(inputs):
        raise SamplingError(f"{len(inputs)} queries but {len(targets)} targets")
    check_options(n, temperature, seed)
    ks_for(n, ks)
    candidates = np.asarray(candidates, dtype=np.float32)
    pools = list(pools) if pools is not None else [None] * len(inputs)
    direct = encoder.direct(list(inputs), batch_size=batch_size)  # (Q, D)
    greedy = encoder.reason(list(inputs), batch_size=batch_size, max_new_tokens=max_new_tokens)
    sampled = sample(encoder, inputs, n, temperature, seed, max_new_tokens, batch_size)
    out = []
    for i, target in enumerate(targets):
        if pools[i] is None:
            pool, t = candidates, int(target)
        else:
            idx = [int(j) for j in pools[i]]
            if int(target) not in idx:
                raise SamplingError(f"query {i}: its target {target} is not in its candidate list")
            pool, t = candidates[idx], idx.index(int(target))
        out.append(sample_set(sampled[i], direct[i], greedy[i], pool, t, ks, temperature, seed))
    return out


# ----------------------------------------------------------------------------------- benchmark
def evaluate_sampling(encoder: Encoder, tasks: Sequence[EvalTask], n: int = 8, temperature: float = 1.0,
                      seed: int = 0, ks: Sequence[int] | None = None, max_new_tokens: int | None = None,
                      batch_size: int = 32) -> list[dict[str, Any]]:
    """One record per query of every task: ``SampleSet.to_dict()`` plus its ids and the right label."""
    records = []
    for task in tasks:
        matrix = encoder.direct([c.item.to_input() for c in task.candidates], batch_size=batch_size)  # (N, D)
        sets = sample_queries(encoder, [q.item.to_input() for q in task.queries], matrix,
                              [q.candidate_index(task) for q in task.queries], n, temperature, seed, ks,
                              [q.candidates for q in task.queries], max_new_tokens, batch_size)
        for q, s in zip(task.queries, sets, strict=True):
            label = task.candidates[q.candidate_index(task)].label
            records.append({"dataset": task.name, "task": task.task, "split": task.split, "query_id": q.id,
                            "target_label": label, **s.to_dict()})
        log.info("sampled %s: %d queries x %d", task.name, len(task.queries), n)
    return records


def sampling_table(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The extra evaluation columns per dataset and ``overall`` (a mean over queries), in [0, 1] except spread.

    ``direct_p1`` / ``reason_p1`` (greedy) / ``oracle_p1`` (better of the two per query),
    ``sample_p1`` (mean share of right samples = pass@1), ``pass@k`` for each k every record
    has, ``centroid_p1``, ``spread`` (mean pairwise cosine), ``stated_right`` (share of samples
    whose ``answer X`` is the right label) and ``n_queries``.
    """
    groups: dict[str, list[dict[str, Any]]] = {"overall": list(records)}
    for r in records:
        groups.setdefault(r["dataset"], []).append(r)
    out = {}
    for name, rows in groups.items():
        if not rows:
            continue
        ks = sorted(set.intersection(*(set(r["pass_at"]) for r in rows)), key=int)
        spreads = [r["spread"] for r in rows if r["spread"] is not None]
        out[name] = {
            "n_queries": float(len(rows)),
            "direct_p1": float(np.mean([r["direct"]["rank"] == 1 for r in rows])),
            "reason_p1": float(np.mean([r["greedy"]["rank"] == 1 for r in rows])),
            "oracle_p1": float(np.mean([r["oracle_rank"] == 1 for r in rows])),
            "sample_p1": float(np.mean([r["correct"] / r["n"] for r in rows])),
            **{f"pass@{k}": float(np.mean([r["pass_at"][k] for r in rows])) for k in ks},
            "centroid_p1": float(np.mean([r["centroid"]["rank"] == 1 for r in rows])),
            "spread": float(np.mean(spreads)) if spreads else float("nan"),
            "stated_right": float(np.mean([np.mean([s["answer"] == r["target_label"] for s in r["samples"]])
                                           for r in rows])),
        }
    return out


def sampling_markdown(table: dict[str, dict[str, float]]) -> str:
    """:func:`sampling_table` as a markdown table: one row per dataset, ``overall`` last; P@1-like
    columns in %, spread as a cosine."""
    names = [n for n in table if n != "overall"] + (["overall"] if "overall" in table else [])
    ks = [c for c in table[names[0]] if c.startswith("pass@")] if names else []
    cols = ["direct_p1", "reason_p1", "oracle_p1", "sample_p1", *ks, "centroid_p1", "stated_right"]
    heads = ["direct P@1", "greedy P@1", "oracle P@1", "sample P@1", *ks, "centroid P@1", "stated answer right"]
    lines = ["| dataset | queries | " + " | ".join(heads) + " | spread |", "|---|---:|" + "---:|" * (len(cols) + 1)]
    for n in names:
        row = table[n]
        lines.append(f"| {n} | {int(row['n_queries'])} | " + " | ".join(f"{100 * row.get(c, float('nan')):.1f}"
                                                                         for c in cols) + f" | {row['spread']:.3f} |")
    return "\n".join(lines)


def sampling_columns(encoder: Encoder, tasks: Sequence[EvalTask], n: int = 8, temperature: float = 1.0,
                     seed: int = 0, ks: Sequence[int] | None = None, max_new_tokens: int | None = None,
                     batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Per-task pass@k, centroid P@1 and oracle(direct, reasoning) P@1 (with direct/greedy P@1 beside them)."""
    return sampling_table(evaluate_sampling(encoder, tasks, n, temperature, seed, ks, max_new_tokens, batch_size))


# ------------------------------------------------------------------------------------- figure
MIN_SPAN = 0.05  # the sampling map's narrowest axis, in embedding units (cosine distances of unit vectors)


def samples_figure(s: SampleSet, title: str | None = None):
    """A small plotly map of ``s.projection``: the ``n`` samples (green where they rank the right
    candidate first, red elsewhere; hover: rank, cosine, stated answer) beside the direct, greedy and
    centroid points. Axes are the PCA's, fitted on these ``n + 3`` points only."""
    import plotly.graph_objects as go

    xy = np.asarray(s.projection["samples"]).reshape(-1, 2)
    fig = go.Figure()
    right = [p.rank == 1 for p in s.samples]
    for ok, name, colour in ((True, "sample, right answer first", "#16a34a"), (False, "sample, another first", "#dc2626")):
        rows = [i for i, r in enumerate(right) if r == ok]
        if not rows:
            continue
        fig.add_trace(go.Scatter(
            x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=name, hoverinfo="text",
            hovertext=[f"sample {i + 1}: rank {s.samples[i].rank}, cosine {s.samples[i].cosine:+.3f}, "
                       f"says {s.samples[i].answer or '(no answer)'}" for i in rows],
            marker={"size": 10, "color": colour, "opacity": 0.75, "line": {"width": 1, "color": "white"}}))
    # Axes at least MIN_SPAN wide: near-equal embeddings (a model that samples one rationale N times)
    # must not be magnified into a spread by autoscaling float noise.
    refs = (("direct", s.direct, "square", "#2563eb"), ("greedy", s.greedy, "diamond", "#7c3aed"),
            ("centroid", s.centroid, "star", "#f59e0b"))
    at = {key: np.asarray(s.projection[key], dtype=float).reshape(2) for key, *_ in refs}
    every = np.vstack([xy, *at.values()])
    low, high = every.min(axis=0), every.max(axis=0)
    half = np.maximum((high - low) * np.array([0.6, 0.7]), MIN_SPAN / 2)  # room for the labels above points
    centre = (low + high) / 2 + np.array([0.0, 0.1]) * (high - low)
    # Points whose labels would overlap share one ("greedy = centroid"; QA saw "cgreedyd"): a label is about
    # a quarter of the plot's half-width wide and a tenth of its half-height tall.
    reach = half * np.array([0.25, 0.1])
    labels: dict[str, str] = {}
    for key in at:
        first = next((k for k in labels if labels[k] and (np.abs(at[k] - at[key]) < reach).all()), None)
        labels[key] = ""
        if first is not None:
            labels[first] += f" = {key}"
        else:
            labels[key] = key
    for key in [k for k in labels if labels[k]]:  # samples hidden under a marker are named in its label
        under = int((np.abs(xy - at[key]) < reach / 2).all(axis=1).sum())
        if under:
            labels[key] += f" = {under} sample{'s' if under > 1 else ''}"
    for key, point, symbol, colour in refs:
        x, y = at[key]
        # a label near a side of the plot grows inwards, so its end is not cut at the edge (QA: "greedy = centro")
        side = (x - centre[0]) / half[0]
        fig.add_trace(go.Scatter(
            x=[x], y=[y], mode="markers+text", name=f"{key} (rank {point.rank})", text=[labels[key]],
            textposition="top left" if side > 0.3 else "top right" if side < -0.3 else "top center",
            hoverinfo="text", hovertext=[f"{key}: rank {point.rank}, cosine {point.cosine:+.3f}"],
            marker={"size": 15, "symbol": symbol, "color": colour, "line": {"width": 1, "color": "black"}}))
    spread = "-" if s.spread is None else f"{s.spread:.3f}"
    fig.update_layout(template="plotly_white", height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title={"text": title or f"{len(s.samples)} samples at T={s.temperature:g}: spread "
                                               f"(mean pairwise cosine) {spread}", "font": {"size": 14}},
                      legend={"itemsizing": "constant", "font": {"size": 11}, "orientation": "h",
                              "yanchor": "top", "y": -0.02, "xanchor": "left", "x": 0},
                      xaxis={"visible": False, "range": [centre[0] - half[0], centre[0] + half[0]]},
                      yaxis={"visible": False, "range": [centre[1] - half[1], centre[1] + half[1]]})
    return fig
