"""Reading real radiographs, and a catalogue of broken files made from them that must be rejected precisely."""
from __future__ import annotations

import datetime

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from tests.conftest import without_file_meta
from viewer import dicom_io

from .conftest import PATIENT_ID, PATIENT_NAME

SIIM_MONO2 = "dicom/siim_cr_chest_pa_1024_jpeg_mono2.dcm"
SIIM_MONO1 = "dicom/siim_cr_chest_pa_1024_jpeg_mono1_variant.dcm"
NIH_DX = "dicom/nih_dx_chest_1024_nofinding_nccid.dcm"
NIH_PNG = "nih/images/00000075_000.png"
GREY_JPEG = "bone_pairs/authentic/bone_suppression_001.jpg"


# --- real files ---------------------------------------------------------------------------------------------


def test_nih_dx_header_fields(shared_data):
    h = dicom_io.read_header(shared_data / NIH_DX)
    assert (h.source_format, h.modality, h.rows, h.columns, h.bits_stored) == ("dicom", "DX", 1024, 1024, 8)
    assert h.photometric_interpretation == "MONOCHROME2"
    assert h.transfer_syntax_uid == "1.2.840.10008.1.2"
    assert (h.study_description, h.patient_age_years, h.patient_sex) == ("No Finding", 81, "M")
    assert h.sop_instance_uid and h.study_instance_uid and h.series_instance_uid
    # This file carries neither PixelSpacing nor ImagerPixelSpacing: lengths must fall back to pixels.
    assert (h.pixel_spacing_mm, h.pixel_spacing_source) == (None, None)
    assert h.warnings == ()


def test_siim_cr_header_fields(shared_data):
    h = dicom_io.read_header(shared_data / SIIM_MONO2)
    assert (h.modality, h.view_position, h.body_part_examined) == ("CR", "PA", "CHEST")
    assert h.pixel_spacing_mm == (0.168, 0.168) and h.pixel_spacing_source == "PixelSpacing"
    assert h.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    assert h.study_date == datetime.date(1901, 1, 1)
    assert h.patient_age_years == 62  # PatientAge "62": bare number read as years


def test_rg1_header_fields(testdata):
    h = dicom_io.read_header(testdata("RG1_UNCI.dcm"))
    assert (h.rows, h.columns, h.bits_stored, h.photometric_interpretation) == (1955, 1841, 15, "MONOCHROME1")
    assert (h.window_center, h.window_width) == (15000.0, 30000.0)
    assert h.patient_age_years == 64  # no PatientAge: from birth 1940-03-05 to study 2004-08-26
    assert h.patient_sex == "F" and h.study_date == datetime.date(2004, 8, 26)
    # PixelSpacing is 0.000\0.000 in this file: unusable, said so, and not used.
    assert h.pixel_spacing_mm is None
    assert any("PixelSpacing" in w for w in h.warnings)


def test_load_decodes_jpeg_and_jpeg2000_dicoms(shared_data, testdata):
    siim = dicom_io.load(shared_data / SIIM_MONO2)
    assert siim.stored.shape == (1024, 1024) and siim.stored.dtype == np.uint8
    j2k = dicom_io.load(testdata("RG1_J2KR.dcm"))
    assert j2k.stored.shape == (1955, 1841) and j2k.stored.dtype == np.uint16
    assert 0 < j2k.stored.min() and j2k.stored.max() < 2**15  # 15-bit data
    with pytest.raises(ValueError):
        j2k.stored[0, 0] = 1  # shared through caches: read-only


