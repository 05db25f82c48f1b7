"""A JPEG's size and number of colour components, read from its frame header (SOF) alone.

Written here because no decoder exposes it cheaply: Pillow's `Image.open` parses every marker
segment (quantisation and Huffman tables included) in Python to report the size, about 0.1 ms per
file in the draft loader's loop (benchmarks/imagenet_decode.py), and torchvision's decoders read
no header without decoding. Walking the marker segments up to the frame header reads a few bytes each.
"""

from __future__ import annotations

from typing import NamedTuple

# Start-of-frame markers SOF0-SOF15, less DHT (C4), JPG (C8) and DAC (CC), which share the range
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RST0-7 carry no segment
_SCAN_OR_END = frozenset([0xDA, 0xD9])  # SOS, EOI: a frame header would have come before


class JpegFrame(NamedTuple):
    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr (or Adobe RGB), 4 CMYK / YCCK


def jpeg_frame(data: bytes) -> JpegFrame | None:
    """The frame header of the JPEG bytes `data`; None when `data` is not a JPEG or the header is
    missing, truncated or leaves the height to a later DNL marker (callers then let Pillow decide)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _NO_LENGTH:
            at += 2
            continue
        if marker in _SCAN_OR_END:
            return None
        if marker in _FRAME_MARKERS:
            if at + 10 > len(data):
                return None
            height, width = int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
            return JpegFrame(width, height, data[at + 9]) if height and width else None
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return None
