"""Evaluation tasks: queries and their candidates, from the synthetic world or a local MMEB-eval copy.

An :class:`EvalTask` is one benchmark dataset (one row of the paper's Table 2). Candidates are
embedded once per task in direct mode; a query either ranks every candidate of its task (the world)
or only its own list (MMEB: 1000 candidates per query, the right one first in the file), given as
indices into the task's de-duplicated candidates.

MMEB-eval layout (TIGER-Lab/MMEB-eval): ``<root>/<Subset>/test-*.parquet`` with columns
``qry_text, qry_img_path, tgt_text (list), tgt_img_path (list)``; image paths are relative to an
image folder (``<root>/images`` by default, ``<root>/eval_images`` also tried). Texts hold
``<|image_1|>`` where the image goes. An item keeps its raw text, subset and side: the model's prompt
profile decides what the model sees (the reference profile rewrites per subset and keeps the
placeholder's place; the micro profile strips it and puts the image first), see
:mod:`rge_demo.embedding.prompts`. :func:`prompt_records` lists every prompt a run would embed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from rge_demo.data import world
from rge_demo.data.images import load_image
from rge_demo.embedding.prompts import EmbedInput, from_mmeb_text, prompt_text
from rge_demo.errors import RGEUserError

log = logging.getLogger(__name__)

EVAL_SPLITS = ("ind", "ood")
MMEB_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")

# MMEB-V1 (VLM2Vec, arXiv 2410.05160, Table 1): meta-task per dataset; 20 IND + 16 OOD datasets.
MMEB_META_TASKS: dict[str, str] = {
    **{s: "classification" for s in ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365",
                                     "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211")},
    **{s: "vqa" for s in ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA",
                          "VizWiz", "GQA", "TextVQA")},
    **{s: "retrieval" for s in ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t",
                                "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS")},
    **{s: "grounding" for s in ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")},
}
MMEB_OOD = frozenset({"Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211",
                      "ScienceQA", "VizWiz", "GQA", "TextVQA",
                      "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS",
                      "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"})


class EvalDataError(RGEUserError, ValueError):
    """Evaluation data that cannot be used; the message names the file, row or column."""


@dataclass
class EvalItem:
    """Something to embed: instruction + text + an image held in memory or read lazily from a path.

    MMEB items also keep their raw text (``mmeb_text``, placeholder included), ``subset`` and
    ``side`` ("query" | "candidate") for the profile's rewrite; ``text`` is the raw text without
    the placeholder.
    """

    instruction: str = ""
    text: str = ""
    image: Image.Image | None = None
    image_path: Path | None = None
    mmeb_text: str | None = None
    subset: str = ""
    side: str = "query"

    def to_input(self) -> EmbedInput:
        """The EmbedInput; an image on disk is loaded here (ImageError names the file)."""
        image = self.image
        if image is None and self.image_path is not None:
            image = load_image(self.image_path)
        return EmbedInput(instruction=self.instruction, text=self.text, image=image, mmeb_text=self.mmeb_text,
                          subset=self.subset, side=self.side)

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_path is not None


@dataclass
class EvalCandidate:
    id: str
    label: str
    item: EvalItem


@dataclass
class EvalQuery:
    """A query; ``target`` indexes ``candidates`` when the query has its own list, else the task's."""

    id: str
    item: EvalItem
    target: int
    rationale: str = ""  # oracle rationale (world only)
    facts: dict[str, Any] | None = None  # ground truth for hallucination checks (world Query.meta)
    candidates: list[int] | None = None  # per-query candidate list: indices into EvalTask.candidates

    def candidate_index(self, task: EvalTask) -> int:
        """Index of the right candidate in ``task.candidates``."""
        return self.target if self.candidates is None else self.candidates[self.target]


@dataclass
class EvalTask:
    """One dataset: ``name`` is unique in a run (world: ``"<task>/<split>"``, MMEB: the subset);
    ``task`` is the task it draws from (world: the task name; default: ``name``)."""

    name: str
    meta_task: str
    split: str
    queries: list[EvalQuery]
    candidates: list[EvalCandidate]
    source: str = "world"  # "world" | "mmeb"
    info: dict[str, Any] = field(default_factory=dict)
    task: str = ""

    def __post_init__(self):
        self.task = self.task or self.name
        n = len(self.candidates)
        for q in self.queries:
            pool = n if q.candidates is None else len(q.candidates)
            if not 0 <= q.target < pool or (q.candidates and not all(0 <= c < n for c in q.candidates)):
                raise EvalDataError(f"task {self.name}: query {q.id} points outside its {pool} candidates")


