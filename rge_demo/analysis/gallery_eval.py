"""A gallery's own queries as an evaluation: every query with a right answer ranks all the gallery's items.

:func:`gallery_tasks` turns a :class:`~rge_demo.data.items.Gallery` (a sample gallery, or one a
session registered: a zip, a labelled folder, an MMEB subset) into :class:`EvalTask` objects, one per
(task, split) of its queries, so :func:`rge_demo.analysis.evaluate.evaluate` runs it in both modes
exactly like the world's test splits. Candidates are the gallery's items with the instruction the
gallery's index embeds them with, so an evaluation after the gallery was embedded reuses the cached
candidate vectors. Queries whose meta holds a world scene (the sample galleries) keep it, so the
hallucination flag and failure kinds work on them. :func:`copy_query_images` makes a saved run
self-contained (the query images copied beside ``cases.jsonl``).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from rge_demo.data import world
from rge_demo.data.items import Gallery
from rge_demo.errors import RGEUserError

from .eval_tasks import EvalCandidate, EvalItem, EvalQuery, EvalTask
from .evaluate import EvalRun

log = logging.getLogger(__name__)

DEFAULT_TASK = "gallery"
DEFAULT_SPLIT = "test"


class GalleryEvalError(RGEUserError, ValueError):
    """A gallery that cannot be evaluated (no query with a right answer); the message says what to add."""


def _scene(meta: dict) -> dict | None:
    """The query's world scene when its meta holds a usable one, else None (no hallucination check)."""
    if not meta or not meta.get("kind"):
        return None
    try:
        world.scene_facts(meta)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    return dict(meta)


def gallery_tasks(gallery: Gallery) -> list[EvalTask]:
    """One EvalTask per (task, split) of the gallery's queries that have a right answer in the gallery.

    A query's task is its own ``task`` (else the gallery's meta-task, else "gallery"), its split its
    ``split`` (else "test"); the task name is ``<task>/<split>``. Raises :class:`GalleryEvalError`
    when no query has a right answer among the items.
    """
    ids = {it.id: i for i, it in enumerate(gallery.items)}
    cands = [EvalCandidate(it.id, it.label or it.text or it.id,
                           EvalItem(it.meta.get("instruction") or gallery.candidate_instruction, it.text,
                                    image_path=gallery.image_path(it.image) if it.image else None))
             for it in gallery.items]
    groups: dict[tuple[str, str, str], list[EvalQuery]] = {}
    skipped = 0
    for q in gallery.queries:
        if not q.target_id or q.target_id not in ids:
            skipped += 1
            continue
        task = q.task or gallery.meta_task or DEFAULT_TASK
        key = (task, q.split or DEFAULT_SPLIT, q.meta_task or gallery.meta_task or "")
        item = EvalItem(q.instruction, q.text, image_path=gallery.image_path(q.image) if q.image else None)
        groups.setdefault(key, []).append(EvalQuery(q.id, item, ids[q.target_id], q.rationale, _scene(q.meta)))
    if not groups:
        raise GalleryEvalError(
            f"gallery {gallery.name!r} has no query with a right answer among its items "
            f"({len(gallery.queries)} queries): mark query rows (a 'query' column) whose label matches an item")
    if skipped:
        log.info("gallery %s: %d queries without a right answer are left out", gallery.name, skipped)
    return [EvalTask(f"{task}/{split}", meta_task, split, queries, cands, "gallery",
                     {"gallery": gallery.name}, task=task)
            for (task, split, meta_task), queries in sorted(groups.items())]


def copy_query_images(run: EvalRun, out_dir: str | Path) -> None:
    """Copy each case's query image (an absolute path into the gallery) to ``out_dir/images/`` and
    record it relative to the run folder, so the run still shows its images if the gallery goes."""
    out = Path(out_dir)
    for case in run.cases:
        src = case.get("image")
        if not src or not Path(src).is_absolute() or not Path(src).is_file():
            continue
        rel = f"images/{re.sub(r'[^A-Za-z0-9._-]+', '_', case['query_id'])}{Path(src).suffix.lower()}"
        (out / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)
        case["image"] = rel


__all__ = ["GalleryEvalError", "copy_query_images", "gallery_tasks"]
