"""Index: top_k / rank_of against a naive full sort; the embedding cache under corruption."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rge_demo.data.images import ImageError, load_image
from rge_demo.data.items import Gallery, Item
from rge_demo.embedding import index as index_mod
from rge_demo.embedding.index import (
    CacheKey,
    EmbeddingCache,
    GalleryIndex,
    Hit,
    item_key,
    rank_of,
    top_k,
)

DIM = 8
FP = "micro-rge@0123456789abcdef"
INSTR = "Represent the given image."


# ----------------------------------------------------------------------------- naive references


def naive_top_k(q, m, k):
    scores = q @ m.T
    k = min(k, m.shape[0])
    out_s, out_i = [], []
    for row in scores:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        out_i.append(order)
        out_s.append([row[j] for j in order])
    return np.array(out_s, np.float32).reshape(len(q), k), np.array(out_i, np.int64).reshape(len(q), k)


def naive_rank(q, m, t):
    # one dot product per pair, so that equal rows score exactly equal (a matrix product may round twins
    # apart by their place in it, on some machines' BLAS: CI's did not, this machine's did)
    scores = np.array([[np.dot(a, b) for b in m] for a in q])
    return np.array([1 + sum(s > row[ti] for s in row) for row, ti in zip(scores, t)])


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _with_ties(rng, n, d):
    """Normalised rows drawn from a few distinct vectors, so many scores tie exactly."""
    base = _unit(rng, 4, d)
    return base[rng.integers(0, 4, n)].copy()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 7, 50, 200])
def test_top_k_matches_naive(seed, k):
    rng = np.random.default_rng(seed)
    q = _unit(rng, 6, 16)
    m = _with_ties(rng, 60, 16) if seed % 2 else _unit(rng, 60, 16)
    s, i = top_k(q, m, k)
    ns, ni = naive_top_k(q, m, k)
    assert s.shape == (6, min(k, 60)) and s.dtype == np.float32 and i.dtype == np.int64
    np.testing.assert_array_equal(i, ni)
    np.testing.assert_array_equal(s, ns)


def test_top_k_ties_lower_index_first():
    m = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]], np.float32)
    q = np.array([[1, 0], [0, 1]], np.float32)
    s, i = top_k(q, m, 2)
    assert i.tolist() == [[0, 2], [1, 4]]
    s, i = top_k(q, m, 10)  # k > N is clipped
    assert i.tolist() == [[0, 2, 3, 1, 4], [1, 4, 0, 2, 3]]
    assert s.shape == (2, 5)


def test_top_k_edge_shapes():
    rng = np.random.default_rng(0)
    m = _unit(rng, 5, 4)
    assert top_k(m[0], m, 2)[1].shape == (1, 2)  # a single (D,) query
    assert top_k(m, m, 0)[0].shape == (5, 0)
    assert top_k(m, np.zeros((0, 4), np.float32), 3)[1].shape == (5, 0)
    assert top_k(m, m, 1)[1][:, 0].tolist() == list(range(5))  # each row finds itself


@pytest.mark.parametrize("seed", range(5))
def test_rank_of_matches_naive(seed):
    rng = np.random.default_rng(seed)
    q = _unit(rng, 20, 8)
    m = _with_ties(rng, 40, 8) if seed % 2 else _unit(rng, 40, 8)
    t = rng.integers(0, 40, 20)
    r = rank_of(q, m, t)
    np.testing.assert_array_equal(r, naive_rank(q, m, t))
    # consistent with top_k when there are no ties
    if seed % 2 == 0:
        _, i = top_k(q, m, 40)
        assert [int(np.flatnonzero(row == ti)[0]) + 1 for row, ti in zip(i, t)] == r.tolist()


def test_rank_of_errors():
    m = np.eye(3, dtype=np.float32)
    with pytest.raises(IndexError):
        rank_of(m, m, [0, 1, 3])
    with pytest.raises(ValueError):
        rank_of(m, m, [0, 1])


def test_chunked_scoring_agrees(monkeypatch):
    rng = np.random.default_rng(1)
    q, m = _unit(rng, 11, 8), _unit(rng, 30, 8)
    t = rng.integers(0, 30, 11)
    full = top_k(q, m, 5), rank_of(q, m, t)
    monkeypatch.setattr(index_mod, "_QUERY_CHUNK", 4)
    chunked = top_k(q, m, 5), rank_of(q, m, t)
    np.testing.assert_array_equal(full[0][1], chunked[0][1])
    np.testing.assert_array_equal(full[1], chunked[1])


# ------------------------------------------------------------------------------- gallery + cache


class CountingEmbed:
    """Deterministic, model-free embed_fn of an item's text and pixels; counts its calls."""

    def __init__(self, root: Path, dim: int = DIM):
        self.root, self.dim = root, dim
        self.calls = 0
        self.items_seen: list[str] = []

    def __call__(self, items: list[Item]) -> np.ndarray:
        self.calls += 1
        self.items_seen += [it.id for it in items]
        out = []
        for it in items:
            seed_bytes = it.text.encode()
            if it.image:
                seed_bytes += np.asarray(load_image(self.root / it.image)).tobytes()
            seed = int.from_bytes(hashlib.sha256(seed_bytes).digest()[:8], "little")
            out.append(np.random.default_rng(seed).standard_normal(self.dim))
        return np.array(out, np.float32)  # deliberately not normalised


