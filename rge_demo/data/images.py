"""Safe image loading: every user image enters the library through :func:`load_image`.

A bad image is an :class:`ImageError` that names the file and the problem; it is never replaced
by a blank image. The pixel count is checked from the header before any pixel is decoded, so a
decompression bomb costs a header read, not the machine's memory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from rge_demo.errors import RGEUserError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: any photo, not a bomb
UPLOADED = "uploaded image"
MAX_ASPECT = 200  # Qwen2-VL's image processor refuses a longer side over 200x the shorter (smart_resize)
WHITE = (255, 255, 255)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image]


class ImageError(RGEUserError, ValueError):
    """An image that cannot be used; the message names the file (or "uploaded image") and why."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def load_image(
    src: ImageSource, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Load ``src`` (path, bytes, binary file object or PIL image) as a fully decoded RGB image.

    EXIF orientation is applied; transparency is composited on white; 16-bit and float greyscale
    are rescaled to 8 bits. ``max_pixels`` bounds width*height (checked from the header, before
    decoding); ``None`` leaves only PIL's own decompression-bomb limit.
    """
    if isinstance(src, Image.Image):
        label = name or UPLOADED
        _check_pixels(src.size, label, max_pixels)
        try:
            src.load()  # a lazily opened image may still fail here
        except Exception as e:
            raise ImageError(label, f"truncated or corrupt image data ({type(e).__name__}: {e})") from e
        return _finish(src, label)
    data, label = _read_bytes(src, name)
    if not data:
        raise ImageError(label, "empty file (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set by some other code; "
                    "truncated images may load silently")
    with warnings.catch_warnings():
        if max_pixels is None:  # PIL's own limit is the only one: its warning is an error here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        else:  # our (header) check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(label, f"refused as a decompression bomb ({e})") from e
        except UnidentifiedImageError as e:
            raise ImageError(label, "not an image, or a format PIL cannot read") from e
        except Exception as e:  # a broken header can raise nearly anything inside a plugin
            raise ImageError(label, f"unreadable image header ({type(e).__name__}: {e})") from e
        with im:
            _check_pixels(im.size, label, max_pixels)
            try:
                im.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ImageError(label, f"refused as a decompression bomb ({e})") from e
            except Exception as e:
                raise ImageError(label, f"truncated or corrupt {im.format or 'image'} data "
                                        f"({type(e).__name__}: {e})") from e
            return _finish(im, label)


def content_hash(src: ImageSource) -> str:
    """sha256 hex of the file bytes (path, bytes, file object) or of a PIL image's mode+size+pixels."""
    h = hashlib.sha256()
    if isinstance(src, Image.Image):
        h.update(f"{src.mode}|{src.size[0]}x{src.size[1]}|".encode())
        h.update(src.tobytes())
    elif isinstance(src, (bytes, bytearray, memoryview)):
        h.update(src)
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except FileNotFoundError as e:
            raise ImageError(str(path), "file not found") from e
        except IsADirectoryError as e:
            raise ImageError(str(path), "is a directory, not an image file") from e
        except OSError as e:
            raise ImageError(str(path), f"cannot read file ({e})") from e
    elif hasattr(src, "read"):
        h.update(src.read())
    else:
        raise TypeError(f"content_hash: unsupported source type {type(src).__name__}")
    return h.hexdigest()


def _read_bytes(src: ImageSource, name: str | None) -> tuple[bytes, str]:
    """The raw bytes of ``src`` and the label used in error messages."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), name or UPLOADED
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        label = name or str(path)
        try:
            return path.read_bytes(), label
        except FileNotFoundError as e:
            raise ImageError(label, "file not found") from e
        except IsADirectoryError as e:
            raise ImageError(label, "is a directory, not an image file") from e
        except OSError as e:
            raise ImageError(label, f"cannot read file ({e})") from e
    if hasattr(src, "read"):
        label = name or str(getattr(src, "name", "") or UPLOADED)
        try:
            data = src.read()
        except OSError as e:
            raise ImageError(label, f"cannot read file ({e})") from e
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(label, "file object must be opened in binary mode")
        return bytes(data), label
    raise TypeError(f"load_image: unsupported source type {type(src).__name__}")


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int | None) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(label, f"image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(label, f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                                "(possible decompression bomb)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(label, f"{w}x{h} is {max(w, h) / min(w, h):,.0f} times longer than wide; the model's image "
                                f"processor takes at most {MAX_ASPECT}:1 (crop or pad it)")


def check_size(size: tuple[int, int], label: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Raise :class:`ImageError` for a width x height (read from a header) that no model here can take."""
    _check_pixels(size, label, max_pixels)


def _finish(im: Image.Image, label: str) -> Image.Image:
    """Apply EXIF orientation and convert any mode to RGB; returns a new, detached image."""
    original = im
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # a broken EXIF block should not make a good photo unusable
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", label, e)
    try:
        out = _to_rgb(im)
    except Exception as e:
        raise ImageError(label, f"cannot convert mode {im.mode!r} to RGB ({e})") from e
    return out.copy() if out is original else out


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), mode)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Greyscale of more than 8 bits -> uint8. PIL's own conversion clips at 255 instead of scaling."""
    a = a.astype(np.float64)
    if mode.startswith("I;16"):
        a = a / 257.0
    elif mode == "I":  # 32-bit int: 8-bit data stays, otherwise assume 16-bit range
        a = a if a.size == 0 or a.max() <= 255 else a / 257.0
    else:  # "F": [0, 1] floats are scaled, anything else is clipped
        finite = a[np.isfinite(a)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            a = a * 255.0
        a = np.nan_to_num(a, nan=0.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