# ------------------------------------------------------------------------------------- the world
def world_tasks(tasks: Iterable[str] | None = None, splits: Sequence[str] = EVAL_SPLITS, n: int = 100,
                seed: int = 0, wordings: bool = False) -> list[EvalTask]:
    """One EvalTask per (world task, split) from ``world.generate`` + ``world.candidates``.

    ``splits`` in {"ind", "ood"} (never "train"); unknown task names raise KeyError.
    """
    names = list(world.TASKS) if tasks is None else list(tasks)
    for s in splits:
        if s not in EVAL_SPLITS:
            raise ValueError(f"evaluation split must be one of {EVAL_SPLITS}, got {s!r}")
    if n < 1:
        raise ValueError(f"need at least one query per task, got n={n}")
    out = []
    for name in names:
        spec = world.TASKS.get(name)
        if spec is None:
            raise KeyError(f"unknown task {name!r}; known: {', '.join(world.TASKS)}")
        cands = [EvalCandidate(it.id, it.label or it.text,
                               EvalItem(spec.candidate_instruction, it.text, img))
                 for it, img in world.candidates(name, wordings)]
        index = {c.id: i for i, c in enumerate(cands)}
        for split in splits:
            queries = [EvalQuery(ex.query.id, EvalItem(ex.query.instruction, ex.query.text, ex.query_image),
                                 index[ex.query.target_id], ex.rationale, dict(ex.query.meta))
                       for ex in world.generate(name, split, n, seed, wordings)]
            out.append(EvalTask(f"{name}/{split}", spec.meta_task, split, queries, cands, "world",
                                {"task": name, "seed": seed, "ood_rule": spec.ood_rule if split == "ood" else "",
                                 **({"wordings": True} if wordings else {})}, task=name))
    return out


# ------------------------------------------------------------------------------------------- MMEB
def mmeb_group(subset: str) -> tuple[str, str]:
    """(meta_task, split) of an MMEB subset; unknown subsets are ("unknown", "ind")."""
    meta = MMEB_META_TASKS.get(subset)
    if meta is None:
        return "unknown", "ind"
    return meta, "ood" if subset in MMEB_OOD else "ind"


def _default_image_root(root: Path) -> Path:
    for name in ("images", "eval_images"):
        if (root / name).is_dir():
            return root / name
    return root / "images"


