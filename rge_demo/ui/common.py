"""Small helpers shared by the tabs: turning library errors into messages a person can act on."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from rge_demo.app.demo import user_errors

log = logging.getLogger(__name__)

EXPECTED = user_errors()


def friendly(fn):
    """Show expected errors as a gr.Error toast with their message; log anything else and say so."""

    def convert(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, EXPECTED):
            return gr.Error(str(e))
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"internal error ({type(e).__name__}: {e}); the app keeps running")

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
