"""Typed records for everything that gets embedded: items, queries, galleries and their manifests.

A gallery is a folder holding ``manifest.json`` and the images it names (paths relative to the
folder). Items are the candidates; queries carry the right candidate's id and, in the synthetic
world, an oracle rationale and the scene's ground truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rge_demo.errors import RGEUserError

try:
    import fcntl
except ImportError:  # Windows: callers' thread locks are all there is
    fcntl = None

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
MANIFEST = "manifest.json"


class ManifestError(RGEUserError, ValueError):
    """A manifest that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Item:
    """A gallery candidate: text and/or an image (a path relative to the gallery folder)."""

    id: str
    text: str = ""
    image: str | None = None
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if not self.id:
            raise ValueError("item id must be non-empty")
        if not self.text and not self.image:
            raise ValueError(f"item {self.id!r} has neither text nor image")


@dataclass(frozen=True)
class Query:
    """A query in MMEB form: an instruction, text and/or image, and the right candidate's id."""

    id: str
    instruction: str
    text: str = ""
    image: str | None = None
    target_id: str = ""
    task: str = ""
    meta_task: str = ""
    split: str = "test"
    rationale: str = ""  # the oracle rationale, when known
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if not self.id:
            raise ValueError("query id must be non-empty")
        if self.meta_task and self.meta_task not in META_TASKS:
            raise ValueError(f"query {self.id!r}: meta_task {self.meta_task!r} not in {META_TASKS}")


@dataclass
class Gallery:
    """Candidates sharing one candidate-side instruction, plus the queries that search them."""

    name: str
    root: Path
    items: list[Item]
    queries: list[Query] = field(default_factory=list)
    candidate_instruction: str = ""
    meta_task: str = ""
    description: str = ""

    def __post_init__(self):
        self.root = Path(self.root)
        ids = [it.id for it in self.items]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ManifestError(f"gallery {self.name!r}: duplicate item ids {dup}")
        self._by_id = {it.id: i for i, it in enumerate(self.items)}

    def index_of(self, item_id: str) -> int:
        return self._by_id[item_id]

    def __contains__(self, item_id: object) -> bool:
        """Whether an item of this gallery has the id ``item_id``."""
        return item_id in self._by_id

    def image_path(self, rel: str | None) -> Path | None:
        return None if rel is None else self.root / rel

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "meta_task": self.meta_task,
            "description": self.description,
            "candidate_instruction": self.candidate_instruction,
            "items": [asdict(it) for it in self.items],
            "queries": [asdict(q) for q in self.queries],
        }

    def save(self) -> Path:
        """Write ``manifest.json`` atomically into ``root``."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / MANIFEST
        atomic_write_text(path, json.dumps(self.to_manifest(), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, root: str | os.PathLike) -> Gallery:
        root = Path(root)
        path = root / MANIFEST
        if path.exists() and not path.is_file():
            raise ManifestError(f"{path}: is a folder, not a file; a gallery's manifest.json must be a file")
        if not path.is_file():
            raise ManifestError(f"{path}: no manifest.json in gallery folder {root}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from e
        for key in ("name", "items"):
            if key not in data:
                raise ManifestError(f"{path}: missing field {key!r}")
        items = [_record(Item, rec, path, f"items[{i}]") for i, rec in enumerate(data["items"])]
        queries = [_record(Query, rec, path, f"queries[{i}]") for i, rec in enumerate(data.get("queries", []))]
        gallery = cls(
            name=data["name"],
            root=root,
            items=items,
            queries=queries,
            candidate_instruction=data.get("candidate_instruction", ""),
            meta_task=data.get("meta_task", ""),
            description=data.get("description", ""),
        )
        for q in queries:
            if q.target_id and q.target_id not in gallery._by_id:
                raise ManifestError(f"{path}: query {q.id!r} targets unknown item {q.target_id!r}")
        return gallery


def _record(cls, rec: Any, path: Path, where: str):
    if not isinstance(rec, dict):
        raise ManifestError(f"{path}: {where} must be an object, got {type(rec).__name__}")
    known = cls.__dataclass_fields__.keys()
    unknown = sorted(set(rec) - set(known))
    if unknown:
        raise ManifestError(f"{path}: {where} has unknown field(s) {unknown}")
    for name, value in rec.items():
        wanted = _FIELD_TYPES.get(cls.__dataclass_fields__[name].type)
        if wanted is not None and not isinstance(value, wanted[0]):
            raise ManifestError(f"{path}: {where}.{name} must be {wanted[1]}, got {type(value).__name__}")
    try:
        return cls(**rec)
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{path}: {where}: {e}") from e


# A record field's annotation -> (the JSON types it takes, how a message says it).
_FIELD_TYPES = {"str": (str, "a string"), "str | None": ((str, type(None)), "a string or null"),
                "dict[str, Any]": (dict, "an object")}


@contextlib.contextmanager
def process_lock(path: str | os.PathLike):
    """An exclusive advisory lock on ``path`` across processes (creates the file); pair it with a
    thread lock, since flock does not exclude threads of one process reliably."""
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
