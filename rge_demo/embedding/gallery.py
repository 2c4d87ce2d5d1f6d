"""From gallery records to model inputs, and a gallery's index built through the embedding cache."""

from __future__ import annotations

from collections.abc import Callable

from rge_demo.data.images import load_image
from rge_demo.data.items import Gallery, Item, Query

from .index import EmbeddingCache, GalleryIndex
from .prompts import EmbedInput


def item_input(gallery: Gallery, item: Item) -> EmbedInput:
    """A candidate in direct mode: its own instruction if it carries one, else the gallery's."""
    instruction = item.meta.get("instruction") or gallery.candidate_instruction
    image = load_image(gallery.image_path(item.image)) if item.image else None
    return EmbedInput(instruction=instruction, text=item.text, image=image)


def query_input(gallery: Gallery, query: Query) -> EmbedInput:
    image = load_image(gallery.image_path(query.image)) if query.image else None
    return EmbedInput(instruction=query.instruction, text=query.text, image=image)


def embed_fn(encoder, gallery: Gallery) -> Callable[[list[Item]], object]:
    """``embed(items) -> (B, D)`` for :meth:`GalleryIndex.build`: direct mode, one batch per call."""

    def embed(items: list[Item]):
        return encoder.direct([item_input(gallery, it) for it in items], batch_size=len(items))

    return embed


def build_index(encoder, gallery: Gallery, fingerprint: str, cache: EmbeddingCache | None = None,
                progress: Callable[[int, int], None] | None = None, batch_size: int = 32, *,
                backend: str = "auto", faiss_threshold: int | None = None) -> GalleryIndex:
    """Embed a gallery's items in batches (cached by model fingerprint, instruction and content).

    ``progress(done, total)`` follows the build; an interrupted build resumes from the cache and
    embeds only the items still missing. ``backend``/``faiss_threshold``: see :class:`GalleryIndex`.
    """
    return GalleryIndex.build(gallery, embed_fn(encoder, gallery), fingerprint=fingerprint,
                              instruction=gallery.candidate_instruction, cache=cache,
                              batch_size=batch_size, progress=progress, backend=backend,
                              faiss_threshold=faiss_threshold)
