"""App latency, measured like a user: start-up, first rationale token, one full compare.

    python -m bench.app [--model rge-micro] [--runs 5]

Starts ``python app.py`` twice (cold caches, then warm) on a free port and drives the Compare tab's
streaming endpoint with gradio_client: seconds to the first streamed rationale text and to the
finished comparison (direct + reasoning top-k), median over ``--runs`` sample queries.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gradio_client import Client, handle_file

from rge_demo.data.items import Gallery
from rge_demo.models.manager import default_specs
from rge_demo.service import SAMPLE_GALLERIES
from tests.apprunner import RunningApp  # run from the repository root: python -m bench.app


def one_compare(client: Client, gallery: str, i: int) -> tuple[float, float]:
    g = Gallery.load(SAMPLE_GALLERIES / gallery)
    q = g.queries[i % len(g.queries)]
    image = handle_file(str(g.image_path(q.image))) if q.image else None
    t0 = time.perf_counter()
    first = None
    job = client.submit(gallery, image, q.text, q.instruction, q.target_id, 5, api_name="/compare")
    for update in job:
        if first is None and update[1]:
            first = time.perf_counter() - t0
    return first or float("nan"), time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rge-micro")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gallery", default="vqa-count")
    args = parser.parse_args()
    specs = {s.name: s.source for s in default_specs()}
    model = Path(specs.get(args.model, args.model))
    with tempfile.TemporaryDirectory() as cache:
        starts = []
        for label in ("cold caches", "warm caches"):
            app = RunningApp(model, Path(cache), max_new_tokens=128, timeout=600)
            starts.append((label, app.ready_seconds))
            if label == "warm caches":
                client = Client(app.url, verbose=False)
                one_compare(client, args.gallery, 0)  # the first request pays one-off costs
                times = [one_compare(client, args.gallery, i) for i in range(1, args.runs + 1)]
            app.stop()
    print(f"model {args.model} ({model}), gallery {args.gallery}, {args.runs} compares")
    for label, seconds in starts:
        print(f"start-up to serving ({label}): {seconds:.1f} s")
    print(f"first rationale text:   median {statistics.median(t[0] for t in times):.3f} s")
    print(f"full compare (both modes, top-5): median {statistics.median(t[1] for t in times):.3f} s, "
          f"max {max(t[1] for t in times):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
