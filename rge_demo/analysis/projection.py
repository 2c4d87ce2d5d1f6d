"""A shared 2-D map of gallery items and queries in both modes (the Explore tab).

All points (items (N, D), direct queries (Q, D), reasoning queries (Q, D)) are projected together,
so a query's direct and reasoning points are comparable and an arrow from one to the other shows
what reasoning did to it. UMAP (umap-learn, cosine metric, seeded) is the default; PCA (numpy SVD
of the L2-normalised, centred vectors) is the fallback and the method for tiny sets (< 5 points).

UMAP fits run in a worker process (numba's compiled code holds the GIL). Its first fit JIT-compiles
for ~15 s: call :func:`warm_umap_in_background` at start-up and use PCA until :func:`umap_ready`.
:class:`ProjectionCache` keeps projections on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from rge_demo.analysis import umap_worker
from rge_demo.data.items import atomic_write_bytes
from rge_demo.embedding.index import l2_normalize, top_k

log = logging.getLogger(__name__)

KINDS = ("item", "query-direct", "query-reason")
METHODS = ("umap", "pca")
MIN_UMAP_POINTS = 5
CACHE_VERSION = 2  # 2: a query reasoning did not move sits on one point
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd", "#e6550d")
CORRECT_COLOURS = {"right": "#2ca02c", "wrong": "#d62728", "-": "#b0b0b0"}


@dataclass
class ProjectionResult:
    """coords (N + Qd + Qr, 2) float32 in the order items, direct queries, reasoning queries;
    ``kinds`` (same length) names each point's kind; ``method`` is the one actually used."""

    coords: np.ndarray
    kinds: np.ndarray  # (P,) str, values in KINDS
    method: str
    seed: int = 0

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def of(self, kind: str) -> np.ndarray:
        """(n_kind, 2) coordinates of one kind of point."""
        return self.coords[self.kinds == kind]

    @property
    def n_items(self) -> int:
        return int((self.kinds == "item").sum())

    @property
    def n_queries(self) -> int:
        return int(max((self.kinds == "query-direct").sum(), (self.kinds == "query-reason").sum()))


def _blocks(items, queries_direct, queries_reason) -> tuple[np.ndarray, np.ndarray]:
    """Stack the given arrays (None = mode absent) -> vectors (P, D) float32, kinds (P,)."""
    mats, kinds = [], []
    for kind, x in zip(KINDS, (items, queries_direct, queries_reason)):
        if x is None:
            continue
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"{kind} vectors must be 2-D (n, D), got shape {x.shape}")
        mats.append(x)
        kinds += [kind] * len(x)
    dims = {m.shape[1] for m in mats if len(m)}
    if len(dims) > 1:
        raise ValueError(f"vectors of different dimensions {sorted(dims)} cannot share a projection")
    if not mats or not any(len(m) for m in mats):
        return np.zeros((0, 2), np.float32), np.array([], dtype=object)
    return np.concatenate([m for m in mats if len(m)]), np.array(kinds, dtype=object)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """x (P, D) -> (P, 2): centred, top two right singular vectors, signs fixed (largest |loading| > 0)."""
    x = x - x.mean(axis=0, keepdims=True)
    out = np.zeros((len(x), 2), np.float32)
    if len(x) < 2:
        return out
    _, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    for j in range(min(2, len(s))):
        if s[j] <= 1e-9 * max(s[0], 1e-30):
            break
        v = vt[j] * np.sign(vt[j][np.argmax(np.abs(vt[j]))])
        out[:, j] = x @ v
    return out


_worker = umap_worker.UmapWorker()


def _umap_2d(x: np.ndarray, seed: int) -> np.ndarray:
    """A UMAP fit in the worker process (:mod:`rge_demo.analysis.umap_worker`): never in this one."""
    return _worker.fit(x, seed)