@pytest.fixture
def gallery(tmp_path) -> Gallery:
    root = tmp_path / "gallery"
    (root / "img").mkdir(parents=True)
    items = []
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for n, c in enumerate(colours):
        Image.new("RGB", (8, 8), c).save(root / "img" / f"{n}.png")
        items.append(Item(id=f"i{n}", image=f"img/{n}.png", text=f"colour {n}", label=str(n)))
    items.append(Item(id="t0", text="a caption without an image"))
    g = Gallery(name="tiny", root=root, items=items, candidate_instruction=INSTR)
    g.save()
    return g


def _build(gallery, cache, embed=None, **kw):
    embed = embed or CountingEmbed(gallery.root)
    idx = GalleryIndex.build(gallery, embed, fingerprint=FP, instruction=INSTR, cache=cache, **kw)
    return idx, embed


def test_build_and_search(gallery, tmp_path):
    progress = []
    idx, embed = _build(gallery, None, batch_size=4, progress=lambda d, t: progress.append((d, t)))
    assert idx.matrix.shape == (6, DIM) and idx.matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(idx.matrix, axis=1), 1, rtol=1e-5)
    assert embed.calls == 2 and idx.stats.embedded == 6 and idx.stats.cached == 0
    assert progress == [(0, 6), (4, 6), (6, 6)]
    assert idx.items is gallery.items and len(idx) == 6

    hits = idx.search(idx.matrix[[2, 5]] * 3.0, k=3)  # unnormalised queries are fine
    assert len(hits) == 2 and all(len(h) == 3 for h in hits)
    top = hits[0][0]
    assert isinstance(top, Hit) and top.rank == 1 and top.index == 2 and top.item.id == "i2"
    assert top.score == pytest.approx(1.0, abs=1e-5)
    assert [h.rank for h in hits[1]] == [1, 2, 3] and hits[1][0].item.id == "t0"
    assert idx.search(idx.matrix[0], k=100)[0][-1].rank == 6
    assert idx.rank_of(idx.matrix[[1, 3]], ["i1", "i3"]).tolist() == [1, 1]


def test_second_build_uses_cache(gallery, tmp_path):
    cache_root = tmp_path / "cache"
    first, e1 = _build(gallery, EmbeddingCache(cache_root))
    assert e1.calls == 1 and first.stats.embedded == 6
    files = list(cache_root.rglob("*.npz"))
    assert len(files) == 6 and all(f.parent.parent == cache_root for f in files)

    cache = EmbeddingCache(cache_root)  # a new process: disk only
    second, e2 = _build(gallery, cache)
    assert e2.calls == 0 and second.stats.cached == 6 and second.stats.embedded == 0
    assert cache.stats.hits == 6 and cache.stats.misses == 0 and cache.stats.corrupt == 0
    np.testing.assert_array_equal(first.matrix, second.matrix)

    # the memory layer serves a third build even with the files gone
    for f in files:
        f.unlink()
    third, e3 = _build(gallery, cache)
    assert e3.calls == 0
    np.testing.assert_array_equal(first.matrix, third.matrix)


