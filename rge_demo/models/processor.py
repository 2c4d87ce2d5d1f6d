"""An image-only Qwen2.5-VL processor.

``Qwen2_5_VLProcessor`` also owns a video processor, which needs torchvision; torchvision does not
import beside the CPU torch wheel pinned here. RGE embeds images and text only, so this subclass
drops the video side and is registered with ``AutoProcessor`` for every Qwen2.5-VL config: the
micro models and a real checkpoint such as ``MCG-NJU/RGE`` load through the same class.
"""

from __future__ import annotations

from transformers import AutoProcessor, Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor


class RGEProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor with an image processor and a tokenizer, and no video processor."""

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


def register() -> None:
    """Make ``AutoProcessor.from_pretrained`` return :class:`RGEProcessor` for Qwen2.5-VL folders."""
    AutoProcessor.register(Qwen2_5_VLConfig, RGEProcessor, exist_ok=True)


register()
