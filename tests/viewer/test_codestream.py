"""Frame header readers on the frames of real files, on those frames patched, and on broken bytes."""
from __future__ import annotations

import struct

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from viewer import codestream
from viewer.codestream import CodestreamError, FrameInfo


def frame_of(path) -> bytes:
    ds = pydicom.dcmread(path)
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def test_jpeg_frame_headers_of_real_files(shared_data, testdata):
    assert codestream.jpeg(frame_of(shared_data / "dicom/siim_cr_chest_pa_1024_jpeg_mono2.dcm")) == FrameInfo(
        1024, 1024, 1, 8)
    assert codestream.jpeg(frame_of(testdata("JPGExtended.dcm"))) == FrameInfo(1024, 256, 1, 12)  # SOF1
    assert codestream.jpeg(frame_of(testdata("JPEG-LL.dcm"))) == FrameInfo(1024, 256, 1, 16)  # SOF3, lossless
    # The frame header follows an APP0 and tables here: segments are skipped by their lengths.
    assert codestream.jpeg(frame_of(testdata("SC_rgb_jpeg_dcmtk.dcm"))) == FrameInfo(100, 100, 3, 8)
    jls = frame_of(testdata("MR_small_jpeg_ls_lossless.dcm"))
    assert codestream.jpeg(jls, codestream.JPEG_LS_FRAME_MARKERS) == FrameInfo(64, 64, 1, 16)
    with pytest.raises(CodestreamError, match="no JPEG frame header"):
        codestream.jpeg(jls)  # a JPEG-LS frame is not a JPEG one


def test_jpeg2000_frame_headers_bare_and_in_a_jp2_file(testdata):
    assert codestream.jpeg2000(frame_of(testdata("RG1_J2KR.dcm"))) == FrameInfo(1955, 1841, 1, 15)
    jp2 = frame_of(testdata("GDCMJ2K_TextGBR.dcm"))
    assert jp2[4:8] == b"jP  "  # a JP2 file wrapper, not a bare codestream
    assert codestream.jpeg2000(jp2) == FrameInfo(400, 400, 3, 8)
    at = jp2.index(b"\xff\x4f\xff\x51") + 8  # Xsiz inside the wrapped codestream
    patched = jp2[:at] + struct.pack(">I", 65535) + jp2[at + 4:]
    assert codestream.jpeg2000(patched).columns == 65535


def test_rle_segment_count(testdata):
    assert codestream.rle_segments(frame_of(testdata("MR_small_RLE.dcm"))) == 2  # 16-bit grey: 2 byte planes
    assert codestream.rle_segments(frame_of(testdata("SC_rgb_rle.dcm"))) == 3


@pytest.mark.parametrize("data, match", [
    (b"", "SOI"),
    (b"\xff\xd8", "ends before its frame header"),
    (b"\xff\xd8\xff\xda\x00\x08", "before marker FFDA"),  # a scan before any frame header
    (b"\xff\xd8\xff\xe0\x00\x01", "impossible length"),
    (b"\xff\xd8\xff\xe0\x00\x10" + b"J" * 14 + b"\x12\x34\x56\x78", "no marker"),
    (b"\xff\xd8\xff\xc0\x00\x0b\x08\x04\x00\x04", "cut short"),
    (b"\xff\xd8\xff\xc0\x00\x0b\x08\x04\x00\x04\x00\x02\x01\x11\x00", "malformed"),  # 2 components, length of 1
])
def test_broken_jpeg_headers(data, match):
    with pytest.raises(CodestreamError, match=match):
        codestream.jpeg(data)


@pytest.mark.parametrize("data, match", [
    (b"\xff\x4f\xff\x90", "SOC followed by SIZ"),
    (b"\xff\x4f\xff\x51\x00\x29", "cut short"),
    (b"\xff\x4f\xff\x51\x00\x29" + bytes(36) + b"\x00\x01" + b"\x07\x01\x01", "malformed"),  # Xsiz 0
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x04ftyp", "impossible length"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "no codestream box"),
])
def test_broken_jpeg2000_headers(data, match):
    with pytest.raises(CodestreamError, match=match):
        codestream.jpeg2000(data)


@pytest.mark.parametrize("header, match", [
    (b"\x02\x00\x00\x00", "shorter than"),
    (struct.pack("<16I", 0, *([0] * 15)), "0 segments"),
    (struct.pack("<16I", 16, *([64] * 15)), "16 segments"),
    (struct.pack("<16I", 2, 64, 64, *([0] * 13)), "offsets"),
    (struct.pack("<16I", 2, 32, 100, *([0] * 13)), "offsets"),
])
def test_broken_rle_headers(header, match):
    with pytest.raises(CodestreamError, match=match):
        codestream.rle_segments(header)


def test_damaged_real_headers_never_raise_anything_else(shared_data, testdata):
    frames = [
        (codestream.jpeg, frame_of(shared_data / "dicom/siim_cr_chest_pa_1024_jpeg_mono2.dcm")[:400]),
        (codestream.jpeg2000, frame_of(testdata("RG1_J2KR.dcm"))[:200]),
        (codestream.jpeg2000, frame_of(testdata("GDCMJ2K_TextGBR.dcm"))[:200]),
        (codestream.rle_segments, frame_of(testdata("MR_small_RLE.dcm"))[:200]),
    ]
    rng = np.random.default_rng(7)
    outcomes = []
    for i in range(4000):
        read, frame = frames[i % len(frames)]
        data = bytearray(frame[: int(rng.integers(0, len(frame) + 1))] if i % 3 == 0 else frame)
        for at in rng.integers(0, len(data), int(rng.integers(1, 4))) if data else ():
            data[at] = int(rng.integers(0, 256))
        try:
            read(bytes(data))
            outcomes.append("parsed")
        except CodestreamError:
            outcomes.append("refused")
    # Both happen often: the damage reaches the fields, not only the first check.
    assert min(outcomes.count("parsed"), outcomes.count("refused")) > 400
