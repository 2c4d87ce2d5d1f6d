"""Write a tiny checkpoint in the layout of the released ``MCG-NJU/RGE`` (saved by transformers 4.51).

The released checkpoint is a full fine-tune of Qwen2.5-VL-3B-Instruct saved with
``save_pretrained`` under transformers 4.51.3, so its folder holds what any such fine-tune holds:

    .gitattributes  README.md  added_tokens.json  chat_template.json  config.json
    generation_config.json  merges.txt  model-00001-of-00002.safetensors
    model-00002-of-00002.safetensors  model.safetensors.index.json  preprocessor_config.json
    special_tokens_map.json  tokenizer.json  tokenizer_config.json  vocab.json

with these traits, each reproduced here at a tiny size:

* ``config.json`` in the 4.51 shape: the text model's fields at the top level (no
  ``text_config``), ``rope_scaling`` with ``mrope_section``, ``torch_dtype: bfloat16``,
  ``architectures: ["Qwen2_5_VLForConditionalGeneration"]``; no rge-demo key (no ``rge_profile``,
  no ``emb_token_id``).
* Weights in bf16 under the 4.x names (``model.layers.*``, ``model.embed_tokens``, ``visual.*``,
  ``lm_head.*``); tied embeddings drop ``lm_head.weight`` as ``save_pretrained`` does.
* A Qwen2 byte-level BPE tokenizer (NFC, Qwen's split regex, ``vocab.json`` + ``merges.txt`` +
  ``tokenizer.json``) with Qwen's 22 added tokens right after the base vocabulary, then ``<emb>``
  as an ordinary (non-special) added token, as ``tokenizer.add_tokens(["<emb>"])`` writes it.
* ``preprocessor_config.json`` naming ``"processor_class": "Qwen2_5_VLProcessor"`` (the name that
  makes ``AutoProcessor`` build a video processor, hence torchvision) with Qwen's default pixel
  limits (3136 .. 12845056).
* The chat template in ``chat_template.json`` (and in ``tokenizer_config.json``), or only in
  ``tokenizer_config.json`` (``chat_template_in="tokenizer_config"``).

``family="qwen2_vl"`` writes a Qwen2-VL checkpoint instead (Qwen2-VL-2B-Instruct's layout:
``Qwen2VLForConditionalGeneration``, ``"processor_class": "Qwen2VLProcessor"``, its vision config).

Everything is written by hand from the formats, not by ``save_pretrained`` of the installed
transformers 5 (which writes the 5.x layout: ``text_config``, ``chat_template.jinja``,
``processor_config.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

TRANSFORMERS_VERSION = "4.51.3"
EMB_TOKEN = "<emb>"
BASE_VOCAB = 400  # Qwen: 151643 byte-level BPE tokens, then the added tokens
CONFIG_VOCAB = 448  # Qwen pads the embedding matrix past the last added id (151936)

# Qwen2.5's added tokens in id order; the last eight are not "special" in its tokenizer_config.
QWEN_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
              "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
              "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
              "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>"}
ADDITIONAL_SPECIAL = QWEN_ADDED[1:14]
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2-VL / Qwen2.5-VL's processor chat template (chat_template.json of Qwen2.5-VL-3B-Instruct).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Represent the given image for classification.",
    "Represent the given image with the following question:",
    "Identify the category of the main object in the given image for classification.",
    "Summarize the following object category in one word: coucal",
    "Find a caption that describes the given image. A red square next to a blue circle on a white table.",
    "Represent the given text. How many shapes are there? Answer with a number.",
    "The quick brown fox jumps over the lazy dog; 0 1 2 3 4 5 6 7 8 9.",
    "Let me think step by step about the objects, their colours and where they are.",
] * 4

README = """---
library_name: transformers
license: apache-2.0
base_model:
- Qwen/Qwen2.5-VL-3B-Instruct
pipeline_tag: visual-document-retrieval
---
# RGE (tiny test copy)

A randomly initialised stand-in with the file layout of MCG-NJU/RGE, written by rge-demo's tests.
"""

GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n"
                        for p in ("*.bin", "*.h5", "*.msgpack", "*.onnx", "*.pt", "*.pth", "*.safetensors",
                                  "*.tar.*", "*.zip", "*tfevents*", "tokenizer.json"))

PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_pixels": 12845056,
    "merge_size": 2,
    "min_pixels": 3136,
    "patch_size": 14,
    "processor_class": "Qwen2_5_VLProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 12845056, "shortest_edge": 3136},
    "temporal_patch_size": 2,
}

# Tiny sizes; head_dim 16, so mrope_section sums to 8.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1])
QWEN2_VISION = dict(depth=2, embed_dim=32, mlp_ratio=2, num_heads=2)
MROPE_SECTION = [2, 3, 3]
FAMILIES = {"qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
            "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor")}


def build_tokenizer() -> Tokenizer:
    """Qwen2's tokenizer pipeline at a tiny vocabulary, with the added tokens and ``<emb>``."""
    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=BASE_VOCAB, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() <= BASE_VOCAB
    tok.add_special_tokens([AddedToken(t, special=t not in NOT_SPECIAL, normalized=False) for t in QWEN_ADDED])
    tok.add_tokens([AddedToken(EMB_TOKEN, special=False, normalized=True)])
    return tok


def _added_entry(content: str, special: bool, normalized: bool) -> dict:
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False, "special": special}


