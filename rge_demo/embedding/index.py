"""The gallery index: cosine top-k over a numpy matrix (FAISS for large galleries), and an on-disk embedding cache.

Vectors are L2-normalised float32, so cosine similarity is a dot product. The index is
model-agnostic: it receives an ``embed_fn(items) -> (B, D)`` and calls it only for cache misses.

Search backends (:func:`choose_backend`): galleries under ``Settings.faiss_threshold`` items
(``RGE_FAISS_THRESHOLD``, default 50k) use the exact numpy :func:`top_k`; larger ones a FAISS
index when faiss is installed: exact ``IndexFlatIP`` while items x dim < ``IVF_MIN_SCAN``, IVF
beyond (see ``faiss_index.py``). Ranks (:meth:`GalleryIndex.rank_of`) are always exact, over the full matrix.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rge_demo.data.images import content_hash
from rge_demo.data.items import Gallery, Item, atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_QUERY_CHUNK = 1024  # rows of the (Q, N) score matrix held at once
_LOOKUP_CHUNK = 1024  # cache look-ups between two progress reports
# FAISS galleries whose exact scan reads this many floats per query (items x dim) use IVF, smaller
# ones the exact IndexFlatIP: 100k items at rge-micro's 192 dims, ~9.4k at RGE-3B's 2048 (where an
# exact query takes ~100 ms on one core, see bench/scale.py).
IVF_MIN_SCAN = 100_000 * 192
BACKENDS = ("auto", "numpy", "faiss-flat", "faiss-ivf")

EmbedFn = Callable[[list[Item]], np.ndarray]
Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    pass


# ---------------------------------------------------------------------------------------- ranking


def top_k(queries: np.ndarray, matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product (cosine for L2-normalised inputs).

    queries (Q, D), matrix (N, D) -> scores (Q, k') float32, indices (Q, k') int64, k' = min(k, N),
    best first; equal scores are ordered by lower index, so the result is deterministic.
    """
    queries, matrix = _as_2d(queries), _as_2d(matrix)
    q, n = queries.shape[0], matrix.shape[0]
    k = max(0, min(int(k), n))
    if k == 0 or q == 0:
        return np.zeros((q, k), np.float32), np.zeros((q, k), np.int64)
    out_s = np.empty((q, k), np.float32)
    out_i = np.empty((q, k), np.int64)
    for start in range(0, q, _QUERY_CHUNK):
        scores = queries[start:start + _QUERY_CHUNK] @ matrix.T  # (C, N)
        s, i = _top_k_scores(scores, k)
        out_s[start:start + len(s)], out_i[start:start + len(s)] = s, i
    return out_s, out_i


def _top_k_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of ``scores`` (C, N), ties by lower index."""
    n = scores.shape[1]
    if k < n:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (C, k), unordered
        kth = np.take_along_axis(scores, idx, axis=1).min(axis=1)  # (C,) the k-th best score
        # argpartition picks arbitrarily among scores equal to the k-th: redo those rows exactly
        ambiguous = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
        for r in ambiguous:
            order = np.lexsort((np.arange(n), -scores[r]))  # by score desc, then index asc
            idx[r] = order[:k]
    else:
        idx = np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=-1)  # primary: score desc; secondary: index asc
    idx = np.take_along_axis(idx, order, axis=1)
    return np.take_along_axis(scores, idx, axis=1).astype(np.float32), idx.astype(np.int64)


def rank_of(queries: np.ndarray, matrix: np.ndarray, target_idx: np.ndarray) -> np.ndarray:
    """1-based rank of each query's target: queries (Q, D), matrix (N, D), target_idx (Q,) -> (Q,).

    rank = 1 + number of candidates scoring strictly higher than the target (ties favour it). A candidate
    whose vector equals the target's is a tie whatever its computed score: a matrix product can round two
    equal rows apart by their place in it (QA: the right "two" ranked 2nd behind its twin, scores equal to
    6 decimals).
    """
    queries, matrix = _as_2d(queries), _as_2d(matrix)
    target_idx = np.asarray(target_idx, dtype=np.int64).reshape(-1)
    if len(target_idx) != len(queries):
        raise ValueError(f"rank_of: {len(queries)} queries but {len(target_idx)} targets")
    n = matrix.shape[0]
    if len(target_idx) and (target_idx.min() < 0 or target_idx.max() >= n):
        raise IndexError(f"rank_of: target index out of range for {n} candidates")
    ranks = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), _QUERY_CHUNK):
        scores = queries[start:start + _QUERY_CHUNK] @ matrix.T  # (C, N)
        t = target_idx[start:start + _QUERY_CHUNK]
        target = scores[np.arange(len(t)), t][:, None]  # (C, 1)
        higher = scores > target  # (C, N)
        for row, u in enumerate(t):  # the target's twins among those above it tie with it
            above = np.flatnonzero(higher[row])
            if above.size:
                higher[row, above] = ~(matrix[above] == matrix[u]).all(axis=1)
        ranks[start:start + len(t)] = higher.sum(axis=1) + 1
    return ranks


def l2_normalize(x: np.ndarray, *, what: str = "vector") -> np.ndarray:
    """Rows of ``x`` (.., D) scaled to unit L2 norm, float32; a zero or non-finite row is an error."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(-1))[:5].tolist()
        raise ValueError(f"cannot L2-normalise {what}: zero or non-finite row(s) {rows}")
    return x / norms


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x[None, :] if x.ndim == 1 else x