def test_key_depends_on_model_prompt_and_content(gallery, tmp_path):
    cache_root = tmp_path / "cache"
    _build(gallery, EmbeddingCache(cache_root))
    other_model = CountingEmbed(gallery.root)
    GalleryIndex.build(gallery, other_model, fingerprint=FP + "-v2", instruction=INSTR,
                       cache=EmbeddingCache(cache_root))
    assert other_model.calls == 1 and len(other_model.items_seen) == 6
    other_prompt = CountingEmbed(gallery.root)
    GalleryIndex.build(gallery, other_prompt, fingerprint=FP, instruction="Find the caption.",
                       cache=EmbeddingCache(cache_root))
    assert len(other_prompt.items_seen) == 6

    # editing one image re-embeds exactly that item; moving the gallery re-embeds nothing
    Image.new("RGB", (8, 8), (9, 9, 9)).save(gallery.root / "img" / "3.png")
    _, e = _build(gallery, EmbeddingCache(cache_root))
    assert e.items_seen == ["i3"]
    moved = Gallery.load(gallery.root.rename(tmp_path / "moved"))
    _, e = _build(moved, EmbeddingCache(cache_root))
    assert e.calls == 0


def test_item_key(gallery):
    k1 = item_key(gallery.items[0], gallery.root, INSTR, FP)
    assert isinstance(k1, CacheKey) and k1.fingerprint == FP and k1.prompt == INSTR
    assert k1 == item_key(gallery.items[0], gallery.root, INSTR, FP)
    assert k1.content != item_key(gallery.items[1], gallery.root, INSTR, FP).content
    text_only = item_key(gallery.items[5], gallery.root, INSTR, FP)
    assert len(text_only.content) == 64
    with pytest.raises(ImageError, match="missing.png.*not found"):
        item_key(Item(id="x", image="missing.png"), gallery.root, INSTR, FP)


def _npz(key: CacheKey, vec: np.ndarray) -> bytes:
    """A well-formed cache file holding ``vec`` under ``key``."""
    buf = io.BytesIO()
    np.savez(buf, vector=vec, key=np.frombuffer(json.dumps(key.as_list()).encode(), np.uint8),
             version=np.array(index_mod.CACHE_VERSION))
    return buf.getvalue()


def _garbage(path, key, other):
    path.write_bytes(b"\x00garbage, not a zip file" * 10)


def _truncated(path, key, other):
    path.write_bytes(path.read_bytes()[:200])


def _other_key(path, key, other):
    path.write_bytes(other.read_bytes())  # a valid file for another key, moved into place


def _wrong_dim(path, key, other):
    path.write_bytes(_npz(key, np.ones(DIM + 3, np.float32)))


def _wrong_dtype(path, key, other):
    path.write_bytes(_npz(key, np.ones(DIM, np.float64)))


def _nan(path, key, other):
    vec = np.ones(DIM, np.float32)
    vec[2] = np.nan
    path.write_bytes(_npz(key, vec))


def _pickle(path, key, other):
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("corrupt, reason", [
    (_garbage, ""), (_truncated, ""), (_other_key, "another key"), (_wrong_dim, "dim 11"),
    (_wrong_dtype, "dtype"), (_nan, "non-finite"), (_pickle, "allow_pickle=False"),
])
def test_corrupt_file_rebuilt(gallery, tmp_path, corrupt, reason, caplog):
    cache_root = tmp_path / "cache"
    cache = EmbeddingCache(cache_root)
    first, _ = _build(gallery, cache)
    keys = [item_key(it, gallery.root, INSTR, FP) for it in gallery.items]
    victim = cache.path(keys[1])
    corrupt(victim, keys[1], cache.path(keys[2]))

    fresh = EmbeddingCache(cache_root)  # a new process: the memory layer is empty
    with caplog.at_level(logging.WARNING, logger="rge_demo.embedding.index"):
        second, embed = _build(gallery, fresh)
    assert embed.items_seen == ["i1"]
    assert fresh.stats.corrupt == 1 and fresh.stats.hits == 5 and fresh.stats.misses == 1
    msgs = [r.getMessage() for r in caplog.records]
    assert any("rejecting" in m and victim.name in m and reason in m for m in msgs), msgs
    np.testing.assert_array_equal(first.matrix, second.matrix)

    third_cache = EmbeddingCache(cache_root)  # the rewritten file is trusted again
    _, embed = _build(gallery, third_cache)
    assert embed.calls == 0 and third_cache.stats.corrupt == 0