def _token_map_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def write_released_checkpoint(folder: str | Path, *, tied: bool = False, chat_template_in: str = "both",
                              shards: int = 2, seed: int = 0, family: str = "qwen2_5_vl") -> Path:
    """Write the tiny released-layout checkpoint into ``folder``; returns the folder.

    ``tied``: tie the input and output embeddings (no ``lm_head.weight`` in the files).
    ``chat_template_in``: "both" (chat_template.json and tokenizer_config.json, as released) or
    "tokenizer_config" (no chat_template.json). ``shards``: 1 writes ``model.safetensors``.
    """
    if chat_template_in not in ("both", "tokenizer_config"):
        raise ValueError(f"chat_template_in must be 'both' or 'tokenizer_config', got {chat_template_in!r}")
    architecture, processor_class = FAMILIES[family]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in QWEN_ADDED + [EMB_TOKEN]}
    assert ids[EMB_TOKEN] == ids["<|file_sep|>"] + 1 < CONFIG_VOCAB

    # Tokenizer files.
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))  # vocab.json + merges.txt
    added = {t: ids[t] for t in QWEN_ADDED + [EMB_TOKEN]}
    _write_json(folder / "added_tokens.json", dict(sorted(added.items())))
    decoder = {str(ids[t]): _added_entry(t, t not in NOT_SPECIAL, False) for t in QWEN_ADDED}
    decoder[str(ids[EMB_TOKEN])] = _added_entry(EMB_TOKEN, False, True)
    _write_json(folder / "tokenizer_config.json", {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ADDITIONAL_SPECIAL,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "processor_class": processor_class,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })
    _write_json(folder / "special_tokens_map.json", {
        "additional_special_tokens": ADDITIONAL_SPECIAL,
        "eos_token": _token_map_entry("<|im_end|>"),
        "pad_token": _token_map_entry("<|endoftext|>"),
    })
    if chat_template_in == "both":
        _write_json(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _write_json(folder / "preprocessor_config.json", {**PREPROCESSOR, "processor_class": processor_class})

    # Model files.
    config = {
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu",
        "hidden_size": TEXT["hidden_size"],
        "image_token_id": ids["<|image_pad|>"],
        "initializer_range": 0.02,
        "intermediate_size": TEXT["intermediate_size"],
        "max_position_embeddings": 128000,
        "max_window_layers": 70,
        "model_type": family,
        "num_attention_heads": TEXT["num_attention_heads"],
        "num_hidden_layers": TEXT["num_hidden_layers"],
        "num_key_value_heads": TEXT["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_section": MROPE_SECTION, "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "use_sliding_window": False,
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": qwen2_vision_config() if family == "qwen2_vl" else {
            "depth": VISION["depth"],
            "fullatt_block_indexes": VISION["fullatt_block_indexes"],
            "hidden_act": "silu",
            "hidden_size": VISION["hidden_size"],
            "in_channels": 3,
            "in_chans": 3,
            "intermediate_size": VISION["intermediate_size"],
            "model_type": "qwen2_5_vl",
            "num_heads": VISION["num_heads"],
            "out_hidden_size": TEXT["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "torch_dtype": "bfloat16",
            "window_size": 112,
        },
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "vocab_size": CONFIG_VOCAB,
    }
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "repetition_penalty": 1.05,
        "temperature": 0.1,
        "top_k": 1,
        "top_p": 0.001,
        "transformers_version": TRANSFORMERS_VERSION,
    })
    if family == "qwen2_vl":  # Qwen2-VL-2B's config: mrope in rope_scaling, 32768 positions
        config["rope_scaling"] = {"type": "mrope", "mrope_section": MROPE_SECTION}
        config["max_position_embeddings"] = 32768
        config["max_window_layers"] = 28
    write_weights(folder, legacy_state_dict(seed, tied, family), shards)
    (folder / "README.md").write_text(README, encoding="utf-8")
    (folder / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
    return folder


def qwen2_vision_config() -> dict:
    """Qwen2-VL's vision config (4.x): embed_dim and mlp_ratio, hidden_size = the text model's."""
    return {"depth": QWEN2_VISION["depth"], "embed_dim": QWEN2_VISION["embed_dim"],
            "mlp_ratio": QWEN2_VISION["mlp_ratio"], "num_heads": QWEN2_VISION["num_heads"], "in_chans": 3,
            "hidden_size": TEXT["hidden_size"], "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "temporal_patch_size": 2}


def legacy_state_dict(seed: int, tied: bool, family: str = "qwen2_5_vl") -> dict[str, torch.Tensor]:
    """Random bf16 weights of the tiny architecture under transformers 4.x names.

    The module tree comes from the installed model class (5.x names), renamed by hand:
    ``model.language_model.X`` -> ``model.X``, ``model.visual.X`` -> ``visual.X``.
    """
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    text = dict(vocab_size=CONFIG_VOCAB, max_position_embeddings=2048, bos_token_id=0, eos_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": MROPE_SECTION}, **TEXT)
    if family == "qwen2_vl":
        vision = {k: v for k, v in qwen2_vision_config().items() if k not in ("in_chans", "spatial_patch_size")}
        config, model_class = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied), \
            Qwen2VLForConditionalGeneration
    else:
        config = Qwen2_5_VLConfig(text_config=text, tie_word_embeddings=tied,
                                  vision_config=dict(out_hidden_size=TEXT["hidden_size"], window_size=112, **VISION))
        model_class = Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = model_class(config)
    out = {}
    for key, value in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        if key.startswith("model.visual."):
            key = key[len("model."):]
        elif key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model."):]
        out[key] = value.detach().to(torch.bfloat16).contiguous().clone()
    return out


def write_weights(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    """``model.safetensors``, or ``shards`` files plus ``model.safetensors.index.json``."""
    for old in list(folder.glob("model*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
        old.unlink()
    keys = sorted(state)
    if shards == 1:
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