def project(items: np.ndarray, queries_direct: np.ndarray | None, queries_reason: np.ndarray | None,
            method: str = "umap", seed: int = 0) -> ProjectionResult:
    """One 2-D projection of items (N, D), direct queries (Q, D) and reasoning queries (Q, D).

    Rows are L2-normalised first (cosine geometry). UMAP: n_neighbors = min(15, P - 1), cosine
    metric, ``random_state=seed`` (deterministic). PCA for fewer than 5 points or when umap-learn
    cannot be imported (logged). Either query array may be None.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x, kinds = _blocks(items, queries_direct, queries_reason)
    if len(x) == 0:
        return ProjectionResult(x, kinds, "pca", seed)
    x = l2_normalize(x, what="projection input")
    if method == "umap" and len(x) >= MIN_UMAP_POINTS:
        try:
            return _unmoved_on_one_point(ProjectionResult(_umap_2d(x, seed), kinds, "umap", seed), x)
        except ImportError as e:
            log.warning("umap-learn unavailable (%s); projecting with PCA", e)
    return _unmoved_on_one_point(ProjectionResult(pca_2d(x), kinds, "pca", seed), x)


def unmoved(direct: np.ndarray, reason: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(Q,) bool: the queries whose reasoning vector equals their direct one (reasoning did not move them)."""
    if direct is None or reason is None or len(direct) != len(reason):
        return np.zeros(0 if direct is None else len(direct), dtype=bool)
    return np.abs(np.asarray(direct, np.float32) - np.asarray(reason, np.float32)).max(axis=1, initial=0) <= tol


def _unmoved_on_one_point(result: ProjectionResult, x: np.ndarray) -> ProjectionResult:
    """A query whose two vectors are equal gets one position: UMAP places equal inputs apart, which drew an
    arrow where reasoning moved nothing."""
    direct, reason = result.kinds == "query-direct", result.kinds == "query-reason"
    same = unmoved(x[direct], x[reason])
    if same.any():
        coords = np.array(result.coords, dtype=np.float32)
        coords[np.flatnonzero(reason)[same]] = coords[np.flatnonzero(direct)[same]]
        result.coords = coords
    return result


# ----------------------------------------------------------------------------- warming UMAP
_warm = {"state": "idle", "thread": None, "error": ""}  # idle | warming | ready | failed
_warm_lock = threading.Lock()
_warm_done = threading.Event()


def _warm_up() -> None:
    try:
        rng = np.random.default_rng(0)
        _umap_2d(rng.normal(size=(24, 8)).astype(np.float32), 0)
        _warm["state"] = "ready"
        log.info("umap warmed up")
    except Exception as e:  # noqa: BLE001 - the app keeps working on PCA
        _warm.update(state="failed", error=str(e))
        log.warning("umap warm-up failed (%s); projections will use PCA", e)
    finally:
        _warm_done.set()


def warm_umap_in_background() -> threading.Thread | None:
    """Import umap and run one tiny fit in a daemon thread (numba compiles once per process).

    Returns the thread, or None if warming already started. Never blocks the caller.
    """
    with _warm_lock:
        if _warm["state"] != "idle":
            return None
        _warm["state"] = "warming"
        t = threading.Thread(target=_warm_up, name="umap-warm-up", daemon=True)
        _warm["thread"] = t
        t.start()
        return t


def umap_ready() -> bool:
    """True once a UMAP fit has run in this process (later fits take seconds, not ~15 s)."""
    return _warm["state"] == "ready"


def umap_state() -> str:
    """"idle", "warming", "ready" or "failed"."""
    return _warm["state"]


def wait_umap(timeout: float | None = None) -> bool:
    """Wait for a started warm-up; True when UMAP is ready."""
    if _warm["state"] != "idle":
        _warm_done.wait(timeout)
    return umap_ready()


