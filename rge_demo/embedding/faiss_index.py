"""FAISS searchers for large galleries: exact (``IndexFlatIP``) and IVF (``IndexIVFFlat``, inner product).

Both answer ``top_k(queries, k) -> (scores (Q, k') float32, indices (Q, k') int64)`` like
:func:`rge_demo.embedding.index.top_k`: best first, equal scores by lower index. The exact searcher
gives the numpy path's indices (its scores agree to float rounding, ~1e-6); the IVF searcher scans
only ``nprobe`` of its ``nlist`` cells, with ``nprobe`` calibrated at build time so that recall@10
against the exact search is at least ``target_recall`` on a sample of the gallery's own rows.

``faiss`` is imported lazily (:func:`load_faiss`): without it the app runs on the numpy index.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

log = logging.getLogger(__name__)

_MISSING = object()
_faiss = None  # the module once imported, _MISSING once known absent

CALIBRATION_QUERIES = 256  # gallery rows used to choose nprobe
CALIBRATION_MARGIN = 0.01  # aim this much above the target: the sample's recall has ~0.005 standard error
TRAIN_POINTS_PER_CELL = 40  # k-means training sample per IVF cell (faiss warns under 39)
KMEANS_ITERATIONS = 10


def load_faiss():
    """The ``faiss`` module, or None (logged once) if it is not installed."""
    global _faiss
    if _faiss is None:
        try:
            import faiss
        except ImportError as e:
            log.warning("faiss is not installed (%s); large galleries use the exact numpy index", e)
            _faiss = _MISSING
        else:
            _faiss = faiss
    return None if _faiss is _MISSING else _faiss


def ivf_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: about 4 sqrt(n), and at least 39 training points per cell."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def _f32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x[None, :] if x.ndim == 1 else x)


def _order(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (scores, idx) sorted by score desc, then index asc (missing labels -1 last); first k."""
    missing = idx < 0
    key_s = np.where(missing, -np.inf, scores)
    key_i = np.where(missing, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key_i, -key_s), axis=-1)[:, :k]
    return (np.take_along_axis(scores, order, axis=1).astype(np.float32),
            np.take_along_axis(idx, order, axis=1).astype(np.int64))


class FaissFlatSearcher:
    """Exact inner-product search over a copy of ``matrix`` (N, D) held by ``faiss.IndexFlatIP``."""

    kind = "faiss-flat"

    def __init__(self, matrix: np.ndarray, faiss=None):
        faiss = faiss or load_faiss()
        if faiss is None:
            raise ImportError("faiss is not installed")
        matrix = _f32(matrix)
        self.n, self.dim = matrix.shape
        self.index = faiss.IndexFlatIP(self.dim)
        self.index.add(matrix)

    def top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _f32(queries)
        k = max(0, min(int(k), self.n))
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        # FAISS picks arbitrarily among scores equal to the k-th: fetch until the last fetched
        # score is below the k-th of every row, so all tied candidates are seen and sorted by index.
        kk = min(self.n, k + 8)
        while True:
            scores, idx = self.index.search(q, kk)
            if kk == self.n or not (scores[:, k - 1] <= scores[:, kk - 1]).any():
                break
            kk = min(self.n, 2 * kk)
        return _order(scores, idx, k)


class FaissIVFSearcher:
    """Approximate inner-product search: ``faiss.IndexIVFFlat`` over ``nlist`` k-means cells.

    ``nprobe`` (cells scanned per query), unless given, is about the smallest (doubling, then
    bisection to within 12 %) whose recall@10 against the exact search reaches ``target_recall`` +
    ``CALIBRATION_MARGIN`` on ``CALIBRATION_QUERIES`` gallery rows used as queries (their own row
    excluded from both lists). k-means trains on at most ``TRAIN_POINTS_PER_CELL`` rows per cell,
    ``KMEANS_ITERATIONS`` iterations. Rows that come back with fewer than k hits (too few vectors
    in the probed cells) are answered by the exact numpy search.
    """

    kind = "faiss-ivf"

    def __init__(self, matrix: np.ndarray, *, nlist: int | None = None, nprobe: int | None = None,
                 target_recall: float = 0.95, seed: int = 0, faiss=None):
        faiss = faiss or load_faiss()
        if faiss is None:
            raise ImportError("faiss is not installed")
        self.matrix = _f32(matrix)
        self.n, self.dim = self.matrix.shape
        self.nlist = int(nlist or ivf_nlist(self.n))
        self.target_recall = target_recall
        t0 = time.perf_counter()
        self.quantizer = faiss.IndexFlatIP(self.dim)  # kept referenced: the IVF index does not own it
        self.index = faiss.IndexIVFFlat(self.quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.niter = KMEANS_ITERATIONS
        self.index.cp.seed = seed
        self.index.cp.max_points_per_centroid = TRAIN_POINTS_PER_CELL
        rng = np.random.default_rng(seed)
        n_train = min(self.n, TRAIN_POINTS_PER_CELL * self.nlist)
        train = self.matrix if n_train == self.n else self.matrix[np.sort(rng.choice(self.n, n_train, replace=False))]
        self.index.train(train)
        self.index.add(self.matrix)
        self.train_seconds = time.perf_counter() - t0
        self.recall = float("nan")  # recall@10 measured at the chosen nprobe (nan if nprobe was given)
        if nprobe is None:
            nprobe, self.recall = self._calibrate(rng)
        self.nprobe = int(nprobe)
        log.info("IVF index: %d vectors, nlist %d, nprobe %d (calibrated recall@10 %.3f), built in %.1fs",
                 self.n, self.nlist, self.nprobe, self.recall, time.perf_counter() - t0)

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.index.nprobe = max(1, min(int(value), self.nlist))

    def _calibrate(self, rng: np.random.Generator, k: int = 10) -> tuple[int, float]:
        from .index import top_k  # the exact reference

        m = min(CALIBRATION_QUERIES, self.n)
        k = min(k, self.n - 1)
        if k < 1:
            return self.nlist, 1.0
        rows = np.sort(rng.choice(self.n, m, replace=False))
        q = self.matrix[rows]
        _, exact = top_k(q, self.matrix, k + 1)
        truth = [set(r[r != own][:k].tolist()) for r, own in zip(exact, rows)]

        def recall_at(probe: int) -> float:
            self.nprobe = probe
            _, got = self.index.search(q, k + 1)
            found = [len(t & set(g[(g != own) & (g >= 0)][:k].tolist())) for t, g, own in zip(truth, got, rows)]
            return sum(found) / (k * m)

        target = min(1.0, self.target_recall + CALIBRATION_MARGIN)
        # double nprobe until the target is met, then bisect between the last two tries
        lo, hi, probe = 0, self.nlist, 1
        while True:
            r = recall_at(probe)
            if r >= target or probe >= self.nlist:
                hi, best = probe, r
                break
            lo, probe = probe, min(self.nlist, probe * 2)
        while hi - lo > max(1, lo // 8) and best >= target:  # within ~12% of the smallest
            mid = (lo + hi) // 2
            r = recall_at(mid)
            if r >= target:
                hi, best = mid, r
            else:
                lo = mid
        self.nprobe = hi
        return hi, best

    def top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _f32(queries)
        k = max(0, min(int(k), self.n))
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        scores, idx = _order(*self.index.search(q, k), k)
        short = np.flatnonzero((idx < 0).any(axis=1))
        if len(short):
            from .index import top_k

            scores[short], idx[short] = top_k(q[short], self.matrix, k)
        return scores, idx
