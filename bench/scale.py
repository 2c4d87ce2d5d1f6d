"""Scale: a 100k-item gallery's index (numpy vs FAISS exact vs FAISS IVF) and its 2-D projection.

The gallery is synthetic: N random unit vectors (seeded), as text-only items; the queries are Q
more of the same kind. ``--data uniform`` (default) draws them uniformly on the sphere: no cluster
structure, IVF's worst case. ``--data clustered`` draws them around ``--centres`` random centres
(``--spread`` of Gaussian noise relative to the centre), closer to what a real gallery's embeddings
look like. No model runs: only the index and the projection are timed. Each time is given as wall
time and as this process's CPU time (``time.process_time``; one thread, so on a machine shared
with other jobs the CPU time is close to what an idle machine's wall time would be). For each D in ``--dims``
(192 = rge-micro's hidden size, 2048 = RGE-3B's):

- build: ``GalleryIndex.build`` once (stack + normalise the embed function's rows), then each
  backend's own build (``GalleryIndex.searcher``: FAISS copies the matrix; IVF also trains its
  k-means cells and calibrates nprobe);
- query: one query at a time through ``GalleryIndex.search`` (what the app calls), top-10,
  p50/p95 in ms after one warm-up query;
- agreement: FAISS exact's top-10 lists against numpy's (how many are identical, max score
  difference); IVF's recall@10 against numpy's exact lists, with its nlist and calibrated nprobe.

Projection (``--projection``, at the first D): ``analysis.projection.project(method="pca")`` on all N
points; UMAP on a ``--umap`` subsample: a tiny first fit (numba's JIT compile, as the app's warm-up
does) timed apart from the subsample's fit.

    OMP_NUM_THREADS=1 python -m bench.scale [--n 100000] [--dims 192,2048] [--queries 200]
        [--data uniform|clustered] [--backends numpy,faiss-flat,faiss-ivf] [--projection]
        [--umap 20000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from rge_demo.data.items import Gallery, Item
from rge_demo.embedding.index import BACKENDS, GalleryIndex

log = logging.getLogger("bench.scale")

K = 10


def unit_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_vectors(rng: np.random.Generator, n: int, d: int, centres: np.ndarray, spread: float) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)]
    x = x + (spread / np.sqrt(d)) * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Clock:
    """Wall and CPU seconds since construction."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def synthetic_gallery(n: int) -> Gallery:
    return Gallery(name=f"synthetic-{n}", root=Path("."), items=[Item(id=f"s{i}", text=f"item {i}") for i in range(n)])


def percentiles(wall: list[float], cpu: list[float]) -> dict[str, float]:
    wall_ms, cpu_ms = np.array(wall) * 1000, np.array(cpu) * 1000
    return {"p50_ms": float(np.percentile(wall_ms, 50)), "p95_ms": float(np.percentile(wall_ms, 95)),
            "cpu_p50_ms": float(np.percentile(cpu_ms, 50)), "cpu_p95_ms": float(np.percentile(cpu_ms, 95))}


