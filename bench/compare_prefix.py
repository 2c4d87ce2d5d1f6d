"""What a compare saves by sharing the prompt between its two passes.

    OMP_NUM_THREADS=1 python -m bench.compare_prefix [--tokens 24] [--image-side 336] [--repeats 3]

A compare embeds one query twice: direct (``prompt + <emb>``, one forward) and reasoning
(``generate`` from ``prompt``, then ``<emb>``). ``Encoder._compare`` runs the direct forward with a
KV cache and lets ``generate`` continue from it, so the reasoning pass does not read the prompt
again. For 1 and 4 queries, best of ``--repeats``, one process, one thread, side by side:

* two passes: ``Encoder._vectors`` on the direct rows, then ``_generate`` + ``_finish``;
* shared: ``Encoder._compare``;

with every rationale forced to ``--tokens`` tokens (the last one ``<emb>``), and the minimum
cosine between the two paths' direct and reasoning vectors. Before the model runs, a compare
processes its query (tokenizer, image processor): twice (the direct and the reasoning prompt) or
once, the direct row being the reasoning row plus ``<emb>`` (``Row.with_emb``, what the app does);
both are timed too. Two models: the shipped rge-micro (84x84 images, 9 image tokens, a ~60-token
prompt) and a fresh mid-size model (hidden 512, 8 layers) on ``--image-side`` images, whose prompt
is mostly image tokens, as a real checkpoint's is.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.encode import SIZES, build_model, queries
from rge_demo.embedding.encoder import Encoder
from rge_demo.models import micro
from rge_demo.models.loading import load_checkpoint
from rge_demo.models.manager import default_specs


def best(fn, repeats: int) -> tuple[float, object]:
    seconds, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fn()
        seconds = min(seconds, time.perf_counter() - t0)
    return seconds, out


def compare_costs(enc: Encoder, inputs, tokens: int, repeats: int) -> list[str]:
    lines = []
    enc.force_budget = True
    for b in (1, 4):
        rows, direct_rows = enc.rows(inputs[:b], direct=False), enc.rows(inputs[:b], direct=True)

        def two_passes():
            direct = enc._vectors(direct_rows)
            generated = enc._generate(rows, tokens)
            return direct, enc._finish(rows, generated)

        apart, (d1, r1) = best(two_passes, repeats)
        shared, (d2, _, r2) = best(lambda: enc._compare(rows, tokens), repeats)
        cos = min((d1 * d2).sum(1).min(), (r1 * r2).sum(1).min())
        twice, _ = best(lambda: (enc.rows(inputs[:b], direct=False), enc.rows(inputs[:b], direct=True)), repeats)
        once, _ = best(lambda: [r.with_emb(enc.emb_id) for r in enc.rows(inputs[:b], direct=False)], repeats)
        lines.append(f"  {b} {'query' if b == 1 else 'queries'}: two passes {apart:.3f} s, shared {shared:.3f} s "
                     f"(two passes / shared = {apart / shared:.2f}x; prompt {max(len(r.ids) for r in rows)} tokens; "
                     f"min cosine {cos:.6f}); processing the queries twice {twice * 1000:.1f} ms, "
                     f"once {once * 1000:.1f} ms")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=24, help="forced rationale length (default 24)")
    parser.add_argument("--image-side", type=int, default=336, help="the mid model's image side (default 336)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = {s.name: s.source for s in default_specs()}["rge-micro"]
    shipped = Encoder(*load_checkpoint(source, device="cpu", dtype="float32"))
    side = args.image_side
    mid = Encoder(*build_model(lambda tok: micro.build_config(SIZES["mid"], tok), (side * side, side * side)))
    print(f"one thread, every rationale forced to {args.tokens} tokens, best of {args.repeats}")
    print("shipped rge-micro, 84x84 world-style images:")
    print("\n".join(compare_costs(shipped, queries(4, seed=1), args.tokens, args.repeats)))
    print(f"fresh mid-size model (hidden 512, 8 layers), {side}x{side} images:")
    print("\n".join(compare_costs(mid, queries(4, seed=1, side=side), args.tokens, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
