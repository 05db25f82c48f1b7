"""The JPEG frame header reader (data/jpeg_frame.py) against Pillow's header parse."""

import io

import numpy as np
import pytest
from PIL import Image

from mimreg.data.jpeg_frame import JpegFrame, jpeg_frame


def encoded(mode: str, size=(37, 23), fmt: str = "JPEG", **options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


EXIF = Image.Exif()
EXIF[0x010F] = "a camera maker, to put an APP1 segment before the frame"


@pytest.mark.parametrize("mode, options, components", [
    ("RGB", {}, 3), ("RGB", {"progressive": True}, 3), ("RGB", {"exif": EXIF, "quality": 50}, 3),
    ("RGB", {"icc_profile": b"\0" * 3000}, 3), ("L", {}, 1), ("CMYK", {}, 4),
])
def test_frame_is_what_pillow_reads(mode, options, components):
    data = encoded(mode, **options)
    with Image.open(io.BytesIO(data)) as image:
        assert jpeg_frame(data) == JpegFrame(*image.size, components)


def test_fill_bytes_before_a_marker_are_skipped():
    data = encoded("RGB")
    padded = data[:2] + b"\xff\xff\xff" + data[2:]  # 0xFF fill before the first marker's own 0xFF
    assert jpeg_frame(padded) == JpegFrame(37, 23, 3)


@pytest.mark.parametrize("data", [
    encoded("RGB", fmt="PNG"), b"", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00\x10JFIF",  # no frame header
])
def test_no_frame_gives_none(data):
    assert jpeg_frame(data) is None


def test_a_frame_cut_short_gives_none():
    data = encoded("RGB")
    frame_at = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xC0)
    assert jpeg_frame(data[:frame_at + 8]) is None and jpeg_frame(data[:frame_at + 10]) == JpegFrame(37, 23, 3)
