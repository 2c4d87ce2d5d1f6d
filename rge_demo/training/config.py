"""Training configuration: one dataclass shared by the CLI, the background worker and the tests."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from rge_demo.errors import RGEUserError

STAGES = ("cold-start", "rge", "baseline", "leakage", "eg-rl", "embedder")
MAX_BATCH_SIZE = 1024  # rows per step; a larger batch would only exhaust memory on these models
RUN_FIELDS = ("stage", "init", "data", "lora")  # what a resume must share with the run it continues
CHECKPOINTS = "checkpoints"  # a run's checkpoint folder: step-NNNNNN/ each, written as step-NNNNNN.tmp/ first


def latest_checkpoint(out: Path) -> Path | None:
    """The last complete checkpoint of the run in ``out``: a ``step-*`` folder (not a ``.tmp`` one
    being written) that holds its ``trainer_state.json``; None if there is none."""
    done = [p for p in sorted((Path(out) / CHECKPOINTS).glob("step-*"))
            if not p.name.endswith(".tmp") and (p / "trainer_state.json").is_file()]
    return done[-1] if done else None


def _type_problem(kind: str, value) -> str | None:
    """What a config field of annotation ``kind`` must be, when ``value`` is not that; else None."""
    if kind == "bool":
        return None if isinstance(value, bool) else "true or false"
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if kind == "float":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "a finite number"
    if kind == "str":
        return None if isinstance(value, str) else "a string"
    if kind == "list[str]":
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "a list of strings"
    if kind == "dict[str, float]":
        ok = isinstance(value, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                                             math.isfinite(v) for v in value.values())
        return None if ok else "an object of finite numbers"
    return None


class ConfigError(RGEUserError, ValueError):
    """A training config with a wrong field; the message names the field (and the file)."""


@dataclass
class TrainConfig:
    stage: str = "rge"
    """cold-start (LM only), rge (cold start, then joint LM + InfoNCE), baseline (InfoNCE on direct
    embeddings only), leakage (InfoNCE on the <emb> state after the ORACLE rationale: the ablation)
    or eg-rl (Embed-RL's Embedder-Guided RL: the Reasoner, ``init``, trained by GRPO on a frozen
    Embedder's retrieval reward; rge_demo.training.eg_rl) or embedder (Embed-RL's Embedder: InfoNCE on
    the <emb> state after a frozen ``reasoner``'s greedy T-CoT, or after the oracle rationale)."""
    init: str = "micro"
    """Where the weights start: a micro size to build fresh ("micro", "test") or a checkpoint folder."""
    output_dir: str = "runs/train"
    """Checkpoints, metrics.jsonl, config.json and the final model (output_dir/model)."""
    data: str = "world"
    """"world" for the synthetic world, or a pairs .jsonl file (see rge_demo.training.data)."""
    tasks: list[str] = field(default_factory=list)
    """World tasks to train on (empty: all of them)."""
    train_per_task: int = 2000
    """World examples generated per task for the train split."""
    world_wordings: bool = False
    """Train on the worded world (targets in random wordings, rge_demo.data.world.WORDINGS): the
    leakage experiment's world; the shipped models are trained on the plain one."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """The LM-only cold start's task mix: relative weight per task (empty: every task alike; a task
    not named weighs 1). E.g. {"relation_colour": 3} gives the slowest skill three times the steps."""
    steps: int = 300
    """Optimizer steps of the main phase (for rge: the joint phase, after the cold start)."""
    cold_start_steps: int = 0
    """rge only: LM-only steps before the joint phase starts."""
    cold_start_gate: float = 0.0
    """rge only: keep cold-starting (up to cold_start_max_steps) until this share of self-generated
    answers on the probe set is right (MICROWORLD.md: ~0.8). 0 disables the gate."""
    cold_start_max_steps: int = 0
    """Upper bound on cold-start steps when gated (0: cold_start_steps)."""
    batch_size: int = 32
    lr: float = 1e-3
    """Peak learning rate of the first phase (the cold start for rge, the only phase otherwise)."""
    min_lr: float = 1e-4
    warmup_steps: int = 50
    joint_lr: float = 0.0
    """rge only: peak learning rate of the joint phase (0: ``lr``). Each phase has its own schedule:
    the cold start warms up and decays by cosine over its longest possible length (the gate decides
    where it really ends); the joint phase warms up over ``joint_warmup_steps`` and decays by cosine to ``min_lr`` over
    exactly ``steps``. Other stages: warm-up, then cosine from ``lr`` to ``min_lr`` over ``steps``."""
    joint_warmup_steps: int = 20
    vision_lr_scale: float = 1.0
    """Learning-rate factor of the vision tower's patch embedding and blocks (the merger that maps
    visual features into the LM always trains at the full rate). 0 freezes them: an LM-only cold
    start otherwise wears the shape information out of a micro vision tower."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    a_lm: float = 0.1
    """Weight of the LM loss (paper a_lm : a_con = 1 : 10)."""
    a_con: float = 1.0
    """Weight of the InfoNCE loss."""
    direct_weight: float = 0.0
    """Weight of an extra InfoNCE on DIRECT embeddings of every query (joint and leakage phases).
    0: the paper's objective. Prefer ``direct_share``, which trains a minority of queries directly."""
    direct_share: float = 0.0
    """Joint/leakage phases: this share of each batch's queries (at most half) is embedded in
    direct mode instead of after a rationale, inside the same InfoNCE, so the RGE model keeps a
    usable direct mode (MICROWORLD.md point 3) while most queries teach ``<emb>`` to read the
    rationale."""
    swap_weight: float = 0.0
    """Joint phase: weight of an answer-swap InfoNCE. Each query of a batch that has a partner of
    its task with another target is embedded once more after its oracle rationale with the
    partner's answer written in (``... answer <partner's>``), and that embedding's positive is the
    partner's target. It teaches ``<emb>`` to follow the answer its rationale states, which the
    plain joint objective does not: there a self-generated rationale with a wrong answer is still
    pulled to the right target, i.e. taught to ignore its own answer. 0: the paper's objective."""
    temperature: float = 0.03
    max_new_tokens: int = 80
    """Rationale budget during on-the-fly generation."""
    one_task_per_batch: bool = True
    lora: bool = False
    lora_r: int = 16
    gradient_checkpointing: bool = False
    save_every: int = 200
    probe_every: int = 100
    """Steps between probes of self-generated answer accuracy (0: never)."""
    probe_size: int = 64
    """Pairs data: probe/validation queries. World data: see ``probe_per_task``."""
    probe_per_task: int = 32
    """World data: probe queries per task (drawn from the train distribution with another seed);
    the cold-start gate opens on the WORST task's share of right self-generated answers."""
    shape_probe: bool = True
    """Measure a linear probe for the shape in each grid cell, read from the visual tokens, at
    the start, at every probe and at the end (world data only): perception kept or lost."""
    val_share: float = 0.0
    """Share of a pairs file held out for validation (not used for world data)."""
    reasoner: str = ""
    """embedder only: the frozen Reasoner's checkpoint folder whose greedy T-CoTs the Embedder learns to
    read ("": the pairs' oracle rationales). It must share the model's tokenizer."""
    embedder: str = ""
    """eg-rl only: the frozen Embedder's checkpoint folder ("": a frozen copy of ``init``). It must
    share the Reasoner's tokenizer."""
    group_size: int = 4
    """eg-rl only: T-CoTs sampled per query (the GRPO group); ``batch_size`` counts queries."""
    rl_temperature: float = 1.0
    """eg-rl only: sampling temperature of the T-CoTs."""
    kl_beta: float = 0.04
    """eg-rl only: weight of the KL penalty to the Reasoner before RL."""
    clip_eps: float = 0.2
    """eg-rl only: the surrogate's clip range."""
    reward_temperature: float = 0.05
    """eg-rl only: temperature of the Embedder's softmax over the batch's targets (the reward)."""
    format_weight: float = 0.5
    """eg-rl only: reward for a T-CoT ending in ``answer X`` with X one of the batch's answers."""
    seed: int = 0
    threads: int = 0
    """torch threads (0: leave the default)."""

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("steps", "batch_size", "train_per_task", "max_new_tokens", "probe_size", "probe_per_task"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("cold_start_steps", "cold_start_max_steps", "warmup_steps", "joint_warmup_steps", "save_every",
                     "probe_every", "threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ConfigError(f"group_size must be an integer >= 2 (GRPO compares a group), got {self.group_size!r}")
        for name in ("lr", "temperature", "rl_temperature", "reward_temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        from rge_demo.analysis.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE

        if not MIN_TEMPERATURE <= self.rl_temperature <= MAX_TEMPERATURE:  # T-CoTs are sampled at it
            raise ConfigError(f"rl_temperature must be in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] (it samples "
                              f"the Reasoner's T-CoTs), got {self.rl_temperature!r}")
        for name in ("a_lm", "a_con", "direct_weight", "min_lr", "weight_decay", "grad_clip", "joint_lr", "vision_lr_scale",
                     "kl_beta", "clip_eps", "format_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.cold_start_gate <= 1:
            raise ConfigError(f"cold_start_gate must be in [0, 1], got {self.cold_start_gate!r}")
        if not self.swap_weight >= 0:
            raise ConfigError(f"swap_weight must be >= 0, got {self.swap_weight!r}")
        if not 0 <= self.direct_share <= 0.5:
            raise ConfigError(f"direct_share must be in [0, 0.5] (direct mode on a minority of queries), got {self.direct_share!r}")
        if not 0 <= self.val_share < 1:
            raise ConfigError(f"val_share must be in [0, 1), got {self.val_share!r}")
        if not isinstance(self.task_weights, dict) or not all(
                isinstance(w, int | float) and w > 0 for w in self.task_weights.values()):
            raise ConfigError(f"task_weights must map task names to positive numbers, got {self.task_weights!r}")
        if self.tasks and set(self.task_weights) - set(self.tasks):
            raise ConfigError(f"task_weights names tasks not trained on: {sorted(set(self.task_weights) - set(self.tasks))}")
        for name, stage in (("reasoner", "embedder"), ("embedder", "eg-rl")):
            if getattr(self, name) and self.stage != stage:  # else the run would ignore it without a word
                raise ConfigError(f"{name} is for stage {stage}; this run's stage is {self.stage}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(f"batch_size must be <= {MAX_BATCH_SIZE} (each row is a forward and backward in one "
                              f"step's memory), got {self.batch_size:,}")
        for name in ("output_dir", "data", "init"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name} must not be empty (an empty path would be the working directory)")
        if self.batch_size < 2 and self.stage != "cold-start":
            raise ConfigError("batch_size must be >= 2 for contrastive stages (in-batch negatives)")

    @property
    def total_steps(self) -> int:
        return self.steps + (self.cold_start_steps if self.stage == "rge" else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a training config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        kinds = {f.name: f.type for f in fields(cls)}
        for name, value in data.items():
            if problem := _type_problem(kinds[name], value):
                raise ConfigError(f"{source}: {name} must be {problem}, got {value!r}")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=str(path))
