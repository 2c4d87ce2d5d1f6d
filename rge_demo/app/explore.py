"""The Explore tab's service: a gallery's items and queries (both modes) on one map, every point's
fields to colour and size by, search, and the payload the map component draws.

A :class:`MapView` is built once per (model, gallery, method) and cached; changing the colour or
the size field only restyles it (:func:`style`), and the projection itself is cached on disk by
:class:`rge_demo.analysis.projection.ProjectionCache`. :func:`warm_in_background` computes the
sample galleries' maps off the request path when the app starts.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import secrets
import threading
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

from rge_demo.analysis import projection as P
from rge_demo.data.world import mention_check, scene_facts
from rge_demo.errors import RGEUserError

log = logging.getLogger(__name__)

#: Fields a point can be coloured by (categorical) or sized by (numeric, "none" = one size).
COLOUR_FIELDS = ("label", "kind", "task", "split", "outcome", "rank change", "hallucination", "rationale length")
SIZE_FIELDS = ("none", "rank change", "rationale length")
NUMERIC_FIELDS = ("rank change", "rationale length")
KIND_NAMES = {"item": "gallery item", "query-direct": "query, direct", "query-reason": "query, reasoning"}
MAX_HOVER_THUMBNAILS = 2000  # beyond this many images the hover shows text only (payload size)
MAX_ARROWS = 1000
MAX_GRID = 200


class ExploreError(RGEUserError, ValueError):
    """A bad choice on the Explore tab (field, point, search)."""


@dataclass
class PointInfo:
    """What a projected point stands for, with every field the map can colour by."""

    kind: str  # item | query-direct | query-reason
    id: str
    label: str  # an item's label; a query's right answer
    image: str | None
    text: str
    correct: bool | None  # queries: is the right answer ranked first in this mode
    rationale: str = ""
    task: str = ""
    split: str = ""
    rank: int | None = None  # queries: the right answer's rank in this mode (1 = first)
    rank_change: int | None = None  # queries: direct rank - reasoning rank (> 0: reasoning moved it up)
    hallucinations: list[str] | None = None  # reasoning points of world scenes: things the scene lacks
    tokens: int | None = None  # reasoning points: rationale tokens

    @property
    def outcome(self) -> str:
        return "-" if self.correct is None else "right" if self.correct else "wrong"

    def value(self, name: str):
        """The point's value of one of :data:`COLOUR_FIELDS` (None: not defined for this point)."""
        if name == "hallucination":
            return None if self.hallucinations is None else "hallucinates" if self.hallucinations else "clean"
        return {"label": self.label, "kind": KIND_NAMES[self.kind], "task": self.task or "-",
                "split": self.split or "-", "outcome": self.outcome, "rank change": self.rank_change,
                "rationale length": self.tokens}[name]


@dataclass
class Projection:
    """A gallery's map: 2-D coordinates, the points they stand for, and the full-space vectors."""

    result: P.ProjectionResult
    points: list[PointInfo]
    vectors: np.ndarray  # (P, D), the full-space vectors in point order
    gallery: str = ""
    model: str = ""
    arrows: list[tuple[int, int]] = field(default_factory=list)  # (direct point, reasoning point) per query


def _rank(scores: np.ndarray, target: int) -> int:
    return int((scores > scores[target]).sum()) + 1


def _facts(meta: dict) -> dict | None:
    try:
        return scene_facts(meta) if meta and "objects" in meta else None
    except (KeyError, TypeError, ValueError):  # not a world scene
        return None


def item_names(items) -> list[str]:
    """Each item's shown name: its label (or text), with its task when items of another task share it
    ("two (count)", "two (chart_diff)"), as Compare's answer picker names them."""
    names = [it.label or it.text or it.id for it in items]
    tasks = [str(it.meta.get("task", "")) if it.meta else "" for it in items]
    tasks_of: dict[str, set[str]] = {}
    for n, t in zip(names, tasks):  # one pass: a map of 100k items must not compare every pair
        tasks_of.setdefault(n, set()).add(t)
    return [f"{n} ({t})" if len(tasks_of[n]) > 1 and t else n for n, t in zip(names, tasks)]


