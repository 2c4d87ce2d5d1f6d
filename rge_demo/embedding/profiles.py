"""Prompt profiles: everything about what a checkpoint was trained to see, as data.

A profile names, for one family of checkpoints: the query/candidate instruction per task (the
Compare tab's presets), per-subset rewrites of MMEB rows, the trailing-newline rule, where the
image token goes, the pixel limits of the image processor and what to embed when the rationale
budget runs out. Profiles live as JSON files beside this module (``profiles/<name>.json``).

A checkpoint declares its profile with the top-level config key ``rge_profile``; one that declares
none gets :data:`DEFAULT_PROFILE` (the reference pipeline of MCG-NJU/RGE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PROFILE_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "reference"
CONFIG_KEY = "rge_profile"
BUDGET_RULES = ("append_emb", "last_token")
IMAGE_POSITIONS = ("first", "inline")


class ProfileError(ValueError):
    """A profile file or name that cannot be used; the message names the file or the name."""


@dataclass(frozen=True)
class PromptProfile:
    name: str
    description: str = ""
    image_position: str = "first"
    """"first": the image goes before the text of the user turn; "inline": MMEB's ``<|image_1|>``
    placeholder is replaced where it stands by the vision tokens."""
    trailing_newline: bool = False
    """Ensure the user text ends in a newline (the reference's rule)."""
    min_pixels: int | None = None
    max_pixels: int | None = None
    """Image processor pixel limits (None: the checkpoint's own)."""
    budget_rule: str = "append_emb"
    """When the rationale budget runs out: "append_emb" (append ``<emb>``, one more forward) or
    "last_token" (embed the last generated token's state, as the reference does)."""
    tasks: dict[str, dict[str, str]] = field(default_factory=dict)
    """Task presets: name -> {"query": instruction, "candidate": instruction}."""
    subsets: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per-subset rewrites (MMEB): subset -> {"query": instruction, "candidate": template}."""

    def __post_init__(self):
        if self.budget_rule not in BUDGET_RULES:
            raise ProfileError(f"profile {self.name!r}: budget_rule must be one of {BUDGET_RULES}, got {self.budget_rule!r}")
        if self.image_position not in IMAGE_POSITIONS:
            raise ProfileError(f"profile {self.name!r}: image_position must be one of {IMAGE_POSITIONS}, "
                               f"got {self.image_position!r}")


@lru_cache(maxsize=None)
def get_profile(name: str) -> PromptProfile:
    """The profile called ``name`` (a file ``profiles/<name>.json``)."""
    path = PROFILE_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.json"))
        raise ProfileError(f"unknown prompt profile {name!r}; known: {known}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: not valid JSON ({e})") from None
    return PromptProfile(name=name, **data)


def profile_for(config) -> PromptProfile:
    """The profile a model config declares (``config.rge_profile``), else the reference one."""
    return get_profile(getattr(config, CONFIG_KEY, None) or DEFAULT_PROFILE)
