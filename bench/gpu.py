"""GPU readiness: reasoning throughput and memory at the size of the real RGE-3B checkpoint.

Builds ``Qwen2_5_VLForConditionalGeneration`` with the configuration of Qwen2.5-VL-3B-Instruct, the
base of MCG-NJU/RGE's 3B model (hidden 2048, 36 layers, 16 heads, 2 KV heads, intermediate 11008,
vocab 151936, tied embeddings; vision tower depth 32, hidden 1280, out 2048), with random weights,
in bf16, directly on the GPU. The tokenizer is the micro models' (Qwen special tokens and ``<emb>``,
a small BPE; the config's vocabulary stays 151936). Images go through the reference evaluation's
pixel limits (min 256*28*28, max 1024*28*28): a 448x448 image is 256 visual tokens.

Random weights rarely emit ``<emb>``, so every rationale is forced to the full budget
(:class:`~rge_demo.embedding.encoder.EmbAtBudget`: 127 tokens, then ``<emb>`` as the 128th). The
work per query is then fixed. Printed: reasoning queries/s at batch 32, at batch 8 and one query
at a time (the reference's loop), and the peak GPU memory of each (``torch.cuda.max_memory_allocated``).

    python -m bench.gpu [--attn sdpa|flash_attention_2] [--quant none|8bit|4bit] [-n 32] [--single-n 8]
                        [--max-new-tokens 128] [--image-side 448]
    python -m bench.gpu --allow-cpu --tiny    # the same code path on a test-size config, on CPU

``--quant`` saves the random model to a temporary folder and loads it back through the project's
loader with a bitsandbytes config (vision tower and lm_head unquantised), as a user's checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
import time

import numpy as np
import torch

from bench.encode import build_model, queries
from rge_demo.embedding.encoder import Encoder
from rge_demo.models import micro

log = logging.getLogger("bench.gpu")

REFERENCE_PIXELS = (256 * 28 * 28, 1024 * 28 * 28)  # MCG-NJU/RGE eval: min_pixels, max_pixels
GIB = 2 ** 30


def rge3b_config(tokenizer):
    """Qwen2.5-VL-3B-Instruct's config.json, special-token ids taken from ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in micro.SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6,
            max_position_embeddings=128000, use_sliding_window=False, sliding_window=32768, max_window_layers=70,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            bos_token_id=ids[micro.PAD_TOKEN], eos_token_id=ids["<|im_end|>"], pad_token_id=ids[micro.PAD_TOKEN],
        ),
        vision_config=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, emb_token_id=ids[micro.EMB_TOKEN],
    )


def tiny_config(tokenizer):
    return micro.build_config(micro.SIZES["test"], tokenizer)


def refuse(message: str) -> int:
    print(f"bench/gpu.py: {message}", file=sys.stderr)
    return 2


