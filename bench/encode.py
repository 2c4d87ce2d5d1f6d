"""Encoding throughput: batched reasoning vs the reference's one-query-at-a-time loop.

On one model in one run:
1. reasoning mode over N queries (84x84 image + a short question): ``Encoder.reason`` at batch 32
   vs a loop that generates and embeds each query alone (batch 1), as the reference code does;
   queries/s for both, the ratio, and the minimum cosine between the two paths' vectors;
2. direct mode, items/s at batch 32 vs batch 1;
3. the warm-cache path: ``GalleryIndex.build`` twice over an N-item gallery with an
   ``EmbeddingCache`` in a temporary folder; the second build must make no forward pass.

An untrained model rarely emits ``<emb>`` and runs to the full budget, so ``--max-new-tokens``
(default 32) bounds every rationale; the table reports it.

``--memory`` measures the reasoning read-out's memory instead: one batch (default 32 queries with
336x336 images) on a fresh mid-size model (hidden 512, 8 layers), every rationale forced to the
full budget (default 128: 127 tokens, then ``<emb>``), read out two ways, each in its own process:
``all_layers`` (``generate(output_hidden_states=True)``, the encoder before the hook) and ``hook``
(the encoder's :class:`EmbCapture`). For each: the peak RSS increase over the generate call
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before), the bytes the read-out retains
(hidden-state tensors kept vs the hook's buffers; torch has no CPU allocator statistics) and the
minimum cosine between the two variants' vectors.

    python -m bench.encode [--model PATH_OR_NAME] [-n 64] [--batch-size 32] [--threads N] [--repeat R]
    python -m bench.encode --memory [--batch-size 32] [--max-new-tokens 128] [--size mid] [--image-side 336]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from rge_demo.data.items import Gallery, Item
from rge_demo.embedding.encoder import EmbAtBudget, Encoder, collate
from rge_demo.embedding.index import EmbeddingCache, GalleryIndex
from rge_demo.embedding.prompts import EmbedInput, instruction_for
from rge_demo.models import micro

log = logging.getLogger("bench.encode")

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle"]
QUESTIONS = ["How many {c} shapes are there?", "Is there a {c} {s}?", "What colour is the {s}?",
             "Where is the {c} {s}?", "Which shape is {c}?"]


def scene(rng: random.Random, side: int = 84) -> Image.Image:
    im = Image.new("RGB", (side, side), "grey")
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 4)):
        x, y, r = rng.randint(8, side - 8), rng.randint(8, side - 8), rng.randint(4, 12)
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        if shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif shape == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    return im


def queries(n: int, seed: int = 0, side: int = 84) -> list[EmbedInput]:
    rng = random.Random(seed)
    instruction = instruction_for("vqa", "query")
    return [EmbedInput(instruction, rng.choice(QUESTIONS).format(c=rng.choice(COLOURS), s=rng.choice(SHAPES)),
                       scene(rng, side)) for _ in range(n)]


# A mid-size model: about the 27.5 M-parameter row of the CPU cost table in STACK.md.
SIZES = {**micro.SIZES, "mid": micro.MicroSize(vocab=2048, hidden=512, layers=8, heads=8, kv_heads=2,
                                               intermediate=1408, mrope_section=(8, 12, 12), vision_depth=2,
                                               vision_hidden=128, vision_heads=4)}


def build_model(config_fn, pixels: tuple[int, int] | None, seed: int = 0, vocab: int = 2048, **model_kw):
    """``(model, processor)``: the micro tokenizer and chat template, a config from ``config_fn(tokenizer)``.

    ``pixels``: the image processor's (min_pixels, max_pixels) (None: the micro models' 84x84).
    ``model_kw`` go to ``from_config`` (dtype, attn_implementation).
    """
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rge_demo.models.processor import RGEProcessor

    tokenizer = micro.build_tokenizer(micro.english_corpus(), vocab)
    if pixels is None:
        processor = micro.build_processor(tokenizer)
    else:
        processor = RGEProcessor(image_processor=Qwen2VLImageProcessorPil(min_pixels=pixels[0], max_pixels=pixels[1]),
                                 tokenizer=tokenizer, chat_template=micro.CHAT_TEMPLATE)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config_fn(tokenizer), **model_kw)
    return model.eval(), processor


# ------------------------------------------------------------------------------ memory of the read-out

def all_layer_generate(enc: Encoder, rows, budget: int):
    """The read-out before the hook: ``generate(output_hidden_states=True)`` and index the kept states.

    Returns (vectors (B, D) unit, bytes of the hidden-state tensors ``generate`` returned).
    """
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    batch = collate(rows, enc.pad_id, device=enc.device, dtype=enc.dtype)
    prompt_len = batch["input_ids"].shape[1]

    class StopAfterEmb(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids[:, prompt_len:-1] == enc.emb_id).any(dim=1)

    config = GenerationConfig(max_new_tokens=budget + 1, do_sample=False, pad_token_id=enc.pad_id,
                              suppress_tokens=enc.suppress or None, use_cache=True, return_dict_in_generate=True,
                              output_hidden_states=True)
    out = enc.model.generate(**batch, generation_config=config,
                             logits_processor=[EmbAtBudget(enc.emb_id, prompt_len, budget)],
                             stopping_criteria=StoppingCriteriaList([StopAfterEmb()]))
    states = []
    for i, new in enumerate(out.sequences[:, prompt_len:].tolist()):
        j = new.index(enc.emb_id)  # EmbAtBudget puts it at budget - 1
        states.append(out.hidden_states[j + 1][-1][i, -1].float())
    kept = {t.data_ptr(): t.numel() * t.element_size() for step in out.hidden_states for t in step}
    return torch.nn.functional.normalize(torch.stack(states), dim=-1).cpu().numpy(), sum(kept.values())


def hook_generate(enc: Encoder, rows, budget: int):
    """The encoder's own read-out (forced budget). Returns (vectors (B, D) unit, bytes the capture holds)."""
    enc.force_budget = True
    generated = enc._generate(rows, budget)
    assert not any(forced for _, forced, _ in generated)
    return enc._finish(rows, generated), enc.last_capture.retained_bytes()