# --------------------------------------------------------------------------------------- backends


class NumpySearcher:
    """Exact :func:`top_k` over ``matrix`` (N, D): the default backend."""

    kind = "numpy"

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix

    def top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return top_k(queries, self.matrix, k)


def choose_backend(n: int, threshold: int, dim: int, *, faiss_available: bool | None = None) -> str:
    """The search backend for ``n`` items of ``dim``: "numpy" under ``threshold`` items (or without
    faiss), else "faiss-flat" (exact) while ``n * dim < IVF_MIN_SCAN``, else "faiss-ivf"."""
    if n < threshold:
        return "numpy"
    if faiss_available is None:
        from .faiss_index import load_faiss

        faiss_available = load_faiss() is not None
    if not faiss_available:
        log.info("index of %d items (FAISS threshold %d): faiss is missing, using numpy", n, threshold)
        return "numpy"
    return "faiss-flat" if n * dim < IVF_MIN_SCAN else "faiss-ivf"


def make_searcher(matrix: np.ndarray, backend: str):
    """A searcher (``.kind``, ``.top_k(queries, k)``) of kind ``backend`` over ``matrix`` (N, D)."""
    if backend == "numpy" or len(matrix) == 0:
        return NumpySearcher(matrix)
    from .faiss_index import FaissFlatSearcher, FaissIVFSearcher, load_faiss

    if load_faiss() is None:
        log.warning("faiss is missing: the %s index of %d items falls back to numpy", backend, len(matrix))
        return NumpySearcher(matrix)
    if backend == "faiss-flat":
        return FaissFlatSearcher(matrix)
    if backend == "faiss-ivf":
        return FaissIVFSearcher(matrix)
    raise ValueError(f"unknown index backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def default_faiss_threshold() -> int:
    from rge_demo.config import get_settings

    return get_settings().faiss_threshold


# ------------------------------------------------------------------------------------------ cache


@dataclass(frozen=True)
class CacheKey:
    """What an embedding depends on: the model, the instruction/prompt, and the item's content."""

    fingerprint: str
    prompt: str
    content: str  # content hash of the item (image bytes + text)

    def as_list(self) -> list[str]:
        return [self.fingerprint, self.prompt, self.content]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_list()).encode("utf-8")).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    writes: int = 0


def first_of_each(rows: Sequence[int], keys: Sequence[CacheKey]) -> tuple[list[int], dict[int, int]]:
    """``rows`` to embed (the first of each cache key) and, for every other row, the row whose vector it
    takes: identical inputs get one embedding. Embedded apart, in other batches, their vectors differ by
    float noise, and the noise broke their tie by list order (QA: a gallery holding "two" for two tasks
    ranked the right one 2nd in Failures and =1st in Compare). Without keys (no cache) every row."""
    if not keys:
        return list(rows), {}
    first: dict[str, int] = {}
    alias: dict[int, int] = {}
    for i in rows:
        alias_of = first.setdefault(keys[i].digest, i)
        if alias_of != i:
            alias[i] = alias_of
    return [i for i in rows if i not in alias], alias


def item_key(item: Item, gallery_root: str | Path, instruction: str, fingerprint: str) -> CacheKey:
    """Cache key for ``item`` embedded under ``instruction`` by the model ``fingerprint``.

    The content part hashes the image file's bytes (not its path), so a renamed or copied
    gallery reuses its vectors and an edited image does not.
    """
    image_hash = content_hash(Path(gallery_root) / item.image) if item.image else None
    content = hashlib.sha256(json.dumps([item.text, image_hash]).encode("utf-8")).hexdigest()
    return CacheKey(fingerprint, instruction, content)