def build_projection(demo, gallery_name: str, model_name: str | None = None, method: str = "umap",
                     session_key: str | None = None) -> Projection:
    """Items plus the gallery's queries in both modes, in one shared 2-D map (see Demo.projection)."""
    if method not in P.METHODS:
        raise ExploreError(f"the projection method must be one of {', '.join(P.METHODS)}, got {method!r}")
    if method == "umap" and not P.umap_ready():
        P.warm_umap_in_background()
        method = "pca"
    loaded = demo.model(model_name)
    gallery = demo.gallery(gallery_name, session_key)
    index = demo.index(gallery.name, model_name, session_key=session_key)
    item_ids = {it.id for it in index.items}
    keep = [i for i, q in enumerate(gallery.queries) if q.target_id in item_ids]  # queries with a right answer
    queries = [gallery.queries[i] for i in keep]
    qv = demo.query_vectors(gallery.name, model_name, session_key=session_key)
    direct, reason = qv.direct[keep], qv.reason[keep]
    result = demo._projections.get_or_compute(index.matrix, direct if keep else None, reason if keep else None,
                                              fingerprint=loaded.fingerprint, gallery=gallery.name, method=method)
    row = {it.id: i for i, it in enumerate(index.items)}
    names = item_names(index.items)
    points = [PointInfo("item", it.id, name, str(gallery.image_path(it.image)) if it.image else None,
                        it.text, None, task=str(it.meta.get("task", "")) if it.meta else "")
              for it, name in zip(index.items, names)]
    ranks = {}
    for kind, vectors in (("query-direct", direct), ("query-reason", reason)):
        scores = vectors @ index.matrix.T if len(keep) else np.zeros((0, len(index.items)))
        ranks[kind] = [_rank(s, row[q.target_id]) for s, q in zip(scores, queries)]
    for kind in ("query-direct", "query-reason"):
        for j, q in enumerate(queries):
            i = keep[j]
            reasoning = kind == "query-reason"
            facts = _facts(q.meta) if reasoning else None
            points.append(PointInfo(
                kind, q.id, names[row[q.target_id]],
                str(gallery.image_path(q.image)) if q.image else None, q.text, ranks[kind][j] == 1,
                rationale=qv.rationales[i] if reasoning else "", task=q.task or q.meta_task or gallery.meta_task,
                split=q.split, rank=ranks[kind][j], rank_change=ranks["query-direct"][j] - ranks["query-reason"][j],
                hallucinations=mention_check(qv.rationales[i], facts) if facts is not None else None,
                tokens=qv.tokens[i] if reasoning else None))
    n, q = len(index.items), len(queries)
    moved = ~P.unmoved(direct, reason)  # a query reasoning did not move gets no arrow (one point: P.project)
    return Projection(result, points, np.concatenate([index.matrix, direct, reason]) if q else index.matrix,
                      gallery=gallery.name, model=loaded.name,
                      arrows=[(n + j, n + q + j) for j in range(q) if moved[j]])


def neighbours(projection: Projection, point: int, k: int = 5) -> list[tuple[PointInfo, float]]:
    """The ``k`` nearest gallery items of a point, by cosine in the full embedding space, and any more
    that tie with the k-th at the 3 decimals shown (QA: "three (count)" was listed 5th, unmarked, and its
    twin "three (chart_diff)" left out, where Compare shows both "=5")."""
    if not isinstance(point, (int, np.integer)) or not 0 <= point < len(projection.points):
        raise ExploreError(f"no point {point} in this map ({len(projection.points)} points)")
    n_items = projection.result.n_items
    scores = projection.vectors[:n_items] @ projection.vectors[point]
    order = [i for i in np.argsort(-scores, kind="stable") if i != point]
    last = f"{scores[order[k - 1]]:.3f}" if 0 < k <= len(order) else None
    ties = itertools.takewhile(lambda i: f"{scores[i]:.3f}" == last, order[k:])  # contiguous: the order is by score
    return [(projection.points[i], float(scores[i])) for i in [*order[:k], *ties]]


def search(projection: Projection, text: str) -> list[int]:
    """Points whose label, text, id or rationale hold every word of ``text``, in any order
    (case-insensitive), as the Failures tab's search does; none for an empty text."""
    words = (text or "").lower().split()
    if not words:
        return []
    hays = ("\n".join((p.label, p.text or "", p.id, p.rationale)).lower() for p in projection.points)
    return [i for i, hay in enumerate(hays) if all(w in hay for w in words)]


def check_points(projection: Projection, indices) -> list[int]:
    """A selection from the page: point numbers, each in range (duplicates dropped, order kept)."""
    try:
        out = list(dict.fromkeys(int(i) for i in (indices or [])))
    except (TypeError, ValueError):
        raise ExploreError(f"a selection is a list of point numbers, got {indices!r}") from None
    bad = [i for i in out if not 0 <= i < len(projection.points)]
    if bad:
        raise ExploreError(f"no point {bad[0]} in this map ({len(projection.points)} points)")
    return out


