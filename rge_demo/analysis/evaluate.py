"""Evaluate an RGE encoder on benchmark tasks: the synthetic world's test splits or a local MMEB-eval.

Candidates are embedded in direct mode (through an :class:`EmbeddingCache` when given), queries in
the chosen mode: ``reason`` (generate a rationale, then embed), ``direct`` (no rationale) or
``oracle`` (the world's oracle rationale, an upper bound for the world only). Each query becomes
one case record; :meth:`EvalRun.summary` aggregates them with
:func:`rge_demo.analysis.metrics.grouped_metrics` (P@1 and recall@5 per dataset, per meta-task,
IND/OOD and overall; meta-task and overall scores are also given as the MMEB macro mean over
datasets). A dataset is an :class:`EvalTask`: a world task in one split (``"count/ind"``, recorded
as ``dataset`` next to ``task="count"``) or an MMEB subset; summary keys ``task=<dataset>``.

Distributed: :class:`Shard` deals the work out over processes (``torchrun`` / ``accelerate
launch``; the CLI builds it from the launcher's environment) and gathers the results, so every
process holds the whole run and the first one saves it.

A saved run is a folder: ``cases.jsonl`` (one case per line), ``summary.json``, ``table.md`` (laid
out like the paper's Table 2) and ``images/`` (world query images, which live only in memory).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rge_demo.data import world
from rge_demo.data.images import content_hash
from rge_demo.data.items import atomic_write_bytes, atomic_write_text
from rge_demo.embedding.index import CacheKey, EmbeddingCache, first_of_each, rank_of, top_k

from .eval_tasks import (EVAL_SPLITS, MMEB_META_TASKS, MMEB_OOD, EvalCandidate, EvalDataError, EvalItem,
                         EvalQuery, EvalTask, load_mmeb, mmeb_group, query_prompt, world_tasks)
from .metrics import grouped_metrics
from .report import compare_runs, run_table

__all__ = ["EVAL_SPLITS", "MMEB_META_TASKS", "MMEB_OOD", "MODES", "EvalCandidate", "EvalDataError", "EvalItem",
           "EvalQuery", "EvalRun", "EvalTask", "Shard", "compare_runs", "evaluate", "load_mmeb", "load_run",
           "mmeb_group", "world_tasks"]

log = logging.getLogger(__name__)

MODES = ("reason", "direct", "oracle")
TOPK = 5
CASES, SUMMARY, TABLE = "cases.jsonl", "summary.json", "table.md"

Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    pass


def _alone(obj: Any) -> list[Any]:
    return [obj]


@dataclass(frozen=True)
class Shard:
    """This process's share of an evaluation run by ``count`` processes.

    Work is dealt out in whole batches: batch ``j`` of a task's candidates still to embed, and batch
    ``j`` of its queries, go to process ``j % count``. Each batch then holds exactly the rows it
    holds in a one-process run, so every vector, rationale, rank and table equals the one-process
    run's. ``gather(obj)`` returns every process's ``obj`` in process order (accelerate's
    ``gather_object``, or ``torch.distributed.all_gather_object``); all processes call it equally
    often, three times per task: the candidates still to embed (the first process's list is used,
    so a cache written meanwhile cannot split the processes' views), their vectors, the cases.
    """

    index: int = 0
    count: int = 1
    gather: Callable[[Any], list[Any]] = _alone

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be in 0..{self.count - 1}, got {self.index}")

    def mine(self, batch: int) -> bool:
        return batch % self.count == self.index


@dataclass
class EvalRun:
    """Per-query case records plus run info (mode, model, timings); see :meth:`summary`."""

    cases: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict, repr=False)  # query id -> PIL image (world)

    def summary(self) -> dict[str, Any]:
        """Run info + ``metrics`` (grouped_metrics over task / meta_task / split) + rationale stats."""
        n = len(self.cases)
        seconds = [c["seconds"] for c in self.cases]
        reasoned = [c for c in self.cases if self.info.get("mode") == "reason"]
        checked = [c for c in self.cases if c.get("hallucinations") is not None and c.get("rationale")]
        return {
            **self.info,
            "n": n,
            "seconds_per_query": float(np.mean(seconds)) if n else float("nan"),
            "tokens_mean": float(np.mean([c["tokens"] for c in reasoned])) if reasoned else 0.0,
            "forced_rate": float(np.mean([c["forced"] for c in reasoned])) if reasoned else 0.0,
            "hallucination_rate": float(np.mean([bool(c["hallucinations"]) for c in checked])) if checked else None,
            "metrics": grouped_metrics(({**c, "task": c.get("dataset") or c["task"]} for c in self.cases),
                                       keys=("task", "meta_task", "split")),
        }

    def table(self, title: str | None = None) -> str:
        return run_table(self.summary(), title)

    def save(self, out_dir: str | Path) -> Path:
        """Write cases.jsonl, summary.json, table.md (and world query images) atomically into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for case in self.cases:
            img = self.images.get(case["query_id"])
            if img is not None:
                rel = f"images/{_safe(case['query_id'])}.png"
                atomic_write_bytes(out / rel, world.png_bytes(img))
                case["image"] = rel
        atomic_write_text(out / CASES, "".join(json.dumps(c, sort_keys=True) + "\n" for c in self.cases))
        summary = self.summary()
        atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1, sort_keys=True) + "\n")
        atomic_write_text(out / TABLE, run_table(summary))
        log.info("saved evaluation run (%d cases) to %s", len(self.cases), out)
        return out