def test_cache_get_put_roundtrip(tmp_path):
    cache = EmbeddingCache(tmp_path, memory_items=0)
    keys = [CacheKey(FP, "p", f"{i:064x}") for i in range(3)]
    vecs = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
    assert cache.get_many(keys) == [None, None, None] and cache.stats.misses == 3
    cache.put_many(keys, vecs)
    got = cache.get_many(keys)
    np.testing.assert_array_equal(np.stack(got), vecs)
    assert cache.stats.hits == 3 and cache.stats.writes == 3
    with pytest.raises(ValueError, match="non-finite"):
        cache.put(keys[0], np.full(DIM, np.inf))
    with pytest.raises(ValueError):
        cache.put_many(keys, vecs[:2])
    assert EmbeddingCache(tmp_path).dim(FP) == DIM


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    key = CacheKey(FP, "p", "0" * 64)
    cache.put(key, np.ones(DIM, np.float32))  # records the model dim first
    key2 = CacheKey(FP, "p", "1" * 64)
    before = sorted(p.name for p in cache.model_dir(FP).iterdir())

    def exploding_replace(src, dst):
        raise OSError("disk pulled out mid-write")

    monkeypatch.setattr("os.replace", exploding_replace)
    with pytest.raises(OSError, match="disk pulled out"):
        cache.put(key2, np.ones(DIM, np.float32))
    monkeypatch.undo()
    assert sorted(p.name for p in cache.model_dir(FP).iterdir()) == before  # no tmp, no target
    fresh = EmbeddingCache(tmp_path)
    assert fresh.get(key2) is None and fresh.stats.corrupt == 0
    assert fresh.get(key) is not None


def test_embed_fn_contract_errors(gallery):
    with pytest.raises(ValueError, match="shape"):
        GalleryIndex.build(gallery, lambda items: np.ones((1, DIM)), fingerprint=FP, instruction=INSTR)

    def nan_embed(items):
        out = np.ones((len(items), DIM), np.float32)
        out[0, 0] = np.nan
        return out

    with pytest.raises(ValueError, match="non-finite.*i0"):
        GalleryIndex.build(gallery, nan_embed, fingerprint=FP, instruction=INSTR)


def test_empty_gallery(tmp_path):
    g = Gallery(name="empty", root=tmp_path, items=[])
    idx = GalleryIndex.build(g, lambda items: np.zeros((0, DIM)), fingerprint=FP, instruction="")
    assert len(idx) == 0 and idx.search(np.ones(DIM), k=3) == [[]]


def test_zero_vector_named(gallery):
    with pytest.raises(ValueError, match="zero embedding.*'i0'"):
        GalleryIndex.build(gallery, lambda items: np.zeros((len(items), DIM)), fingerprint=FP,
                           instruction=INSTR)


# ------------------------------------------------------------------------------ FAISS backends

try:
    import faiss  # noqa: F401
except ImportError:  # faiss-cpu is optional: only the tests of its backends skip, not this module
    faiss = None
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss-cpu is not installed")

from rge_demo.config import Settings, SettingsError  # noqa: E402
from rge_demo.embedding import faiss_index  # noqa: E402
from rge_demo.embedding.faiss_index import FaissFlatSearcher, FaissIVFSearcher, ivf_nlist  # noqa: E402
from rge_demo.embedding.gallery import build_index  # noqa: E402
from rge_demo.embedding.index import IVF_MIN_SCAN, choose_backend, make_searcher  # noqa: E402


def _clustered(rng, n, d, centres=40, spread=0.15):
    """Unit vectors around a few random centres (what embeddings of a real gallery look like)."""
    c = _unit(rng, centres, d)[rng.integers(0, centres, n)]
    x = c + spread * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sorted_top_k(q, m, k):
    """naive_top_k by a full vectorised sort (for sizes where the pure-Python one is too slow)."""
    scores = q @ m.T
    order = np.lexsort((np.broadcast_to(np.arange(len(m)), scores.shape), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def _recall(got, truth):
    return np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)])


def _signs(rng, n, d=16, distinct=None):
    """Rows of +-1/4 (unit norm for d=16): every dot product is a multiple of 1/16, exact in float32
    whatever the summation order, so equal scores are equal in numpy and FAISS alike. (With
    continuous values numpy's BLAS can differ by an ulp between two identical rows.)"""
    base = rng.choice(np.float32([-0.25, 0.25]), (distinct or n, d))
    return base if distinct is None else base[rng.integers(0, distinct, n)].copy()


