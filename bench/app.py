"""App latency, measured like a user: start-up, first rationale token, full compares alone and with 4 users.

    python -m bench.app [--model rge-micro] [--runs 10] [--users 4] [--repeats 2]

Starts ``python app.py`` twice (cold caches, then warm) on a free port and drives the Compare tab's
streaming endpoint with gradio_client. In the warm app, in the same run:

* one user: ``--runs`` compares one after another (seconds to the first streamed rationale text
  and to the finished comparison, direct + reasoning top-k);
* ``--users`` users at once: each its own gradio_client session, all released together, each
  running ``--runs`` compares back to back (no think time). Their requests meet in the encoder's
  request collector (``rge_demo.embedding.batcher``), which merges them into shared batches.

The two blocks alternate ``--repeats`` times, so that both see the same load on a shared machine.

Prints p50 / p95 seconds per compare for both, and the 4-user p95 over the single-user median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

from rge_demo.data.items import Gallery
from rge_demo.models.manager import default_specs
from rge_demo.service import SAMPLE_GALLERIES
from tests.apprunner import RunningApp  # run from the repository root: python -m bench.app


def one_compare(client: Client, gallery: Gallery, i: int) -> tuple[float, float]:
    q = gallery.queries[i % len(gallery.queries)]
    image = handle_file(str(gallery.image_path(q.image))) if q.image else None
    t0 = time.perf_counter()
    first = None
    job = client.submit(gallery.name, image, q.text, q.instruction, q.target_id, 5, api_name="/compare")
    for update in job:
        if first is None and update[1]:
            first = time.perf_counter() - t0
    job.result()  # raises if the app reported an error
    return first or float("nan"), time.perf_counter() - t0


def concurrent_compares(url: str, gallery: Gallery, users: int, runs: int) -> list[tuple[float, float]]:
    """``users`` sessions released together, each ``runs`` compares back to back; every compare's times."""
    clients = [Client(url, verbose=False) for _ in range(users)]
    barrier = threading.Barrier(users)
    times: list[list[tuple[float, float]]] = [[] for _ in range(users)]
    errors: list[BaseException] = []

    def session(u: int) -> None:
        barrier.wait()
        try:
            for r in range(runs):
                # the single-user block's queries, each user starting at another one
                times[u].append(one_compare(clients[u], gallery, 1 + (u + r) % runs))
        except BaseException as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=session, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [t for ts in times for t in ts]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rge-micro")
    parser.add_argument("--runs", type=int, default=10, help="compares per user (default 10)")
    parser.add_argument("--users", type=int, default=4, help="concurrent sessions (default 4)")
    parser.add_argument("--gallery", default="vqa-count")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate the 1-user and the N-user blocks this many times (both see the same load)")
    args = parser.parse_args()
    specs = {s.name: s.source for s in default_specs()}
    model = Path(specs.get(args.model, args.model))
    gallery = Gallery.load(SAMPLE_GALLERIES / args.gallery)
    with tempfile.TemporaryDirectory() as cache:
        starts = []
        for label in ("cold caches", "warm caches"):
            app = RunningApp(model, Path(cache), max_new_tokens=args.max_new_tokens, timeout=600)
            starts.append((label, app.ready_seconds))
            if label == "warm caches":
                try:
                    client = Client(app.url, verbose=False)
                    one_compare(client, gallery, 0)  # the first request pays one-off costs
                    concurrent_compares(app.url, gallery, args.users, 1)  # warm-up round, not counted
                    single, many = [], []
                    for _ in range(args.repeats):
                        single += [one_compare(client, gallery, i) for i in range(1, args.runs + 1)]
                        many += concurrent_compares(app.url, gallery, args.users, args.runs)
                finally:
                    app.stop()
            else:
                app.stop()
    full1, fullN = [t[1] for t in single], [t[1] for t in many]
    print(f"model {args.model} ({model}), gallery {args.gallery}, budget {args.max_new_tokens} tokens")
    for label, seconds in starts:
        print(f"start-up to serving ({label}): {seconds:.1f} s")
    print(f"first rationale text, 1 user:   median {statistics.median(t[0] for t in single):.3f} s")
    print(f"first rationale text, {args.users} users:  median {statistics.median(t[0] for t in many):.3f} s")
    print(f"full compare, 1 user ({len(full1)} compares):   p50 {pct(full1, 50):.3f} s, p95 {pct(full1, 95):.3f} s, "
          f"max {max(full1):.3f} s")
    print(f"full compare, {args.users} users ({len(fullN)} compares): p50 {pct(fullN, 50):.3f} s, "
          f"p95 {pct(fullN, 95):.3f} s, max {max(fullN):.3f} s")
    ratio = pct(fullN, 95) / pct(full1, 50)
    print(f"{args.users}-user p95 / 1-user median: {ratio:.2f}x (target <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