def proc_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def memory_child(args) -> int:
    """One variant in this process: prints a JSON line, writes the vectors to ``args.vectors``."""
    torch.set_num_threads(args.threads)
    side = args.image_side
    model, processor = build_model(lambda tok: micro.build_config(SIZES[args.size], tok), (side * side, side * side))
    enc = Encoder(model, processor)
    budget = args.max_new_tokens
    rows = enc.rows(queries(args.batch_size, seed=1, side=args.image_side), direct=False)
    run = {"all_layers": all_layer_generate, "hook": hook_generate}[args.memory_child]
    with torch.inference_mode():
        run(enc, rows[:2], 2)  # warm-up: first-call allocations are not the read-out's
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        rss0 = proc_kib("VmRSS")
        t0 = time.perf_counter()
        vectors, kept = run(enc, rows, budget)
        seconds = time.perf_counter() - t0
    np.save(args.vectors, vectors)
    print(json.dumps({
        "variant": args.memory_child, "peak_rss_increase": (proc_kib("VmHWM") - rss0) * 1024, "retained": kept,
        "seconds": seconds, "prompt_tokens": len(rows[0].ids), "padded": max(len(r.ids) for r in rows),
        "hidden": model.config.text_config.hidden_size,
        "layers": model.config.text_config.num_hidden_layers,
        "params": sum(t.numel() for t in model.parameters()),
    }))
    return 0