def bench_dim(n: int, d: int, queries: int, backends: list[str], seed: int, data: str = "uniform",
              centres: int = 1000, spread: float = 0.5) -> dict:
    rng = np.random.default_rng(seed)
    if data == "clustered":
        c = unit_vectors(rng, centres, d)
        vectors, q = clustered_vectors(rng, n, d, c, spread), clustered_vectors(rng, queries, d, c, spread)
    else:
        vectors, q = unit_vectors(rng, n, d), unit_vectors(rng, queries, d)
    gallery = synthetic_gallery(n)

    def embed(items):
        return vectors[[int(it.id[1:]) for it in items]]

    t0 = time.perf_counter()
    base = GalleryIndex.build(gallery, embed, fingerprint="synthetic", instruction="", batch_size=n, backend="numpy")
    out: dict = {"n": n, "dim": d, "data": data, "queries": queries, "stack_s": time.perf_counter() - t0,
                 "backends": {}}
    if data == "clustered":
        out |= {"centres": centres, "spread": spread}
    log.info("D=%d: GalleryIndex.build of %d rows in %.2fs", d, n, out["stack_s"])
    vectors = None  # the index holds its own normalised copy  # noqa: F841
    lists: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for backend in backends:
        idx = GalleryIndex(gallery=base.gallery, matrix=base.matrix, backend=backend)
        clock = Clock()
        searcher = idx.searcher
        row: dict = dict(zip(("build_s", "build_cpu_s"), clock.read()))
        if backend == "faiss-ivf":
            row |= {"nlist": searcher.nlist, "nprobe": searcher.nprobe, "calibration_recall": searcher.recall}
        idx.search(q[0], K)  # warm-up
        wall, cpu, got_i, got_s = [], [], [], []
        for i in range(queries):
            clock = Clock()
            hits = idx.search(q[i], K)[0]
            w, c = clock.read()
            wall.append(w)
            cpu.append(c)
            got_i.append([h.index for h in hits])
            got_s.append([h.score for h in hits])
        lists[backend], scores[backend] = np.array(got_i), np.array(got_s)
        row |= percentiles(wall, cpu)
        log.info("D=%d %s: %s", d, backend, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        out["backends"][backend] = row
        del idx, searcher
    if "numpy" in lists:
        exact = lists["numpy"]
        if "faiss-flat" in lists:
            row = out["backends"]["faiss-flat"]
            row["identical_lists"] = int((lists["faiss-flat"] == exact).all(axis=1).sum())
            row["max_score_diff"] = float(np.abs(scores["faiss-flat"] - scores["numpy"]).max())
        if "faiss-ivf" in lists:
            got = lists["faiss-ivf"]
            out["backends"]["faiss-ivf"]["recall_at_10"] = float(
                np.mean([len(set(a) & set(b)) / K for a, b in zip(got, exact)]))
    return out


def bench_projection(n: int, d: int, umap_n: int, seed: int) -> dict:
    from rge_demo.analysis.projection import project

    rng = np.random.default_rng(seed + 1)
    x = unit_vectors(rng, n, d)
    clock = Clock()
    res = project(x, None, None, method="pca")
    out = dict(zip(("pca_s", "pca_cpu_s"), clock.read())) | {"n": n, "dim": d}
    assert res.method == "pca" and res.coords.shape == (n, 2)
    log.info("PCA of %d x %d in %.2fs", n, d, out["pca_s"])
    if umap_n:
        clock = Clock()
        tiny = project(x[:24], None, None, method="umap")
        out |= dict(zip(("umap_jit_s", "umap_jit_cpu_s"), clock.read()))
        log.info("UMAP first (tiny) fit, numba JIT: %.1fs (%s)", out["umap_jit_s"], tiny.method)
        sub = x[np.sort(rng.choice(n, min(umap_n, n), replace=False))]
        clock = Clock()
        res = project(sub, None, None, method="umap")
        out |= dict(zip(("umap_s", "umap_cpu_s"), clock.read())) | {"umap_n": len(sub), "umap_method": res.method}
        log.info("UMAP of %d x %d in %.1fs (%s)", len(sub), d, out["umap_s"], res.method)
    return out


def table(results: list[dict]) -> str:
    lines = ["| data | D | backend | build wall (CPU) | query p50 wall (CPU) | query p95 wall (CPU) | agreement with numpy |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, b in r["backends"].items():
            if name == "faiss-flat" and "identical_lists" in b:
                agree = f"{b['identical_lists']}/{r['queries']} identical top-10, max score diff {b['max_score_diff']:.1e}"
            elif name == "faiss-ivf":
                agree = (f"recall@10 {b.get('recall_at_10', float('nan')):.3f} (nlist {b['nlist']}, nprobe {b['nprobe']}, "
                         f"calibration {b['calibration_recall']:.3f})")
            else:
                agree = "reference" if name == "numpy" else ""
            lines.append(f"| {r['data']} | {r['dim']} | {name} | {b['build_s']:.1f} s ({b['build_cpu_s']:.1f} s) | "
                         f"{b['p50_ms']:.1f} ms ({b['cpu_p50_ms']:.1f} ms) | {b['p95_ms']:.1f} ms ({b['cpu_p95_ms']:.1f} ms) | {agree} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="gallery items")
    p.add_argument("--dims", default="192,2048", help="comma-separated dimensions ('' for none)")
    p.add_argument("--queries", type=int, default=200, help="single queries timed per backend")
    p.add_argument("--backends", default=",".join(BACKENDS[1:]), help="comma-separated, from " + ", ".join(BACKENDS[1:]))
    p.add_argument("--projection", action="store_true", help="also time PCA (all N) and UMAP (--umap subsample)")
    p.add_argument("--umap", type=int, default=20_000, help="UMAP subsample (0: skip UMAP)")
    p.add_argument("--data", choices=("uniform", "clustered"), default="uniform")
    p.add_argument("--centres", type=int, default=1000, help="clusters for --data clustered")
    p.add_argument("--spread", type=float, default=0.5, help="noise norm relative to the unit centre")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS[1:]]
    if unknown:
        p.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS[1:])}")
    dims = [int(x) for x in args.dims.split(",") if x]
    results = [bench_dim(args.n, d, args.queries, backends, args.seed, args.data, args.centres, args.spread)
               for d in dims]
    report: dict = {"index": results}
    if args.projection:
        report["projection"] = bench_projection(args.n, dims[0] if dims else 192, args.umap, args.seed)
    if results:
        print(table(results))
    if "projection" in report:
        pr = report["projection"]
        line = f"projection of {pr['n']} x {pr['dim']}: PCA {pr['pca_s']:.1f} s (CPU {pr['pca_cpu_s']:.1f} s)"
        if "umap_s" in pr:
            line += (f"; UMAP first fit (JIT) {pr['umap_jit_s']:.1f} s (CPU {pr['umap_jit_cpu_s']:.1f} s), then "
                     f"{pr['umap_n']} points {pr['umap_s']:.1f} s (CPU {pr['umap_cpu_s']:.1f} s, {pr['umap_method']})")
        print(line)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