@needs_faiss
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 7, 50, 300, 400])
def test_faiss_flat_matches_naive(seed, k):
    rng = np.random.default_rng(seed)
    if seed % 2:  # exact ties: 4 distinct rows, ~75 copies each, and queries tying across them
        q, m = _signs(rng, 9), _signs(rng, 300, distinct=4)
    else:
        q, m = _unit(rng, 9, 16), _unit(rng, 300, 16)
    s, i = FaissFlatSearcher(m).top_k(q, k)
    ns, ni = naive_top_k(q, m, k)
    assert s.shape == ni.shape == (9, min(k, 300)) and s.dtype == np.float32 and i.dtype == np.int64
    np.testing.assert_array_equal(i, ni)
    np.testing.assert_allclose(s, ns, atol=1e-5)
    np.testing.assert_array_equal(i, top_k(q, m, k)[1])  # the numpy path, index for index


@needs_faiss
def test_faiss_flat_ties_lower_index_first():
    m = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]] * 5, np.float32)  # 15 rows score 1 for q0
    q = np.array([[1, 0], [0, 1]], np.float32)
    _, i = FaissFlatSearcher(m).top_k(q, 3)
    assert i.tolist() == [[0, 2, 3], [1, 4, 6]]
    s, i = FaissFlatSearcher(m).top_k(np.zeros((0, 2)), 3)
    assert s.shape == i.shape == (0, 3)


def test_ivf_nlist():
    assert ivf_nlist(100_000) == 1265 and ivf_nlist(1_000_000) == 4000
    assert ivf_nlist(2000) == 51 and ivf_nlist(10) == 1  # >= 39 training points per cell


@needs_faiss
def test_ivf_calibrated_recall_and_exact_when_probing_all():
    rng = np.random.default_rng(0)
    x = _clustered(rng, 4200, 32)
    m, q = x[:4000], x[4000:]  # held-out queries from the same clusters
    ivf = FaissIVFSearcher(m)
    assert ivf.nlist == ivf_nlist(4000) == 102 and 1 <= ivf.nprobe < ivf.nlist
    assert ivf.recall >= 0.95
    # recall@10 of the held-out queries against the naive reference
    _, got = ivf.top_k(q, 10)
    _, truth = sorted_top_k(q, m, 10)
    assert _recall(got, truth) >= 0.93
    # probing every cell is the exact search, ties ordered by index like numpy
    ivf.nprobe = ivf.nlist
    s, i = ivf.top_k(q[:20], 10)
    ns, ni = sorted_top_k(q[:20], m, 10)
    np.testing.assert_array_equal(i, ni)
    np.testing.assert_allclose(s, ns, atol=1e-5)


@needs_faiss
def test_ivf_uniform_data_still_reaches_target():
    rng = np.random.default_rng(2)
    m = _unit(rng, 3000, 24)  # no cluster structure: IVF's worst case, needs many cells probed
    ivf = FaissIVFSearcher(m)
    assert ivf.recall >= 0.95
    ivf2 = FaissIVFSearcher(m, nprobe=1)
    assert ivf2.nprobe == 1 and np.isnan(ivf2.recall)
    _, got1 = ivf2.top_k(m[:50], 10)
    _, got = ivf.top_k(m[:50], 10)
    _, truth = sorted_top_k(m[:50], m, 10)
    assert _recall(got, truth) > _recall(got1, truth)


@needs_faiss
def test_ivf_short_rows_fall_back_to_exact():
    rng = np.random.default_rng(3)
    m = _clustered(rng, 1000, 16)
    ivf = FaissIVFSearcher(m, nprobe=1)  # one cell holds ~40 of the 1000 rows
    q = _unit(rng, 3, 16)
    s, i = ivf.top_k(q, 1000)
    ns, ni = sorted_top_k(q, m, 1000)
    np.testing.assert_array_equal(i, ni)
    np.testing.assert_allclose(s, ns, atol=1e-5)