def test_pixel_hash_identifies_pixels_across_encodings(shared_data, testdata):
    unc, j2k = dicom_io.load(testdata("RG1_UNCR.dcm")), dicom_io.load(testdata("RG1_J2KR.dcm"))
    assert dicom_io.pixel_sha256(unc) == dicom_io.pixel_sha256(j2k)  # same image, uncompressed vs J2K lossless
    assert dicom_io.pixel_sha256(unc) != dicom_io.pixel_sha256(dicom_io.load(testdata("RG1_UNCI.dcm")))
    # Same stored bytes, opposite meaning: MONOCHROME1 must not share MONOCHROME2's inference cache entry.
    mono2, mono1 = dicom_io.load(shared_data / SIIM_MONO2), dicom_io.load(shared_data / SIIM_MONO1)
    assert np.array_equal(mono2.stored, mono1.stored)
    assert dicom_io.pixel_sha256(mono2) != dicom_io.pixel_sha256(mono1)
    assert dicom_io.pixel_sha256(mono2) == dicom_io.pixel_sha256(dicom_io.load(shared_data / SIIM_MONO2))


def test_header_elements_for_the_header_panel(shared_data):
    rows = dicom_io.header_elements(shared_data / NIH_DX)
    assert ("(0008,0060)", "Modality", "CS", "DX") in rows
    assert ("(0002,0010)", "TransferSyntaxUID", "UI", "1.2.840.10008.1.2") in rows
    assert not any(tag == "(7FE0,0010)" for tag, *_ in rows)  # pixel data left out
    assert all(len(value) <= 200 for *_, value in rows)
    assert dicom_io.header_elements(shared_data / NIH_PNG) == []


def test_header_elements_shows_sequences_as_counts(testdata):
    rows = {keyword: value for _, keyword, _, value in dicom_io.header_elements(testdata("RG1_UNCI.dcm"))}
    assert rows["SourceImageSequence"] == "<sequence of 1 items>"
    assert rows["PatientOrientation"] == "L\\F"


@pytest.mark.parametrize("implicit_vr", [True, False], ids=["implicit_vr", "explicit_vr"])
@pytest.mark.parametrize("sample", [NIH_DX, SIIM_MONO2], ids=["nih_dx", "siim_cr_decompressed"])
def test_a_dataset_without_preamble_and_file_meta_reads_as_its_part10_original(shared_data, tmp_path, sample, implicit_vr):
    # What older modalities and some PACS exports write; dcmtk and pydicom (force=True) read it. Was "not DICOM".
    original = dicom_io.load(shared_data / sample)
    bare = without_file_meta(shared_data / sample, tmp_path / "bare.dcm", implicit_vr=implicit_vr)
    img = dicom_io.load(bare)
    assert np.array_equal(img.stored, original.stored) and img.stored.dtype == original.stored.dtype
    assert dicom_io.pixel_sha256(img) == dicom_io.pixel_sha256(original)
    h, o = img.header, original.header
    assert (h.sop_instance_uid, h.modality, h.rows, h.columns, h.pixel_spacing_mm, h.photometric_interpretation) == (
        o.sop_instance_uid, o.modality, o.rows, o.columns, o.pixel_spacing_mm, o.photometric_interpretation
    )  # fmt: skip
    # No transfer syntax in the file: the encoding of its first elements, as pydicom infers it, with native pixels.
    assert h.transfer_syntax_uid == ("1.2.840.10008.1.2" if implicit_vr else "1.2.840.10008.1.2.1")
    name = "Implicit" if implicit_vr else "Explicit"
    assert h.warnings == (
        *o.warnings,
        f"no DICOM preamble and file meta information: read as {name} VR Little Endian, the encoding of its first "
        "elements, with uncompressed pixel data",
    )
    rows = dicom_io.header_elements(bare)  # the header panel shows what the file holds: no file meta
    assert ("(0008,0060)", "Modality", "CS", o.modality) in rows and not any(t.startswith("(0002,") for t, *_ in rows)