# ------------------------------------------------------------------------------- map payloads
@lru_cache(maxsize=8192)
def small_thumbnail(path: str, size: int = 64) -> str:
    """A PNG data URI of an image file shrunk to at most ``size`` pixels a side ("" if unreadable)."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > 64_000_000:
                return ""
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError):
        return ""
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def payload(projection: Projection) -> dict:
    """What the map component draws: coordinates, kinds, hover texts, thumbnails and arrows."""
    pts = projection.points
    with_images = sum(p.image is not None for p in pts)
    thumbs = with_images <= MAX_HOVER_THUMBNAILS
    hover = []
    for p in pts:
        line = f"{KIND_NAMES[p.kind]}: {p.text or p.label}"
        if p.kind != "item":
            line += f" | right answer {p.label}, rank {p.rank}"
        if p.rationale:
            line += f" | {p.rationale[:120]}"
        hover.append(line)
    coords = np.round(projection.result.coords.astype(np.float64), 4)
    return {"x": coords[:, 0].tolist(), "y": coords[:, 1].tolist(),
            "kind": [P.KINDS.index(p.kind) for p in pts], "hover": hover,
            "thumb": [small_thumbnail(p.image) if thumbs and p.image else "" for p in pts],
            "arrows": [list(a) for a in projection.arrows[:MAX_ARROWS]],
            "title": f"{projection.result.method.upper()} of {projection.gallery} ({projection.model}): "
                     f"{projection.result.n_items} items, {projection.result.n_queries} queries",
            "n": len(pts)}


def style(projection: Projection | None, colour_by: str = "label", size_by: str = "none") -> dict:
    """Per-point colours and sizes plus the colour key, for a field of :data:`COLOUR_FIELDS`."""
    if colour_by not in COLOUR_FIELDS:
        raise ExploreError(f"colour by one of {', '.join(COLOUR_FIELDS)}, got {colour_by!r}")
    if size_by not in SIZE_FIELDS:
        raise ExploreError(f"size by one of {', '.join(SIZE_FIELDS)}, got {size_by!r}")
    if projection is None:  # only the choices checked
        return {}
    values = [p.value(colour_by) for p in projection.points]
    if colour_by in NUMERIC_FIELDS:
        colours, key = P.numeric_colours(values, diverging=colour_by == "rank change")
    else:
        colours, key = P.categorical_colours(["-" if v is None else str(v) for v in values])
    # The grey group is named for what it holds (QA: "- (20)"): the gallery items, which have no outcome,
    # rank or rationale, and any query without a value for the field.
    blank = [p.kind for p, v in zip(projection.points, values) if v is None or v == "-"]
    if blank:
        name = "gallery items (no value)" if set(blank) == {"item"} else "no value"
        key = [[name, *rest] if label == "-" else [label, *rest] for label, *rest in key]
    sizes = [8.0] * len(values)
    if size_by != "none":
        raw = np.array([np.nan if p.value(size_by) is None else abs(float(p.value(size_by)))
                        for p in projection.points])
        top = np.nanmax(raw) if np.isfinite(raw).any() else 0.0
        sizes = [6.0 if np.isnan(v) else 6.0 + 14.0 * (v / top if top > 0 else 0.0) for v in raw]
    return {"color": colours, "size": [round(s, 1) for s in sizes], "key": key, "colour_by": colour_by}


def grid(projection: Projection, indices: list[int], limit: int = MAX_GRID) -> list[dict]:
    """The grid's cells for a selection: one dict per point (the first ``limit``)."""
    cells = []
    for i in indices[:limit]:
        p = projection.points[i]
        cells.append({"point": i, "kind": KIND_NAMES[p.kind], "id": p.id, "label": p.label, "text": p.text or "",
                      "image": p.image, "outcome": p.outcome, "rank": p.rank, "rank_change": p.rank_change,
                      "rationale": p.rationale, "hallucinations": p.hallucinations})
    return cells


class Payloads:
    """Large map payloads kept server-side under random tokens: the page fetches them once instead
    of carrying megabytes in a component's props (which the page re-serialises on every update)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._data: dict[str, dict] = {}
        self._lock = threading.Lock()

    def put(self, data: dict) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self._data[token] = data
            while len(self._data) > self.capacity:
                self._data.pop(next(iter(self._data)))
        return token

    def get(self, token) -> dict:
        with self._lock:
            data = self._data.get(token) if isinstance(token, str) else None
        if data is None:
            raise ExploreError("this map has expired: press Project again")
        return data


# ----------------------------------------------------------------------------- off the request path
class MapCache:
    """Built maps per (model fingerprint, gallery, method, session): a click or a restyle never re-projects."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self._maps: dict[tuple, Projection] = {}
        self._lock = threading.Lock()

    def get(self, demo, gallery: str, model_name: str | None, method: str, session_key: str | None) -> Projection:
        loaded = demo.model(model_name)
        key = (loaded.fingerprint, gallery, method, session_key if gallery not in demo.galleries else None)
        with self._lock:
            if key in self._maps:
                return self._maps[key]
        proj = build_projection(demo, gallery, model_name, method, session_key)
        if proj.result.method != method:  # PCA while UMAP warms up: not cached as UMAP
            return proj
        with self._lock:
            self._maps[key] = proj
            while len(self._maps) > self.capacity:
                self._maps.pop(next(iter(self._maps)))
        return proj


def warm_in_background(demo, model_name: str | None = None, method: str = "umap") -> threading.Thread:
    """Compute the sample galleries' maps in a daemon thread (UMAP warm-up first)."""

    def run():
        try:
            if method == "umap":
                P.warm_umap_in_background()
                P.wait_umap(120)
            for name in sorted(demo.galleries):
                demo.maps.get(demo, name, model_name, method if P.umap_ready() else "pca", None)
            log.info("explore maps ready for %d galleries", len(demo.galleries))
        except Exception as e:  # noqa: BLE001 - the tab computes on demand instead
            log.warning("explore maps not precomputed: %s", e)

    t = threading.Thread(target=run, name="explore-maps", daemon=True)
    t.start()
    return t
