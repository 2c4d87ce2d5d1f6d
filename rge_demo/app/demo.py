"""The demo's application layer: what every tab does, as plain methods over the library.

The UI (``rge_demo/ui``) only wires components to a :class:`Demo`; tests call the same methods.
Indexes are cached per (model fingerprint, gallery), query vectors per (fingerprint, gallery, mode).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from rge_demo.analysis.compare import Comparison, compare_stream, reembed
from rge_demo.config import ASSETS_DIR, REPO_ROOT, Settings, get_settings
from rge_demo.data.images import load_image
from rge_demo.data.items import Gallery, ManifestError
from rge_demo.embedding.gallery import build_index, query_input
from rge_demo.embedding.index import EmbeddingCache, GalleryIndex
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.errors import RGEUserError
from rge_demo.models.loading import ModelError
from rge_demo.models.manager import LoadedModel, ModelManager

from . import explore
from .explore import PointInfo, Projection
from .messages import counted
from .sessions import check_server_folder

log = logging.getLogger(__name__)

SAMPLE_GALLERIES = REPO_ROOT / "sample_galleries"
RUNS_DIR = ASSETS_DIR / "runs"
TOURS_DIR = ASSETS_DIR / "tours"
EXAMPLES_FILE = ASSETS_DIR / "examples.json"  # written by tools/release_micro.py
MAX_TEXT_CHARS = 2000
MAX_K = 1000  # the largest top-k a request may ask for (a gallery smaller than k shows all its items)


class UserError(RGEUserError, ValueError):
    """Bad input from a person using the app; the message says what to fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every error whose message is meant for the person using the app (the UI shows these as
    messages; anything else is a bug and is logged)."""
    from rge_demo.data.images import ImageError
    from rge_demo.embedding.model_process import ModelProcessError  # a sentence: the model's process failed or left

    return (RGEUserError, UserError, ImageError, ManifestError, ModelError, ModelProcessError, ValueError,
            FileNotFoundError)


def check_text(value, what: str, limit: int = MAX_TEXT_CHARS) -> str:
    """A text field from a request, stripped: a string of at most ``limit`` characters, valid Unicode."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"the {what} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"the {what} contains a character that is not valid Unicode "
                        f"(a lone surrogate at position {e.start}); remove it and try again") from None
    if "\x00" in value:
        raise UserError(f"the {what} contains a NUL character; remove it and try again")
    value = value.strip()
    if len(value) > limit:
        raise UserError(f"the {what} is {len(value)} characters long; the limit is {limit}")
    return value


def check_int(value, what: str, lo: int, hi: int) -> int:
    """A whole number in ``lo..hi`` from a request (a float that is a whole number is fine)."""
    if isinstance(value, bool) or value is None or isinstance(value, str) and not value.strip():
        raise UserError(f"{what} must be a whole number in {lo}..{hi}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number in {lo}..{hi}, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{what} must be a whole number in {lo}..{hi}, got {value!r}")
    if not lo <= int(number) <= hi:  # a huge float reads 1e+30, not its 31-digit binary expansion
        raise UserError(f"{what} must be in {lo}..{hi}, got {int(number) if abs(number) < 1e15 else f'{number:g}'}")
    return int(number)


def k_note(k: int, n_items: int) -> str:
    """What a request for the top ``k`` of a gallery of ``n_items`` gets, when that is fewer than asked."""
    if k <= n_items:
        return ""
    return f"k={k} but the gallery has {counted(n_items, 'item')}: showing {n_items}."


def check_choice(value, choices, what: str):
    """One of ``choices`` from a request, else a sentence listing them."""
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"{what} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


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
    tokens: list[int] = field(default_factory=list)


T = TypeVar("T")


def _query_key(loaded: LoadedModel, gallery: Gallery, inp: EmbedInput, k: int, target_id: str | None) -> tuple:
    """What a comparison was computed for: the model, the gallery, k, the right answer and the query.
    Compared only on a re-embed (a PIL image compares by its pixels then), so a compare pays nothing."""
    return loaded.fingerprint, gallery.name, str(gallery.root), int(k), target_id, inp.instruction, inp.text, inp.image


