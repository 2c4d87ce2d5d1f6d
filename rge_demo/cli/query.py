"""``embed`` and ``search``: one query through a loaded model, and the helpers the query commands share."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .common import TASKS, Progress, UsageError, arg, command


def load_model(args):
    """``(LoadedModel, Settings)`` for ``--model`` (settings from RGE_* with the flags on top)."""
    from rge_demo.config import get_settings
    from rge_demo.models.manager import ModelManager

    settings = get_settings()
    if args.max_new_tokens is not None:
        settings.max_new_tokens = args.max_new_tokens
    manager = ModelManager(settings)
    return manager.load(args.model or settings.model, dtype=args.dtype or settings.dtype,
                        quantization=args.quantization), settings


def query_input(args, instruction: str):
    """An EmbedInput from ``--text``/``--image``; the image goes through the safe loader."""
    from rge_demo.data.images import load_image
    from rge_demo.embedding.prompts import EmbedInput

    image = None
    if args.image is not None:
        image = load_image(args.image)  # ImageError names the file
    if not (args.text or image is not None):
        raise UsageError("give a query: --text and/or --image")
    return EmbedInput(instruction=instruction, text=args.text, image=image)


def instruction_arg(args, default: str = "", side: str = "query") -> str:
    from rge_demo.embedding.prompts import instruction_for

    if getattr(args, "instruction", None) is not None:
        if getattr(args, "task", None):
            raise UsageError("give --instruction or --task, not both")
        return args.instruction
    if getattr(args, "task", None):
        return instruction_for(args.task, side)
    return default


def embed_query(loaded, inp, reason: bool) -> dict:
    """Embed one query; the fields of ``embed --json``."""
    from rge_demo.embedding.prompts import prompt_text

    enc = loaded.encoder
    if reason:
        r = enc.reason([inp], batch_size=1)[0]
        return {"mode": "reasoning", "prompt": r.prompt, "rationale": r.rationale, "tokens": r.tokens,
                "forced": r.forced, "seconds": r.seconds, "vector": r.vector}
    t0 = time.perf_counter()
    vec = enc.direct([inp], batch_size=1)[0]
    return {"mode": "direct", "prompt": prompt_text(loaded.processor, inp, direct=True, profile=enc.profile),
            "rationale": "", "tokens": 0, "forced": False, "seconds": time.perf_counter() - t0, "vector": vec}


def load_gallery(folder: str):
    """The Gallery in ``folder`` (``--gallery``)."""
    from rge_demo.data.items import Gallery

    if not Path(folder).is_dir():
        raise UsageError(f"{folder}: no such gallery folder")
    return Gallery.load(folder)


def query_instruction(gallery) -> str:
    """The query instruction of the gallery's meta-task ("" for a mixed gallery)."""
    from rge_demo.embedding.prompts import instruction_for

    return instruction_for(gallery.meta_task, "query") if gallery.meta_task else ""


def gallery_index(loaded, settings, gallery, batch_size: int):
    """The gallery's vectors under ``loaded`` (from the on-disk cache where they are there already)."""
    from rge_demo.embedding.gallery import embed_fn
    from rge_demo.embedding.index import EmbeddingCache, GalleryIndex

    with Progress(f"embedding {gallery.name}", min_items=64) as progress:
        return GalleryIndex.build(gallery, embed_fn(loaded.encoder, gallery), fingerprint=loaded.fingerprint,
                                  instruction=gallery.candidate_instruction,
                                  cache=EmbeddingCache(settings.embeddings_dir), batch_size=batch_size,
                                  progress=progress)


@command("embed", "embed one query (image and/or text) in direct or reasoning mode",
         parents=("model", "query"), arguments=[
             arg("--instruction", default=None, help="task instruction placed before the text"),
             arg("--task", choices=TASKS, default=None, help="use the MMEB instruction of this meta-task"),
             arg("--side", choices=["query", "candidate"], default="query", help="instruction side for --task"),
             arg("--json", action="store_true", help="print one JSON object"),
         ])
def cmd_embed(args) -> int:
    inp = query_input(args, instruction_arg(args, side=args.side))
    loaded, _ = load_model(args)
    out = embed_query(loaded, inp, args.reason)
    vec = out["vector"]
    if args.json:
        print(json.dumps({**out, "vector": [round(float(x), 7) for x in vec], "dim": int(vec.shape[0]),
                          "model": loaded.spec.name, "fingerprint": loaded.fingerprint}))
        return 0
    print(f"model: {loaded.spec.name}  mode: {out['mode']}  tokens: {out['tokens']}  "
          f"seconds: {out['seconds']:.3f}")
    if args.reason:
        print(f"rationale: {out['rationale']}" + ("  [budget ran out; <emb> appended]" if out["forced"] else ""))
    print(f"vector ({vec.shape[0]}): " + " ".join(f"{x:.5f}" for x in vec))
    return 0


@command("search", "rank a gallery's items for one query (gallery vectors cached on disk)",
         parents=("model", "query"), arguments=[
             arg("--gallery", required=True, help="gallery folder holding manifest.json"),
             arg("--query", default=None, help="query text (same as --text)"),
             arg("--instruction", default=None, help="query instruction (default: the gallery's meta-task's)"),
             arg("--task", choices=TASKS, default=None, help="use the MMEB query instruction of this meta-task"),
             arg("-k", type=int, default=5, minimum=1, help="number of hits (default 5)"),
             arg("--batch-size", type=int, default=32, minimum=1, help="gallery embedding batch size"),
             arg("--json", action="store_true", help="print one JSON object"),
         ])
def cmd_search(args) -> int:
    if args.query is not None:
        if args.text:
            raise UsageError("give the query text once: --text or --query (the same flag), not both")
        args.text = args.query
    gallery = load_gallery(args.gallery)
    inp = query_input(args, instruction_arg(args, query_instruction(gallery)))
    loaded, settings = load_model(args)
    index = gallery_index(loaded, settings, gallery, args.batch_size)
    out = embed_query(loaded, inp, args.reason)
    hits = index.search(out["vector"], k=args.k)[0]
    s = index.stats
    if args.json:
        print(json.dumps({
            "model": loaded.spec.name, "gallery": gallery.name, "mode": out["mode"], "prompt": out["prompt"],
            "rationale": out["rationale"], "seconds": out["seconds"],
            "index": {"items": s.total, "embedded": s.embedded, "cached": s.cached},
            "hits": [{"rank": h.rank, "id": h.item.id, "score": h.score, "label": h.item.label,
                      "text": h.item.text, "image": h.item.image} for h in hits],
        }))
        return 0
    print(f"gallery {gallery.name}: {s.total} items ({s.embedded} embedded, {s.cached} from cache)")
    print(f"model: {loaded.spec.name}  mode: {out['mode']}  seconds: {out['seconds']:.3f}")
    if args.reason:
        print(f"rationale: {out['rationale']}")
    for h in hits:
        what = h.item.text or h.item.image or ""
        print(f"{h.rank:>3}  {h.score:+.4f}  {h.item.id}  {h.item.label}  {what}".rstrip())
    return 0