def test_a_dataset_without_preamble_still_meets_every_check(shared_data, tmp_path, testdata):
    nih = shared_data / NIH_DX
    # Not an image: a dataset that parses but has no Rows / Columns / BitsAllocated / PixelData (pydicom-data's
    # RT plan without file meta, and the NIH dataset stripped of them).
    _rejected(testdata("ExplVR_LitEndNoMeta.dcm"), "not_an_image", "Rows", "PixelData", header_only=True)
    stripped = without_file_meta(nih, tmp_path / "stripped.dcm", implicit_vr=True, Rows=None, PixelData=None)
    _rejected(stripped, "not_an_image", "no Rows, PixelData", header_only=True)
    # Compressed pixel data cannot be, since nothing names its compression.
    siim = pydicom.dcmread(shared_data / SIIM_MONO2)
    jpeg = tmp_path / "jpeg_without_meta.dcm"
    pydicom.dcmwrite(jpeg, Dataset(siim), enforce_file_format=False, implicit_vr=False, little_endian=True)
    _rejected(jpeg, "unsupported_transfer_syntax", "encapsulated", "inferred", header_only=True)
    # The other checks apply as to any DICOM.
    ct = without_file_meta(nih, tmp_path / "ct.dcm", implicit_vr=False, Modality="CT")
    _rejected(ct, "not_radiograph", "CT", header_only=True)
    tiny = without_file_meta(nih, tmp_path / "tiny.dcm", implicit_vr=True, Rows=16)
    _rejected(tiny, "absurd_dimensions", "16 x 1024", header_only=True)
    _rejected(_cut(without_file_meta(nih, tmp_path / "cut.dcm", implicit_vr=True), 600_000), "truncated", "PixelData")