def _as_list(value, where: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        raise EvalDataError(f"{where}: expected a list, got a string")
    try:
        return list(value)
    except TypeError:
        raise EvalDataError(f"{where}: expected a list, got {type(value).__name__}") from None


def _mmeb_item(text, img, image_root: Path, where: str, subset: str = "", side: str = "query") -> EvalItem:
    text = "" if text is None else str(text)
    img = "" if img is None else str(img)
    item = EvalItem("", from_mmeb_text(text), None, image_root / img if img else None, mmeb_text=text,
                    subset=subset, side=side)
    if not item.text and not img:
        raise EvalDataError(f"{where}: neither text nor image")
    return item


def load_mmeb(root: str | Path, subsets: Sequence[str] | None = None, limit: int | None = None,
              image_root: str | Path | None = None) -> list[EvalTask]:
    """EvalTasks from a local MMEB-eval copy: one per subset folder holding ``test-*.parquet``.

    ``subsets`` picks folders by name (default: every folder with parquet files); ``limit`` keeps
    the first N rows of each. Candidates are de-duplicated per subset by (text, image path), so a
    candidate shared by many queries is embedded once. Missing image files are reported up front.
    """
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise EvalDataError(f"{root}: no such MMEB folder")
    img_root = Path(image_root) if image_root is not None else _default_image_root(root)
    found = {p.name: sorted(p.glob("test-*.parquet")) for p in sorted(root.iterdir()) if p.is_dir()}
    found = {k: v for k, v in found.items() if v}
    if not found:
        raise EvalDataError(f"{root}: no <subset>/test-*.parquet files (expected the TIGER-Lab/MMEB-eval layout)")
    names = list(found) if subsets is None else list(subsets)
    for name in names:
        if name not in found:
            raise EvalDataError(f"{root}: no parquet files for subset {name!r}; found: {', '.join(found)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")

    tasks = []
    for name in names:
        frames = []
        for path in found[name]:
            try:
                df = pd.read_parquet(path)
            except Exception as e:  # pyarrow raises many kinds for a broken file
                raise EvalDataError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from e
            missing = [c for c in MMEB_COLUMNS if c not in df.columns]
            if missing:
                raise EvalDataError(f"{path}: missing column {missing[0]!r} (columns: {', '.join(map(str, df.columns))})")
            frames.append((path, df))
        tasks.append(_mmeb_task(name, frames, limit, img_root))
    _check_images(tasks, img_root)
    return tasks


def _mmeb_task(name: str, frames, limit: int | None, img_root: Path) -> EvalTask:
    meta_task, split = mmeb_group(name)
    cands: list[EvalCandidate] = []
    by_key: dict[tuple[str, str], int] = {}
    queries: list[EvalQuery] = []
    for path, df in frames:
        for row_no, row in enumerate(df.itertuples(index=False)):
            if limit is not None and len(queries) >= limit:
                break
            where = f"{path} row {row_no}"
            texts = _as_list(row.tgt_text, f"{where} column 'tgt_text'")
            imgs = _as_list(row.tgt_img_path, f"{where} column 'tgt_img_path'")
            if not imgs:
                imgs = [""] * len(texts)
            if not texts:
                texts = [""] * len(imgs)
            if len(texts) != len(imgs) or not texts:
                raise EvalDataError(f"{where}: tgt_text has {len(texts)} entries but tgt_img_path {len(imgs)}")
            own = []
            for j, (t, im) in enumerate(zip(texts, imgs)):
                key = ("" if t is None else str(t), "" if im is None else str(im))
                if key not in by_key:
                    item = _mmeb_item(t, im, img_root, f"{where} candidate {j}", name, "candidate")
                    by_key[key] = len(cands)
                    label = item.text[:80] if item.text else Path(key[1]).name
                    cands.append(EvalCandidate(f"{name}/c{len(cands)}", label, item))
                own.append(by_key[key])
            item = _mmeb_item(row.qry_text, row.qry_img_path, img_root, f"{where} query", name, "query")
            queries.append(EvalQuery(f"{name}/{len(queries)}", item, 0, candidates=own))
    if not queries:
        raise EvalDataError(f"subset {name}: no rows in {', '.join(str(p) for p, _ in frames)}")
    return EvalTask(name, meta_task, split, queries, cands, "mmeb", {"files": [str(p) for p, _ in frames]})


def _check_images(tasks: list[EvalTask], img_root: Path) -> None:
    paths = {it.image_path for t in tasks for it in [*(q.item for q in t.queries), *(c.item for c in t.candidates)]
             if it.image_path is not None}
    missing = sorted(str(p) for p in paths if not p.is_file())
    if missing:
        raise EvalDataError(f"{len(missing)} image file(s) not found under the image folder {img_root} "
                            f"(set --image-root), e.g. {', '.join(missing[:3])}")


# ---------------------------------------------------------------------------------------- prompts
def query_prompt(encoder, item: EvalItem, mode: str) -> str:
    """The exact text a query's embedding starts from, under the encoder's profile: the generation
    prompt in "reason" and "oracle" modes, that prompt + ``<emb>`` in "direct" mode."""
    return prompt_text(encoder.processor, item, direct=mode == "direct", profile=getattr(encoder, "profile", None))


def prompt_records(tasks: Sequence[EvalTask], processor, profile, direct_queries: bool = False) -> Iterator[dict]:
    """``{"subset", "row", "side", "prompt"}`` for every item an evaluation of ``tasks`` embeds, in order.

    Per row: its query ("reason" prompt, or direct with ``direct_queries``), then the candidates it
    is the first row to list (candidates are embedded once per task, in direct mode). ``prompt`` is
    the exact text given to the processor. Images are not read.
    """
    for task in tasks:
        seen: set[int] = set()
        for row, q in enumerate(task.queries):
            yield {"subset": task.name, "row": row, "side": "query",
                   "prompt": prompt_text(processor, q.item, direct=direct_queries, profile=profile)}
            for c in q.candidates if q.candidates is not None else range(len(task.candidates)):
                if c not in seen:
                    seen.add(c)
                    yield {"subset": task.name, "row": row, "side": "candidate",
                           "prompt": prompt_text(processor, task.candidates[c].item, direct=True, profile=profile)}
