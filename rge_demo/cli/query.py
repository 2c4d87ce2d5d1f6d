"""``embed`` and ``search``: one query through a loaded model, and the helpers the query commands share."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .common import Progress, UsageError, arg, command

TASK_HELP = ("a task of the model's prompt profile (the real checkpoint: classification, vqa, document vqa, ...; "
             "the micro models: count, majority_shape, ...) or a meta-task (its first task): the instruction "
             "the model was trained with")


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


def model_profile(args):
    """``(spec, prompt profile)`` of ``--model``, read without loading its weights (a bad ``--task``
    is refused before a real checkpoint spends a minute loading)."""
    from rge_demo.config import get_settings
    from rge_demo.embedding.profiles import profile_for_folder
    from rge_demo.models.loading import check_checkpoint
    from rge_demo.models.manager import ModelManager

    settings = get_settings()
    spec = ModelManager(settings).resolve(args.model or settings.model)
    folder = spec.folder()
    check_checkpoint(folder)
    return spec, profile_for_folder(folder)  # ProfileError: a user error


def query_input(args, instruction: str, side: str = "query"):
    """An EmbedInput from ``--text``/``--image``; the image goes through the safe loader."""
    from rge_demo.data.images import load_image
    from rge_demo.embedding.prompts import EmbedInput

    if args.text and not args.text.strip():
        raise UsageError("--text holds only whitespace: give the text, or leave the flag out")
    image = None
    if args.image is not None:
        image = load_image(args.image)  # ImageError names the file
    if not (args.text or image is not None):
        raise UsageError("give a query: --text and/or --image")
    return EmbedInput(instruction=instruction, text=args.text, image=image, side=side)


def instruction_arg(args, profile, default: str = "", side: str = "query") -> str:
    """``--instruction``, else ``--task``'s instruction for ``side`` under the model's prompt profile,
    else ``default``."""
    if getattr(args, "instruction", None) is not None:
        if getattr(args, "task", None):
            raise UsageError("give --instruction or --task, not both")
        return args.instruction
    if getattr(args, "task", None):
        return profile.task(args.task)[side]  # ProfileError names the profile's tasks
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
    """The Gallery in ``folder`` (``--gallery``); one without items is refused."""
    from rge_demo.data.items import Gallery

    if not Path(folder).is_dir():
        raise UsageError(f"{folder}: no such gallery folder")
    gallery = Gallery.load(folder)
    if not gallery.items:
        raise UsageError(f"{folder}: the gallery has no items to rank")
    return gallery


def query_instruction(gallery, profile) -> str:
    """The query instruction of the gallery's meta-task under the model's prompt profile (MMEB's generic
    one when the profile has no task of it; "" for a mixed gallery)."""
    from rge_demo.embedding.profiles import ProfileError
    from rge_demo.embedding.prompts import instruction_for

    if not gallery.meta_task:
        return ""
    try:
        return profile.task(gallery.meta_task)["query"]
    except ProfileError:
        return instruction_for(gallery.meta_task, "query")


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
             arg("--task", default=None, help=TASK_HELP),
             arg("--side", choices=["query", "candidate"], default="query",
                 help="embed the item as a query (default) or as a candidate (direct, the candidate "
                      "instruction of --task)"),
             arg("--json", action="store_true", help="print one JSON object"),
         ])
def cmd_embed(args) -> int:
    if args.side == "candidate" and args.reason:
        raise UsageError("--side candidate embeds directly (candidates pre-fill <emb>): leave out --reason")
    _, profile = model_profile(args)
    inp = query_input(args, instruction_arg(args, profile, side=args.side), side=args.side)
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
             arg("--instruction", default=None, help="query instruction (default: the model's instruction for the "
                                                     "gallery's meta-task)"),
             arg("--task", default=None, help=TASK_HELP),
             arg("-k", type=int, default=5, minimum=1, maximum=1000, help="number of hits (default 5)"),
             arg("--batch-size", type=int, default=32, minimum=1, maximum=1024,
                 help="gallery embedding batch size (default 32)"),
             arg("--json", action="store_true", help="print one JSON object"),
         ])
def cmd_search(args) -> int:
    if args.query is not None:
        if args.text:
            raise UsageError("give the query text once: --text or --query (the same flag), not both")
        args.text = args.query
    gallery = load_gallery(args.gallery)
    _, profile = model_profile(args)
    inp = query_input(args, instruction_arg(args, profile, query_instruction(gallery, profile)))
    loaded, settings = load_model(args)
    index = gallery_index(loaded, settings, gallery, args.batch_size)
    out = embed_query(loaded, inp, args.reason)
    hits = index.search(out["vector"], k=args.k)[0]
    if args.k > len(hits):
        print(f"note: the gallery has {len(hits)} items; all of them are listed (-k {args.k})", file=sys.stderr)
    s = index.stats
    if args.json:
        print(json.dumps({
            "model": loaded.spec.name, "gallery": gallery.name, "mode": out["mode"], "prompt": out["prompt"],
            "rationale": out["rationale"], "seconds": out["seconds"],
            "index": {"items": s.total, "embedded": s.embedded, "identical": s.shared, "cached": s.cached},
            "hits": [{"rank": h.rank, "id": h.item.id, "score": h.score, "label": h.item.label,
                      "text": h.item.text, "image": h.item.image} for h in hits],
        }))
        return 0
    print(f"gallery {gallery.name}: {s.total} items ({s.embedded} embedded, "
          + (f"{s.shared} identical to one of them, " if s.shared else "") + f"{s.cached} from cache)")
    print(f"model: {loaded.spec.name}  mode: {out['mode']}  seconds: {out['seconds']:.3f}")
    if args.reason:
        print(f"rationale: {out['rationale']}")
    for h in hits:
        what = h.item.text or h.item.image or ""
        print(f"{h.rank:>3}  {h.score:+.4f}  {h.item.id}  {h.item.label}  {what}".rstrip())
    return 0
