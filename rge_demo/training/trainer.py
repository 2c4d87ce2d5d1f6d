"""The RGE trainer: ``train(cfg, on_step=...)``, on accelerate (CPU, one GPU or many).

Stages (see :mod:`rge_demo.training.config`):

* cold-start: LM loss on oracle rationales (query: rationale + ``<emb>``; target: ``<emb>``).
* rge: a cold start, then the joint step of the paper. Per batch: rationales are generated on the
  fly (greedy, no grad), then ONE forward with grad over ``prompt + rationale + <emb>`` gives the
  query embeddings; targets are embedded in direct mode; InfoNCE over the batch's distinct targets,
  plus the LM loss on oracle rationales: ``a_lm * LM + a_con * InfoNCE``.
* baseline: InfoNCE between direct query and target embeddings only (the non-reasoning baseline).
* leakage: InfoNCE on the ``<emb>`` state after the ORACLE rationale (the paper's Table 1 ablation;
  the answer leaks into the query, so the model learns to read it instead of reasoning).

Across processes, embeddings are gathered (own slice keeps its gradient) so every process computes
the same global InfoNCE; gradients are summed, LM losses averaged. The model is not wrapped in DDP:
the loss reads hidden states from submodules, so gradients are all-reduced by hand.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import GenerationConfig

from rge_demo.data import world
from rge_demo.embedding.encoder import Row, collate, emb_token_id, process_rows
from rge_demo.embedding.profiles import profile_for
from rge_demo.embedding.prompts import EMB_TOKEN, prompt_text

from .config import CHECKPOINTS, RUN_FIELDS, ConfigError, TrainConfig, latest_checkpoint
from .data import DataError, Pair, by_task, check_pools, load_pairs, split_pairs, world_pairs
from .losses import info_nce, rge_loss, token_ce

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second trainer is not stopped there
    fcntl = None

log = logging.getLogger(__name__)

FINAL = "model"
COLD_START = "cold-start-model"
METRICS = "metrics.jsonl"
ADAPTER = "adapter"
LOCK_FILE = ".train.lock"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    status: str  # "finished" | "cancelled"
    last: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------- setup
def load_model(init: str, device):
    """A fresh micro model (``init`` is a size name) or a checkpoint folder."""
    from rge_demo.models import micro

    if init in micro.SIZES:
        corpus = [ex.rationale + " " + ex.query.text for t in world.TASKS for ex in world.generate(t, "train", 200, seed=99)]
        corpus += [it.text or it.label for t in world.TASKS for it, _ in world.candidates(t)]
        model, processor = micro.build_micro(init, corpus=corpus)
    else:
        from rge_demo.models.loading import CheckpointError, load_checkpoint

        try:
            model, processor = load_checkpoint(init, device="cpu", dtype="float32")
        except CheckpointError as e:
            if Path(init).exists():
                raise
            raise ConfigError(f"init {init!r}: not a micro size to build ({', '.join(micro.SIZES)}) "
                              f"and not a checkpoint ({e})") from None
    return model.to(device), processor


def load_data(cfg: TrainConfig) -> tuple[dict[str, list[Pair]], list[Pair]]:
    """Training pools per task and a probe/validation list; raises before any training starts."""
    if cfg.data == "world":
        unknown = sorted(set(cfg.tasks) - set(world.TASKS))
        if unknown:
            raise ConfigError(f"tasks: unknown world task(s) {unknown}; known: {sorted(world.TASKS)}")
        pools = world_pairs(cfg.tasks, "train", cfg.train_per_task, seed=cfg.seed, wordings=cfg.world_wordings)
        # The probe is drawn from the TRAIN distribution with another seed: test splits stay unseen.
        probe_pools = world_pairs(cfg.tasks, "train", cfg.probe_per_task, seed=cfg.seed + 7919,
                                  wordings=cfg.world_wordings)
        probe = [p for ps in probe_pools.values() for p in ps]
    else:
        pairs = load_pairs(cfg.data)
        train_pairs, probe = split_pairs(pairs, cfg.val_share, seed=cfg.seed)
        if not train_pairs:
            raise DataError(f"{cfg.data}: the train split is empty (val_share {cfg.val_share})")
        pools = by_task(train_pairs)
        probe = (probe or train_pairs)[: cfg.probe_size]
    if set(cfg.task_weights) - set(pools):
        raise ConfigError(f"task_weights names task(s) {sorted(set(cfg.task_weights) - set(pools))} "
                          f"that the data does not have; it has {sorted(pools)}")
    check_pools(pools, cfg.stage, cfg.one_task_per_batch, cfg.data)
    return pools, probe


def _warmup_cosine(step: int, steps: int, peak: float, floor: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_at(step: int, cfg: TrainConfig, cold_start_end: int = 0) -> float:
    """The learning rate of ``step``, per phase (see :attr:`TrainConfig.joint_lr`).

    rge: the cold start (steps ``< cold_start_end``, which the gate may move) warms up and decays by
    cosine towards ``min_lr`` over its longest possible length (``cold_start_max_steps``); the joint
    phase restarts from ``joint_lr`` with its own warm-up and a cosine to ``min_lr`` over exactly
    ``cfg.steps``, wherever the gate made it start. Other stages: warm-up + cosine over ``cfg.steps``.
    """
    if cfg.stage != "rge":
        return _warmup_cosine(step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_steps)
    if step < cold_start_end:
        longest = max(cfg.cold_start_steps, cfg.cold_start_max_steps, cold_start_end)
        return _warmup_cosine(step, longest, cfg.lr, cfg.min_lr, cfg.warmup_steps)
    return _warmup_cosine(step - cold_start_end, cfg.steps, cfg.joint_lr or cfg.lr, cfg.min_lr, cfg.joint_warmup_steps)


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """Optimizer groups: the vision tower (patch embedding and blocks) at ``vision_lr_scale``, the
    rest (LM, merger) at the full rate; ``vision_lr_scale`` 0 freezes the tower."""
    tower, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_tower = ".visual." in f".{name}" and ".merger." not in f".{name}"
        if in_tower and cfg.vision_lr_scale == 0:
            p.requires_grad_(False)
        else:
            (tower if in_tower else rest).append(p)
    groups = [{"params": rest, "lr_scale": 1.0}]
    if tower:
        groups.append({"params": tower, "lr_scale": cfg.vision_lr_scale})
    return groups


def sample_batch(pools: dict[str, list[Pair]], cfg: TrainConfig, step: int, phase: str = "") -> list[Pair]:
    """The global batch of a step: a function of (seed, step) only, so a resumed run sees the same data.

    Contrastive phases draw one task per batch (``one_task_per_batch``: negatives from the same
    task); the LM-only cold start mixes tasks, since it needs no negatives.
    """
    rng = random.Random(cfg.seed * 1_000_003 + step)
    if cfg.one_task_per_batch and phase != "cold-start":
        pool = pools[rng.choice(sorted(pools))]
    elif cfg.task_weights and phase == "cold-start":  # each example's task drawn by weight, then a pair of it
        names = sorted(pools)
        tasks = rng.choices(names, weights=[cfg.task_weights.get(t, 1.0) for t in names], k=cfg.batch_size)
        return [pools[t][rng.randrange(len(pools[t]))] for t in tasks]
    else:
        pool = [p for ps in pools.values() for p in ps]
    return [pool[rng.randrange(len(pool))] for _ in range(cfg.batch_size)]


# ---------------------------------------------------------------------------------------- step
class StepContext:
    """What a loss step needs besides the batch: the model, its processor and the process group."""

    def __init__(self, model, processor, cfg: TrainConfig, accelerator: Accelerator):
        self.model, self.processor, self.cfg, self.acc = model, processor, cfg, accelerator
        self.peft = None  # the PeftModel wrapper when training LoRA adapters (``model`` holds them in place)
        self.profile = profile_for(model.config)  # train on the prompts the checkpoint is embedded with
        self.tok = processor.tokenizer
        self.emb_id = emb_token_id(self.tok)
        self.pad_id = self.tok.pad_token_id
        self._targets: dict[str, Row] = {}
        specials = set(self.tok.all_special_ids) | set(self.tok.added_tokens_decoder)
        self.gen_config = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens, do_sample=False, eos_token_id=self.emb_id,
            pad_token_id=self.pad_id, suppress_tokens=sorted(specials - {self.emb_id}), use_cache=True)

    def rows(self, inputs, direct: bool):
        return process_rows(self.processor, [prompt_text(self.processor, x, direct=direct, profile=self.profile)
                                             for x in inputs],
                            [x.image for x in inputs])

    def direct_rows(self, reason_rows):
        """Direct-mode rows from reasoning rows: the same prompt with ``<emb>`` appended (no re-processing)."""
        return [Row(r.prompt + EMB_TOKEN, r.ids + [self.emb_id], r.mm + [0], r.pixel_values, r.grid) for r in reason_rows]

    def target_rows(self, pairs):
        """Direct rows of targets, cached by target key (candidate galleries are small and reused)."""
        missing = [p for p in pairs if p.target_key not in self._targets]
        for p, row in zip(missing, self.rows([p.target for p in missing], direct=True)):
            self._targets[p.target_key] = row
        return [self._targets[p.target_key] for p in pairs]

    def batch(self, rows, suffixes=None):
        dtype = next(self.model.parameters()).dtype
        return collate(rows, self.pad_id, suffixes, device=self.acc.device, dtype=dtype)

    def hidden(self, batch):
        return self.model.model(**batch, use_cache=False).last_hidden_state  # (B, L, D)

    @torch.no_grad()
    def generate(self, rows, model=None) -> tuple[list[list[int]], list[bool]]:
        """Greedy rationales of ``model`` (default: the one trained), batched; returns ids up to ``<emb>``
        and whether ``<emb>`` was emitted."""
        model = model if model is not None else self.model
        was_training = model.training
        model.eval()
        batch = self.batch(rows)
        out = model.generate(**batch, generation_config=self.gen_config)
        model.train(was_training)
        ids, emitted = [], []
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            if self.emb_id in row:
                ids.append(row[: row.index(self.emb_id)])
                emitted.append(True)
            else:
                ids.append([t for t in row if t != self.pad_id])
                emitted.append(False)
        return ids, emitted

    def oracle_lm(self, q_rows, pairs) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Query-side LM on ``rationale + <emb>``; also returns the ``<emb>`` states (B, D) of that pass."""
        suffixes = [self.tok.encode(p.rationale, add_special_tokens=False) + [self.emb_id] for p in pairs]
        batch = self.batch(q_rows, suffixes)
        labels = torch.full_like(batch["input_ids"], -100)
        for i, s in enumerate(suffixes):
            labels[i, -len(s):] = torch.tensor(s, device=labels.device)
        h = self.hidden(batch)
        return token_ce(h, labels, self.model.lm_head), h[:, -1]

    def answer_swaps(self, q_rows, pairs, step_seed: int) -> tuple[torch.Tensor | None, list[str]]:
        """``<emb>`` states after oracle rationales with a partner's answer written in, and the
        partners' target keys (see ``TrainConfig.swap_weight``). A partner is another pair of the same
        task with another target, drawn with ``step_seed``; pairs without one are left out."""
        rng = random.Random(step_seed)
        rows, suffixes, positives = [], [], []
        for i, p in enumerate(pairs):
            said = world.answer_of(p.rationale)
            partners = [o for o in pairs if o.task == p.task and o.target_key != p.target_key
                        and world.answer_of(o.rationale) not in (None, said)]  # another answer, not a wording
            if not partners or not said:
                continue
            other = rng.choice(partners)
            text = world.swap_answer(p.rationale, world.answer_of(other.rationale))
            rows.append(q_rows[i])
            suffixes.append(self.tok.encode(text, add_special_tokens=False) + [self.emb_id])
            positives.append(other.target_key)
        if not rows:
            return None, []
        return self.hidden(self.batch(rows, suffixes))[:, -1], positives

    def targets(self, pairs) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Direct target embeddings (B, D) and the target-side LM term (predict ``<emb>``)."""
        h = self.hidden(self.batch(self.target_rows(pairs)))
        logits = self.model.lm_head(h[:, -2])  # predicts the last token, <emb>
        labels = torch.full((len(pairs),), self.emb_id, device=logits.device)
        return h[:, -1], (F.cross_entropy(logits.float(), labels, reduction="sum"), torch.tensor(len(pairs)))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All processes' rows in rank order; this process's slice keeps its gradient."""
        if self.acc.num_processes == 1:
            return x
        everything = self.acc.gather(x.detach().contiguous())
        n, r = x.shape[0], self.acc.process_index
        return torch.cat([everything[: r * n], x, everything[(r + 1) * n:]])

    def contrastive(self, q: torch.Tensor, t: torch.Tensor, keys: list[str],
                    q_keys: list[str] | None = None) -> torch.Tensor:
        """Global InfoNCE: queries vs the DISTINCT targets of the global batch.

        ``keys`` name the targets ``t``; ``q_keys`` each query's positive (default: ``keys``, the
        i-th query's positive is the i-th target).
        """
        q, t = self.gather(q.float()), self.gather(t.float())
        q_keys = keys if q_keys is None else q_keys
        if self.acc.num_processes > 1:
            keys, q_keys = gather_object(keys), gather_object(q_keys)
        first = {}
        for j, k in enumerate(keys):
            first.setdefault(k, j)
        labels = torch.tensor([first[k] for k in q_keys], device=q.device)
        mask = torch.tensor([first[k] == j for j, k in enumerate(keys)], device=q.device)
        return info_nce(q, t, labels, self.cfg.temperature, column_mask=mask)


