"""Prompts in the reference's form: user turn = image (if any) then the instruction text.

Direct mode pre-fills ``<emb>`` right after the assistant header; reasoning mode stops at the
header and lets the model write a rationale that ends in ``<emb>``. Task instructions follow MMEB
(query side vs candidate side per meta-task).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

EMB_TOKEN = "<emb>"
MMEB_IMAGE_PLACEHOLDER = "<|image_1|>"

# MMEB-style instructions per meta-task: (query side, candidate side).
INSTRUCTIONS: dict[str, tuple[str, str]] = {
    "classification": ("Represent the given image for classification.", "Represent the given class label."),
    "vqa": ("Represent the given image with the following question:", "Represent the given answer."),
    "retrieval": ("Find a caption that matches the given image.", "Represent the given text."),
    "grounding": ("Select the portion of the image that isolates the object described:",
                  "Represent the given cropped image of the object."),
}


def instruction_for(meta_task: str, side: str = "query") -> str:
    if meta_task not in INSTRUCTIONS:
        raise ValueError(f"unknown task kind {meta_task!r}; choose one of {sorted(INSTRUCTIONS)}")
    if side not in ("query", "candidate"):
        raise ValueError(f"side must be 'query' or 'candidate', got {side!r}")
    return INSTRUCTIONS[meta_task][side == "candidate"]


@dataclass(frozen=True)
class EmbedInput:
    """One thing to embed: an instruction plus text and/or an (already loaded, RGB) image."""

    instruction: str = ""
    text: str = ""
    image: Image.Image | None = None

    def __post_init__(self):
        if not (self.instruction or self.text) and self.image is None:
            raise ValueError("nothing to embed: give an image, a text or an instruction")

    @property
    def user_text(self) -> str:
        return "\n".join(part for part in (self.instruction, self.text) if part)


def from_mmeb_text(text: str) -> str:
    """Strip MMEB's ``<|image_1|>`` placeholder: the image goes into the model's own image slot."""
    return text.replace(MMEB_IMAGE_PLACEHOLDER, "").strip()


def messages(inp: EmbedInput) -> list[dict]:
    content = [{"type": "image"}] if inp.image is not None else []
    content.append({"type": "text", "text": inp.user_text})
    return [{"role": "user", "content": content}]


def prompt_text(processor, inp: EmbedInput, *, direct: bool) -> str:
    """The exact text given to the processor: chat template, assistant header, and ``<emb>`` if direct."""
    text = processor.apply_chat_template(messages(inp), tokenize=False, add_generation_prompt=True)
    return text + EMB_TOKEN if direct else text