def memory(args) -> int:
    """Run each read-out variant in its own process (peak RSS is per process) and compare."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="rge-bench-mem-") as tmp:
        for variant in ("all_layers", "hook"):
            vec = Path(tmp) / f"{variant}.npy"
            cmd = [sys.executable, __file__, "--memory-child", variant, "--vectors", str(vec), "--size", args.size,
                   "--image-side", str(args.image_side), "--batch-size", str(args.batch_size),
                   "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAILED: the {variant} run exited {r.returncode}: {r.stderr.strip()[-2000:]}", file=sys.stderr)
                return 1
            results[variant] = json.loads(r.stdout.strip().splitlines()[-1])
            results[variant]["vectors"] = np.load(vec)
    old, new = results["all_layers"], results["hook"]
    cos = (old["vectors"] * new["vectors"]).sum(1).min()
    mib = 2 ** 20
    print(f"model: fresh '{args.size}' micro, hidden {old['hidden']}, {old['layers']} layers, "
          f"{old['params'] / 1e6:.1f} M parameters, float32 on cpu; torch threads {args.threads}; "
          f"batch {args.batch_size}, {args.image_side}x{args.image_side} images, prompt {old['prompt_tokens']} tokens, "
          f"every rationale forced to {args.max_new_tokens} tokens (the last one <emb>)")
    print(f"\n{'read-out':<34}  {'peak RSS increase':>17}  {'read-out retains':>16}  {'wall s':>7}")
    for name, r in (("all layers (output_hidden_states)", old), ("hook on the final norm", new)):
        print(f"{name:<34}  {r['peak_rss_increase'] / mib:13.1f} MiB  {r['retained'] / mib:12.3f} MiB  "
              f"{r['seconds']:7.2f}")
    print(f"\npeak RSS increase: {old['peak_rss_increase'] / max(new['peak_rss_increase'], 1):.1f}x lower with the "
          f"hook; retained read-out bytes {old['retained'] / new['retained']:.0f}x fewer")
    print(f"min cosine all-layers vs hook: {cos:.6f} (must be >= 0.9999)")
    # What output_hidden_states keeps: (layers + 1) states of (B, positions, D), positions = padded prompt + steps.
    def kept(layers, batch, prompt, hidden, nbytes):
        return (layers + 1) * batch * (prompt + args.max_new_tokens) * hidden * nbytes
    here = kept(old["layers"], args.batch_size, old["padded"], old["hidden"], 4)
    rge3b = kept(36, args.batch_size, 1024 + 64, 2048, 2)
    print(f"all-layer read-out, arithmetic: (layers+1) x batch x (padded prompt {old['padded']} + {args.max_new_tokens}) "
          f"x hidden x 4 bytes = {here / mib:.1f} MiB here (measured {old['retained'] / mib:.1f}); at RGE-3B size "
          f"(36 layers, hidden 2048, bf16), batch {args.batch_size}, a max_pixels image (1024 visual tokens + ~64 "
          f"text): {rge3b / 2 ** 30:.1f} GiB")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    if cos < 0.9999:
        print("FAILED: the two read-outs disagree", file=sys.stderr)
        return 1
    return 0


CPU = {}  # path name -> process CPU seconds of its best run


def timed(fn, repeat: int = 1, name: str = ""):
    """``(result, best wall time)`` over ``repeat`` runs: the minimum is the least disturbed by other load.

    The process CPU time of that run goes to ``CPU[name]``: with one torch thread it is close to the
    wall time an otherwise idle machine would show.
    """
    best, out = float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, CPU[name] = wall, cpu
    return out, best


def load(args):
    if args.model:
        from rge_demo.config import get_settings
        from rge_demo.models.manager import ModelManager

        loaded = ModelManager(get_settings()).load(args.model, dtype=args.dtype)
        return loaded.model, loaded.processor, loaded.fingerprint, loaded.spec.name
    from rge_demo.models.loading import fingerprint
    from rge_demo.models.micro import build_micro

    model, processor = build_micro(args.size, seed=0)
    return model, processor, fingerprint(model), f"fresh untrained '{args.size}' micro"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registry name, folder or hub id (default: build a fresh micro)")
    p.add_argument("--size", default=None, help="size of the fresh model when --model is not given "
                   "(micro, test or mid; default micro, --memory: mid)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("-n", "--queries", type=int, default=64, help="queries / gallery items (default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=None, help="rationale budget (default 32; --memory: 128)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--repeat", type=int, default=1, help="time each path this many times, keep the best")
    p.add_argument("--memory", action="store_true", help="measure the read-out's memory instead (see above)")
    p.add_argument("--image-side", type=int, default=336, help="--memory: image side in pixels (default 336)")
    p.add_argument("--memory-child", choices=["all_layers", "hook"], help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.memory or args.memory_child:
        args.size = args.size or "mid"
        if args.size not in SIZES:
            p.error(f"--size must be one of {sorted(SIZES)}")
        args.max_new_tokens = args.max_new_tokens or 128
        return memory_child(args) if args.memory_child else memory(args)
    args.max_new_tokens = args.max_new_tokens or 32
    args.size = args.size or "micro"
    torch.set_num_threads(args.threads)

    model, processor, fp, what = load(args)
    enc = Encoder(model, processor, max_new_tokens=args.max_new_tokens)
    n, bs, budget = args.queries, args.batch_size, args.max_new_tokens
    inputs = queries(n)
    params = sum(t.numel() for t in model.parameters())
    print(f"model: {what}, {params / 1e6:.2f} M parameters, {enc.dtype} on {enc.device}; "
          f"torch threads {torch.get_num_threads()}; N={n}, batch {bs}, max_new_tokens {budget}")

    enc.reason(inputs[:2], batch_size=2, max_new_tokens=4)  # warm-up
    enc.direct(inputs[:2])

    # 1. reasoning: batched vs one at a time
    r = args.repeat
    load_before = os.getloadavg()[0]
    batched, t_batched = timed(lambda: enc.reason(inputs, batch_size=bs, max_new_tokens=budget), r, "rb")
    single, t_single = timed(lambda: [enc.reason([x], batch_size=1, max_new_tokens=budget)[0] for x in inputs], r, "r1")
    cos = np.array([float(a.vector @ b.vector) for a, b in zip(batched, single)])
    same = sum(a.rationale == b.rationale for a, b in zip(batched, single))
    tokens = np.mean([r.tokens for r in batched])
    forced = sum(r.forced for r in batched)

    # 2. direct: batch bs vs batch 1
    _, t_direct_b = timed(lambda: enc.direct(inputs, batch_size=bs), r, "db")
    _, t_direct_1 = timed(lambda: enc.direct(inputs, batch_size=1), r, "d1")

    # 3. warm cache: the second build of the same gallery embeds nothing
    with tempfile.TemporaryDirectory(prefix="rge-bench-") as tmp:
        root = Path(tmp) / "gallery"
        root.mkdir()
        items = []
        for i, x in enumerate(inputs):
            x.image.save(root / f"{i:04d}.png")
            items.append(Item(id=f"item-{i:04d}", text=x.text, image=f"{i:04d}.png"))
        gallery = Gallery(name="bench", root=root, items=items,
                          candidate_instruction=instruction_for("retrieval", "candidate"))
        gallery.save()
        images = {f"{i:04d}.png": x.image for i, x in enumerate(inputs)}

        def embed_fn(batch):
            return enc.direct([EmbedInput(gallery.candidate_instruction, it.text, images[it.image]) for it in batch],
                              batch_size=len(batch))

        cache = EmbeddingCache(Path(tmp) / "cache")
        kw = dict(fingerprint=fp, instruction=gallery.candidate_instruction, batch_size=bs)
        cold, t_cold = timed(lambda: GalleryIndex.build(gallery, embed_fn, cache=cache, **kw), 1, "cold")
        cache.clear_memory()  # the warm build reads from disk, as a fresh process would
        before = enc.forward_passes
        warm, t_warm = timed(lambda: GalleryIndex.build(gallery, embed_fn, cache=EmbeddingCache(cache.root), **kw), 1, "warm")
        warm_passes = enc.forward_passes - before
        same_matrix = float(np.abs(cold.matrix - warm.matrix).max())

    rows = [
        ("reasoning, batch %d" % bs, f"{n / t_batched:8.2f} q/s", t_batched, "rb"),
        ("reasoning, one at a time (reference)", f"{n / t_single:8.2f} q/s", t_single, "r1"),
        ("direct, batch %d" % bs, f"{n / t_direct_b:8.1f} it/s", t_direct_b, "db"),
        ("direct, batch 1", f"{n / t_direct_1:8.1f} it/s", t_direct_1, "d1"),
        ("index build, cold cache", f"{n / t_cold:8.1f} it/s", t_cold, "cold"),
        ("index build, warm cache", f"{n / t_warm:8.1f} it/s", t_warm, "warm"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'path':<{width}}  {'throughput':>12}  {'wall s':>8}  {'cpu s':>8}")
    for name, rate, secs, key in rows:
        print(f"{name:<{width}}  {rate:>12}  {secs:8.2f}  {CPU[key]:8.2f}")
    ratio = t_single / t_batched
    print(f"\nreasoning speed-up, batch {bs} vs one at a time: {ratio:.1f}x wall, "
          f"{CPU['r1'] / CPU['rb']:.1f}x cpu (target >= 8x)")
    print(f"min cosine batched vs one-at-a-time: {cos.min():.6f} (must be >= 0.999); "
          f"identical rationales {same}/{n}; mean rationale tokens {tokens:.1f}, "
          f"{forced}/{n} ran to the budget of {budget}")
    print(f"direct speed-up, batch {bs} vs 1: {t_direct_1 / t_direct_b:.1f}x")
    print(f"warm-cache build: {warm_passes} forward passes (must be 0), {warm.stats.cached}/{n} from cache, "
          f"max |difference| to the cold build {same_matrix:.1e}")
    print(f"machine: {os.cpu_count()} cores, load average {load_before:.1f} at the start and "
          f"{os.getloadavg()[0]:.1f} at the end (other processes on the cores distort every rate)")
    ok = cos.min() >= 0.999 and warm_passes == 0
    if not ok:
        print("FAILED: a check above did not hold", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
