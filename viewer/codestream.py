"""Frame headers of encapsulated pixel data (PS3.5 A.4), read before anything is decoded.

Decoders size their output from the codestream's own header, not from the DICOM Rows / Columns: a 127 KB file
whose JPEG SOF says 65535 x 65535 made pylibjpeg allocate 16.5 GB. These readers return what a frame header
promises so that dicom_io can compare it with the DICOM header first:

- JPEG (any SOFn, or DHP for hierarchical files) and JPEG-LS (SOF55): marker segments are skipped by their
  lengths, never by scanning for bytes that look like a marker.
- JPEG 2000 and HTJ2K: SIZ, which must follow SOC; inside a JP2 file wrapper too (its 'jp2c' box).
- RLE: the 64-byte segment table (PS3.5 G.5).

Anything missing, malformed or cut short is a `CodestreamError` with a PHI-free message; no other exception
escapes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

# SOF0-3, 5-7, 9-11, 13-15 (C4 DHT, C8 JPG, CC DAC are not frame headers) and DHP, which heads a hierarchical
# file with the size of the whole image.
JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xDE})
JPEG_LS_FRAME_MARKERS = frozenset({0xF7})  # SOF55
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: markers without a length
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class CodestreamError(ValueError):
    """A frame header that is missing or malformed; the message names the structure, never data values."""


@dataclass(frozen=True)
class FrameInfo:
    rows: int
    columns: int
    components: int
    precision: int  # bits per sample, the largest over the components


def jpeg(data: bytes, frame_markers: frozenset[int] = JPEG_FRAME_MARKERS) -> FrameInfo:
    """The frame header of a JPEG (or, with JPEG_LS_FRAME_MARKERS, JPEG-LS) codestream."""
    name = "JPEG-LS" if frame_markers == JPEG_LS_FRAME_MARKERS else "JPEG"
    if data[:2] != b"\xff\xd8":
        raise CodestreamError(f"the {name} frame does not start with an SOI marker")
    i = 2
    while True:
        while i < len(data) and data[i] == 0xFF and i + 1 < len(data) and data[i + 1] == 0xFF:
            i += 1  # fill bytes before a marker (ITU T.81 B.1.1.2)
        if i + 4 > len(data):
            raise CodestreamError(f"the {name} codestream ends before its frame header")
        if data[i] != 0xFF:
            raise CodestreamError(f"the {name} codestream has no marker where one must be (byte {i})")
        marker = data[i + 1]
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in frame_markers:
            if i + 10 > len(data):
                raise CodestreamError(f"the {name} frame header is cut short")
            length, precision, rows, columns, components = struct.unpack_from(">HBHHB", data, i + 2)
            if components == 0 or length != 8 + 3 * components:
                raise CodestreamError(f"the {name} frame header is malformed")
            return FrameInfo(rows, columns, components, precision)
        if marker in (0xD8, 0xD9, 0xDA) or marker in (JPEG_FRAME_MARKERS | JPEG_LS_FRAME_MARKERS):
            raise CodestreamError(f"the {name} codestream has no {name} frame header before marker FF{marker:02X}")
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2:
            raise CodestreamError(f"the {name} codestream has a marker segment of impossible length")
        i += 2 + length


def jpeg2000(data: bytes) -> FrameInfo:
    """The image size of a JPEG 2000 / HTJ2K codestream (ITU T.800 A.5.1 SIZ), bare or in a JP2 file."""
    if data.startswith(_JP2_SIGNATURE):
        data = _jp2_codestream(data)
    if data[:4] != b"\xff\x4f\xff\x51":
        raise CodestreamError("the JPEG 2000 frame does not start with SOC followed by SIZ")
    if len(data) < 42:
        raise CodestreamError("the JPEG 2000 SIZ segment is cut short")
    length, _, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, _, _, csiz = struct.unpack_from(">HHIIIIIIIIH", data, 4)
    if csiz == 0 or length != 38 + 3 * csiz or xosiz >= xsiz or yosiz >= ysiz or not xtsiz or not ytsiz:
        raise CodestreamError("the JPEG 2000 SIZ segment is malformed")
    if len(data) < 4 + length:
        raise CodestreamError("the JPEG 2000 SIZ segment is cut short")
    components = [data[42 + 3 * c: 45 + 3 * c] for c in range(csiz)]
    if any(xr == 0 or yr == 0 for _, xr, yr in components):
        raise CodestreamError("the JPEG 2000 SIZ segment has a component sub-sampling of 0")
    return FrameInfo(ysiz - yosiz, xsiz - xosiz, csiz, max((s & 0x7F) + 1 for s, _, _ in components))


def _jp2_codestream(data: bytes) -> bytes:
    """The contents of the 'jp2c' box of a JP2 file (ISO 15444-1 I.4)."""
    i = 0
    while i + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, i)
        header = 8
        if size == 1:  # the size follows as 64 bits
            if i + 16 > len(data):
                break
            (size,) = struct.unpack_from(">Q", data, i + 8)
            header = 16
        elif size == 0:  # the last box runs to the end
            size = len(data) - i
        if kind == b"jp2c":
            return data[i + header:]
        if size < header:
            raise CodestreamError("the JP2 file has a box of impossible length")
        i += size
    raise CodestreamError("the JP2 file has no codestream box before its end")


def rle_segments(data: bytes) -> int:
    """The number of segments of an RLE frame (PS3.5 G.5), after checking its offset table."""
    if len(data) < 64:
        raise CodestreamError("the RLE frame is shorter than its 64-byte header")
    count, *offsets = struct.unpack_from("<16I", data)
    if not 1 <= count <= 15:
        raise CodestreamError(f"the RLE header names {count} segments; 1 to 15 are possible")
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in zip(used, used[1:], strict=False)):
        raise CodestreamError("the RLE segment offsets are malformed")
    return count