class EmbeddingCache:
    """Vectors on disk, one ``.npz`` per key under ``root/<sha256(fingerprint)[:16]>/``.

    Each file stores the vector and its full key. A file that does not load, holds another key,
    has the wrong dtype, shape or dimension (the dimension is recorded per fingerprint in
    ``model.json``) or non-finite values is logged, deleted and treated as a miss. Writes are
    atomic. A small in-process LRU sits in front of the disk.
    """

    def __init__(self, root: str | Path, *, memory_items: int = 4096):
        self.root = Path(root)
        self.memory_items = memory_items
        self.stats = CacheStats()
        self._memory: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._dims: dict[str, int | None] = {}

    # -- paths and the per-model dimension
    def model_dir(self, fingerprint: str) -> Path:
        return self.root / hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]

    def path(self, key: CacheKey) -> Path:
        return self.model_dir(key.fingerprint) / f"{key.digest}.npz"

    def dim(self, fingerprint: str) -> int | None:
        """The embedding dimension recorded for ``fingerprint``, if any."""
        if fingerprint not in self._dims:
            meta = self.model_dir(fingerprint) / "model.json"
            dim = None
            if meta.is_file():
                try:
                    data = json.loads(meta.read_text(encoding="utf-8"))
                    if data.get("fingerprint") == fingerprint and isinstance(data.get("dim"), int):
                        dim = data["dim"]
                    else:
                        log.warning("%s: describes another model or no dim; ignoring it", meta)
                except (OSError, ValueError) as e:
                    log.warning("%s: unreadable (%s); ignoring it", meta, e)
            self._dims[fingerprint] = dim
        return self._dims[fingerprint]

    def _set_dim(self, fingerprint: str, dim: int) -> None:
        old = self.dim(fingerprint)
        if old == dim:
            return
        if old is not None:
            log.warning("embedding cache: model %r now gives dim %d (recorded %d); "
                        "older entries will be rejected", fingerprint, dim, old)
        meta = {"fingerprint": fingerprint, "dim": dim, "version": CACHE_VERSION}
        atomic_write_bytes(self.model_dir(fingerprint) / "model.json",
                           (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
        self._dims[fingerprint] = dim

    # -- single keys
    def get(self, key: CacheKey) -> np.ndarray | None:
        """The cached vector (D,) float32 (read-only), or None on a miss or a rejected file."""
        vec = self._memory.get(key)
        if vec is not None:
            self._memory.move_to_end(key)
            self.stats.hits += 1
            return vec
        path = self.path(key)
        if not path.is_file():
            self.stats.misses += 1
            return None
        try:
            vec = self._read(path, key)
        except Exception as e:  # anything wrong with the file: never trust it
            log.warning("embedding cache: rejecting %s (%s); it will be recomputed", path, e)
            path.unlink(missing_ok=True)
            self.stats.corrupt += 1
            self.stats.misses += 1
            return None
        self._remember(key, vec)
        self.stats.hits += 1
        return vec

    def put(self, key: CacheKey, vec: np.ndarray) -> None:
        """Store ``vec`` (D,) under ``key`` (atomic write)."""
        vec = np.array(vec, dtype=np.float32).reshape(-1)
        if vec.size == 0 or not np.isfinite(vec).all():
            raise ValueError(f"embedding cache: refusing to store an empty or non-finite vector for {key}")
        self._set_dim(key.fingerprint, vec.size)
        buf = io.BytesIO()
        key_bytes = np.frombuffer(json.dumps(key.as_list()).encode("utf-8"), dtype=np.uint8)
        np.savez(buf, vector=vec, key=key_bytes, version=np.array(CACHE_VERSION, dtype=np.int64))
        atomic_write_bytes(self.path(key), buf.getvalue())
        self._remember(key, vec)
        self.stats.writes += 1

    # -- batches
    def get_many(self, keys: Sequence[CacheKey]) -> list[np.ndarray | None]:
        return [self.get(k) for k in keys]

    def put_many(self, keys: Sequence[CacheKey], vecs: np.ndarray) -> None:
        """Store rows of ``vecs`` (B, D) under ``keys`` (B,)."""
        if len(keys) != len(vecs):
            raise ValueError(f"put_many: {len(keys)} keys but {len(vecs)} vectors")
        for k, v in zip(keys, vecs):
            self.put(k, v)

    def clear_memory(self) -> None:
        self._memory.clear()
        self._dims.clear()

    # -- internals
    def _read(self, path: Path, key: CacheKey) -> np.ndarray:
        with np.load(path, allow_pickle=False) as z:
            if set(z.files) != {"vector", "key", "version"}:
                raise ValueError(f"unexpected arrays {sorted(z.files)}")
            if int(z["version"]) != CACHE_VERSION:
                raise ValueError(f"cache version {int(z['version'])}, expected {CACHE_VERSION}")
            stored = json.loads(z["key"].astype(np.uint8).tobytes().decode("utf-8"))
            vec = z["vector"]
        if stored != key.as_list():
            raise ValueError("file holds the vector of another key")
        if vec.dtype != np.float32 or vec.ndim != 1 or vec.size == 0:
            raise ValueError(f"bad vector dtype/shape {vec.dtype}{vec.shape}")
        dim = self.dim(key.fingerprint)
        if dim is not None and vec.size != dim:
            raise ValueError(f"dim {vec.size}, model {key.fingerprint!r} has dim {dim}")
        if not np.isfinite(vec).all():
            raise ValueError("non-finite values")
        return vec

    def _remember(self, key: CacheKey, vec: np.ndarray) -> None:
        if self.memory_items <= 0:
            return
        vec.setflags(write=False)
        self._memory[key] = vec
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)


# ------------------------------------------------------------------------------------------ index


@dataclass(frozen=True)
class Hit:
    """One search result: 1-based rank, row in the gallery, the item and its cosine score."""

    rank: int
    index: int
    item: Item
    score: float


@dataclass
class IndexStats:
    total: int = 0
    embedded: int = 0  # computed by embed_fn in this build
    cached: int = 0  # loaded from the cache
    shared: int = 0  # identical to an earlier item of this build: its vector reused (items are embedded once)
    embed_calls: int = 0
    seconds: float = 0.0  # embedding and cache look-ups
    backend: str = ""  # the search backend, once built
    backend_seconds: float = 0.0  # building it (FAISS: copy, IVF training, nprobe calibration)


@dataclass
class GalleryIndex:
    """A gallery's candidate embeddings: ``matrix`` (N, D) float32, L2-normalised, row i = items[i].

    ``backend`` ("auto" or one of ``BACKENDS``) picks the search backend, built on first use;
    "auto" applies :func:`choose_backend` with ``faiss_threshold`` (None: the settings' value).
    """

    gallery: Gallery
    matrix: np.ndarray
    fingerprint: str = ""
    instruction: str = ""
    stats: IndexStats = field(default_factory=IndexStats)
    backend: str = "auto"
    faiss_threshold: int | None = None
    _searcher: object = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown index backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    @property
    def searcher(self):
        """The search backend (built once, thread-safe): ``.kind`` and ``.top_k(queries, k)``."""
        with self._lock:
            if self._searcher is None:
                t0 = time.perf_counter()
                backend = self.backend
                if backend == "auto":
                    threshold = self.faiss_threshold
                    threshold = default_faiss_threshold() if threshold is None else threshold
                    backend = choose_backend(len(self), threshold, self.dim if len(self) else 0)
                self._searcher = make_searcher(self.matrix, backend)
                self.stats.backend = self._searcher.kind
                self.stats.backend_seconds = time.perf_counter() - t0
                if self._searcher.kind != "numpy":
                    log.info("index %r: %s search backend for %d items built in %.2fs", self.gallery.name,
                             self._searcher.kind, len(self), self.stats.backend_seconds)
            return self._searcher

    @property
    def items(self) -> list[Item]:
        return self.gallery.items

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def build(
        cls,
        gallery: Gallery,
        embed_fn: EmbedFn,
        *,
        fingerprint: str,
        instruction: str,
        cache: EmbeddingCache | None = None,
        batch_size: int = 32,
        progress: Progress | None = None,
        backend: str = "auto",
        faiss_threshold: int | None = None,
    ) -> GalleryIndex:
        """Embed every item of ``gallery`` (cache first; ``embed_fn`` only for misses, in batches).

        ``embed_fn(items) -> (B, D)``; ``progress(done, total)`` is called after every
        ``_LOOKUP_CHUNK`` cache look-ups and after each batch. Each batch is written to the cache
        as soon as it is embedded, so a build that is interrupted (an error, a cancel raised from
        ``progress``, a killed process) resumes from the cache and re-embeds only what is missing.
        The search backend (see the class) is built before returning.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        progress = progress or _no_progress
        t0 = time.perf_counter()
        items = gallery.items
        n = len(items)
        stats = IndexStats(total=n)
        vecs: list[np.ndarray | None] = [None] * n
        keys: list[CacheKey] = []
        if cache is not None:
            found = 0
            for start in range(0, n, _LOOKUP_CHUNK):
                chunk = [item_key(it, gallery.root, instruction, fingerprint)
                         for it in items[start:start + _LOOKUP_CHUNK]]
                got = cache.get_many(chunk)
                keys += chunk
                vecs[start:start + len(got)] = got
                found += sum(v is not None for v in got)
                if start + _LOOKUP_CHUNK < n:
                    progress(found, n)
        missing, same = first_of_each([i for i, v in enumerate(vecs) if v is None], keys)
        stats.cached = n - len(missing) - len(same)
        progress(stats.cached, n)
        done = stats.cached
        for start in range(0, len(missing), batch_size):
            rows = missing[start:start + batch_size]
            out = np.asarray(embed_fn([items[i] for i in rows]), dtype=np.float32)
            stats.embed_calls += 1
            if out.ndim != 2 or out.shape[0] != len(rows):
                raise ValueError(f"embed_fn returned shape {out.shape} for a batch of {len(rows)} items")
            if not np.isfinite(out).all():
                bad = [items[rows[j]].id for j in np.flatnonzero(~np.isfinite(out).all(axis=1))[:5]]
                raise ValueError(f"embed_fn returned non-finite vectors for items {bad}")
            if cache is not None:
                cache.put_many([keys[i] for i in rows], out)
            for j, i in enumerate(rows):
                vecs[i] = out[j]
            stats.embedded += len(rows)
            done += len(rows)
            progress(done, n)
        for i, j in same.items():
            vecs[i] = vecs[j]
        stats.shared = len(same)
        if same:
            progress(n, n)
        matrix = _stack(vecs, items)
        stats.seconds = time.perf_counter() - t0
        log.info("index %r: %d items (%d embedded, %d from cache) in %.2fs",
                 gallery.name, n, stats.embedded, stats.cached, stats.seconds)
        index = cls(gallery=gallery, matrix=matrix, fingerprint=fingerprint, instruction=instruction,
                    stats=stats, backend=backend, faiss_threshold=faiss_threshold)
        index.searcher  # noqa: B018 - build the backend now, off the request path
        return index

    def search(self, query_vecs: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k hits for each query: query_vecs (Q, D) or (D,) -> Q lists of up to k Hits."""
        q = l2_normalize(_as_2d(query_vecs), what="query vectors")
        if len(self) and q.shape[1] != self.dim:
            raise ValueError(f"query dim {q.shape[1]} != index dim {self.dim}")
        scores, idx = self.searcher.top_k(q, k)
        return [
            [Hit(rank=r + 1, index=int(i), item=self.items[int(i)], score=float(s))
             for r, (s, i) in enumerate(zip(srow, irow))]
            for srow, irow in zip(scores, idx)
        ]

    def rank_of(self, query_vecs: np.ndarray, target_ids: Sequence[str]) -> np.ndarray:
        """1-based rank (Q,) of each query's target item, by item id (exact, whatever the backend)."""
        q = l2_normalize(_as_2d(query_vecs), what="query vectors")
        return rank_of(q, self.matrix, np.array([self.gallery.index_of(t) for t in target_ids]))


def _stack(vecs: list[np.ndarray | None], items: list[Item]) -> np.ndarray:
    """(N, D) L2-normalised matrix; a dimension mismatch names the items involved."""
    if not vecs:
        return np.zeros((0, 0), np.float32)
    dims = {int(v.shape[-1]) for v in vecs}
    if len(dims) > 1:
        first = int(vecs[0].shape[-1])
        odd = [items[i].id for i, v in enumerate(vecs) if v.shape[-1] != first][:5]
        raise ValueError(f"embeddings of different dimensions {sorted(dims)}; e.g. items {odd} "
                         f"differ from {items[0].id!r}")
    matrix = np.stack(vecs).astype(np.float32)  # (N, D)
    norms = np.linalg.norm(matrix, axis=1)
    if not (norms > 0).all():
        zero = [items[i].id for i in np.flatnonzero(~(norms > 0))[:5]]
        raise ValueError(f"zero embedding vectors for items {zero}")
    return matrix / norms[:, None]