def test_random_bytes_text_and_png_are_not_taken_for_a_dataset_without_preamble(shared_data, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(50):
        path = tmp_path / f"random_{i}.bin"
        # Half of them start with the group 0x0008 a dataset without preamble starts with.
        path.write_bytes((b"\x08\x00" if i % 2 else b"") + rng.bytes(4000))
        _rejected(path, "not_an_image", "DICM", header_only=True)
    text = tmp_path / "notes.txt"
    text.write_text("\x08\x00" + "an ordinary note, not an image\n" * 40)
    _rejected(text, "not_an_image", "DICM", header_only=True)
    png = tmp_path / "cut.png"
    png.write_bytes((shared_data / NIH_PNG).read_bytes()[:5000])
    assert dicom_io.read_header(png).source_format == "png"
    _rejected(png, "decode_failed", "PNG")


def test_colour_secondary_capture_is_converted_to_grey(testdata):
    img = dicom_io.load(testdata("SC_rgb.dcm"))
    assert img.stored.shape == (100, 100) and img.header.photometric_interpretation == "MONOCHROME2"
    assert img.header.warnings == ("colour image (RGB) converted to grey",)


def test_png_header_and_pixels(shared_data):
    h = dicom_io.read_header(shared_data / NIH_PNG)
    assert (h.source_format, h.rows, h.columns, h.bits_stored) == ("png", 512, 512, 8)
    assert h.pixel_spacing_mm is None and h.sop_instance_uid is None
    img = dicom_io.load(shared_data / NIH_PNG)
    assert np.array_equal(img.stored, np.asarray(Image.open(shared_data / NIH_PNG)))  # decoded independently


def test_grey_jpeg_loads(shared_data):
    img = dicom_io.load(shared_data / GREY_JPEG)
    assert img.header.source_format == "jpeg" and img.stored.shape == (481, 610) and img.stored.dtype == np.uint8
    assert abs(float(img.stored.mean()) - float(np.asarray(Image.open(shared_data / GREY_JPEG)).mean())) < 1


def test_sixteen_bit_png_keeps_its_bit_depth(testdata, tmp_path):
    stored = dicom_io.load(testdata("RG1_UNCI.dcm")).stored
    path = tmp_path / "rg1_16bit.png"
    cv2.imwrite(str(path), stored)
    img = dicom_io.load(path)
    assert img.header.bits_stored == 16 and img.stored.dtype == np.uint16
    assert np.array_equal(img.stored, stored)


def test_colour_png_warns_only_when_channels_differ(shared_data, tmp_path):
    grey = np.asarray(Image.open(shared_data / NIH_PNG))
    same = tmp_path / "grey_as_rgb.png"
    cv2.imwrite(str(same), np.dstack([grey, grey, grey]))
    img = dicom_io.load(same)
    assert np.array_equal(img.stored, grey) and img.header.warnings == ()

    tinted = tmp_path / "tinted.png"
    cv2.imwrite(str(tinted), np.dstack([grey // 2, grey, grey]))  # blue channel halved
    img = dicom_io.load(tinted)
    assert img.stored.ndim == 2 and img.header.warnings == ("colour image converted to grey",)


def test_body_part_other_than_chest_is_a_warning(shared_data, rewrite):
    path = rewrite(shared_data / SIIM_MONO2, "skull.dcm", BodyPartExamined="SKULL")
    img = dicom_io.load(path)
    assert img.header.warnings == ("BodyPartExamined is SKULL, not CHEST",)
    thorax = rewrite(shared_data / SIIM_MONO2, "thorax.dcm", BodyPartExamined="THORAX")
    assert dicom_io.read_header(thorax).warnings == ()


def test_empty_or_malformed_optional_attributes_never_reject(make_dicom):
    path = make_dicom(
        np.zeros((64, 64), np.uint16), WindowCenter="1234", WindowWidth="400", PatientAge="061Y",
        PixelSpacing="", StudyDate="", PatientSex="", RescaleSlope="",
    )
    path.write_bytes(path.read_bytes().replace(b"1234", b"ab#d").replace(b"061Y", b"6x1Y"))
    h = dicom_io.load(path).header
    assert (h.window_center, h.pixel_spacing_mm, h.patient_age_years, h.study_date, h.patient_sex) == (None,) * 5
    assert h.warnings == ("WindowCenter/WindowWidth are malformed and were ignored",)


def test_header_window_is_parsed(make_dicom):
    h = dicom_io.read_header(make_dicom(np.zeros((64, 64), np.uint16), WindowCenter=[40, 400],
                                        WindowWidth=[80, 2000], ImagerPixelSpacing=[0.143, 0.15]))
    assert (h.window_center, h.window_width) == (40.0, 80.0)  # first of several
    assert (h.pixel_spacing_mm, h.pixel_spacing_source) == ((0.143, 0.15), "ImagerPixelSpacing")
    assert any("ImagerPixelSpacing" in w for w in h.warnings)


# --- rejections -------------------------------------------------------------------------------------------


def _rejected(path, code: str, *mentions: str, header_only: bool = False) -> dicom_io.ImageRejected:
    """Assert read_header (no pixel decoded) or load rejects `path` with `code`, a message naming the problem,
    and no patient identity."""
    with pytest.raises(dicom_io.ImageRejected) as info:
        (dicom_io.read_header if header_only else dicom_io.load)(path)
    exc = info.value
    assert exc.code == code, exc.message
    assert str(exc) == exc.message
    for word in mentions:
        assert word in exc.message
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe", "16d7f894", "Covid0000", "CompressedSamples"):
        assert secret not in exc.message
    return exc


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text(f"Patient {PATIENT_NAME} {PATIENT_ID}: not an image at all\n" * 20)
    _rejected(path, "not_an_image", "DICM", "PNG", header_only=True)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    _rejected(path, "empty_file", "empty", header_only=True)


def _cut(path, at: int):
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(path.read_bytes()[:at])
    return cut


def test_native_pixel_data_cut_short(shared_data, rewrite):
    src = rewrite(shared_data / NIH_DX, "native.dcm")
    _rejected(_cut(src, int(src.stat().st_size * 0.6)), "truncated", "PixelData", header_only=True)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_encapsulated_pixel_data_cut_short(testdata, rewrite):
    src = rewrite(testdata("RG1_J2KR.dcm"), "j2k.dcm")
    _rejected(_cut(src, src.stat().st_size // 2), "truncated", "pixel data", header_only=True)


def test_file_cut_inside_the_header(shared_data, rewrite):
    src = rewrite(shared_data / NIH_DX, "header.dcm")
    inside_patient_id = src.read_bytes().index(PATIENT_ID.encode()) + 5
    _rejected(_cut(src, inside_patient_id), "truncated", "cut short", header_only=True)


def test_missing_pixel_data(shared_data, rewrite):
    path = rewrite(shared_data / NIH_DX, "no_pixels.dcm", PixelData=None)
    _rejected(path, "no_pixel_data", "PixelData", header_only=True)


def test_palette_colour_is_unsupported(shared_data, rewrite):
    path = rewrite(shared_data / SIIM_MONO2, "palette.dcm", PhotometricInterpretation="PALETTE COLOR")
    _rejected(path, "unsupported_photometric", "PALETTE COLOR", "MONOCHROME2", header_only=True)


def test_rgb_is_only_for_secondary_capture(testdata, rewrite):
    path = rewrite(testdata("SC_rgb.dcm"), "rgb_cr.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.1", Modality="CR")
    _rejected(path, "unsupported_photometric", "RGB", "Secondary Capture")


def test_mpeg2_transfer_syntax_is_unsupported(shared_data, rewrite):
    path = rewrite(shared_data / SIIM_MONO2, "mpeg2.dcm", TransferSyntaxUID="1.2.840.10008.1.2.4.100")
    exc = _rejected(path, "unsupported_transfer_syntax", "1.2.840.10008.1.2.4.100", "MPEG2", header_only=True)
    assert "JPEG 2000" in exc.message  # lists what is supported


def test_absurd_dimensions_rejected_before_decoding(shared_data, rewrite):
    # 60000 x 1024 pixels of 1 byte would be 61 MB of pixel data; the file holds 1 MB. Any decode attempt would
    # fail as truncated: getting the dimension code from load proves the size check came first.
    path = rewrite(shared_data / NIH_DX, "huge.dcm", Rows=60000)
    _rejected(path, "absurd_dimensions", "60000", header_only=True)
    _rejected(path, "absurd_dimensions", "60000")


def test_tiny_png_is_absurd(tmp_path):
    path = tmp_path / "tiny.png"
    cv2.imwrite(str(path), np.zeros((32, 512), np.uint8))
    _rejected(path, "absurd_dimensions", "32 x 512", header_only=True)


def test_bits_stored_32_is_unsupported(shared_data, rewrite):
    path = rewrite(shared_data / NIH_DX, "bits32.dcm", BitsStored=32)
    _rejected(path, "unsupported_bits", "BitsStored 32", header_only=True)


def test_multiframe_is_rejected(shared_data, rewrite):
    path = rewrite(shared_data / NIH_DX, "two_frames.dcm", NumberOfFrames=2)
    _rejected(path, "multiframe", "2 frames", header_only=True)


def test_ct_is_not_a_radiograph(testdata, rewrite):
    path = rewrite(testdata("RG1_UNCR.dcm"), "ct.dcm", Modality="CT")
    _rejected(path, "not_radiograph", "Modality CT", "CR", header_only=True)


def test_secondary_capture_of_a_ct_is_not_a_radiograph(shared_data, rewrite):
    path = rewrite(shared_data / NIH_DX, "sc_ct.dcm", Modality="CT")  # Secondary Capture SOP class
    _rejected(path, "not_radiograph", "Modality CT", "Secondary Capture", header_only=True)
    ot = rewrite(shared_data / NIH_DX, "sc_ot.dcm", Modality="OT")  # a digitised film: accepted
    assert dicom_io.read_header(ot).modality == "OT"


def test_corrupt_png_fails_to_decode(shared_data, tmp_path):
    data = bytearray((shared_data / NIH_PNG).read_bytes())
    start = data.index(b"IDAT") + 1000
    data[start:start + 400] = bytes(400)  # zeros in the middle of the compressed stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    dicom_io.read_header(path)  # the header chunk is intact
    _rejected(path, "decode_failed", "PNG")


def test_truncated_jpeg_fails_to_decode(shared_data, tmp_path):
    data = (shared_data / GREY_JPEG).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    _rejected(path, "decode_failed", "JPEG")
