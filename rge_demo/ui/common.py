"""Small helpers shared by the tabs: turning library errors into messages a person can act on."""

from __future__ import annotations

import functools
import html
import inspect
import logging
import math
import re

import gradio as gr

from rge_demo.app.demo import user_errors
from rge_demo.app.messages import public_message

log = logging.getLogger(__name__)

EXPECTED = user_errors()


def friendly(fn):
    """Show expected errors as a gr.Error toast with their message; log anything else and say so."""

    def convert(e: Exception) -> gr.Error:
        if isinstance(e, (gr.Error, *EXPECTED)):  # the person is told; the server log keeps one line, no traceback
            refusal = e if isinstance(e, gr.Error) else gr.Error(public_message(e))
            refusal.print_exception = False
            log.info("%s refused: %s", fn.__name__, refusal.message)  # as said: the log is text, not HTML
            refusal.message = html.escape(refusal.message, quote=False)  # the toast renders HTML: "<emb>" must show
            return refusal
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"internal error ({type(e).__name__}, logged on the server); the app keeps running")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise convert(e) from e
        return gen

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise convert(e) from e
    return wrapper


def gpu(fn):
    """``spaces.GPU`` on Hugging Face ZeroGPU Spaces; a no-op elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)



def _image_path(component: gr.Image, payload):
    """gr.Image's preprocess for ``type="filepath"``, without opening the file (see :func:`image_input`)."""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):  # an inline image: store its bytes as they are
        import base64

        from gradio import processing_utils

        head, _, data = payload.url.partition(",")
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError as e:
            raise gr.Error("the image is not valid base64 data") from e
        ext = re.sub(r"[^a-z0-9]", "", head.split("/")[-1].split(";")[0].lower()) or "img"
        return processing_utils.save_bytes_to_cache(raw, f"image.{ext}", cache_dir=component.GRADIO_CACHE)
    if payload.path is None:
        raise gr.Error("the image upload has no file: upload it again")
    return str(payload.path)


IMAGE_INPUT_CLASS = "rge-image-input"  # marks the app's image inputs (see image_input)


def image_input(value=None, **kwargs) -> gr.Image:
    """The app's image input: gr.Image (the page shows the preview, decoded by the browser) whose
    handler gets the uploaded file's path without the server opening it.

    ``gr.Image`` opens every upload with PIL in its preprocess step and, unless the file is already in
    its ``image_mode``, decodes and converts all its pixels: before any handler could refuse it. A
    12000x12000 PNG of 140 KB then costs seconds of CPU and ~700 MB, and a corrupt file fails with
    PIL's message and the server's path. Here the path goes on untouched; the app's ``load_image``
    checks the pixel count from the header first and names the problem in a sentence.

    The component carries :data:`IMAGE_INPUT_CLASS` and ``gr.Image.preprocess`` is patched below to
    honour it. Not an instance attribute: a handler that updates a component (``gr.update()``) makes
    gradio rebuild the session's copy from its constructor arguments, which dropped it (QA: after a
    gallery switch a text file named .png reached PIL). Not a subclass: gradio writes a ``.pyi`` file
    next to every component subclass.
    """
    kwargs.setdefault("sources", ["upload", "clipboard"])
    classes = kwargs.pop("elem_classes", None) or []
    classes = [classes] if isinstance(classes, str) else list(classes)
    return gr.Image(value, type="filepath", image_mode=None, elem_classes=[*classes, IMAGE_INPUT_CLASS], **kwargs)


NAMED_REFUSALS = (gr.Slider, gr.Number, gr.Dropdown, gr.Radio, gr.CheckboxGroup)
"""Components whose own preprocessing refuses a value (out of range, not one of the choices)."""


def _refuse_off_step(slider: gr.Slider, value) -> None:
    """A slider's value must sit on its steps, as the page's slider does: gradio checks only the range,
    so an API call's k=2.5 reached the handler and was refused there against the handler's wider range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not slider.step or not math.isfinite(value):
        return
    steps = (value - slider.minimum) / slider.step
    if abs(steps - round(steps)) > 1e-6:
        raise gr.Error(f"Value {value:g} is not one of the slider's steps ({slider.minimum:g}, "
                       f"{slider.minimum + slider.step:g}, ... {slider.maximum:g}).")


def _refuse_fraction(number: gr.Number, value) -> None:
    """A whole-number field (``precision=0``) refuses 1.5 as the slider refuses 2.5: gradio rounded it to 2
    unsaid (QA: "Samples (N)" 1.5 sampled 2 while k=2.5 was refused)."""
    if number.precision == 0 and isinstance(value, float) and math.isfinite(value) and value != int(value):
        raise gr.Error(f"Value {value:g} is not a whole number.")


def _install_preprocess_patches() -> None:
    """Class-level, so gradio's per-session copies of a component keep them (see :func:`image_input`):
    the app's image inputs pass the upload's path on unopened, and a component that refuses a value names
    its field ("Queries per task and split: Value 1000 is greater than maximum value 100.", not gradio's
    bare sentence) and logs one line, not a traceback."""
    if getattr(gr.Image.preprocess, "_rge", False):
        return
    plain_image = gr.Image.preprocess

    def image_preprocess(self, payload):
        classes = [self.elem_classes] if isinstance(self.elem_classes, str) else self.elem_classes or []
        return _image_path(self, payload) if IMAGE_INPUT_CLASS in classes else plain_image(self, payload)

    def named(plain):
        def preprocess(self, payload):
            try:
                if isinstance(self, gr.Slider):
                    _refuse_off_step(self, payload)
                elif isinstance(self, gr.Number):
                    _refuse_fraction(self, payload)
                return plain(self, payload)
            except gr.Error as e:
                message = f"{self.label}: {e.message}" if self.label else e.message
                log.info("%s refused: %s", type(self).__name__, message)
                raise gr.Error(message, print_exception=False) from None
        return preprocess

    patches = [(gr.Image, image_preprocess), *((cls, named(cls.preprocess)) for cls in NAMED_REFUSALS)]
    for cls, fn in patches:
        fn._rge = True
        functools.update_wrapper(fn, cls.preprocess, updated=())
        cls.preprocess = fn


_install_preprocess_patches()


def cleared(outputs: list) -> dict:
    """Event arguments of a UI-only step that empties ``outputs`` at once (no queue): chained before a
    request, so a refusal does not leave the last result on the page as if it were its own."""
    return dict(fn=lambda: (None,) * len(outputs) if len(outputs) > 1 else None, inputs=None, outputs=outputs,
                show_progress="hidden", queue=False, api_visibility="private")


def md_literal(text: str) -> str:
    """``text`` shown as typed inside Markdown (a search echoed back): a code span whose fence is
    longer than any run of backticks in it, so no character is read as markup."""
    ticks = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks} {text} {ticks}"
