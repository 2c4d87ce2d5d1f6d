"""load_image: every bad image is an ImageError naming the file; every good one comes out RGB."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from rge_demo.data.images import DEFAULT_MAX_PIXELS, ImageError, content_hash, load_image


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _noise(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose IHDR claims width x height (no pixel data)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------ bad images


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="nope.png.*not found"):
        load_image(path)
    with pytest.raises(ImageError, match="nope.png.*not found"):
        content_hash(path)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory, not an image file"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png.*empty"):
        load_image(path)
    with pytest.raises(ImageError, match="uploaded image.*empty"):
        load_image(b"")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="notes.png.*not an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    _noise((128, 96)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.\w+.*truncated or corrupt"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_header_beyond_pil_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))  # 1e10 pixels in ~60 bytes
    assert path.stat().st_size < 100
    with pytest.raises(ImageError, match="bomb.png.*decompression bomb"):
        load_image(path)
    with pytest.raises(ImageError, match="bomb.png.*decompression bomb"):
        load_image(path, max_pixels=None)  # PIL's own limit still applies


def test_bomb_header_beyond_our_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(10_000, 5_000))  # 50 MP: under PIL's limit, over ours
    assert 10_000 * 5_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageError, match="big.png.*50,000,000 pixels exceeds"):
        load_image(path)


def test_an_image_far_longer_than_wide_is_refused_with_its_shape(tmp_path):
    """Qwen2-VL's processor refuses an aspect ratio over 200:1 with its own words; this names the file."""
    path = tmp_path / "strip.png"
    Image.new("RGB", (20000, 1)).save(path)
    with pytest.raises(ImageError, match=r"strip.png: 20000x1 is 20,000 times longer than wide; .* 200:1"):
        load_image(path)
    with pytest.raises(ImageError, match="uploaded image: 1x300 is 300 times"):
        load_image(Image.new("RGB", (1, 300)))
    assert load_image(Image.new("RGB", (200, 1))).size == (200, 1)


def test_real_image_over_low_limit(tmp_path):
    path = tmp_path / "photo.png"
    _noise((100, 100)).save(path)
    with pytest.raises(ImageError, match="photo.png.*exceeds the limit of 1,000"):
        load_image(path, max_pixels=1000)
    with pytest.raises(ImageError, match="uploaded image.*exceeds"):
        load_image(Image.open(path), max_pixels=1000)
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_error_is_value_error_with_fields(tmp_path):
    with pytest.raises(ValueError) as info:
        load_image(b"garbage", name="upload.jpg")
    assert isinstance(info.value, ImageError)
    assert info.value.name == "upload.jpg" and "not an image" in info.value.problem


# ----------------------------------------------------------------------------------- good images


def test_exif_rotation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # stored: 40 wide, 20 high; left red, right blue
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, "JPEG", quality=95, exif=exif.tobytes())
    im = load_image(path)
    assert im.size == (20, 40)
    out = np.asarray(im).astype(int)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # stored left -> top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60  # stored right -> bottom


def test_rgba_composited_on_white():
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255
    arr[:2, :, 3] = 0  # top half fully transparent
    arr[2:, :, 3] = 128  # bottom half half-transparent red
    out = np.asarray(load_image(_png_bytes(Image.fromarray(arr, "RGBA"))))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (out[0, 0] == (255, 255, 255)).all()
    assert out[3, 0, 0] == 255 and 120 <= out[3, 0, 1] <= 135 and 120 <= out[3, 0, 2] <= 135


def test_la_and_palette_transparency():
    la = Image.new("LA", (3, 3), (0, 0))  # black, fully transparent
    assert (np.asarray(load_image(_png_bytes(la))) == 255).all()

    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0] + [0, 0, 255] + [0] * (254 * 3))  # 0 green, 1 blue
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0  # green is transparent
    out = np.asarray(load_image(_png_bytes(p)))
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[1, 1]) == (255, 255, 255)


def test_greyscale_modes():
    l_img = Image.new("L", (5, 5), 77)
    out = np.asarray(load_image(_png_bytes(l_img)))
    assert out.shape == (5, 5, 3) and (out == 77).all()
    assert load_image(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_i16_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    im16 = Image.fromarray(arr)
    assert im16.mode.startswith("I;16")
    path = tmp_path / "deep.png"
    im16.save(path)
    for src in (path, im16, Image.fromarray(arr.astype(np.int32))):  # file, I;16, I
        out = np.asarray(load_image(src))[0, :, 0]
        assert list(out) == [0, 4, 128, 255], (src, out)


def test_float_mode():
    arr = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = np.asarray(load_image(Image.fromarray(arr, "F")))[0, :, 0]
    assert list(out) == [0, 128, 255]


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    path = tmp_path / "print.jpg"
    cmyk.save(path, "JPEG", quality=95)
    for src in (path, cmyk):
        im = load_image(src)
        assert im.mode == "RGB"
        r, g, b = np.asarray(im)[4, 4].astype(int)
        assert r > 200 and g < 60 and b < 60


def test_sources_agree_and_file_is_closed(tmp_path):
    src = _noise((30, 20), seed=3)
    path = tmp_path / "ok.png"
    src.save(path)
    data = path.read_bytes()
    ref = np.asarray(src)
    fds = set(os.listdir("/proc/self/fd"))
    results = [
        load_image(path),
        load_image(str(path)),
        load_image(data),
        load_image(bytearray(data)),
        load_image(io.BytesIO(data)),
        load_image(src),
    ]
    with open(path, "rb") as f:
        results.append(load_image(f))
    for im in results:
        assert im.mode == "RGB" and im.size == (30, 20)
        assert (np.asarray(im) == ref).all()
    assert set(os.listdir("/proc/self/fd")) <= fds  # loading by path left no file open
    path.unlink()
    assert (np.asarray(results[0]) == ref).all()  # pixels were fully loaded


def test_pil_input_not_mutated():
    src = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    out = load_image(src)
    assert src.mode == "RGBA" and out is not src


def test_content_hash(tmp_path):
    path = tmp_path / "a.png"
    _noise(seed=1).save(path)
    data = path.read_bytes()
    h = content_hash(path)
    assert len(h) == 64 and h == content_hash(data) == content_hash(io.BytesIO(data))
    other = tmp_path / "b.png"
    _noise(seed=2).save(other)
    assert content_hash(other) != h
    im = _noise(seed=1)
    assert content_hash(im) == content_hash(im.copy())
    assert content_hash(im) != content_hash(im.convert("L"))
