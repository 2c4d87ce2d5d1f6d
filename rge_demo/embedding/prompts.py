"""Prompts: the exact text given to the processor, built from an input and the model's prompt profile.

Direct mode pre-fills ``<emb>`` right after the assistant header; reasoning mode stops at the
header and lets the model write a rationale that ends in ``<emb>``. The user turn depends on the
profile (:mod:`rge_demo.embedding.profiles`):

* ``image_position="first"`` (the micro models): the image content part, then one text part,
  ``instruction + separator + text`` (an MMEB row: its text without the ``<|image_1|>``
  placeholder).
* ``image_position="inline"`` (the reference pipeline of MCG-NJU/RGE): one text part in MMEB's own
  form. An MMEB row keeps its raw text; other inputs are written the way MMEB writes them
  (``<|image_1|>\\n`` first when there is an image, then ``instruction + " " + text``). Then, in the
  reference's order: the subset's rewrite for the side (query / candidate), the trailing newline,
  ``<|image_1|>`` -> ``<|vision_start|><|image_pad|><|vision_end|>`` where it stands (removed when
  the row has no image), and the checkpoint's chat template around it.

``prompt_text`` reads only an input's ``instruction``, ``text``, ``mmeb_text``, ``subset``, ``side``
and whether it has an image, so an evaluation item can show its prompt without loading its image.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .profiles import SIDES, PromptProfile, get_profile

EMB_TOKEN = "<emb>"
MMEB_IMAGE_PLACEHOLDER = "<|image_1|>"
VISION_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"
NO_PROFILE = "micro"  # what prompt_text builds when no profile is given (the micro models' format)

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
    if side not in SIDES:
        raise ValueError(f"side must be 'query' or 'candidate', got {side!r}")
    return INSTRUCTIONS[meta_task][side == "candidate"]


@dataclass(frozen=True)
class EmbedInput:
    """One thing to embed: an instruction plus text and/or an (already loaded, RGB) image.

    An MMEB row also carries its raw text (``mmeb_text``, with ``<|image_1|>``), its ``subset`` and
    its ``side``: what a profile's per-subset rewrite needs. ``text`` is then the raw text without
    the placeholder (what the micro format shows and what reports print).
    """

    instruction: str = ""
    text: str = ""
    image: Image.Image | None = None
    mmeb_text: str | None = None
    subset: str = ""
    side: str = "query"

    def __post_init__(self):
        if not (self.instruction or self.text or self.mmeb_text) and self.image is None:
            raise ValueError("nothing to embed: give an image, a text or an instruction")
        if self.side not in SIDES:
            raise ValueError(f"side must be 'query' or 'candidate', got {self.side!r}")

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def user_text(self) -> str:
        return "\n".join(part for part in (self.instruction, self.text) if part)


def from_mmeb_text(text: str) -> str:
    """Strip MMEB's ``<|image_1|>`` placeholder: the image goes into the model's own image slot."""
    return text.replace(MMEB_IMAGE_PLACEHOLDER, "").strip()


def _join(instruction: str, text: str, separator: str) -> str:
    return separator.join(part for part in (instruction, text) if part)


def _mmeb_form(inp, profile: PromptProfile) -> str:
    """The input as MMEB writes it: raw text of an MMEB row, else ``<|image_1|>\\n`` + instruction + text."""
    if inp.mmeb_text is not None:
        return inp.mmeb_text
    body = _join(inp.instruction, inp.text, profile.separator)
    return f"{MMEB_IMAGE_PLACEHOLDER}\n{body}" if inp.has_image else body


def user_content(inp, profile: PromptProfile | None = None) -> list[dict]:
    """The user turn's content parts for ``inp`` under ``profile`` (None: the micro format)."""
    profile = profile or get_profile(NO_PROFILE)
    side = getattr(inp, "side", "query")
    if profile.image_position == "inline":
        text = profile.rewrite(_mmeb_form(inp, profile), inp.subset, side)
        if profile.trailing_newline and not text.endswith("\n"):
            text += "\n"
        text = text.replace(MMEB_IMAGE_PLACEHOLDER, VISION_TOKENS)
        if not inp.has_image:
            text = text.replace(VISION_TOKENS, "")  # MMEB rows that name an image they do not have
        elif VISION_TOKENS not in text:
            text = f"{VISION_TOKENS}\n{text}"
        return [{"type": "text", "text": text}]
    if inp.mmeb_text is not None:
        text = _join(inp.instruction, from_mmeb_text(profile.rewrite(inp.mmeb_text, inp.subset, side)),
                     profile.separator)
    else:
        text = _join(inp.instruction, inp.text, profile.separator)
    if profile.trailing_newline and not text.endswith("\n"):
        text += "\n"
    content = [{"type": "image"}] if inp.has_image else []
    content.append({"type": "text", "text": text})
    return content


def messages(inp, profile: PromptProfile | None = None) -> list[dict]:
    return [{"role": "user", "content": user_content(inp, profile)}]


def prompt_text(processor, inp, *, direct: bool, profile: PromptProfile | None = None) -> str:
    """The exact text given to the processor: chat template, assistant header, and ``<emb>`` if direct.

    ``profile`` None builds the micro models' format (as before profiles existed).
    """
    text = processor.apply_chat_template(messages(inp, profile), tokenize=False, add_generation_prompt=True)
    return text + EMB_TOKEN if direct else text