def compute_loss(ctx: StepContext, pairs: list[Pair], phase: str,
                 step_seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """Loss parts for this process's share of the global batch. ``phase``: cold-start | joint | baseline | leakage.

    Returns the tensors (``objective`` is what this process back-propagates; ``loss`` what is
    reported) and plain statistics (rationale lengths, share that emitted ``<emb>``, samples).
    """
    cfg = ctx.cfg
    keys = [p.target_key for p in pairs]
    stats: dict = {}
    zero = torch.zeros((), device=ctx.acc.device)
    con, direct, swap = zero, zero, zero
    lm_parts = (zero, torch.ones((), device=zero.device))

    if phase == "eg-rl":
        from .eg_rl import eg_rl_loss

        return eg_rl_loss(ctx, pairs, step_seed)
    q_rows = ctx.rows([p.query for p in pairs], direct=False)
    if phase == "baseline":
        t, _ = ctx.targets(pairs)
        q = ctx.hidden(ctx.batch(ctx.direct_rows(q_rows)))[:, -1]
        con = ctx.contrastive(q, t, keys)
    elif phase == "embedder":  # the Embedder reads a frozen Reasoner's T-CoT (or the oracle one)
        t, _ = ctx.targets(pairs)
        reasoner = getattr(ctx, "reasoner", None)
        if reasoner is not None:
            ids, _ = ctx.generate(q_rows, model=reasoner)
            stats["samples"] = [ctx.tok.decode(r, skip_special_tokens=True) for r in ids[:2]]
            stats["rationale_tokens"] = sum(map(len, ids)) / len(ids)
        else:
            ids = [ctx.tok.encode(p.rationale, add_special_tokens=False) for p in pairs]
        q = ctx.hidden(ctx.batch(q_rows, [r + [ctx.emb_id] for r in ids]))[:, -1]
        con = ctx.contrastive(q, t, keys)
    else:
        q_lm, q_oracle = ctx.oracle_lm(q_rows, pairs)
        if phase == "cold-start":  # LM only: the targets' forward would add just their one-token <emb> term
            lm_parts = q_lm
        else:
            t, t_lm = ctx.targets(pairs)
            lm_parts = (q_lm[0] + t_lm[0], q_lm[1] + t_lm[1])
        # The first ``n_direct`` queries of the (randomly drawn) batch are embedded in direct mode.
        n_direct = round(cfg.direct_share * len(pairs)) if phase in ("joint", "leakage") else 0
        if phase in ("joint", "leakage"):
            stats["direct_queries"] = n_direct
        if phase == "joint":
            ids, emitted = ctx.generate(q_rows[n_direct:]) if n_direct < len(pairs) else ([], [])
            suffixes = [[ctx.emb_id]] * n_direct + [r + [ctx.emb_id] for r in ids]
            q = ctx.hidden(ctx.batch(q_rows, suffixes))[:, -1]
            con = ctx.contrastive(q, t, keys)
            if cfg.swap_weight > 0:
                q_swap, positives = ctx.answer_swaps(q_rows, pairs, step_seed)
                if q_swap is not None:
                    swap = ctx.contrastive(q_swap, t, keys, positives)
            if ids:
                stats.update(reasoned_queries=len(ids), rationale_tokens=sum(map(len, ids)) / len(ids),
                             emitted_emb=sum(emitted) / len(ids),
                             samples=[ctx.tok.decode(r, skip_special_tokens=True) for r in ids[:2]])
        elif phase == "leakage":
            q = q_oracle
            if n_direct:
                q_direct = ctx.hidden(ctx.batch(q_rows[:n_direct], [[ctx.emb_id]] * n_direct))[:, -1]
                q = torch.cat([q_direct, q_oracle[n_direct:]])
            con = ctx.contrastive(q, t, keys)
        if cfg.direct_weight > 0 and phase != "cold-start":
            q_direct = ctx.hidden(ctx.batch(ctx.direct_rows(q_rows)))[:, -1]
            direct = ctx.contrastive(q_direct, t, keys)

    a_con = cfg.a_con if phase != "cold-start" else 0.0
    a_lm = cfg.a_lm if phase not in ("baseline", "embedder") else 0.0
    if phase == "cold-start":
        a_lm = 1.0  # LM only: the weight is immaterial, keep the loss on its natural scale
    direct_weight = cfg.direct_weight if phase != "cold-start" else 0.0
    # The LM loss is pooled over every process's tokens: this process contributes sum_p / count_all.
    lm_sum, lm_count = lm_parts  # (zero, one) for the contrastive-only phases
    count_all = ctx.acc.reduce(lm_count.detach().float().to(zero.device), reduction="sum")
    lm_share = lm_sum / count_all.clamp(min=1)
    lm_global = ctx.acc.reduce(lm_share.detach(), reduction="sum")
    parts = rge_loss(lm_global, con, a_lm=a_lm, a_con=a_con)
    parts["direct_loss"] = direct
    parts["swap_loss"] = swap
    parts["a_lm"] = a_lm
    # Contrastive terms are global (identical on every process); gradients are summed across processes.
    parts["objective"] = a_con * con + direct_weight * direct + cfg.swap_weight * swap + a_lm * lm_share
    parts["loss"] = parts["loss"] + direct_weight * direct + cfg.swap_weight * swap
    return parts, stats


# ------------------------------------------------------------------------------- checkpoints
def _save_model(model, processor, path: Path, peft_model=None) -> None:
    """A plain checkpoint folder; with LoRA the adapters are merged into a copy first."""
    to_save = copy.deepcopy(peft_model).merge_and_unload() if peft_model is not None else model
    to_save.save_pretrained(path)
    processor.save_pretrained(path)


def save_checkpoint(ctx: StepContext, optimizer, step: int, out: Path, extra: dict) -> Path:
    """``checkpoints/step-N``: the (merged) model, plus with LoRA the adapters alone (``adapter/``)
    so that a resume continues the same adapters on the unchanged base, optimizer and state."""
    path = out / CHECKPOINTS / f"step-{step:06d}"
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _save_model(ctx.acc.unwrap_model(ctx.model), ctx.processor, tmp, ctx.peft)
    if ctx.peft is not None:
        ctx.peft.save_pretrained(tmp / ADAPTER)
    torch.save({"optimizer": optimizer.state_dict()}, tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra}, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    for old in sorted((out / CHECKPOINTS).glob("step-*"))[:-KEEP_CHECKPOINTS]:
        if not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return path


def _truncate_metrics(path: Path, step: int) -> None:
    if path.exists():
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line half-written when the run was killed
                continue
        path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------------------------------- probe
@torch.no_grad()
def probe_accuracy(ctx: StepContext, probe: list[Pair]) -> dict[str, float]:
    """Per task, the share of self-generated rationales whose ``answer X`` matches the oracle's."""
    scored = [p for p in probe if world.answer_of(p.rationale)]
    right: dict[str, list[bool]] = {}
    for i in range(0, len(scored), 32):
        chunk = scored[i:i + 32]
        ids, _ = ctx.generate(ctx.rows([p.query for p in chunk], direct=False))
        for r, p in zip(ids, chunk):
            said = world.answer_of(ctx.tok.decode(r, skip_special_tokens=True))
            right.setdefault(p.task, []).append(said == world.answer_of(p.rationale))
    return {task: sum(v) / len(v) for task, v in sorted(right.items())}


@torch.no_grad()
def shape_probe(model, processor, n_train: int = 300, n_test: int = 150, seed: int = 4242) -> float:
    """Linear-probe accuracy for what is in each grid cell (one of the 4 shapes, or empty), read
    from the visual tokens (the merger's output, one token per cell) of world scenes.

    A ridge-regularised least-squares classifier on one-hot targets, fitted on ``n_train`` scenes
    and scored on ``n_test`` others: how much shape information the vision side hands the LM.
    """
    was_training = model.training
    model.eval()
    examples = world.generate("ground", "train", n_train + n_test, seed=seed)
    feats, labels = [], []
    dtype = next(model.parameters()).dtype
    for i in range(0, len(examples), 64):
        chunk = examples[i:i + 64]
        enc = processor.image_processor(images=[e.query_image for e in chunk], return_tensors="pt")
        out = model.model.get_image_features(enc["pixel_values"].to(model.device, dtype),
                                             enc["image_grid_thw"].to(model.device))
        for ex, tokens in zip(chunk, out.pooler_output):  # (9, D): one merged token per cell
            by_cell = {o.cell: world.SHAPES.index(o.shape) for o in ex.scene.objects}
            feats.append(tokens.float().cpu())
            labels += [by_cell.get(c, len(world.SHAPES)) for c in range(9)]
    model.train(was_training)
    x = torch.cat(feats)  # (scenes * 9, D)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = F.one_hot(torch.tensor(labels), len(world.SHAPES) + 1).float()
    cut = n_train * 9
    w = torch.linalg.solve(x[:cut].T @ x[:cut] + 1.0 * torch.eye(x.shape[1]), x[:cut].T @ y[:cut])
    return ((x[cut:] @ w).argmax(1) == y[cut:].argmax(1)).float().mean().item()


def _probe_record(ctx: StepContext, probe: list[Pair]) -> dict:
    record: dict = {}
    if probe:
        per_task = probe_accuracy(ctx, probe)
        if per_task:
            record["probe_answer_acc"] = sum(per_task.values()) / len(per_task)
            record["probe_worst_task_acc"] = min(per_task.values())
            record["probe_by_task"] = per_task
    if ctx.cfg.shape_probe and ctx.cfg.data == "world":
        record["shape_probe"] = shape_probe(ctx.model, ctx.processor)
    return record


# ----------------------------------------------------------------------------------------- train
def check_same_run(cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume the run in ``out`` with a config that defines another run (another stage,
    starting point, data or LoRA choice): the checkpoint would be continued as something it is not."""
    try:
        saved = TrainConfig.from_file(out / "config.json")
    except ConfigError:
        return  # no readable record of the run: nothing to compare with

    def same(a, b) -> bool:  # a folder or file given as another spelling of the same path is the same
        return a == b or (isinstance(a, str) and isinstance(b, str) and Path(a).exists()
                          and Path(a).resolve() == Path(b).resolve())

    differ = [f"{k} {getattr(saved, k)!r} there, {getattr(cfg, k)!r} here" for k in RUN_FIELDS
              if not same(getattr(saved, k), getattr(cfg, k))]
    if differ:
        raise ConfigError(f"{out} holds another run ({'; '.join(differ)}): resuming it would continue that "
                          "checkpoint as this run; give another output folder, or the saved run's settings")


@contextlib.contextmanager
def run_folder_lock(out: Path):
    """The run's folder to this process alone while it trains: a second trainer started on it (the
    same command twice, a job started again after an app crash) stops with a sentence instead of
    writing the same checkpoints. An advisory lock on ``out/.train.lock``, gone with the process. A
    folder this call made is removed again, still under the lock, when the run fails before writing
    anything."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        out.mkdir()
        made = True
    except FileExistsError:
        made = False
    busy = ConfigError(f"{out}: another training process is running on this folder; wait for it to end (or "
                       "stop it), then run this again to resume")
    try:
        f = open(out / LOCK_FILE, "a")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:  # the folder went with another start that failed meanwhile
        raise busy from None
    with f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy from None
            try:  # the file locked must still be the folder's: not one a failed start removed meanwhile
                if os.fstat(f.fileno()).st_ino != os.stat(out / LOCK_FILE).st_ino:
                    raise busy
            except FileNotFoundError:
                raise busy from None
        try:
            yield
        except BaseException:
            if made and [p.name for p in out.iterdir()] == [LOCK_FILE]:
                shutil.rmtree(out, ignore_errors=True)
            raise


def train(cfg: TrainConfig, on_step: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train per ``cfg``; resume from the last checkpoint in ``cfg.output_dir`` if there is one.

    ``on_step(record)`` sees every metrics record; ``should_stop()`` is polled each step and ends
    the run cleanly with a checkpoint (status "cancelled"). The main process holds the folder's lock
    (:func:`run_folder_lock`) throughout; when it cannot, every process stops with its sentence.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())  # as the Accelerator in _train will see it
    with contextlib.ExitStack() as held:
        problem = None
        if state.is_main_process:
            try:
                held.enter_context(run_folder_lock(Path(cfg.output_dir)))
            except ConfigError as e:
                problem = str(e)
        if state.num_processes > 1:
            problem = broadcast_object_list([problem])[0]
        if problem:
            if state.num_processes > 1:
                state.destroy_process_group()  # else torch may abort the process on its way out
            raise ConfigError(problem)
        return _train(cfg, on_step, should_stop)


def _train(cfg: TrainConfig, on_step: Callable[[dict], None] | None,
           should_stop: Callable[[], bool] | None) -> TrainResult:
    on_step = on_step or (lambda record: None)
    should_stop = should_stop or (lambda: False)
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    if cfg.batch_size % acc.num_processes:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {acc.num_processes} processes")
    out = Path(cfg.output_dir)
    pools, probe = load_data(cfg)  # fails before any model work on bad data

    resume = latest_checkpoint(out)
    if resume is not None:
        check_same_run(cfg, out)
    adapter = resume / ADAPTER if resume is not None and cfg.lora else None
    # With LoRA the base never changes: a resume reloads it and continues the saved adapters.
    model, processor = load_model(cfg.init if adapter is not None else str(resume) if resume else cfg.init, acc.device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    peft_model = None
    if cfg.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter is not None and adapter.is_dir():
            peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        else:
            peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                                                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    state = {"step": 0, "cold_start_end": cfg.cold_start_steps if cfg.stage == "rge" else 0, "wall_seconds": 0.0}
    if resume:
        state.update(json.loads((resume / "trainer_state.json").read_text()))
        optimizer.load_state_dict(torch.load(resume / "optimizer.pt", weights_only=True)["optimizer"])
        log.info("resuming from %s at step %d", resume, state["step"])
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
        _truncate_metrics(out / METRICS, state["step"])
    ctx = StepContext(model, processor, cfg, acc)
    ctx.peft = peft_model
    if cfg.stage == "eg-rl":
        ctx.reference, ctx.embedder = frozen_models(cfg, processor, acc.device)
    ctx.reasoner = frozen_reasoner(cfg, processor, acc.device) if cfg.stage == "embedder" and cfg.reasoner else None
    torch.manual_seed(cfg.seed + state["step"])

    def wall() -> float:
        """Wall seconds of the run so far (model loading, probes and checkpoints included; over resumes)."""
        return state["wall_seconds"] + time.perf_counter() - started

    def checkpoint() -> None:  # what a resume needs besides the step: the gate's decision and the clock
        save_checkpoint(ctx, optimizer, step, out, {"cold_start_end": state["cold_start_end"], "wall_seconds": wall()})

    def write(record: dict) -> None:
        record["wall_seconds"] = round(wall(), 1)
        if acc.is_main_process:
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        on_step(record)

    step, record = state["step"], {}
    total = cfg.steps + state["cold_start_end"]
    max_cold = max(cfg.cold_start_max_steps, cfg.cold_start_steps)
    answers_probe = probe if cfg.stage != "baseline" else []  # a baseline writes no rationales
    if step == 0 and cfg.probe_every:
        write({"step": 0, "total_steps": total, "phase": "start", **_probe_record(ctx, answers_probe)})
    if step and step >= total:
        log.warning("the run in %s is already at step %d, at or past this run's end (%d steps): nothing to train; "
                    "give more steps to continue it", out, step, total)
    status = "finished"
    while step < total:
        if should_stop():
            status = "cancelled"
            break
        phase = _phase(cfg.stage, step, state["cold_start_end"])
        t0 = time.perf_counter()
        lr = lr_at(step, cfg, state["cold_start_end"])
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        global_batch = sample_batch(pools, cfg, step, phase)
        per = len(global_batch) // acc.num_processes
        local = global_batch[acc.process_index * per:(acc.process_index + 1) * per]
        parts, stats = compute_loss(ctx, local, phase, step_seed=cfg.seed * 100_003 + step)
        parts["objective"].backward()
        if acc.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    p.grad = acc.reduce(p.grad, reduction="sum")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else torch.tensor(0.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        record = {"step": step, "total_steps": total, "phase": phase, "task": local[0].task,
                  "loss": parts["loss"].item(), "lm_loss": parts["lm_loss"].item(), "contrastive_loss": parts["contrastive_loss"].item(),
                  "direct_loss": parts["direct_loss"].item(), "swap_loss": parts["swap_loss"].item(), "lr": lr,
                  "grad_norm": float(grad_norm), "seconds": time.perf_counter() - t0, **stats}
        if cfg.probe_every and (step % cfg.probe_every == 0 or step == total):
            t_probe = time.perf_counter()
            record.update(_probe_record(ctx, answers_probe))
            record["probe_seconds"] = time.perf_counter() - t_probe
            # The cold-start gate: extend the cold start until the WORST task's answers are right.
            worst = record.get("probe_worst_task_acc")
            if (cfg.stage == "rge" and phase == "cold-start" and step == state["cold_start_end"]
                    and cfg.cold_start_gate and worst is not None and worst < cfg.cold_start_gate and step < max_cold):
                state["cold_start_end"] = min(max_cold, step + cfg.probe_every)
                total = cfg.steps + state["cold_start_end"]
                record["total_steps"] = total
                log.info("cold-start gate: worst task's answer accuracy %.2f < %.2f, extending to step %d",
                         worst, cfg.cold_start_gate, state["cold_start_end"])
        write(record)
        if (cfg.stage == "rge" and step == state["cold_start_end"] and step < total and acc.is_main_process):
            # The end of the cold start is kept: the leakage ablation starts from the same point.
            _save_model(acc.unwrap_model(model), processor, out / COLD_START, peft_model)
        if cfg.save_every and step % cfg.save_every == 0 and step < total and acc.is_main_process:
            checkpoint()

    model_dir = None
    if acc.is_main_process:
        if step > state["step"] or status == "cancelled":
            checkpoint()
        if status == "finished":
            model_dir = out / FINAL
            _save_model(acc.unwrap_model(model), processor, model_dir, peft_model)
    acc.wait_for_everyone()
    return TrainResult(out, model_dir, step, status, record)


def frozen_models(cfg: TrainConfig, processor, device):
    """eg-rl: the reference (the Reasoner before RL: ``init``, also on a resume) and the Embedder
    (``embedder``, else a copy of ``init``), both frozen, in eval mode."""
    from rge_demo.models import micro

    if cfg.init in micro.SIZES:
        raise ConfigError(f"eg-rl trains a Reasoner that already writes T-CoTs: init must be a checkpoint folder, "
                          f"not the fresh micro size {cfg.init!r}")
    reference, _ = load_model(cfg.init, device)
    if cfg.embedder:
        embedder, e_proc = load_model(cfg.embedder, device)
        if e_proc.tokenizer.get_vocab() != processor.tokenizer.get_vocab():
            raise ConfigError(f"embedder {cfg.embedder}: its tokenizer differs from the Reasoner's ({cfg.init})")
    else:
        embedder = copy.deepcopy(reference)
    for m in (reference, embedder):
        m.eval().requires_grad_(False)
    return reference, embedder


def frozen_reasoner(cfg: TrainConfig, processor, device):
    """embedder: the frozen Reasoner (``reasoner``) whose T-CoTs the Embedder reads."""
    reasoner, r_proc = load_model(cfg.reasoner, device)
    if r_proc.tokenizer.get_vocab() != processor.tokenizer.get_vocab():
        raise ConfigError(f"reasoner {cfg.reasoner}: its tokenizer differs from the Embedder's ({cfg.init})")
    return reasoner.eval().requires_grad_(False)


def _phase(stage: str, step: int, cold_start_end: int) -> str:
    if stage == "rge":
        return "cold-start" if step < cold_start_end else "joint"
    return stage
