"""Prompt profiles: everything about what a checkpoint was trained to see, as data.

A profile names, for one family of checkpoints: the query/candidate instruction per task (the
Compare tab's presets), per-subset rewrites of MMEB rows, how an instruction and a text are joined,
the trailing-newline rule, where the image token goes, the pixel limits of the image processor and
what to embed when the rationale budget runs out. Profiles live as JSON files beside this module
(``profiles/<name>.json``); :mod:`rge_demo.embedding.prompts` turns one into the prompt text.

A checkpoint declares its profile with the top-level config key ``rge_profile``; one that declares
none gets :data:`DEFAULT_PROFILE` (the reference pipeline of MCG-NJU/RGE).

Two profiles ship:

* ``reference``: MCG-NJU/RGE's evaluation (``eval_ar.py`` with ``NewPromptsEvalDataset`` and
  ``AREvalCollator``). Its ``subsets`` are the content of the reference's two YAML files
  (``instruction_replacements-eval.yaml`` for the query side, ``candidate_replacements.yaml`` for
  the candidate side); every text gets a trailing newline; MMEB's ``<|image_1|>`` stays where it is
  and becomes the vision tokens; pixels 256*28*28 .. 1024*28*28; a row whose budget runs out embeds
  its last generated token.
* ``micro``: rge-demo's micro models (the image first, then ``instruction\\ntext``; 84x84 pixels);
  its ``tasks`` are the synthetic world's (``"tasks": "world"`` reads them from
  :data:`rge_demo.data.world.TASKS`).

A subset's rewrite rules (per side) follow the reference's text operations, in this order: an exact
``value_map`` lookup, then ``original`` -> ``replacement`` (every occurrence), then ``prefix_add``,
then ``suffix_add``. A subset without rules keeps its text.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rge_demo.errors import RGEUserError

log = logging.getLogger(__name__)

PROFILE_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "reference"
CONFIG_KEY = "rge_profile"
BUDGET_RULES = ("append_emb", "last_token")
IMAGE_POSITIONS = ("first", "inline")
SIDES = ("query", "candidate")
RULE_KEYS = ("value_map", "original", "replacement", "prefix_add", "suffix_add")
TASK_KEYS = ("meta_task", "query", "candidate", "subset")
WORLD_TASKS = "world"  # "tasks": "world" in a profile file: the synthetic world's task instructions


class ProfileError(RGEUserError, ValueError):
    """A profile file or name that cannot be used; the message names the file or the name."""


@dataclass(frozen=True)
class PromptProfile:
    name: str
    description: str = ""
    image_position: str = "first"
    """"first": the image goes before the text of the user turn; "inline": MMEB's ``<|image_1|>``
    placeholder is replaced where it stands by the vision tokens (an input without one gets it at
    the start, followed by a newline, as MMEB writes image queries)."""
    separator: str = "\n"
    """What joins an instruction and a text (MMEB writes "instruction: text" on one line)."""
    trailing_newline: bool = False
    """Ensure the user text ends in a newline (the reference's rule)."""
    min_pixels: int | None = None
    max_pixels: int | None = None
    """Image processor pixel limits (None: the checkpoint's own)."""
    budget_rule: str = "append_emb"
    """When the rationale budget runs out: "append_emb" (append ``<emb>``, one more forward) or
    "last_token" (embed the last generated token's state, as the reference does)."""
    tasks: dict[str, dict[str, str]] = field(default_factory=dict)
    """Task presets, in display order: name -> {"meta_task", "query", "candidate"} (+ "subset": the
    MMEB subset whose rewrite the instructions come from)."""
    subsets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per-subset rewrites of MMEB text: subset -> {"query": rules, "candidate": rules}."""

    def __post_init__(self):
        where = f"profile {self.name!r}"
        if self.budget_rule not in BUDGET_RULES:
            raise ProfileError(f"{where}: budget_rule must be one of {BUDGET_RULES}, got {self.budget_rule!r}")
        if self.image_position not in IMAGE_POSITIONS:
            raise ProfileError(f"{where}: image_position must be one of {IMAGE_POSITIONS}, "
                               f"got {self.image_position!r}")
        for name, task in self.tasks.items():
            if not isinstance(task, dict) or not all(isinstance(task.get(k), str) for k in ("query", "candidate")):
                raise ProfileError(f"{where}: task {name!r} needs string fields 'query' and 'candidate'")
            unknown = set(task) - set(TASK_KEYS)
            if unknown:
                raise ProfileError(f"{where}: task {name!r} has unknown field {sorted(unknown)[0]!r}")
        for subset, sides in self.subsets.items():
            if not isinstance(sides, dict) or set(sides) - set(SIDES):
                raise ProfileError(f"{where}: subset {subset!r} must map 'query'/'candidate' to rules")
            for side, rules in sides.items():
                bad = set(rules) - set(RULE_KEYS) if isinstance(rules, dict) else {"(not an object)"}
                if bad:
                    raise ProfileError(f"{where}: subset {subset!r} {side} rule {sorted(bad)[0]!r} unknown; "
                                       f"known: {', '.join(RULE_KEYS)}")
                if "value_map" in rules and not isinstance(rules["value_map"], dict):
                    raise ProfileError(f"{where}: subset {subset!r} {side} value_map must be an object")

    # A profile is shared by every encoder and session that uses it: treat its dicts as read-only.
    def rewrite(self, text: str, subset: str, side: str) -> str:
        """``text`` after the subset's rules for ``side`` ("query" | "candidate"); unchanged without rules."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        rules = self.subsets.get(subset, {}).get(side) if subset else None
        if not rules:
            return text
        value_map = rules.get("value_map") or {}
        text = value_map.get(text, text)
        if rules.get("original") is not None:
            text = text.replace(rules["original"], rules.get("replacement", ""))
        return f"{rules.get('prefix_add') or ''}{text}{rules.get('suffix_add') or ''}"

    def task(self, name: str) -> dict[str, str]:
        """The preset called ``name``, else the first preset of the meta-task ``name`` ("vqa" under the
        micro profile: its "count"); ProfileError lists both kinds of name."""
        if name in self.tasks:
            return dict(self.tasks[name])
        for preset in self.tasks.values():
            if preset.get("meta_task") == name:
                return dict(preset)
        meta = sorted({t["meta_task"] for t in self.tasks.values() if t.get("meta_task")})
        raise ProfileError(f"profile {self.name!r} has no task {name!r}; its tasks: {', '.join(self.tasks)}"
                           + (f"; or a meta-task: {', '.join(meta)}" if meta else ""))


def _world_tasks() -> dict[str, dict[str, str]]:
    from rge_demo.data import world

    return {name: {"meta_task": spec.meta_task, "query": spec.query_instruction,
                   "candidate": spec.candidate_instruction} for name, spec in world.TASKS.items()}


@lru_cache(maxsize=None)
def get_profile(name: str) -> PromptProfile:
    """The profile called ``name`` (a file ``profiles/<name>.json``)."""
    path = PROFILE_DIR / f"{name}.json"
    if not isinstance(name, str) or "/" in name or not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.json"))
        raise ProfileError(f"unknown prompt profile {name!r}; known: {known}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a JSON object")
    if data.get("tasks") == WORLD_TASKS:
        data["tasks"] = _world_tasks()
    try:
        return PromptProfile(name=name, **data)
    except TypeError as e:  # an unknown field
        raise ProfileError(f"{path}: {e}") from None


def profile_for(config) -> PromptProfile:
    """The profile a model config declares (``config.rge_profile``), else the reference one."""
    return get_profile(getattr(config, CONFIG_KEY, None) or DEFAULT_PROFILE)


def profile_for_folder(folder: str | Path) -> PromptProfile:
    """The profile a checkpoint folder's ``config.json`` declares, read without loading the model."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read the model config ({type(e).__name__}: {e})") from None
    name = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    try:
        return get_profile(name or DEFAULT_PROFILE)
    except ProfileError as e:
        raise ProfileError(f"{path}: {CONFIG_KEY} {name!r}: {e}") from None
