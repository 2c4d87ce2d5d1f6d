"""Projections: PCA and UMAP determinism, the on-disk cache, the figure and the frame."""

import numpy as np
import pytest

from rge_demo.analysis import projection as P


def _vectors(n=30, q=6, d=16, seed=0):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, d)).astype(np.float32)
    direct = items[:q] + 0.5 * rng.normal(size=(q, d)).astype(np.float32)
    reason = items[:q] + 0.1 * rng.normal(size=(q, d)).astype(np.float32)
    return items, direct, reason


def test_pca_shapes_and_determinism():
    items, direct, reason = _vectors()
    a = P.project(items, direct, reason, method="pca")
    b = P.project(items, direct, reason, method="pca")
    assert a.coords.shape == (30 + 2 * 6, 2) and a.coords.dtype == np.float32 and a.method == "pca"
    np.testing.assert_array_equal(a.coords, b.coords)
    assert list(a.kinds[:30]) == ["item"] * 30 and list(a.kinds[30:36]) == ["query-direct"] * 6
    assert a.of("query-reason").shape == (6, 2) and a.n_items == 30 and a.n_queries == 6
    tiny = P.project(items[:2], direct[:1], None, method="umap")  # < 5 points: PCA
    assert tiny.method == "pca" and tiny.coords.shape == (3, 2)
    assert P.project(items, None, None, method="pca").coords.shape == (30, 2)


@pytest.mark.slow
def test_umap_deterministic_with_seed():
    items, direct, reason = _vectors()
    a = P.project(items, direct, reason, method="umap", seed=3)
    b = P.project(items, direct, reason, method="umap", seed=3)
    assert a.method == "umap" and a.coords.shape == (42, 2) and np.isfinite(a.coords).all()
    np.testing.assert_array_equal(a.coords, b.coords)
    # A query whose reasoning vector equals its direct one is one point (UMAP put equal inputs apart: QA saw
    # arrows where reasoning moved nothing); the others stay where the fit put them.
    same = reason.copy()
    same[:3] = direct[:3]
    c = P.project(items, direct, same, method="umap", seed=3)
    np.testing.assert_array_equal(c.of("query-reason")[:3], c.of("query-direct")[:3])
    assert (c.of("query-reason")[3:] != c.of("query-direct")[3:]).any(axis=1).all()
    assert P.unmoved(direct, same).tolist() == [True] * 3 + [False] * 3
    # The app's warm-up: one tiny fit in the background (in the UMAP worker), then ready.
    P.warm_umap_in_background()
    assert P.wait_umap(120) is True and P.umap_state() == "ready"
    assert P.warm_umap_in_background() is None  # warmed once per process


@pytest.mark.slow
def test_umap_fits_in_a_worker_process_that_is_replaced_when_it_dies():
    """numba's compiled code holds the GIL: the app's process must never run it (nor import umap)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rge_demo.analysis import umap_worker

    code = """
import sys, numpy as np
from rge_demo.analysis import projection as P
x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
a = P.project(x, None, None, method="umap", seed=1)
print(a.method, "umap" in sys.modules, "numba" in sys.modules, P._worker.pid)
import os; os.kill(os.getpid(), 9)  # killed, not exited: no atexit, no cleanup
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr
    method, has_umap, has_numba, worker = out.stdout.split()
    assert (method, has_umap, has_numba) == ("umap", "False", "False")

    def running(pid: int) -> bool:  # a zombie (exited, not yet reaped) counts as gone
        try:
            return "\nState:\tZ" not in open(f"/proc/{pid}/status").read()
        except FileNotFoundError:
            return False

    for _ in range(100):  # the worker sees its stdin close and leaves
        if not running(int(worker)):
            break
        time.sleep(0.1)
    assert not running(int(worker))

    items, direct, reason = _vectors()
    here = umap_worker.fit(P.l2_normalize(np.concatenate([items, direct, reason])), 5)
    np.testing.assert_array_equal(P.project(items, direct, reason, method="umap", seed=5).coords, here)
    pid = P._worker.pid
    assert pid is not None and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    again = P.project(items, direct, reason, method="umap", seed=5)  # a new worker, the same map
    np.testing.assert_array_equal(again.coords, here)
    assert P._worker.pid not in (None, pid)


def test_cache_hit_and_corrupt_file(tmp_path, monkeypatch):
    items, direct, reason = _vectors()
    kw = {"fingerprint": "m1", "gallery": "g", "method": "pca"}
    first = P.ProjectionCache(tmp_path).get_or_compute(items, direct, reason, **kw)

    def fail(*a, **k):
        raise AssertionError("recomputed despite a cache hit")

    with monkeypatch.context() as m:
        m.setattr(P, "project", fail)
        cache = P.ProjectionCache(tmp_path)  # fresh memory: the hit comes from disk
        again = cache.get_or_compute(items, direct, reason, **kw)
        np.testing.assert_array_equal(first.coords, again.coords)
        assert list(first.kinds) == list(again.kinds) and cache.stats["hits"] == 1
        assert cache.get_or_compute(items, direct, reason, **kw) is again  # memory hit
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    files[0].write_bytes(b"garbage")
    cache = P.ProjectionCache(tmp_path)
    rebuilt = cache.get_or_compute(items, direct, reason, **kw)
    np.testing.assert_array_equal(first.coords, rebuilt.coords)
    assert cache.stats["corrupt"] == 1 and cache.stats["misses"] == 1
    other = cache.get_or_compute(items, direct, reason + 0.01, **kw)  # other content: another key
    assert cache.stats["misses"] == 2 and len(list(tmp_path.glob("*.npz"))) == 2
    assert other.coords.shape == first.coords.shape


def test_figure_arrows_and_frame():
    items, direct, reason = _vectors(n=12, q=4)
    res = P.project(items, direct, reason, method="pca")
    labels = [f"l{i % 3}" for i in range(12)] + [f"l{i % 3}" for i in range(4)] * 2
    correct = [None] * 12 + [True, False, False, True] + [True, True, False, True]
    fig = P.projection_figure(res, labels, colour_by="label", hover_texts=[f"h{i}" for i in range(20)])
    assert len(fig.layout.annotations) == 4
    fig = P.projection_figure(res, labels, colour_by="correct", correct=correct, thumbnails=[None] * 12)
    assert len(fig.layout.annotations) == 4 and sum(len(t.x) for t in fig.data) == 20
    same = reason.copy()
    same[1] = direct[1]  # reasoning did not move query 1: no arrow
    res_same = P.project(items, direct, same, method="pca")
    assert len(P.projection_figure(res_same, labels).layout.annotations) == 3
    frame = P.projection_frame(res, labels, correct=correct, ids=[f"id{i}" for i in range(20)])
    assert list(frame.columns) == ["x", "y", "kind", "label", "correct", "id", "hover"]
    assert len(frame) == 20 and set(frame["correct"]) == {"-", "right", "wrong"}
    with pytest.raises(ValueError, match="labels"):
        P.projection_frame(res, labels[:3])


def test_neighbours_cosine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 5)).astype(np.float32)
    idx, scores = P.neighbours(x, 2, k=3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn[2]
    sims[2] = -np.inf
    np.testing.assert_array_equal(idx, np.argsort(-sims)[:3])
    np.testing.assert_allclose(scores, np.sort(sims)[::-1][:3], rtol=1e-5)
    assert 2 not in idx