# ------------------------------------------------------------------------------------ cache
def vectors_hash(*arrays: np.ndarray | None) -> str:
    """sha256 over dtype, shape and bytes of each array (None counts as absent)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none|")
            continue
        a = np.ascontiguousarray(a, dtype=np.float32)
        h.update(f"{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class ProjectionCache:
    """Projections on disk (``root/<sha256(key)[:32]>.npz``, no pickle, atomic) and in memory.

    Key: model fingerprint, gallery name, mode set, method, seed and a content hash of the
    vectors. A file that does not load or holds another key is logged, deleted and recomputed.
    """

    def __init__(self, root: str | Path, memory_items: int = 16):
        self.root = Path(root)
        self.memory_items = memory_items
        self._memory: OrderedDict[str, ProjectionResult] = OrderedDict()
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0}

    @staticmethod
    def key(fingerprint: str, gallery: str, modes: Sequence[str], method: str, seed: int, content: str) -> str:
        return json.dumps([CACHE_VERSION, fingerprint, gallery, sorted(modes), method, int(seed), content])

    def path(self, key: str) -> Path:
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"

    def get_or_compute(self, items: np.ndarray, queries_direct: np.ndarray | None,
                       queries_reason: np.ndarray | None, *, fingerprint: str, gallery: str,
                       method: str = "umap", seed: int = 0) -> ProjectionResult:
        """The cached projection of these vectors, or :func:`project` (then stored)."""
        modes = [m for m, q in (("direct", queries_direct), ("reason", queries_reason)) if q is not None]
        key = self.key(fingerprint, gallery, modes, method, seed, vectors_hash(items, queries_direct, queries_reason))
        if key in self._memory:
            self._memory.move_to_end(key)
            self.stats["hits"] += 1
            return self._memory[key]
        result = self._load(key)
        if result is None:
            self.stats["misses"] += 1
            result = project(items, queries_direct, queries_reason, method=method, seed=seed)
            self._save(key, result)
        else:
            self.stats["hits"] += 1
        self._memory[key] = result
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return result

    def _load(self, key: str) -> ProjectionResult | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                stored = z["key"].astype(np.uint8).tobytes().decode("utf-8")
                coords, kinds = z["coords"], z["kinds"]
                method = z["method"].astype(np.uint8).tobytes().decode("utf-8")
            if stored != key:
                raise ValueError("file holds another key")
            if coords.dtype != np.float32 or coords.ndim != 2 or coords.shape[1] != 2:
                raise ValueError(f"bad coords {coords.dtype}{coords.shape}")
            if len(kinds) != len(coords) or not np.isfinite(coords).all() or kinds.max(initial=0) >= len(KINDS):
                raise ValueError("inconsistent or non-finite content")
        except Exception as e:  # noqa: BLE001 - anything wrong with the file: recompute
            log.warning("projection cache: rejecting %s (%s); recomputing", path, e)
            path.unlink(missing_ok=True)
            self.stats["corrupt"] += 1
            return None
        seed = json.loads(key)[5]
        return ProjectionResult(coords, np.array([KINDS[k] for k in kinds], dtype=object), method, seed)

    def _save(self, key: str, result: ProjectionResult) -> None:
        buf = io.BytesIO()
        np.savez(buf, coords=result.coords.astype(np.float32),
                 kinds=np.array([KINDS.index(k) for k in result.kinds], dtype=np.uint8),
                 key=np.frombuffer(key.encode(), dtype=np.uint8),
                 method=np.frombuffer(result.method.encode(), dtype=np.uint8))
        atomic_write_bytes(self.path(key), buf.getvalue())


# ---------------------------------------------------------------------------- figure, frame
def _per_point(values, n: int, name: str, default) -> list:
    if values is None:
        return [default] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} points")
    return values


def _correct_word(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else "right" if bool(v) else "wrong"


def projection_frame(result: ProjectionResult, labels: Sequence[str], correct: Sequence | None = None,
                     ids: Sequence[str] | None = None, hover_texts: Sequence[str] | None = None) -> pd.DataFrame:
    """Columns x, y, kind, label, correct ("right" / "wrong" / "-" for items), id, hover; one row per
    point in ``result`` order, for gradio's ``gr.ScatterPlot`` (whose select event gives the row)."""
    n = len(result)
    labels = [str(v) for v in _per_point(labels, n, "labels", "")]
    return pd.DataFrame({
        "x": result.coords[:, 0], "y": result.coords[:, 1], "kind": list(result.kinds), "label": labels,
        "correct": [_correct_word(v) for v in _per_point(correct, n, "correct", None)],
        "id": [str(v) for v in _per_point(ids, n, "ids", "")],
        "hover": _per_point(hover_texts, n, "hover_texts", None) if hover_texts is not None else labels,
    })


_SYMBOLS = {"item": "circle", "query-direct": "circle-open", "query-reason": "diamond"}
_NAMES = {"item": "gallery item", "query-direct": "query (direct)", "query-reason": "query (reasoning)"}


