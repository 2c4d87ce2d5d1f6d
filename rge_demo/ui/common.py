"""Small helpers shared by the tabs: turning library errors into messages a person can act on."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from rge_demo.app.demo import public_message, user_errors

log = logging.getLogger(__name__)

EXPECTED = user_errors()


def friendly(fn):
    """Show expected errors as a gr.Error toast with their message; log anything else and say so."""

    def convert(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, EXPECTED):
            return gr.Error(public_message(e))
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


class ImageInput(gr.Image):
    """An image input that hands the handler the uploaded file's path without opening it.

    ``gr.Image`` opens every upload with PIL in its preprocess step and, unless the file is already
    RGB, decodes and converts all its pixels: before any handler could refuse it. A 12000x12000 PNG
    of 140 KB then costs seconds of CPU and ~700 MB, and a corrupt file fails with PIL's message and
    the server's path. This component passes the path on untouched; the app's ``load_image`` checks
    the pixel count from the header first and names the problem. The page shows the preview (the
    browser decodes it); the front end is gr.Image's (``is_template``).
    """

    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # an inline image: store its bytes as they are
            import base64

            from gradio import processing_utils

            try:
                head, _, data = payload.url.partition(",")
                raw = base64.b64decode(data, validate=True)
            except ValueError as e:
                raise gr.Error("the image is not valid base64 data") from e
            ext = head.split("/")[-1].split(";")[0] or "img"
            return processing_utils.save_bytes_to_cache(raw, f"image.{ext}", cache_dir=self.GRADIO_CACHE)
        if payload.path is None:
            raise gr.Error("the image upload has no file: upload it again")
        return str(payload.path)


def image_input(value=None, **kwargs) -> ImageInput:
    """The app's image input: a filepath, opened only by the app (see :class:`ImageInput`)."""
    kwargs.setdefault("sources", ["upload", "clipboard"])
    return ImageInput(value, type="filepath", image_mode=None, **kwargs)
