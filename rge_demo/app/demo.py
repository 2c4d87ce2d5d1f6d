"""The demo's application layer: what every tab does, as plain methods over the library.

The UI (``rge_demo/ui``) only wires components to a :class:`Demo`; tests call the same methods.
Indexes are cached per (model fingerprint, gallery), query vectors per (fingerprint, gallery, mode).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rge_demo.analysis.compare import Comparison, compare_stream, reembed
from rge_demo.config import ASSETS_DIR, REPO_ROOT, Settings, get_settings
from rge_demo.data.images import load_image
from rge_demo.data.items import Gallery, ManifestError
from rge_demo.embedding.gallery import build_index, query_input
from rge_demo.embedding.index import EmbeddingCache, GalleryIndex
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.errors import RGEUserError
from rge_demo.models.manager import LoadedModel, ModelManager

log = logging.getLogger(__name__)

SAMPLE_GALLERIES = REPO_ROOT / "sample_galleries"
RUNS_DIR = ASSETS_DIR / "runs"
TOURS_DIR = ASSETS_DIR / "tours"
EXAMPLES_FILE = ASSETS_DIR / "examples.json"  # written by tools/release_micro.py
MAX_TEXT_CHARS = 2000


class UserError(RGEUserError, ValueError):
    """Bad input from a person using the app; the message says what to fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every error whose message is meant for the person using the app (the UI shows these as
    messages; anything else is a bug and is logged)."""
    from rge_demo.data.images import ImageError
    from rge_demo.models.loading import ModelError

    return (RGEUserError, UserError, ImageError, ManifestError, ModelError, ValueError, FileNotFoundError)


def world_task_names() -> list[str]:
    """The synthetic world's task names (the Failures tab's evaluation picker)."""
    from rge_demo.data import world

    return sorted(world.TASKS)


def load_galleries(root: Path) -> dict[str, Gallery]:
    """Every gallery folder (with a manifest.json) under ``root``; broken ones are logged and skipped."""
    galleries = {}
    for folder in sorted(p for p in Path(root).glob("*") if (p / "manifest.json").is_file()):
        try:
            g = Gallery.load(folder)
            galleries[g.name] = g
        except ManifestError as e:
            log.error("skipping gallery %s: %s", folder, e)
    return galleries


@dataclass
class QueryVectors:
    """A gallery's queries embedded in both modes (for projections and tours)."""

    direct: np.ndarray  # (Q, D)
    reason: np.ndarray  # (Q, D)
    rationales: list[str]


