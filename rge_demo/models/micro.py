"""Micro Qwen2.5-VL models: the real ``Qwen2_5_VLForConditionalGeneration`` class at a tiny size.

No weights can be downloaded here, so the project builds its own: a byte-level BPE tokenizer with
the Qwen special tokens and ``<emb>``, the Qwen chat template, an image-only processor, and a model
from a small config. Two sizes: ``test`` (a fraction of a million parameters, for unit tests) and
``micro`` (a few million, trained on the synthetic world and shipped in ``assets/``).

The image processor is fixed at 84x84 pixels: 6x6 patches of 14 px, merged 2x2 into 9 visual
tokens, one per cell of the world's 3x3 grid (see MICROWORLD.md).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .processor import RGEProcessor

log = logging.getLogger(__name__)

EMB_TOKEN = "<emb>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [
    PAD_TOKEN,
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",  # unused, but the Qwen2.5-VL processor and model expect the id to exist
    EMB_TOKEN,
]
IMAGE_SIDE = 84  # pixels; 3x3 merged visual tokens

# The Qwen2.5-VL chat template, images and text only.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class MicroSize:
    """Architecture of one micro size. ``head_dim = hidden / heads``; mrope sections sum to head_dim/2."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_hidden: int
    vision_heads: int


SIZES = {
    "test": MicroSize(vocab=640, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                      mrope_section=(2, 3, 3), vision_depth=1, vision_hidden=32, vision_heads=2),
    "micro": MicroSize(vocab=2048, hidden=192, layers=4, heads=6, kv_heads=2, intermediate=512,
                       mrope_section=(4, 6, 6), vision_depth=2, vision_hidden=96, vision_heads=4),
}


def english_corpus() -> list[str]:
    """Ordinary English from the docstrings of the standard library (offline, always present)."""
    import argparse, calendar, collections, csv, datetime, difflib, email.message, functools  # noqa: E401
    import itertools, json, logging as logging_mod, pathlib, random, string, textwrap, unittest  # noqa: E401

    texts = []
    for mod in (argparse, calendar, collections, csv, datetime, difflib, email.message, functools,
                itertools, json, logging_mod, pathlib, random, string, textwrap, unittest):
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            if doc:
                texts.append(re.sub(r"\s+", " ", doc))
    return texts


def build_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text tokenizes) with the Qwen special tokens and ``<emb>``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD_TOKEN,
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    return tok


def build_processor(tokenizer: PreTrainedTokenizerFast) -> RGEProcessor:
    pixels = IMAGE_SIDE * IMAGE_SIDE
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels)
    return RGEProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_config(size: MicroSize, tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = max(size.vocab, -(-len(tokenizer) // 64) * 64)
    head_dim = size.hidden // size.heads
    assert sum(size.mrope_section) * 2 == head_dim, "mrope_section must sum to head_dim / 2"
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=size.hidden,
            intermediate_size=size.intermediate,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": list(size.mrope_section)},
            bos_token_id=ids[PAD_TOKEN],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids[PAD_TOKEN],
        ),
        vision_config=dict(
            depth=size.vision_depth,
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_heads=size.vision_heads,
            out_hidden_size=size.hidden,
            fullatt_block_indexes=[size.vision_depth - 1],
            window_size=112,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        emb_token_id=ids[EMB_TOKEN],
        rge_profile="micro",  # rge_demo.embedding.profiles: 84x84 pixels, image first, append <emb>
    )


def build_micro(size: str = "micro", corpus: Iterable[str] | None = None, seed: int = 0):
    """Build ``(model, processor)`` of the given size with freshly initialised weights.

    ``corpus`` is the tokenizer's training text; ordinary English is always added so that any user
    text tokenizes into sensible pieces.
    """
    if size not in SIZES:
        raise ValueError(f"unknown micro size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    texts = list(corpus or []) + english_corpus()
    tokenizer = build_tokenizer(texts, spec.vocab)
    processor = build_processor(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(build_config(spec, tokenizer))
    model.eval()
    log.info("built %s micro model: %.2f M parameters, vocab %d", size,
             sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer))
    return model, processor


def save(model, processor, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