def load_run(run_dir: str | Path) -> EvalRun:
    """An EvalRun read back from a folder written by :meth:`EvalRun.save`."""
    run_dir = Path(run_dir)
    for name in (CASES, SUMMARY):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name}; not an evaluation run folder")
    cases = []
    for line_no, line in enumerate((run_dir / CASES).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                cases.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{run_dir / CASES} line {line_no}: not valid JSON ({e})") from e
    summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    derived = {"n", "seconds_per_query", "tokens_mean", "forced_rate", "hallucination_rate", "metrics"}
    return EvalRun(cases, {k: v for k, v in summary.items() if k not in derived})


# ---------------------------------------------------------------------------------------- running
def evaluate(encoder, tasks: Sequence[EvalTask], mode: str = "reason", batch_size: int = 32,
             max_new_tokens: int | None = None, progress: Progress | None = None,
             cache: EmbeddingCache | None = None, fingerprint: str | None = None,
             model_name: str | None = None, shard: Shard | None = None) -> EvalRun:
    """Embed every task's candidates (direct) and queries (``mode``), rank, and record each case.

    ``progress(done, total)`` counts embedded candidates + queries (under a ``shard``, this
    process's batches count for all processes: exact at the end of each task). ``fingerprint``
    identifies the model in cache keys (computed from the model's weights when a cache is given
    without one). With ``shard``, every process returns the whole run.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not tasks:
        raise ValueError("no tasks to evaluate")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique in a run, got {names}")
    if mode == "oracle" and any(not q.rationale for t in tasks for q in t.queries):
        raise ValueError("oracle mode needs an oracle rationale for every query (world tasks only)")
    if cache is not None and not fingerprint:
        from rge_demo.models.loading import fingerprint as model_fingerprint
        fingerprint = model_fingerprint(encoder.model)
    progress = progress or _no_progress
    shard = shard or Shard()
    total = sum(len(t.candidates) + len(t.queries) for t in tasks)
    done = 0
    run = EvalRun([], {
        "mode": mode,
        "model": model_name or str(getattr(encoder.model.config, "name_or_path", "") or "model"),
        "fingerprint": fingerprint or "",
        "max_new_tokens": max_new_tokens or getattr(encoder, "max_new_tokens", None),
        "tasks": {t.name: {"task": t.task, "meta_task": t.meta_task, "split": t.split, "source": t.source,
                           "queries": len(t.queries), "candidates": len(t.candidates)} for t in tasks},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "processes": shard.count,
    })
    t_start = time.perf_counter()
    cand_seconds = 0.0
    for task in tasks:
        t0 = time.perf_counter()
        matrix = embed_candidates(encoder, task.candidates, batch_size, cache, fingerprint or "",
                                   lambda k: progress(done + k, total), shard)  # (N, D)
        cand_seconds += time.perf_counter() - t0
        done += len(task.candidates)
        mine: list[tuple[int, list[dict[str, Any]]]] = []  # (batch number, its cases)
        for j, start in enumerate(range(0, len(task.queries), batch_size)):
            if not shard.mine(j):
                continue
            batch = task.queries[start:start + batch_size]
            cases = []
            for q, emb in zip(batch, _embed_queries(encoder, batch, mode, max_new_tokens)):
                cases.append(_case(task, q, emb, matrix))
                cases[-1]["prompt"] = query_prompt(encoder, q.item, mode)  # what `rge_demo prompts` prints
            mine.append((j, cases))
            progress(done + min(len(task.queries), shard.count * sum(len(c) for _, c in mine)), total)
        gathered = sorted((pair for part in shard.gather(mine) for pair in part), key=lambda pair: pair[0])
        run.cases += [case for _, cases in gathered for case in cases]
        run.images.update({q.id: q.item.image for q in task.queries if q.item.image is not None})
        done += len(task.queries)
        progress(done, total)
        log.info("evaluated %s (%d queries, %d candidates, mode %s)", task.name, len(task.queries),
                 len(task.candidates), mode)
    run.info["seconds_total"] = time.perf_counter() - t_start
    run.info["candidate_seconds"] = cand_seconds
    return run


def embed_candidates(encoder, cands: Sequence[EvalCandidate], batch_size: int, cache: EmbeddingCache | None,
                      fingerprint: str, progress: Callable[[int], None], shard: Shard | None = None) -> np.ndarray:
    """Direct-mode candidate matrix (N, D), unit rows; cache hits skip the model.

    Under a ``shard`` each process embeds its batches of the missing candidates; the matrix is gathered.
    """
    shard = shard or Shard()
    keys = [_cache_key(c.item, fingerprint) for c in cands] if cache is not None else []
    vecs: list[np.ndarray | None] = cache.get_many(keys) if cache is not None else [None] * len(cands)
    missing = [i for i, v in enumerate(vecs) if v is None]
    if shard.count > 1:
        missing = shard.gather(missing)[0]  # one view of the cache for all processes
        todo = set(missing)
        if cache is not None:  # what the first process found in the cache, this one may have missed
            vecs = [cache.get(keys[i]) if v is None and i not in todo else v for i, v in enumerate(vecs)]
    missing, same = first_of_each(missing, keys)  # identical candidates: one embedding, an exact tie
    progress(len(cands) - len(missing))  # an alias is as good as done
    computed: dict[int, np.ndarray] = {}
    for j, start in enumerate(range(0, len(missing), batch_size)):
        if not shard.mine(j):
            continue
        rows = missing[start:start + batch_size]
        out = encoder.direct([cands[i].item.to_input() for i in rows], batch_size=len(rows))  # (B, D)
        if cache is not None:
            cache.put_many([keys[i] for i in rows], out)
        computed.update(zip(rows, out))
        progress(len(cands) - len(missing) + min(len(missing), shard.count * len(computed)))
    if shard.count > 1:
        computed = {i: v for part in shard.gather(computed) for i, v in part.items()}
    for i, v in computed.items():
        vecs[i] = v
    for i, j in same.items():
        vecs[i] = vecs[j]
    return np.stack(vecs).astype(np.float32)


def _cache_key(item: EvalItem, fingerprint: str) -> CacheKey:
    """Same content hash as ``index.item_key`` for images on disk (file bytes); pixels otherwise."""
    src = item.image_path if item.image_path is not None else item.image
    image_hash = content_hash(src) if src is not None else None
    parts = [item.text, image_hash] + ([item.subset, item.side, item.mmeb_text] if item.mmeb_text is not None else [])
    content = hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()  # MMEB: the profile's rewrite depends on all
    return CacheKey(fingerprint, item.instruction, content)


@dataclass
class _QueryEmbedding:
    vector: np.ndarray  # (D,)
    rationale: str = ""
    tokens: int = 0
    seconds: float = 0.0
    forced: bool = False


def _embed_queries(encoder, queries: Sequence[EvalQuery], mode: str, max_new_tokens: int | None):
    inputs = [q.item.to_input() for q in queries]
    t0 = time.perf_counter()
    if mode == "reason":
        return [_QueryEmbedding(r.vector, r.rationale, r.tokens, r.seconds, r.forced)
                for r in encoder.reason(inputs, batch_size=len(inputs), max_new_tokens=max_new_tokens)]
    if mode == "oracle":
        vecs = encoder.with_rationale(inputs, [q.rationale for q in queries])
        rationales = [q.rationale for q in queries]
    else:
        vecs = encoder.direct(inputs, batch_size=len(inputs))
        rationales = [""] * len(queries)
    seconds = (time.perf_counter() - t0) / len(queries)
    return [_QueryEmbedding(v, r, 0, seconds) for v, r in zip(vecs, rationales)]


def _case(task: EvalTask, q: EvalQuery, emb: _QueryEmbedding, matrix: np.ndarray) -> dict[str, Any]:
    """Rank the query against its candidates and build the case record."""
    pool = np.arange(len(task.candidates)) if q.candidates is None else np.asarray(q.candidates)
    sub = matrix[pool]  # (N_q, D)
    vec = emb.vector[None, :].astype(np.float32)  # (1, D)
    rank = int(rank_of(vec, sub, np.array([q.target]))[0])
    scores, idx = top_k(vec, sub, TOPK)
    target = task.candidates[q.candidate_index(task)]
    hallucinations = None
    if q.facts is not None:
        hallucinations = world.mention_check(emb.rationale, world.scene_facts(q.facts)) if emb.rationale else []
    return {
        "query_id": q.id, "task": task.task, "dataset": task.name, "meta_task": task.meta_task, "split": task.split,
        "instruction": q.item.instruction, "text": q.item.text,
        "image": str(q.item.image_path) if q.item.image_path is not None else None,
        "target_id": target.id, "target_label": target.label,
        "rationale": emb.rationale, "oracle_rationale": q.rationale,
        "tokens": emb.tokens, "seconds": emb.seconds, "forced": emb.forced,
        "rank": rank, "correct": rank == 1, "n_candidates": int(len(pool)),
        "topk": [{"id": task.candidates[int(pool[i])].id, "label": task.candidates[int(pool[i])].label,
                  "score": round(float(s), 6)} for s, i in zip(scores[0], idx[0])],
        "hallucinations": hallucinations,
        "meta": q.facts,  # world: the scene ground truth, "ask" and "question" (Query.meta); else None
    }


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