class Demo:
    """Models, galleries, indexes and the actions of every tab."""

    def __init__(self, settings: Settings | None = None, manager: ModelManager | None = None,
                 galleries_dir: Path = SAMPLE_GALLERIES):
        self.settings = settings or get_settings()
        self.manager = manager or ModelManager(self.settings)
        self.cache = EmbeddingCache(self.settings.embeddings_dir)
        self.galleries = load_galleries(galleries_dir)
        self._indexes: dict[tuple[str, str], GalleryIndex] = {}
        self._queries: dict[tuple[str, str], QueryVectors] = {}
        self._cases: dict[str, tuple] = {}
        from rge_demo.analysis.projection import ProjectionCache

        self._projections = ProjectionCache(self.settings.cache_dir / "projections")
        self._lock = threading.RLock()

    @functools.cached_property
    def workbench(self):
        """The Train tab's uploads and background jobs (one queue and one polling thread per app)."""
        from rge_demo.app.workbench import Workbench

        return Workbench(self.settings.cache_dir / "jobs", self.manager)

    # -- models ----------------------------------------------------------------------------------
    @property
    def default_model(self) -> str:
        return self.settings.model

    def model(self, name: str | None = None) -> LoadedModel:
        return self.manager.load(name or self.default_model)

    def load_model(self, name: str, dtype: str = "auto", quantization: str | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> LoadedModel:
        """Load (or reload with other settings) a model and embed the sample galleries with it."""
        loaded = self.manager.load(name, dtype=dtype, quantization=quantization)
        self.warm(loaded.name, progress=progress)
        return loaded

    def unload_model(self, name: str) -> None:
        if not self.manager.unload(name):
            raise UserError(f"{name!r} is not loaded")

    def model_status(self) -> list[dict]:
        """One row per loaded model: name, source, device, dtype, quantization, parameters, memory."""
        return self.manager.status()

    # -- galleries and indexes -------------------------------------------------------------------
    def examples(self, per_gallery: int = 2) -> list[dict]:
        """The Compare tab's one-click examples: ``{gallery, image, text, instruction, target_id,
        reasoning_helps}``, the default first. The shipped list (``assets/examples.json``) holds
        queries where the shipped model's reasoning visibly helps with a right rationale; without it,
        each gallery's first queries."""
        import json

        chosen = []
        if EXAMPLES_FILE.is_file():
            chosen = [(e["gallery"], e["query_id"], e.get("reasoning_helps", False))
                      for e in json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))]
        chosen = [c for c in chosen if c[0] in self.galleries and c[1] in {q.id for q in self.galleries[c[0]].queries}]
        if not chosen:
            chosen = [(name, q.id, False) for name, g in self.galleries.items() for q in g.queries[:per_gallery]]
        out = []
        for name, qid, helps in chosen:
            g = self.galleries[name]
            q = next(q for q in g.queries if q.id == qid)
            out.append({"gallery": name, "image": str(g.image_path(q.image)) if q.image else None, "text": q.text,
                        "instruction": q.instruction, "target_id": q.target_id, "reasoning_helps": helps})
        return out

    def gallery(self, name: str) -> Gallery:
        if name not in self.galleries:
            raise UserError(f"unknown gallery {name!r}; choose one of {sorted(self.galleries)}")
        return self.galleries[name]

    def index(self, gallery_name: str, model_name: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> GalleryIndex:
        loaded = self.model(model_name)
        key = (loaded.fingerprint, gallery_name)
        with self._lock:
            if key not in self._indexes:
                self._indexes[key] = build_index(loaded.encoder, self.gallery(gallery_name), loaded.fingerprint,
                                                 self.cache, progress)
            return self._indexes[key]

    def warm(self, model_name: str | None = None, progress: Callable[[str, int, int], None] | None = None) -> None:
        """Build (or load from the cache) every gallery's index for a model."""
        for name in self.galleries:
            self.index(name, model_name, (lambda d, t, n=name: progress(n, d, t)) if progress else None)

    def presets(self, model_name: str | None = None) -> dict:
        """The Compare tab's task presets, from the model's prompt profile: ``{"profile", "description",
        "tasks": {name: {"meta_task", "query", "candidate"}}}`` (read from config.json if not loaded)."""
        from rge_demo.embedding.profiles import DEFAULT_PROFILE, ProfileError, get_profile, profile_for_folder
        from rge_demo.models.loading import ModelError, resolve_source

        name = model_name or self.default_model
        profile = next((m.profile for m in self.manager.loaded() if name in (m.name, m.spec.source)), None)
        if profile is None:
            try:
                profile = profile_for_folder(resolve_source(self.manager.resolve(name).source))
            except (ModelError, ProfileError) as e:
                log.warning("prompt profile of %s: %s; showing the %s presets", name, e, DEFAULT_PROFILE)
                profile = get_profile(DEFAULT_PROFILE)
        return {"profile": profile.name, "description": profile.description,
                "tasks": {k: dict(v) for k, v in profile.tasks.items()}}

    # -- inputs ------------------------------------------------------------------------------------
    @staticmethod
    def make_input(image, text: str, instruction: str) -> EmbedInput:
        """Validate a query from the UI: an image (path, bytes or PIL) and/or text, plus an instruction."""
        text, instruction = (text or "").strip(), (instruction or "").strip()
        if len(text) > MAX_TEXT_CHARS or len(instruction) > MAX_TEXT_CHARS:
            raise UserError(f"text and instruction are limited to {MAX_TEXT_CHARS} characters")
        if image is not None:
            image = load_image(image)  # ImageError names the file and the problem
        if image is None and not text:
            raise UserError("give an image or a text to embed")
        return EmbedInput(instruction=instruction, text=text, image=image)

    # -- Compare -----------------------------------------------------------------------------------
    def compare(self, gallery_name: str, image, text: str, instruction: str, k: int = 5,
                target_id: str | None = None, model_name: str | None = None,
                max_new_tokens: int | None = None) -> Iterator[Comparison]:
        inp = self.make_input(image, text, instruction)
        index = self.index(gallery_name, model_name)
        yield from compare_stream(self.model(model_name).encoder, index, inp, int(k), target_id or None,
                                  max_new_tokens, self.settings.stream_interval)

    def reembed(self, gallery_name: str, image, text: str, instruction: str, rationale: str,
                previous: Comparison, k: int = 5, target_id: str | None = None,
                model_name: str | None = None) -> Comparison:
        if not (rationale or "").strip():
            raise UserError("the rationale is empty: write one, or run the comparison again")
        inp = self.make_input(image, text, instruction)
        return reembed(self.model(model_name).encoder, self.index(gallery_name, model_name), inp,
                       rationale.strip(), previous, int(k), target_id or None)

    def search(self, gallery_name: str, image, text: str, instruction: str, k: int = 5,
               reason: bool = False, model_name: str | None = None) -> dict:
        """One query, one mode: ranked hits as plain dicts (for the API)."""
        inp = self.make_input(image, text, instruction)
        encoder = self.model(model_name).encoder
        index = self.index(gallery_name, model_name)
        rationale = ""
        if reason:
            result = encoder.reason([inp])[0]
            vector, rationale = result.vector, result.rationale
        else:
            vector = encoder.direct([inp])[0]
        hits = index.search(vector[None, :], int(k))[0]
        return {"rationale": rationale,
                "hits": [{"rank": h.rank, "id": h.item.id, "label": h.item.label or h.item.text,
                          "score": round(h.score, 4)} for h in hits]}

    # -- queries of a gallery in both modes ------------------------------------------------------
    def query_vectors(self, gallery_name: str, model_name: str | None = None) -> QueryVectors:
        loaded = self.model(model_name)
        key = (loaded.fingerprint, gallery_name)
        with self._lock:
            if key not in self._queries:
                gallery = self.gallery(gallery_name)
                inputs = [query_input(gallery, q) for q in gallery.queries]
                results = loaded.encoder.reason(inputs)
                self._queries[key] = QueryVectors(
                    direct=loaded.encoder.direct(inputs),
                    reason=np.stack([r.vector for r in results]) if results else np.zeros((0, 1), np.float32),
                    rationales=[r.rationale for r in results])
            return self._queries[key]

    # -- Explore -----------------------------------------------------------------------------------
    def projection(self, gallery_name: str, model_name: str | None = None, method: str = "umap") -> Projection:
        """Gallery items plus the gallery's queries in both modes, in one shared 2-D map.

        UMAP compiles on first use (~15 s): until the background warm-up is done, PCA is used.
        """
        from rge_demo.analysis import projection as P

        if method not in ("umap", "pca"):
            raise UserError(f"projection method must be 'umap' or 'pca', got {method!r}")
        if method == "umap" and not P.umap_ready():
            P.warm_umap_in_background()
            method = "pca"
        loaded = self.model(model_name)
        gallery, index = self.gallery(gallery_name), self.index(gallery_name, model_name)
        qv = self.query_vectors(gallery_name, model_name)
        result = self._projections.get_or_compute(index.matrix, qv.direct, qv.reason, fingerprint=loaded.fingerprint,
                                                  gallery=gallery_name, method=method)
        target_rows = [index.items.index(next(it for it in index.items if it.id == q.target_id))
                       for q in gallery.queries]
        right_direct = (qv.direct @ index.matrix.T).argmax(1) == np.array(target_rows)
        right_reason = (qv.reason @ index.matrix.T).argmax(1) == np.array(target_rows)
        points = [PointInfo("item", it.id, it.label or it.text, str(gallery.image_path(it.image)) if it.image else None,
                            it.text, None) for it in gallery.items]
        for kind, right in (("query-direct", right_direct), ("query-reason", right_reason)):
            for q, ok, rationale in zip(gallery.queries, right, qv.rationales):
                points.append(PointInfo(kind, q.id, gallery.items[gallery.index_of(q.target_id)].label, str(
                    gallery.image_path(q.image)) if q.image else None, q.text,
                    bool(ok), rationale if kind == "query-reason" else ""))
        return Projection(result, points, np.concatenate([index.matrix, qv.direct, qv.reason]))

    def neighbours(self, projection: Projection, point: int, k: int = 5) -> list[tuple[PointInfo, float]]:
        """The ``k`` nearest gallery items of a point, by cosine in the full embedding space."""

        if not 0 <= point < len(projection.points):
            raise UserError(f"no point {point} in this projection ({len(projection.points)} points)")
        n_items = projection.result.n_items
        scores = projection.vectors[:n_items] @ projection.vectors[point]
        order = [i for i in np.argsort(-scores, kind="stable") if i != point][:k]
        return [(projection.points[i], float(scores[i])) for i in order]

    # -- Failures ----------------------------------------------------------------------------------
    @property
    def runs_dirs(self) -> list[Path]:
        """Shipped runs (assets/runs), then runs made in this app (cache dir)."""
        return [RUNS_DIR, self.settings.cache_dir / "runs"]

    def saved_runs(self) -> dict[str, tuple[Path, Path]]:
        """Saved run pairs with a reasoning and a direct run: {name: (reason_dir, direct_dir)}."""
        out = {}
        folders = [p for root in self.runs_dirs if root.is_dir() for p in sorted(root.iterdir()) if p.is_dir()]
        for folder in folders:
            reason, direct = folder / "reason", folder / "direct"
            if (reason / "cases.jsonl").is_file() and (direct / "cases.jsonl").is_file():
                out[folder.name] = (reason, direct)
        return out

    def load_cases(self, run: str) -> list:
        """Cases of a saved run pair, image paths made absolute."""
        from rge_demo.analysis.failures import load_pair

        runs = self.saved_runs()
        if run not in runs:
            raise UserError(f"no saved run {run!r}; available: {sorted(runs) or 'none'}")
        reason_dir, direct_dir = runs[run]
        stamp = tuple((d / "cases.jsonl").stat().st_mtime_ns for d in runs[run])
        if self._cases.get(run, (None,))[0] != stamp:
            cases = load_pair(reason_dir, direct_dir)
            for c in cases:
                if c.image and not Path(c.image).is_absolute():
                    c.image = str(reason_dir / c.image)
            self._cases[run] = (stamp, cases)
        return self._cases[run][1]

    def run_evaluation(self, tasks: list[str], split: str, n: int, model_name: str | None = None,
                       progress: Callable[[str, int, int], None] | None = None) -> tuple[str, list]:
        """Evaluate a model on world test splits in both modes, save the runs, return (run name, cases)."""
        from rge_demo.analysis.evaluate import evaluate, world_tasks

        if split not in ("ind", "ood", "all"):
            raise UserError(f"split must be ind, ood or all, got {split!r}")
        if not 1 <= int(n) <= 500:
            raise UserError(f"queries per task must be in 1..500, got {n}")
        loaded = self.model(model_name)
        eval_tasks = world_tasks(tasks or None, splits=("ind", "ood") if split == "all" else (split,), n=int(n))
        name = f"{loaded.name}-{split}-{int(n)}"
        out = self.settings.cache_dir / "runs" / name
        for mode in ("direct", "reason"):
            run = evaluate(loaded.encoder, eval_tasks, mode=mode, cache=self.cache, fingerprint=loaded.fingerprint,
                           model_name=loaded.name,
                           progress=(lambda d, t, m=mode: progress(m, d, t)) if progress else None)
            run.save(out / mode)
        return name, self.load_cases(name)

    def replay_case(self, case, model_name: str | None = None) -> dict:
        """Run one saved world case again with another model, in both modes (a tour's before/after)."""
        import dataclasses

        from rge_demo.analysis.evaluate import evaluate, world_tasks

        try:
            task, split, number = case.query_id.rsplit("-", 2)
            full = world_tasks([task], (split,), n=int(number) + 1)[0]
            index = int(number)
        except (ValueError, KeyError):
            raise UserError(f"case {case.query_id!r} is not a synthetic-world test query: it cannot be replayed") from None
        one = dataclasses.replace(full, queries=[full.queries[index]])
        loaded = self.model(model_name)
        now = {mode: evaluate(loaded.encoder, [one], mode=mode, model_name=loaded.name).cases[0]
               for mode in ("direct", "reason")}
        return {"model": loaded.name, "direct_rank": now["direct"]["rank"], "reason_rank": now["reason"]["rank"],
                "rationale": now["reason"]["rationale"], "before_direct_rank": case.direct_rank,
                "before_reason_rank": case.reason_rank}


@dataclass
class PointInfo:
    """What a projected point stands for."""

    kind: str  # item | query-direct | query-reason
    id: str
    label: str
    image: str | None
    text: str
    correct: bool | None  # queries: is the right answer ranked first in this mode
    rationale: str = ""


@dataclass
class Projection:
    result: object  # rge_demo.analysis.projection.ProjectionResult
    points: list[PointInfo]
    vectors: np.ndarray  # (P, D), the full-space vectors in point order
