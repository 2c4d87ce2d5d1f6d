"""An image-only Qwen2-VL / Qwen2.5-VL processor, and how to build it from a checkpoint folder.

``Qwen2_5_VLProcessor`` also owns a video processor, which needs torchvision; torchvision does not
import beside the CPU torch wheel pinned here. RGE embeds images and text only, so this subclass
drops the video side. A released checkpoint's ``preprocessor_config.json`` names
``"processor_class": "Qwen2_5_VLProcessor"``, which makes ``AutoProcessor`` build the video
processor anyway (an ImportError without torchvision); :func:`load_processor` therefore builds
:class:`RGEProcessor` itself from the folder's files, whatever class they name: the micro models
and a real checkpoint such as ``MCG-NJU/RGE`` load through the same code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jinja2
from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLConfig, Qwen2VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

log = logging.getLogger(__name__)

# Where a checkpoint may keep its chat template, in the order transformers reads them; the
# tokenizer's own (tokenizer_config.json) comes last.
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"
PROCESSOR_CONFIG = "processor_config.json"


class RGEProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor with an image processor and a tokenizer, and no video processor.

    Images are processed exactly as by Qwen2-VL's processor too (same patching and merge), so it
    serves Qwen2-VL checkpoints as well.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        # Skip Qwen2_5_VLProcessor.__init__, which insists on a video processor.
        super(Qwen2_5_VLProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    @property
    def pixel_limits(self) -> tuple[int, int]:
        """(min_pixels, max_pixels) the image processor resizes every image into."""
        size = self.image_processor.size
        return int(size["shortest_edge"]), int(size["longest_edge"])


def chat_template_of(folder: str | Path, tokenizer=None) -> str | None:
    """The chat template a checkpoint folder carries: ``chat_template.jinja``, ``chat_template.json``,
    ``processor_config.json``'s ``chat_template``, else the tokenizer's (``tokenizer_config.json``)."""
    folder = Path(folder)
    if (folder / CHAT_TEMPLATE_JINJA).is_file():
        return (folder / CHAT_TEMPLATE_JINJA).read_text(encoding="utf-8")
    for name in (CHAT_TEMPLATE_JSON, PROCESSOR_CONFIG):
        path = folder / name
        if path.is_file():
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            if template:
                return template
    return getattr(tokenizer, "chat_template", None) or None


def load_processor(folder: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None) -> RGEProcessor:
    """An :class:`RGEProcessor` from a checkpoint folder, in the 4.x or the 5.x layout.

    The image processor reads ``preprocessor_config.json`` (4.x) or ``processor_config.json``
    (5.x); ``min_pixels`` / ``max_pixels`` override its pixel limits (None keeps the folder's).
    The tokenizer is the folder's own (``tokenizer.json`` + ``tokenizer_config.json``).
    Raises what transformers raises (OSError, ValueError, ...); callers name the folder.
    """
    folder = Path(folder)
    pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True, **pixels)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    template = chat_template_of(folder, tokenizer)
    if template is None:
        raise ValueError("no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)")
    processor = RGEProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    try:  # a template that does not compile fails here, not at the first query
        processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}], tokenize=False,
                                      add_generation_prompt=True)
    except jinja2.TemplateError as e:
        raise ValueError(f"its chat template does not render ({type(e).__name__}: {e})") from e
    log.debug("%s: processor with pixels %s..%s", folder, *processor.pixel_limits)
    return processor


def register() -> None:
    """Make ``AutoProcessor`` return :class:`RGEProcessor` for Qwen2-VL / Qwen2.5-VL configs (where
    the folder names no other processor class)."""
    for config_class in (Qwen2_5_VLConfig, Qwen2VLConfig):
        AutoProcessor.register(config_class, RGEProcessor, exist_ok=True)


register()