class BuiltOnce(Generic[T]):
    """Values built on first use, once per key. A build holds up only the callers of its own key: one
    session's gallery embedding in the background does not stall every other user's Compare."""

    def __init__(self):
        self._values: dict[Hashable, T] = {}
        self._building: dict[Hashable, threading.Lock] = {}
        self._dropped: dict[Hashable, int] = {}  # drops per key: a build that saw one is not kept
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        with self._lock:
            if key in self._values:
                return self._values[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:  # the first caller builds; the others of this key wait for it
            with self._lock:
                if key in self._values:
                    return self._values[key]
                drops = self._dropped.get(key, 0)
            value = build()
            with self._lock:
                if self._dropped.get(key, 0) == drops:  # not dropped meanwhile (a gallery removed)
                    self._values[key] = value
                self._building.pop(key, None)
            return value

    def drop(self, which: Callable[[Hashable], bool]) -> None:
        """Forget the values whose key ``which`` accepts, and any such value being built now."""
        with self._lock:
            for key in {k for k in [*self._values, *self._building] if which(k)}:
                self._values.pop(key, None)
                self._dropped[key] = self._dropped.get(key, 0) + 1


class Demo:
    """Models, galleries, indexes and the actions of every tab."""

    def __init__(self, settings: Settings | None = None, manager: ModelManager | None = None,
                 galleries_dir: Path = SAMPLE_GALLERIES):
        self.settings = settings or get_settings()
        self.manager = manager or ModelManager(self.settings)
        self.cache = EmbeddingCache(self.settings.embeddings_dir)
        self.galleries = load_galleries(galleries_dir)
        self._indexes: BuiltOnce[GalleryIndex] = BuiltOnce()  # (model fingerprint, gallery) -> index
        self._queries: BuiltOnce[QueryVectors] = BuiltOnce()  # (model fingerprint, gallery) -> its queries' vectors
        from rge_demo.analysis.projection import ProjectionCache

        self._projections = ProjectionCache(self.settings.cache_dir / "projections")
        self.maps = explore.MapCache()
        self.map_payloads = explore.Payloads()  # what the Explore page fetches, by token
        from rge_demo.app.gallery_access import GalleryAccess

        self.access = GalleryAccess(self.settings.cache_dir / "user-galleries", self.galleries)

    @functools.cached_property
    def workbench(self):
        """The Train tab's uploads and background jobs (one queue and one polling thread per app)."""
        from rge_demo.app.workbench import Workbench

        return Workbench(self.settings.cache_dir / "jobs", self.manager)

    # -- models ----------------------------------------------------------------------------------
    @property
    def default_model(self) -> str:
        return self.settings.model

    def model_label(self, name: str | None = None) -> str:
        """The registry name a tab shows for a model name or source (the default model when None)."""
        name = name or self.default_model
        try:
            return self.manager.resolve(name).name
        except Exception:  # an unreachable hub id: keep the name as given (presets() falls back too)
            return name

    def model(self, name: str | None = None) -> LoadedModel:
        """The model a tab uses: as loaded (with the dtype and quantization chosen when it was), or
        loaded now with the app's settings (RGE_DTYPE)."""
        name = name or self.default_model
        try:
            return self.manager.get(name)
        except ModelError:
            return self.manager.load(name, dtype=self.settings.dtype)

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

    def gallery(self, name: str, session_key: str | None = None) -> Gallery:
        """A sample gallery, or one the session ``session_key`` registered (another session's is refused)."""
        from rge_demo.app.gallery_access import GalleryNotFound

        if not isinstance(name, str) or not name:
            raise UserError(f"choose a gallery: one of {self.gallery_names(session_key)}")
        try:
            return self.access.get(name, session_key)
        except GalleryNotFound:
            raise UserError(f"unknown gallery {name!r}; choose one of {self.gallery_names(session_key)}") from None

    def gallery_names(self, session_key: str | None = None) -> list[str]:
        """The sample galleries, then the session's own."""
        return self.access.names(session_key)

    def target_for(self, gallery: Gallery, target_id: str | None, session_key: str | None = None) -> str | None:
        """A page's right-answer pick for ``gallery``: None when it is an item of another of the session's
        galleries (a pick left over from the gallery the page showed before: a Compare click can reach the
        server before the gallery switch has cleared it); otherwise unchanged, for :meth:`check_target`."""
        if not target_id or target_id in gallery:
            return target_id
        for name in self.gallery_names(session_key):
            if name != gallery.name and target_id in self.gallery(name, session_key):
                return None
        return target_id

    def index(self, gallery_name: str, model_name: str | None = None,
              progress: Callable[[int, int], None] | None = None, session_key: str | None = None) -> GalleryIndex:
        gallery = self.gallery(gallery_name, session_key)
        loaded = self.model(model_name)
        key = (loaded.fingerprint, gallery.name)
        return self._indexes.get(key, lambda: build_index(loaded.encoder, gallery, loaded.fingerprint, self.cache,
                                                          progress))

    # -- a session's own galleries ------------------------------------------------------------------
    def register_gallery(self, session_key: str, source, name: str, *, kind: str = "auto", subset: str | None = None,
                         limit: int | None = None, model_name: str | None = None) -> Gallery:
        """Register a gallery for this session (see :mod:`rge_demo.app.user_galleries`) and start
        embedding it in the background with ``model_name``. A folder on the server must lie under
        one of ``Settings.gallery_roots`` (RGE_GALLERY_ROOTS); an uploaded zip always may."""
        if kind in ("folder", "mmeb") or (kind == "auto" and not str(source).lower().endswith(".zip")):
            check_server_folder(source, self.settings.gallery_roots, "galleries", "RGE_GALLERY_ROOTS",
                                "upload a zip instead")
        g = self.access.register(session_key, source, name, kind=kind, subset=subset, limit=limit)
        self.access.embed_in_background(
            g.name, session_key, lambda progress: self.index(g.name, model_name, progress, session_key))
        return g

    def own_galleries(self, session_key: str) -> list[dict]:
        """The session's galleries: name, items, queries and the background embedding's state."""
        out = []
        for name in self.access.names(session_key):
            if name in self.galleries:
                continue
            g, status = self.access.get(name, session_key), self.access.status(name, session_key)
            out.append({"name": name, "items": len(g.items), "queries": len(g.queries), **status})
        return out

    def remove_gallery(self, name: str, session_key: str) -> None:
        self.access.remove(name, session_key)
        self._indexes.drop(lambda key: key[1] == name)

    def warm(self, model_name: str | None = None, progress: Callable[[str, int, int], None] | None = None) -> None:
        """Build (or load from the cache) every gallery's index for a model."""
        for name in self.galleries:
            self.index(name, model_name, (lambda d, t, n=name: progress(n, d, t)) if progress else None)

    def presets(self, model_name: str | None = None) -> dict:
        """The Compare tab's task presets, from the model's prompt profile: ``{"profile", "description",
        "tasks": {name: {"meta_task", "query", "candidate"}}}`` (read from config.json if not loaded)."""
        from rge_demo.embedding.profiles import DEFAULT_PROFILE, ProfileError, get_profile, profile_for_folder
        from rge_demo.models.loading import ModelError

        name = model_name or self.default_model
        profile = next((m.profile for m in self.manager.loaded() if name in (m.name, m.spec.source)), None)
        if profile is None:
            try:
                profile = profile_for_folder(self.manager.resolve(name).folder())
            except (ModelError, ProfileError) as e:
                log.warning("prompt profile of %s: %s; showing the %s presets", name, e, DEFAULT_PROFILE)
                profile = get_profile(DEFAULT_PROFILE)
        return {"profile": profile.name, "description": profile.description,
                "tasks": {k: dict(v) for k, v in profile.tasks.items()}}

    # -- inputs ------------------------------------------------------------------------------------
    @staticmethod
    def make_input(image, text: str, instruction: str) -> EmbedInput:
        """Validate a query from the UI: an image (path, bytes or PIL) and/or text, plus an instruction."""
        text, instruction = check_text(text, "query text"), check_text(instruction, "task instruction")
        if isinstance(image, str) and not image.strip():
            image = None
        if image is not None:
            # an upload's path is the server's: the message names only the file (its original name)
            name = f"image {Path(image).name!r}" if isinstance(image, (str, Path)) else None
            image = load_image(image, name=name)  # the pixel count is checked from the header first
        if image is None and not text:
            raise UserError("give an image or a text to embed")
        return EmbedInput(instruction=instruction, text=text, image=image)

    # -- Compare -----------------------------------------------------------------------------------
    def compare(self, gallery_name: str, image, text: str, instruction: str, k: int = 5,
                target_id: str | None = None, model_name: str | None = None,
                max_new_tokens: int | None = None, session_key: str | None = None) -> Iterator[Comparison]:
        k = check_int(k, "k", 1, MAX_K)
        gallery = self.gallery(gallery_name, session_key)
        target_id = self.check_target(gallery, target_id)
        inp = self.make_input(image, text, instruction)
        index = self.index(gallery.name, model_name, session_key=session_key)
        loaded = self.model(model_name)
        query = _query_key(loaded, gallery, inp, k, target_id)
        for c in compare_stream(loaded.encoder, index, inp, int(k), target_id or None,
                                max_new_tokens, self.settings.stream_interval, model=loaded.name):
            c.query = query
            yield c

    def reembed(self, gallery_name: str, image, text: str, instruction: str, rationale: str,
                previous: Comparison, k: int = 5, target_id: str | None = None,
                model_name: str | None = None, session_key: str | None = None) -> Comparison:
        """The reasoning side again from an edited rationale. ``previous`` (the page's last comparison)
        supplies the direct side when it was computed for this very query, gallery, k, right answer
        and model; otherwise (an API call, no comparison run yet, or the page changed any of them
        since) the direct side is computed again."""
        from rge_demo.analysis.compare import _side

        k = check_int(k, "k", 1, MAX_K)
        gallery = self.gallery(gallery_name, session_key)
        target_id = self.check_target(gallery, target_id)
        rationale = check_text(rationale, "rationale")
        if not rationale:
            raise UserError("the rationale is empty: write one, or run the comparison again")
        inp = self.make_input(image, text, instruction)
        loaded = self.model(model_name)
        encoder, index = loaded.encoder, self.index(gallery.name, model_name, session_key=session_key)
        ids = {it.id for it in index.items}
        query = _query_key(loaded, gallery, inp, k, target_id)
        direct = getattr(previous, "direct", None)
        if (direct is None or getattr(previous, "query", None) != query
                or any(h.item.id not in ids for h in direct.hits)):
            t0 = time.perf_counter()
            direct = _side(index, encoder.direct([inp])[0], k, target_id, time.perf_counter() - t0)
        c = reembed(encoder, index, inp, rationale, Comparison(direct=direct, done=True), k, target_id,
                    model=loaded.name)
        c.query = query
        return c

    @staticmethod
    def check_target(gallery: Gallery, target_id) -> str | None:
        """The "right answer" of a query: None, or the id of an item of ``gallery``."""
        target_id = check_text(target_id, "right answer", 500) or None
        if target_id is not None and target_id not in gallery:
            raise UserError(f"the right answer {target_id!r} is not in gallery {gallery.name!r}")
        return target_id

    def search(self, gallery_name: str, image, text: str, instruction: str, k: int = 5,
               reason: bool = False, model_name: str | None = None, session_key: str | None = None) -> dict:
        """One query, one mode: ranked hits as plain dicts (for the API), and a note when the gallery
        has fewer than ``k`` items."""
        k = check_int(k, "k", 1, MAX_K)
        gallery = self.gallery(gallery_name, session_key)
        inp = self.make_input(image, text, instruction)
        encoder = self.model(model_name).encoder
        index = self.index(gallery.name, model_name, session_key=session_key)
        rationale = ""
        if reason:
            result = encoder.reason([inp])[0]
            vector, rationale = result.vector, result.rationale
        else:
            vector = encoder.direct([inp])[0]
        hits = index.search(vector[None, :], k)[0]
        return {"rationale": rationale, "note": k_note(k, len(index.items)),
                "hits": [{"rank": h.rank, "id": h.item.id, "label": h.item.label or h.item.text,
                          "score": round(h.score, 4)} for h in hits]}

    # -- queries of a gallery in both modes ------------------------------------------------------
    def query_vectors(self, gallery_name: str, model_name: str | None = None,
                      session_key: str | None = None) -> QueryVectors:
        loaded = self.model(model_name)
        gallery = self.gallery(gallery_name, session_key)
        key = (loaded.fingerprint, gallery.name)

        def build() -> QueryVectors:
            inputs = [query_input(gallery, q) for q in gallery.queries]
            results = loaded.encoder.reason(inputs)
            return QueryVectors(
                direct=loaded.encoder.direct(inputs),
                reason=np.stack([r.vector for r in results]) if results else np.zeros((0, 1), np.float32),
                rationales=[r.rationale for r in results], tokens=[r.tokens for r in results])

        return self._queries.get(key, build)

    # -- Explore (rge_demo.app.explore) -----------------------------------------------------------
    def projection(self, gallery_name: str, model_name: str | None = None, method: str = "umap",
                   session_key: str | None = None) -> Projection:
        """Gallery items plus the gallery's queries in both modes, in one shared 2-D map (cached).

        UMAP compiles on first use (~15 s): until the background warm-up is done, PCA is used.
        """
        return self.maps.get(self, gallery_name, model_name, method, session_key)

    def neighbours(self, projection: Projection, point: int, k: int = 5) -> list[tuple[PointInfo, float]]:
        """The ``k`` nearest gallery items of a point, by cosine in the full embedding space."""
        return explore.neighbours(projection, point, k)

    # -- Failures ----------------------------------------------------------------------------------
    @functools.cached_property
    def failure_runs(self):
        """Shared runs and each session's own gallery runs, gallery evaluation, links to a case
        (:mod:`rge_demo.app.failure_runs`)."""
        from rge_demo.app.failure_runs import FailureRuns

        return FailureRuns(self)

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
        """Cases of a saved run pair, image paths made absolute (re-read when its files change)."""
        runs = self.saved_runs()
        if not run:
            raise UserError("choose a saved run first")
        if not isinstance(run, str) or run not in runs:
            raise UserError(f"no saved run {run!r}; available: {sorted(runs) or 'none'}")
        return self.failure_runs.read(run, runs[run][0].parent)

    def run_evaluation(self, tasks: list[str], split: str, n: int, model_name: str | None = None,
                       progress: Callable[[str, int, int], None] | None = None,
                       session_key: str | None = None) -> tuple[str, list]:
        """Evaluate a model on world test splits in both modes, save the runs, return (run name, cases).
        A run of a shared model is shared; one of a model only this session sees (one it fine-tuned or
        loaded from a folder) is the session's alone, like the model."""
        from rge_demo.analysis.evaluate import world_tasks

        if split not in ("ind", "ood", "all"):
            raise UserError(f"split must be ind, ood or all, got {split!r}")
        n = check_int(n, "queries per task", 1, 500)
        tasks = self.check_tasks(tasks)
        loaded = self.model(model_name)
        eval_tasks = world_tasks(tasks or None, splits=("ind", "ood") if split == "all" else (split,), n=n)
        return self.failure_runs.save_evaluation(loaded, eval_tasks, self._world_run_name(loaded.name, tasks, split, n),
                                                 session_key, progress=progress)

    @staticmethod
    def check_tasks(tasks) -> list[str]:
        """World task names from a request (None or [] means all of them), each known, no repeats."""
        if tasks is None or tasks == "":
            return []
        if isinstance(tasks, str):
            tasks = [tasks]
        if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
            raise UserError("tasks must be a list of world task names")
        known = world_task_names()
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise UserError(f"unknown world task {unknown[0]!r}; choose from {', '.join(known)}")
        return sorted(set(tasks))

    @staticmethod
    def _world_run_name(model: str, tasks: list[str], split: str, n: int) -> str:
        """A world run's name: the model, its tasks, split and size (a number follows when it is taken)."""
        if not tasks or len(tasks) == len(world_task_names()):
            what = "all-tasks"
        else:
            what = "+".join(tasks)
            if len(what) > 60:
                what = f"{tasks[0]}+{len(tasks) - 1}-more"
        return f"{model}-{what}-{split}-{n}"

    # -- tours ---------------------------------------------------------------------------------
    @functools.cached_property
    def tours(self) -> dict:
        """The guided tours (assets/tours), gentlest first: {id: Tour}."""
        from rge_demo.analysis.tours import load_tours

        order = ("helps", "hurts", "hallucination", "both")
        found = load_tours(TOURS_DIR) if TOURS_DIR.is_dir() else []
        found.sort(key=lambda t: next((i for i, k in enumerate(order) if k in t.id), len(order)))
        return {t.id: t for t in found}

    def tour(self, tour_id):
        if not tour_id:
            raise UserError("open a tour first: pick one in the Tour list")
        if not isinstance(tour_id, str) or tour_id not in self.tours:
            raise UserError(f"no tour {tour_id!r}; available: {', '.join(self.tours) or 'none'}")
        return self.tours[tour_id]

    def tour_stop(self, tour_id, stop) -> tuple:
        """(tour, 1-based stop number, the stop's case, its explanation)."""
        from rge_demo.analysis.failures import cases_by_id
        from rge_demo.analysis.tours import tour_stop

        t = self.tour(tour_id)
        stop = check_int(stop, "stop", 1, max(1, len(t.stops)))
        case, explanation = tour_stop(t, stop - 1, cases_by_id(self.load_cases(t.model)))
        return t, stop, case, explanation

    def replay_stop(self, tour_id, stop, model_name: str | None = None) -> dict:
        """Stop ``stop`` (1-based) of a tour run again with a model: :meth:`replay_case` plus the tour."""
        t, stop, case, _ = self.tour_stop(tour_id, stop)
        info = self.failure_runs.info(t.model)  # the tour's run: its world seed and token budget
        return {**self.replay_case(case, model_name, seed=info.get("seed", 0), max_new_tokens=info.get("max_new_tokens")),
                "tour": t.id, "tour_model": t.model, "stop": stop}

    def replay_case(self, case, model_name: str | None = None, seed: int = 0, max_new_tokens: int | None = None) -> dict:
        """Run one saved world case again with another model, in both modes (a tour's before/after), under
        its run's conditions: ``seed``, the world seed the query is drawn again from, and the token budget
        (``None``: the model's)."""
        import dataclasses

        from rge_demo.analysis.evaluate import evaluate, world_tasks

        try:
            task, split, number = case.query_id.rsplit("-", 2)
            full = world_tasks([task], (split,), n=int(number) + 1, seed=int(seed))[0]
            index = int(number)
        except (ValueError, KeyError):
            raise UserError(f"case {case.query_id!r} is not a synthetic-world test query: it cannot be replayed") from None
        one = dataclasses.replace(full, queries=[full.queries[index]])
        again = one.queries[0]
        saved = (case.text, case.instruction, case.meta or None)
        if (again.item.text, again.item.instruction, json.loads(json.dumps(again.facts)) or None) != saved:
            raise UserError(f"case {case.query_id!r} cannot be drawn again from the world with seed {seed}: "
                            "the saved query differs, so it cannot be replayed")
        loaded = self.model(model_name)
        now = {mode: evaluate(loaded.encoder, [one], mode=mode, model_name=loaded.name,
                              max_new_tokens=max_new_tokens).cases[0]
               for mode in ("direct", "reason")}
        return {"model": loaded.name, "direct_rank": now["direct"]["rank"], "reason_rank": now["reason"]["rank"],
                "rationale": now["reason"]["rationale"], "before_direct_rank": case.direct_rank,
                "before_reason_rank": case.reason_rank}
