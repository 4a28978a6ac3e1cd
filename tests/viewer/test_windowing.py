"""The picture a reader sees: real radiographs end to end, and the PS3.3 arithmetic on hand-made DICOMs."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from viewer import dicom_io, windowing
from viewer.windowing import Window

RAMP = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit value exactly once


def _lungs_and_mediastinum(picture: np.ndarray) -> tuple[float, float]:
    """Mean grey of both lung fields and of the mediastinum, at mid-height of a PA chest."""
    h, w = picture.shape
    rows = slice(int(h * 0.25), int(h * 0.55))
    lungs = np.concatenate([
        picture[rows, int(w * 0.18):int(w * 0.35)].ravel(), picture[rows, int(w * 0.62):int(w * 0.80)].ravel()
    ])
    return float(lungs.mean()), float(picture[rows, int(w * 0.46):int(w * 0.54)].mean())


def _ps33_linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 written out branch by branch, rounded half up to 0..255."""
    x = x.astype(np.float64)
    y = np.where(
        x <= c - 0.5 - (w - 1) / 2, 0.0,
        np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0),
    )
    return np.floor(y + 0.5).astype(np.uint8)


# --- real radiographs ---------------------------------------------------------------------------------------


def test_siim_monochrome1_variant_is_the_exact_inverse(shared_data):
    mono2 = windowing.render(dicom_io.load(shared_data / "dicom/siim_cr_chest_pa_1024_jpeg_mono2.dcm"))
    mono1 = windowing.render(dicom_io.load(shared_data / "dicom/siim_cr_chest_pa_1024_jpeg_mono1_variant.dcm"))
    assert mono2.shape == (1024, 1024) and mono2.dtype == np.uint8
    assert np.array_equal(mono1, 255 - mono2)
    lungs, mediastinum = _lungs_and_mediastinum(mono2)
    assert lungs < mediastinum - 30


def test_nih_dx_renders_with_dark_lungs(shared_data):
    img = dicom_io.load(shared_data / "dicom/nih_dx_chest_1024_nofinding_nccid.dcm")
    picture = windowing.render(img)
    assert picture.shape == (1024, 1024) and picture.dtype == np.uint8
    # No window in the header: the full stored range 0..252 is stretched over 0..255.
    assert windowing.default_window(img) == Window(126.5, 253.0)
    assert (picture.min(), picture.max()) == (0, 255)
    lungs, mediastinum = _lungs_and_mediastinum(picture)
    assert lungs < mediastinum - 30


def test_rg1_uncompressed_and_jpeg2000_render_identically(testdata):
    # pydicom-data's RG1_UNCI is the decompressed *irreversible* (lossy) J2K; its lossless twin is RG1_UNCR.
    for uncompressed, jpeg2000 in (("RG1_UNCR.dcm", "RG1_J2KR.dcm"), ("RG1_UNCI.dcm", "RG1_J2KI.dcm")):
        a = windowing.render(dicom_io.load(testdata(uncompressed)))
        b = windowing.render(dicom_io.load(testdata(jpeg2000)))
        assert a.shape == (1955, 1841)
        assert np.array_equal(a, b), (uncompressed, jpeg2000)


def test_rg1_monochrome1_shows_lungs_dark(testdata):
    img = dicom_io.load(testdata("RG1_UNCI.dcm"))
    picture = windowing.render(img)
    lungs, mediastinum = _lungs_and_mediastinum(picture)
    assert lungs < mediastinum - 30  # MONOCHROME1 inverted: air dark, dense tissue bright
    # The header window (15000/30000) is applied on the 15-bit values, then inverted.
    assert np.array_equal(picture, 255 - _ps33_linear(img.stored, 15000, 30000))


def test_rg1_presets_are_derived_from_the_image(testdata):
    img = dicom_io.load(testdata("RG1_UNCI.dcm"))
    p = windowing.presets(img)
    assert list(p) == ["Full range", "Lung", "Soft tissue / mediastinum", "Bone"]
    assert p["Full range"] == Window((803 + 26512 + 1) / 2, 26512 - 803 + 1)  # stored range of this image
    left_lung = (slice(500, 1000), slice(350, 650))
    # The lung preset spreads the lung field over more grey levels than the header window does...
    assert windowing.render(img, p["Lung"])[left_lung].std() > 1.4 * windowing.render(img)[left_lung].std()
    # ...and the bone preset (dense end) leaves it black.
    assert windowing.render(img, p["Bone"])[left_lung].mean() < 10


def test_png_renders_exactly_as_stored(shared_data):
    path = shared_data / "nih/images/00000075_000.png"
    img = dicom_io.load(path)
    assert np.array_equal(windowing.render(img), np.asarray(Image.open(path)))
    assert np.array_equal(windowing.render(img, invert=True), 255 - np.asarray(Image.open(path)))


def test_modality_values_of_a_real_image(testdata):
    img = dicom_io.load(testdata("RG1_UNCI.dcm"))
    values = windowing.modality_values(img)
    assert values.dtype == np.float32 and np.array_equal(values, img.stored.astype(np.float32))


# --- hand-made cases -----------------------------------------------------------------------------------------