@needs_faiss
def test_choose_backend():
    assert IVF_MIN_SCAN == 100_000 * 192
    assert choose_backend(49_999, 50_000, 2048) == "numpy"
    assert choose_backend(50_000, 50_000, 192) == "faiss-flat"
    assert choose_backend(99_999, 50_000, 192) == "faiss-flat"
    assert choose_backend(100_000, 50_000, 192) == "faiss-ivf"  # rge-micro at 100k
    assert choose_backend(50_000, 50_000, 2048) == "faiss-ivf"  # RGE-3B: exact scans cost 10x more
    assert choose_backend(10**6, 50_000, 192, faiss_available=False) == "numpy"
    assert Settings().faiss_threshold == 50_000
    assert Settings.from_env({"RGE_FAISS_THRESHOLD": "1000"}).faiss_threshold == 1000
    with pytest.raises(SettingsError, match="RGE_FAISS_THRESHOLD"):
        Settings.from_env({"RGE_FAISS_THRESHOLD": "many"})
    with pytest.raises(SettingsError, match="RGE_FAISS_THRESHOLD"):
        Settings(faiss_threshold=-1)


@needs_faiss
def test_gallery_index_picks_backend_automatically(gallery, monkeypatch):
    numpy_idx, _ = _build(gallery, None)
    assert numpy_idx.stats.backend == "numpy"  # 6 items, default threshold 50k
    monkeypatch.setenv("RGE_FAISS_THRESHOLD", "6")
    flat, _ = _build(gallery, None)
    assert flat.stats.backend == "faiss-flat" and isinstance(flat.searcher, FaissFlatSearcher)
    q = flat.matrix[[0, 3, 5]] + 0.1
    for k in (1, 3, 6):
        a, b = numpy_idx.search(q, k), flat.search(q, k)
        assert [[h.index for h in r] for r in a] == [[h.index for h in r] for r in b]
        assert [[h.rank for h in r] for r in b] == [list(range(1, k + 1))] * 3
        np.testing.assert_allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in b], atol=1e-5)
    assert flat.rank_of(q, ["i0", "i3", "t0"]).tolist() == numpy_idx.rank_of(q, ["i0", "i3", "t0"]).tolist()
    monkeypatch.setenv("RGE_FAISS_THRESHOLD", "7")
    assert _build(gallery, None)[0].stats.backend == "numpy"
    ivf, _ = _build(gallery, None, backend="faiss-ivf")  # explicit, on 6 items: one cell
    assert ivf.stats.backend == "faiss-ivf" and ivf.searcher.nlist == 1
    assert [h.index for h in ivf.search(q[0], 6)[0]] == [h.index for h in numpy_idx.search(q[0], 6)[0]]
    with pytest.raises(ValueError, match="unknown index backend 'annoy'"):
        _build(gallery, None, backend="annoy")