def projection_figure(result: ProjectionResult, labels: Sequence[str], colour_by: str = "label",
                      hover_texts: Sequence[str] | None = None, thumbnails: Sequence | None = None,
                      correct: Sequence | None = None) -> go.Figure:
    """Plotly scatter: items as dots, direct queries as rings, reasoning queries as diamonds, and an
    arrow from each query's direct point to its reasoning point (the i-th direct and i-th reasoning
    query are the same query). ``labels``/``hover_texts``/``correct`` are per point (``result``
    order); ``thumbnails``: per item, PIL images or image URLs (None to skip), drawn at the item."""
    if colour_by not in ("label", "correct"):
        raise ValueError(f"colour_by must be 'label' or 'correct', got {colour_by!r}")
    frame = projection_frame(result, labels, correct, None, hover_texts)
    frame["i"] = np.arange(len(frame))
    groups = sorted(frame["label"].unique()) if colour_by == "label" else list(CORRECT_COLOURS)
    colour = ({g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)} if colour_by == "label"
              else CORRECT_COLOURS)
    column = "label" if colour_by == "label" else "correct"
    fig = go.Figure()
    for kind in KINDS:
        for g in groups:
            rows = frame[(frame["kind"] == kind) & (frame[column] == g)]
            if rows.empty:
                continue
            fig.add_trace(go.Scatter(
                x=rows["x"], y=rows["y"], mode="markers", name=f"{g} ({_NAMES[kind]})" if kind != "item" else g,
                legendgroup=g, customdata=rows["i"], hovertext=rows["hover"], hoverinfo="text",
                marker={"symbol": _SYMBOLS[kind], "color": colour[g], "size": 7 if kind == "item" else 11,
                        "line": {"width": 1.5 if kind != "item" else 0, "color": colour[g]}}))
    direct, reason = result.of("query-direct"), result.of("query-reason")
    for (x0, y0), (x1, y1) in zip(direct, reason):
        if (x0, y0) == (x1, y1):  # reasoning did not move it
            continue
        fig.add_annotation(x=float(x1), y=float(y1), ax=float(x0), ay=float(y0), xref="x", yref="y",
                           axref="x", ayref="y", showarrow=True, arrowhead=2, arrowsize=1, arrowwidth=1,
                           arrowcolor="rgba(80,80,80,0.55)", text="")
    if thumbnails is not None:
        _add_thumbnails(fig, result, thumbnails)
    fig.update_layout(template="plotly_white", margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title=f"{result.method.upper()} of gallery items and queries (arrow: direct -> reasoning)",
                      legend={"itemsizing": "constant"}, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _add_thumbnails(fig: go.Figure, result: ProjectionResult, thumbnails: Sequence, max_images: int = 300) -> None:
    items = result.of("item")
    if len(thumbnails) != len(items):
        raise ValueError(f"thumbnails: {len(thumbnails)} for {len(items)} items")
    if len(items) == 0:
        return
    span = float(max(np.ptp(result.coords[:, 0]), np.ptp(result.coords[:, 1]), 1e-6))
    size = span / 25
    for (x, y), img in list(zip(items, thumbnails))[:max_images]:
        if img is not None:
            fig.add_layout_image(source=img, x=float(x), y=float(y), xref="x", yref="y", sizex=size, sizey=size,
                                 xanchor="center", yanchor="middle", layer="below", opacity=0.9)


# ------------------------------------------------------------------------------ colour keys
#: Colours drawn in their own colour when a label names one ("green square" is drawn green).
NAMED_COLOURS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4", "yellow": "#e0b400",
                 "purple": "#9467bd", "orange": "#ff7f0e", "pink": "#e377c2", "brown": "#8c564b",
                 "grey": "#7f7f7f", "gray": "#7f7f7f", "black": "#222222", "white": "#c8c8c8", "cyan": "#17becf"}
#: Outcome-like values keep fixed, meaningful colours.
FIXED_COLOURS = {"right": "#2ca02c", "wrong": "#d62728", "clean": "#2ca02c", "hallucinates": "#d62728",
                 "-": "#c0c0c0"}
#: Readable categorical colours (Tableau 10, then its lighter half): 20 before "other".
CATEGORICAL = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
               "#9c755f", "#bab0ac", "#a0cbe8", "#ffbe7d", "#ff9d9a", "#86bcb6", "#8cd17d", "#f1ce63",
               "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e")
OTHER = "#dddddd"


def _named_colour(value: str) -> str | None:
    words = re.findall(r"[a-z]+", value.lower())
    found = {NAMED_COLOURS[w] for w in words if w in NAMED_COLOURS}
    return found.pop() if len(found) == 1 else None