def build(args, device: str):
    """``(model, processor)`` on ``device``: built there (bf16), or saved and reloaded quantised."""
    dtype = torch.bfloat16
    config_fn, pixels = (tiny_config, None) if args.tiny else (rge3b_config, REFERENCE_PIXELS)
    with torch.device(device):
        model, processor = build_model(config_fn, pixels, seed=0, dtype=dtype, attn_implementation=args.attn)
    if args.quant == "none":
        return model, processor
    from rge_demo.models.loading import ModelError, load_checkpoint

    with tempfile.TemporaryDirectory(prefix="rge-gpu-bench-") as tmp:
        micro.save(model, processor, tmp)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        try:
            return load_checkpoint(tmp, device=device, dtype=dtype, quantization=args.quant,
                                   attn_implementation=args.attn)
        except ModelError as e:
            raise SystemExit(refuse(str(e))) from None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "flash_attention_2"], help="attention implementation")
    p.add_argument("--quant", default="none", choices=["none", "8bit", "4bit"], help="bitsandbytes quantisation")
    p.add_argument("-n", "--queries", type=int, default=32, help="queries for the batched runs (default 32)")
    p.add_argument("--single-n", type=int, default=8, help="queries for the one-at-a-time run (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="the forced rationale budget (default 128)")
    p.add_argument("--image-side", type=int, default=None,
                   help="image side in pixels (default 448: 256 visual tokens; --tiny: 84, the micro processor's size)")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU (only with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a test-size config instead of RGE-3B (checks the code path)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if torch.cuda.is_available():
        device = "cuda"
    elif args.allow_cpu and args.tiny:
        device = "cpu"
    else:
        return refuse("no CUDA GPU found; this benchmark needs one (--allow-cpu --tiny runs the code path on a "
                      "small config on CPU)")
    if args.attn == "flash_attention_2" and (device == "cpu" or importlib.util.find_spec("flash_attn") is None):
        return refuse("--attn flash_attention_2 needs a CUDA GPU and the flash_attn package")
    budget, n, n1 = args.max_new_tokens, args.queries, args.single_n
    args.image_side = args.image_side or (micro.IMAGE_SIDE if args.tiny else 448)
    if budget < 1 or n < 1 or n1 < 1:
        return refuse("--max-new-tokens, -n and --single-n must be at least 1")

    t0 = time.perf_counter()
    model, processor = build(args, device)
    sync(device)
    build_s = time.perf_counter() - t0
    weights = torch.cuda.memory_allocated() if device == "cuda" else None
    enc = Encoder(model, processor, max_new_tokens=budget)
    enc.force_budget = True
    inputs = queries(max(n, n1), seed=0, side=args.image_side)
    prompt = len(enc.rows(inputs[:1], direct=False)[0].ids)
    params = sum(t.numel() for t in model.parameters())
    name = "test-size micro config (--tiny)" if args.tiny else "RGE-3B configuration"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    print(f"model: {name}, random weights, {params / 1e6:,.1f} M parameters, {enc.dtype} "
          f"({args.quant if args.quant != 'none' else 'not quantised'}), attention {args.attn}, on {device} "
          f"(GPU: {gpu}); built in {build_s:.1f} s" + (f", weights {weights / GIB:.2f} GiB" if weights else ""))
    print(f"queries: {args.image_side}x{args.image_side} image + a question, prompt {prompt} tokens; every "
          f"rationale forced to {budget} tokens (the last one <emb>)")

    enc.reason(inputs[:2], batch_size=2, max_new_tokens=min(budget, 4))  # warm-up: kernels, allocator
    runs = []
    for label, bs, count in (("reasoning, batch 32", 32, n), ("reasoning, batch 8", 8, n),
                             ("reasoning, one at a time (reference)", 1, n1)):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.perf_counter()
        results = enc.reason(inputs[:count], batch_size=bs, max_new_tokens=budget)
        sync(device)
        secs = time.perf_counter() - t0
        assert all(r.tokens == budget - 1 and not r.forced for r in results), "a rationale missed the forced budget"
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        runs.append((label, count, secs, peak, np.stack([r.vector for r in results])))

    width = max(len(r[0]) for r in runs)
    print(f"\n{'path':<{width}}  {'queries':>7}  {'queries/s':>9}  {'tokens/s':>9}  {'wall s':>7}  {'peak GPU memory':>15}")
    for label, count, secs, peak, _ in runs:
        mem = f"{peak / GIB:11.2f} GiB" if peak is not None else f"{'n/a (CPU)':>15}"
        print(f"{label:<{width}}  {count:7d}  {count / secs:9.2f}  {count * budget / secs:9.1f}  {secs:7.2f}  {mem}")
    single = runs[2][1] / runs[2][2]
    print(f"\nspeed-up over one at a time: batch 32 {runs[0][1] / runs[0][2] / single:.1f}x, "
          f"batch 8 {runs[1][1] / runs[1][2] / single:.1f}x")
    k = min(n, n1)
    cos = (runs[0][4][:k] * runs[2][4][:k]).sum(1)
    print(f"cosine batch 32 vs one at a time over {k} queries: min {cos.min():.4f} (random bf16 weights: greedy "
          f"tokens can part ways under padding, so this is informative only)")
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