def test_faiss_missing_falls_back_to_numpy(gallery, monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # "import faiss" raises ImportError
    monkeypatch.setattr(faiss_index, "_faiss", None)
    with caplog.at_level(logging.INFO, logger="rge_demo.embedding"):
        idx, _ = _build(gallery, None, faiss_threshold=0)
        forced = make_searcher(idx.matrix, "faiss-ivf")
    assert idx.stats.backend == "numpy" and forced.kind == "numpy"
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("faiss is not installed" in m for m in msgs) == 1, msgs  # logged once
    assert any("faiss is missing, using numpy" in m for m in msgs)
    assert idx.search(idx.matrix[2], 1)[0][0].index == 2


def test_faiss_is_imported_lazily():
    import subprocess
    import sys

    code = ("import sys, rge_demo.embedding.index, rge_demo.embedding.gallery, rge_demo.config; "
            "assert 'faiss' not in sys.modules, 'faiss imported at start'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- large builds: progress, resume


def test_lookup_progress_in_chunks(gallery, tmp_path, monkeypatch):
    cache_root = tmp_path / "cache"
    _build(gallery, EmbeddingCache(cache_root))
    monkeypatch.setattr(index_mod, "_LOOKUP_CHUNK", 4)
    progress = []
    _, embed = _build(gallery, EmbeddingCache(cache_root), progress=lambda d, t: progress.append((d, t)))
    assert embed.calls == 0 and progress == [(4, 6), (6, 6)]


class Cancelled(Exception):
    pass


def _world_gallery(root: Path, n: int) -> Gallery:
    (root / "img").mkdir(parents=True)
    items = []
    for j in range(n):
        Image.new("RGB", (56, 56), (40 * j % 256, 255 - 30 * j % 256, 90)).save(root / "img" / f"{j}.png")
        items.append(Item(id=f"c{j}", image=f"img/{j}.png", text=f"scene {j}", label=str(j % 3)))
    g = Gallery(name="resume", root=root, items=items, candidate_instruction=INSTR)
    g.save()
    return g


def test_interrupted_build_resumes_from_cache(tiny, tmp_path):
    """A build cancelled after two batches re-embeds only the rest: forward passes on the real model."""
    from rge_demo.embedding.encoder import Encoder

    encoder = Encoder(*tiny)
    g = _world_gallery(tmp_path / "g", 7)
    rows_per_pass: list[int] = []
    hook = encoder.model.model.register_forward_hook(
        lambda mod, args, kwargs, out: rows_per_pass.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True)
    try:
        def cancel_after_four(done, total):
            if done >= 4:
                raise Cancelled

        with pytest.raises(Cancelled):
            build_index(encoder, g, FP, EmbeddingCache(tmp_path / "cache"), cancel_after_four, batch_size=2)
        assert rows_per_pass == [2, 2]

        rows_per_pass.clear()
        progress = []
        resumed = build_index(encoder, g, FP, EmbeddingCache(tmp_path / "cache"),  # a new process: disk only
                              lambda d, t: progress.append((d, t)), batch_size=2)
        assert rows_per_pass == [2, 1]  # items 5-7 only
        assert resumed.stats.cached == 4 and resumed.stats.embedded == 3 and resumed.stats.embed_calls == 2
        assert progress == [(4, 7), (6, 7), (7, 7)]

        rows_per_pass.clear()
        clean = build_index(encoder, g, FP, None, batch_size=2)
        assert rows_per_pass == [2, 2, 2, 1]
    finally:
        hook.remove()
    np.testing.assert_allclose(resumed.matrix, clean.matrix, atol=1e-5)
    assert [h.item.id for h in resumed.search(clean.matrix[5], 3)[0]][0] == "c5"


def test_scale_bench_at_test_size(tmp_path):
    """bench/scale.py as a user runs it, on 3000 items: exact FAISS agrees, IVF reaches its recall."""
    import subprocess
    import sys

    out = tmp_path / "scale.json"
    cmd = [sys.executable, "-m", "bench.scale", "--n", "3000", "--dims", "16", "--queries", "12",
           "--data", "clustered", "--centres", "30", "--projection", "--umap", "0", "--json", str(out)]
    r = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                       timeout=240, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    (run,) = report["index"]
    assert run["n"] == 3000 and run["dim"] == 16 and set(run["backends"]) == {"numpy", "faiss-flat", "faiss-ivf"}
    assert run["backends"]["faiss-flat"]["identical_lists"] == 12
    ivf = run["backends"]["faiss-ivf"]
    assert ivf["nlist"] == ivf_nlist(3000) and ivf["calibration_recall"] >= 0.95 and ivf["recall_at_10"] >= 0.9
    assert all(b["p50_ms"] > 0 and b["p95_ms"] >= b["p50_ms"] for b in run["backends"].values())
    assert report["projection"]["n"] == 3000 and report["projection"]["pca_s"] > 0
    assert "| clustered | 16 | faiss-ivf |" in r.stdout and "PCA" in r.stdout


def test_identical_items_are_embedded_once(tiny, tmp_path):
    """Two items of the same content (one image, one text: "two" of two tasks) get one embedding, so
    they tie exactly; embedded in separate batches they differed by float noise."""
    from rge_demo.embedding.encoder import Encoder

    encoder = Encoder(*tiny)
    g = _world_gallery(tmp_path / "g", 4)
    g.items.append(Item(id="c0-again", image="img/0.png", text="scene 0", label="0"))
    progress = []
    index = build_index(encoder, g, FP, EmbeddingCache(tmp_path / "cache"), lambda d, t: progress.append((d, t)),
                        batch_size=2)
    assert index.stats.embedded == 4 and progress[-1] == (5, 5)
    assert np.array_equal(index.matrix[0], index.matrix[4])
    hits = index.search(index.matrix[0], 2)[0]
    assert {h.item.id for h in hits} == {"c0", "c0-again"} and hits[0].score == hits[1].score
