"""Deterministic fuzzing of real DICOMs: byte flips (anywhere, in the header, in the frame header), cuts, and
hostile header values. load() either returns an image that renders, or raises ImageRejected; nothing else,
and no patient identity in any message or warning."""
from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from viewer import dicom_io, windowing

from .conftest import PATIENT_ID, PATIENT_NAME
from .test_dicom_io import NIH_DX, SIIM_MONO2

SWAPS = [
    ("Rows", 0), ("Rows", 65535), ("Columns", 1), ("Columns", 12001), ("BitsAllocated", 0), ("BitsAllocated", 32),
    ("BitsStored", 0), ("BitsStored", 17), ("HighBit", 40), ("SamplesPerPixel", 3), ("SamplesPerPixel", 0),
    ("PixelRepresentation", 1), ("PixelRepresentation", 7), ("PhotometricInterpretation", "RGB"),
    ("PlanarConfiguration", 1), ("NumberOfFrames", "0"), ("NumberOfFrames", "x"),
    ("RescaleSlope", "NaN"), ("RescaleSlope", "-inf"), ("RescaleSlope", "0"), ("RescaleIntercept", "1e308"),
    ("WindowCenter", "NaN"), ("WindowWidth", "-0"), ("WindowWidth", "1e-300"), ("WindowCenter", "-1e200"),
    ("PixelSpacing", ["inf", "inf"]), ("PixelSpacing", "1e-300"), ("ImagerPixelSpacing", ["0", "0"]),
    ("VOILUTFunction", "SIGMOID"), ("VOILUTFunction", "XYZ"),
    ("TransferSyntaxUID", JPEG2000Lossless), ("TransferSyntaxUID", RLELossless),
    ("TransferSyntaxUID", ExplicitVRBigEndian), ("TransferSyntaxUID", JPEGBaseline8Bit),
    ("TransferSyntaxUID", DeflatedExplicitVRLittleEndian),
]


@pytest.fixture
def sources(shared_data, testdata, rewrite, make_dicom) -> list[bytes]:
    cr = {"Modality": "CR"}
    return [p.read_bytes() for p in (
        rewrite(shared_data / SIIM_MONO2, "siim.dcm"),  # JPEG baseline (gdcm)
        rewrite(shared_data / NIH_DX, "nih.dcm"),  # native, implicit VR
        rewrite(testdata("MR_small_RLE.dcm"), "rle.dcm", **cr),
        rewrite(testdata("MR_small_jp2klossless.dcm"), "j2k.dcm", **cr),
        rewrite(testdata("MR_small_jpeg_ls_lossless.dcm"), "jls.dcm", **cr),
        make_dicom((np.arange(4096, dtype=np.uint16) * 3).reshape(64, 64), name="windowed.dcm",
                   WindowCenter=6000, WindowWidth=4000, RescaleSlope=2, RescaleIntercept=-100,
                   PixelSpacing=[0.2, 0.2]),
    )]


def _mutant(data: bytes, rng: np.random.Generator, tmp_path) -> bytes:
    kind = int(rng.integers(5))
    if kind == 3:  # hostile header values, through pydicom
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        out = tmp_path / "swap.dcm"
        try:
            for i in rng.choice(len(SWAPS), int(rng.integers(1, 3)), replace=False):
                keyword, value = SWAPS[i]
                setattr(ds.file_meta if keyword == "TransferSyntaxUID" else ds, keyword, value)
            ds.save_as(out)
        except Exception:  # pydicom refuses some values and combinations (a compressed syntax on native data)
            return data
        return out.read_bytes()
    if kind == 2:  # cut short
        return data[: int(rng.integers(len(data)))]
    data = bytearray(data)
    if kind == 0:
        where = (0, len(data))
    elif kind == 1:  # the header elements
        where = (132, min(len(data), 1600))
    else:  # the frame header of compressed data (the first bytes of its first fragment), else the pixels
        start = data.rfind(b"\xfe\xff\x00\xe0") + 8
        where = (start, min(len(data), start + 300))
    for at in rng.integers(*where, int(rng.integers(1, 9))):
        data[at] = int(rng.integers(256))
    return bytes(data)


def _fuzz(sources, tmp_path, count: int) -> Counter:
    outcomes = Counter()
    path = tmp_path / "fuzzed.dcm"
    for i in range(count):
        rng = np.random.default_rng(i)
        path.write_bytes(_mutant(sources[i % len(sources)], rng, tmp_path))
        what = f"variant {i}"
        try:
            img = dicom_io.load(path)
        except dicom_io.ImageRejected as exc:
            assert exc.code in dicom_io.REJECTION_CODES, what
            assert PATIENT_NAME not in exc.message and PATIENT_ID not in exc.message, what
            outcomes[exc.code] += 1
            continue
        picture = windowing.render(img)
        assert picture.shape == img.stored.shape and picture.dtype == np.uint8, what
        windowing.default_window(img)
        assert all(np.isfinite([w.center, w.width]).all() for w in windowing.presets(img).values()), what
        assert not any(PATIENT_NAME in w or PATIENT_ID in w for w in img.header.warnings), what
        outcomes["loaded"] += 1
    return outcomes


def test_fuzzed_dicoms_are_loaded_or_rejected_never_crash(sources, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values it reads
        outcomes = _fuzz(sources, tmp_path, 300)
    # The variants reach both ends: many still load, many are refused, for several reasons.
    assert outcomes["loaded"] > 50 and sum(outcomes.values()) - outcomes["loaded"] > 50, outcomes
    assert len(outcomes) >= 6, outcomes


@pytest.mark.slow
def test_many_fuzzed_dicoms(sources, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = _fuzz(sources, tmp_path, 5000)
    assert outcomes["loaded"] > 500, outcomes