def test_linear_window_edges(make_dicom):
    img = dicom_io.load(make_dicom(RAMP, WindowCenter=1000, WindowWidth=201))
    picture = windowing.render(img)
    # PS3.3: x <= c - 0.5 - (w-1)/2 = 899.5 -> 0; x > c - 0.5 + (w-1)/2 = 1099.5 -> 255.
    assert [picture.flat[x] for x in (0, 899, 900, 1000, 1099, 1100, 4095)] == [0, 0, 1, 128, 254, 255, 255]
    assert np.array_equal(picture, _ps33_linear(RAMP, 1000, 201))
    # A window chosen by the user replaces the header's.
    assert np.array_equal(windowing.render(img, Window(3000, 1024)), _ps33_linear(RAMP, 3000, 1024))


def test_rescale_slope_and_intercept(make_dicom):
    img = dicom_io.load(make_dicom(RAMP, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=2000))
    values = windowing.modality_values(img)
    assert values.flat[0] == -1024 and values.flat[4095] == 2 * 4095 - 1024
    # The window is in rescaled units: 0 is stored value 512.
    assert np.array_equal(windowing.render(img), _ps33_linear(2.0 * RAMP - 1024, 0, 2000))
    assert windowing.render(img).flat[512] == 128


def test_sigmoid_voi_function(make_dicom):
    img = dicom_io.load(make_dicom(RAMP, WindowCenter=2048, WindowWidth=1000, VOILUTFunction="SIGMOID"))
    picture = windowing.render(img)
    expected = np.floor(255.0 / (1.0 + np.exp(-4.0 * (RAMP - 2048.0) / 1000.0)) + 0.5)
    assert np.array_equal(picture, expected.astype(np.uint8))
    assert [picture.flat[x] for x in (0, 2048, 2548)] == [0, 128, 225]  # 255 / (1 + e^-2) = 224.6


def test_linear_exact_voi_function(make_dicom):
    img = dicom_io.load(make_dicom(RAMP, WindowCenter=1000, WindowWidth=200, VOILUTFunction="LINEAR_EXACT"))
    picture = windowing.render(img)
    # PS3.3 C.11.2.1.3.2: x <= c - w/2 -> 0, x > c + w/2 -> 255, else ((x - c) / w + 0.5) * 255.
    assert [picture.flat[x] for x in (900, 901, 1000, 1099, 1100, 1101)] == [0, 1, 128, 254, 255, 255]


def test_voi_lut_sequence_is_the_default_display(make_dicom):
    table = ((np.arange(4096, dtype=np.uint32) ** 2) >> 12).astype(np.uint16)  # gamma-like, 12-bit output
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUTDescriptor: entries, first mapped value, bits
    item.add_new(0x00283006, "OW", table.astype("<u2").tobytes())  # LUTData
    img = dicom_io.load(make_dicom(RAMP, VOILUTSequence=[item], WindowCenter=100, WindowWidth=50))
    assert windowing.default_window(img) is None  # the LUT wins over the header window
    expected = np.floor(table.reshape(64, 64) / 4095.0 * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(windowing.render(img), expected)
    # An explicit window still works on the same image.
    assert np.array_equal(windowing.render(img, Window(100, 50)), _ps33_linear(RAMP, 100, 50))


def test_modality_lut_sequence_replaces_rescale(make_dicom):
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])
    item.add_new(0x00283006, "OW", (4095 - np.arange(4096)).astype("<u2").tobytes())
    item.ModalityLUTType = "US"
    img = dicom_io.load(make_dicom(RAMP, ModalityLUTSequence=[item], RescaleSlope=5))
    assert np.array_equal(windowing.modality_values(img), 4095.0 - RAMP)


def test_signed_pixels(make_dicom):
    signed = (RAMP.astype(np.int32) - 2048).astype(np.int16)
    img = dicom_io.load(make_dicom(signed, WindowCenter=0, WindowWidth=1000))
    assert img.stored.dtype == np.int16 and img.stored.min() == -2048
    assert np.array_equal(windowing.render(img), _ps33_linear(signed, 0, 1000))


def test_monochrome1_and_invert_flag(make_dicom):
    mono2 = dicom_io.load(make_dicom(RAMP, name="m2.dcm", WindowCenter=2000, WindowWidth=3001))
    mono1 = dicom_io.load(make_dicom(RAMP, name="m1.dcm", WindowCenter=2000, WindowWidth=3001,
                                     PhotometricInterpretation="MONOCHROME1"))
    assert np.array_equal(windowing.render(mono1), 255 - windowing.render(mono2))
    assert np.array_equal(windowing.render(mono2, invert=True), 255 - windowing.render(mono2))
    assert np.array_equal(windowing.render(mono1, invert=True), windowing.render(mono2))
    # Low stored values are dense tissue in MONOCHROME1: bright.
    assert windowing.render(mono1).flat[0] == 255


def test_no_header_window_means_full_range(make_dicom):
    img = dicom_io.load(make_dicom(RAMP // 4 + 100))  # stored 100..1123
    assert windowing.default_window(img) == Window((100 + 1123 + 1) / 2, 1123 - 100 + 1)
    picture = windowing.render(img)
    assert (picture.flat[0], picture.flat[-1]) == (0, 255)


def test_an_unusable_window_shows_the_full_range(make_dicom):
    img = dicom_io.load(make_dicom(RAMP // 4 + 100))
    full = windowing.render(img)
    assert (full.flat[0], full.flat[-1]) == (0, 255)
    for window in (Window(100, 0), Window(100, -5), Window(math.nan, 400), Window(100, math.inf)):
        assert np.array_equal(windowing.render(img, window), full), window