def _lab(colour: str) -> np.ndarray:
    """CIE L*a*b* (D65) of a ``#rrggbb`` colour."""
    rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ rgb
    f = (xyz / np.array([0.9505, 1.0, 1.089]))
    f = np.where(f > 0.008856, np.cbrt(f), 7.787 * f + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _alike(a: str, b: str, distance: float = 30.0) -> bool:
    """Whether two ``#rrggbb`` colours are hard to tell apart on a map (CIE76 distance under ``distance``)."""
    return float(np.linalg.norm(_lab(a) - _lab(b))) < distance


def categorical_colours(values: Sequence[str]) -> tuple[list[str], list[list]]:
    """Per-value colours and the key ``[[name, colour, count], ...]`` (most frequent first).

    Values naming exactly one colour word are drawn in that colour, outcomes in fixed colours; the
    rest get readable palette colours by frequency, skipping hues the named ones took ("one" is not
    drawn red beside "red"), and past the palette's colours the rarest share "other".
    """
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    order = sorted(counts, key=lambda v: (-counts[v], v))
    named = {v: FIXED_COLOURS.get(v) or _named_colour(v) for v in order}
    taken = {c for c in named.values() if c}
    colour, palette = {}, iter([c for c in CATEGORICAL if not any(_alike(c, t) for t in taken)])
    for v in order:
        colour[v] = named[v] or next(palette, OTHER)
    key = [[v, colour[v], counts[v]] for v in order if colour[v] != OTHER]
    other = sum(counts[v] for v in order if colour[v] == OTHER)
    if other:
        key.append([f"other ({len([v for v in order if colour[v] == OTHER])} values)", OTHER, other])
    return [colour[v] for v in values], key


def _integer_bins(lo: int, hi: int, bins: int, diverging: bool) -> list[tuple[int, int]]:
    """At most ``bins`` inclusive integer ranges covering lo..hi: one per value when they fit; diverging,
    0 alone in the middle and the two sides split alike."""
    if hi - lo + 1 <= bins:
        return [(v, v) for v in range(lo, hi + 1)]
    if diverging:  # lo == -hi
        side = _integer_bins(1, hi, (bins - 1) // 2, False)
        return [(-b, -a) for a, b in reversed(side)] + [(0, 0)] + side
    starts = sorted({int(np.floor(e)) for e in np.linspace(lo, hi + 1, bins + 1)[:-1]})
    return [(a, b - 1) for a, b in zip(starts, [*starts[1:], hi + 1])]


def numeric_colours(values: Sequence[float | None], diverging: bool = False, bins: int = 7
                    ) -> tuple[list[str], list[list]]:
    """Per-value colours on a sequential (Viridis) or, centred on 0, diverging (RdBu) scale; None
    is grey. The key holds one entry per bin: ``[[range, colour, count], ...]``. Whole numbers (ranks,
    rank changes, token counts) get whole-number bins: "2 .. 4", or one bin per value when few."""
    from plotly.colors import sample_colorscale

    x = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return [FIXED_COLOURS["-"]] * len(x), [["-", FIXED_COLOURS["-"], len(x)]]
    lo, hi = float(finite.min()), float(finite.max())
    if diverging:
        m = max(abs(lo), abs(hi), 1.0)
        lo, hi = -m, m
    if np.all(finite == np.round(finite)):
        ranges = _integer_bins(int(np.floor(lo)), int(np.ceil(hi)), bins, diverging)
        labels = [f"{a}" if a == b else f"{a} .. {b}" for a, b in ranges]
    else:
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
        ranges = list(zip(edges[:-1], edges[1:]))
        labels = [f"{a:.3g} .. {b:.3g}" for a, b in ranges]
    starts = np.array([a for a, _ in ranges], dtype=np.float64)
    n = len(starts)
    scale = "RdBu" if diverging else "Viridis"
    palette = sample_colorscale(scale, [i / max(n - 1, 1) for i in range(n)], colortype="rgb")
    which = np.clip(np.searchsorted(starts, x, side="right") - 1, 0, n - 1)
    colours = [FIXED_COLOURS["-"] if np.isnan(v) else palette[b] for v, b in zip(x, which)]
    # The key lists the bins that hold points; the scale keeps every bin (symmetric about 0 when diverging),
    # so a colour means the same range whatever the data (QA: "-40 .. -29 (0)", "38 .. 41 (0)" were listed).
    counts = [int(((which == b) & np.isfinite(x)).sum()) for b in range(n)]
    key = [[labels[b], palette[b], counts[b]] for b in range(n) if counts[b]]
    if np.isnan(x).any():
        key.append(["-", FIXED_COLOURS["-"], int(np.isnan(x).sum())])
    return colours, key


# ------------------------------------------------------------------------------- neighbours
def neighbours(vectors: np.ndarray, i: int, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows to row ``i`` of vectors (P, D) by cosine in the full space, itself
    excluded -> (indices (k',), scores (k',)), best first, k' = min(k, P - 1)."""
    x = l2_normalize(np.asarray(vectors), what="vectors")
    if not 0 <= i < len(x):
        raise IndexError(f"row {i} out of range for {len(x)} vectors")
    scores, idx = top_k(x[i:i + 1], x, min(k + 1, len(x)))
    keep = idx[0] != i
    return idx[0][keep][:k], scores[0][keep][:k]
