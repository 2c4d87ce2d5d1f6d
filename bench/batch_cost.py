"""What a merged reasoning batch costs on this machine, against one query.

    OMP_NUM_THREADS=1 python -m bench.batch_cost [--model rge-micro] [--gallery vqa-count] [--tokens 24]

Two figures behind the concurrent-users benchmark (``bench/app.py``), one process, one thread:

* equal length: ``generate`` time of 1, 2, 4 and 8 of the gallery's queries with every rationale
  forced to ``--tokens`` tokens (best of 3), and the ratio to 1 row;
* free length: the first 4 queries one at a time and as one batch, with the lengths their
  rationales end at; a batch runs until its longest.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from PIL import Image

from rge_demo.app.demo import SAMPLE_GALLERIES
from rge_demo.data.items import Gallery
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.models.loading import load_checkpoint
from rge_demo.models.manager import default_specs


def seconds(enc: Encoder, rows, budget: int, repeats: int = 3) -> tuple[float, list]:
    best, generated = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            generated = enc._generate(rows, budget)
        best = min(best, time.perf_counter() - t0)
    return best, generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rge-micro")
    parser.add_argument("--gallery", default="vqa-count")
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = {s.name: s.source for s in default_specs()}.get(args.model, args.model)
    enc = Encoder(*load_checkpoint(source, device="cpu", dtype="float32"))
    gallery = Gallery.load(SAMPLE_GALLERIES / args.gallery)
    inputs = [EmbedInput(q.instruction, q.text, Image.open(gallery.image_path(q.image)).convert("RGB") if q.image else None)
              for q in gallery.queries[:8]]
    print(f"model {args.model}, gallery {args.gallery}, one thread")
    enc.force_budget = True
    single = None
    for b in (1, 2, 4, 8):
        s, _ = seconds(enc, enc.rows(inputs[:b], direct=False), args.tokens)
        single = single or s
        print(f"equal length ({args.tokens} tokens), batch {b}: {s:.3f} s ({s / single:.2f}x batch 1)")
    enc.force_budget = False
    alone = [seconds(enc, enc.rows([x], direct=False), enc.max_new_tokens) for x in inputs[:4]]
    merged, generated = seconds(enc, enc.rows(inputs[:4], direct=False), enc.max_new_tokens)
    lengths = [len(ids) for ids, _, _ in generated]
    print(f"free length, 4 queries alone: {', '.join(f'{s:.3f}' for s, _ in alone)} s; "
          f"as one batch: {merged:.3f} s (rationale tokens {lengths})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
