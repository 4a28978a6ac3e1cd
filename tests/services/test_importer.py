import shutil

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from db import engine as dbe
from db.models import Image, Study
from services import importer
from viewer import dicom_io

LIMIT = 50 * 2**20


def _import(ctx, *paths):
    return list(importer.import_paths(ctx.engine, ctx.store, paths, max_bytes=LIMIT))


def test_sample_dicoms_import_with_identity_and_header_fields(ctx, shared_data):
    results = _import(ctx, shared_data / "dicom")
    # The SIIM MONOCHROME1 variant reuses the SOP Instance UID of its MONOCHROME2 twin with other content.
    assert [(r.status, r.code) for r in results] == [("imported", None), ("imported", None), ("rejected", "uid_conflict")]
    assert all(r.reason is None and r.sop_instance_uid and r.study_instance_uid for r in results[:2])
    assert "same SOP Instance UID" in results[2].reason
    with dbe.read(ctx.engine) as s:
        dx = s.scalar(select(Image).where(Image.original_filename == "nih_dx_chest_1024_nofinding_nccid.dcm"))
        assert dx.modality == "DX" and dx.rows >= 1024 and dx.pixel_spacing_row_mm is None  # none in its header
        assert (dx.study.study_description, dx.study.patient_age_years, dx.study.patient_sex) == ("No Finding", 81, "M")
        cr = s.scalar(select(Image).where(Image.modality == "CR"))
        assert (cr.pixel_spacing_row_mm, cr.view_position, cr.study.view_position) == (0.168, "PA", "PA")
        # stored once, content-addressed, byte-identical
        stored = ctx.store.path_for(dx.file_sha256)
        assert stored.read_bytes() == (shared_data / "dicom" / dx.original_filename).read_bytes()


def test_reimport_is_recognised_as_duplicate_and_stores_nothing_new(ctx, shared_data, tmp_path):
    _import(ctx, shared_data / "dicom")
    copy = tmp_path / "renamed.dcm"
    shutil.copy(shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono1_variant.dcm", copy)
    again = _import(ctx, shared_data / "dicom", copy)
    assert [r.status for r in again] == ["duplicate", "duplicate", "rejected", "duplicate"]
    objects = sorted(ctx.store.root.rglob("*"))
    assert _import(ctx, copy)[0].status == "duplicate" and sorted(ctx.store.root.rglob("*")) == objects
    with dbe.read(ctx.engine) as s:
        assert s.scalar(select(func.count(Image.id))) == 2


def test_png_duplicates_are_found_by_pixels_not_by_name(ctx, shared_data, tmp_path):
    src = sorted((shared_data / "nih" / "images").glob("*.png"))[:3]
    first = _import(ctx, *src)
    assert [r.status for r in first] == ["imported"] * 3
    assert len({r.study_instance_uid for r in first}) == 3  # one study per PNG
    renamed = tmp_path / "other-name.png"
    shutil.copy(src[0], renamed)
    assert _import(ctx, renamed)[0].status == "duplicate"


def test_a_bad_file_is_rejected_and_the_rest_of_the_batch_still_imports(ctx, shared_data, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image at all")
    shutil.copy(shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm", folder / "good.dcm")
    ds = pydicom.dcmread(shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm")
    ds.Modality = "CT"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "ct.dcm")
    results = {r.file.rsplit("/", 1)[-1]: r for r in _import(ctx, folder)}
    assert results["good.dcm"].status == "imported"
    assert (results["notes.txt"].status, results["notes.txt"].code) == ("rejected", "not_an_image")
    assert (results["ct.dcm"].status, results["ct.dcm"].code) == ("rejected", "not_radiograph")
    assert "CT" in results["ct.dcm"].reason
    with dbe.read(ctx.engine) as s:
        assert s.scalar(select(func.count(Study.id))) == 1


def test_files_over_the_size_limit_are_rejected_before_reading(ctx, shared_data):
    path = shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"
    r = importer.import_file(ctx.engine, ctx.store, path, max_bytes=1000)
    assert (r.status, r.code) == ("rejected", "too_large") and "limit" in r.reason
    assert not any(ctx.store.root.rglob("*")) if ctx.store.root.exists() else True


def test_stored_pixels_decode_to_the_imported_pixel_hash(ctx, shared_data):
    (r,) = _import(ctx, shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm")
    with dbe.read(ctx.engine) as s:
        image = s.get(Image, r.image_id)
        img = dicom_io.load(ctx.store.path_for(image.file_sha256))
        assert dicom_io.pixel_sha256(img) == image.pixel_sha256
        assert np.asarray(img.stored).shape == (image.rows, image.columns)


def test_nih_metadata_csv_fills_patient_fields_of_pngs(ctx, shared_data):
    from services import sidecar

    meta = sidecar.load(shared_data / "nih" / "labels.csv")
    png = sorted((shared_data / "nih" / "images").glob("*.png"))[0]
    (r,) = importer.import_paths(ctx.engine, ctx.store, [png], max_bytes=LIMIT, metadata=meta)
    expected = meta[png.name]
    with dbe.read(ctx.engine) as s:
        study = s.get(Study, r.study_id)
        assert (study.patient_id, study.patient_age_years, study.patient_sex, study.view_position) == (
            expected["patient_id"], expected["patient_age_years"], expected["patient_sex"], expected["view_position"]
        )
        assert study.view_position in {"PA", "AP"} and study.patient_sex in {"M", "F"}


def test_no_patient_identifier_reaches_the_logs(ctx, shared_data, tmp_path, caplog):
    import logging

    ds = pydicom.dcmread(shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm")
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-12345"
    ds.save_as(tmp_path / "named.dcm")
    ds.Modality = "CT"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "named-ct.dcm")
    with caplog.at_level(logging.DEBUG):
        results = _import(ctx, tmp_path / "named.dcm", tmp_path / "named-ct.dcm")
    assert [r.status for r in results] == ["imported", "rejected"]
    assert caplog.records, "the import logged nothing: this test would prove nothing"
    assert "Doe" not in caplog.text and "MRN-12345" not in caplog.text and ds.StudyInstanceUID not in caplog.text


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_bad_header_values_and_corrupt_pixels_import_with_warnings_and_bombs_are_rejected(ctx, shared_data, tmp_path):
    from pydicom.encaps import encapsulate, generate_frames

    def variant(src, name, **changes):
        ds = pydicom.dcmread(shared_data / "dicom" / src)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a new instance each, not a uid_conflict
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(tmp_path / name)
        return tmp_path / name

    dx, siim = "nih_dx_chest_1024_nofinding_nccid.dcm", "siim_cr_chest_pa_1024_jpeg_mono2.dcm"
    frame = bytearray(next(generate_frames(pydicom.dcmread(shared_data / "dicom" / siim).PixelData, number_of_frames=1)))
    corrupt, bomb = bytearray(frame), bytearray(frame)
    scan = frame.index(b"\xff\xda")
    corrupt[scan + 2000:scan + 2050] = bytes(50)  # zeros in the entropy-coded data
    sof = frame.index(b"\xff\xc0")
    bomb[sof + 5:sof + 9] = b"\xff\xff\xff\xff"  # the frame header says 65535 x 65535
    expected = {
        variant(dx, "slope_nan.dcm", RescaleSlope="NaN"): "RescaleSlope / RescaleIntercept",
        variant(dx, "slope_inf.dcm", RescaleSlope="inf"): "RescaleSlope / RescaleIntercept",
        variant(dx, "spacing_inf.dcm", PixelSpacing=["inf", "inf"]): "PixelSpacing is not two numbers",
        variant(dx, "spacing_tiny.dcm", PixelSpacing=["1e-300", "1e-300"]): "PixelSpacing is not two numbers",
        variant(dx, "window_nan.dcm", WindowCenter="NaN", WindowWidth="400"): "WindowCenter/WindowWidth are not finite",
        variant(dx, "window_inf.dcm", WindowCenter="100", WindowWidth="inf"): "WindowCenter/WindowWidth are not finite",
        variant(siim, "corrupt.dcm", PixelData=encapsulate([bytes(corrupt)])): "Corrupt JPEG data",
    }
    results = _import(ctx, *expected, variant(siim, "bomb.dcm", PixelData=encapsulate([bytes(bomb)])))
    assert (results[-1].status, results[-1].code) == ("rejected", "frame_size_mismatch")
    with dbe.read(ctx.engine) as s:
        for r, warning in zip(results, expected.values(), strict=False):
            assert r.status == "imported" and any(warning in w for w in r.warnings), (r.file, r.warnings)
            image = s.get(Image, r.image_id)
            assert warning in image.warnings  # what the viewer shows
            if "PixelSpacing" in warning:  # stored as unknown, not as inf or 1e-300
                assert (image.pixel_spacing_row_mm, image.pixel_spacing_col_mm) == (None, None)
            if "Window" in warning:
                assert (image.window_center, image.window_width) == (None, None)


def test_a_dicom_without_preamble_and_file_meta_is_imported_as_the_same_image(ctx, shared_data, tmp_path):
    # Older modalities and some PACS exports write no preamble and no file meta; such a file was "not DICOM".
    from tests.conftest import without_file_meta

    original = shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"
    implicit = without_file_meta(original, tmp_path / "implicit.dcm", implicit_vr=True)
    explicit = without_file_meta(original, tmp_path / "explicit.dcm", implicit_vr=False)
    results = _import(ctx, implicit, explicit, original)
    # Same SOP Instance UID and same pixels as the Part 10 original: one image, the others duplicates.
    assert [(r.status, r.code) for r in results] == [("imported", None), ("duplicate", None), ("duplicate", None)]
    assert results[0].warnings == [
        "no DICOM preamble and file meta information: read as Implicit VR Little Endian, the encoding of its first "
        "elements, with uncompressed pixel data"
    ]
    with dbe.read(ctx.engine) as s:
        image = s.scalar(select(Image))
        assert (image.modality, image.rows, image.transfer_syntax_uid) == ("DX", 1024, "1.2.840.10008.1.2")
        assert image.study.study_description == "No Finding"
        stored = dicom_io.load(ctx.store.path_for(image.file_sha256))
    assert np.array_equal(stored.stored, dicom_io.load(original).stored)


@pytest.mark.parametrize(
    "statuses, sentence",
    [
        ("rejected", "The file was rejected: nothing was imported."),
        ("rejected rejected rejected", "All 3 files were rejected: nothing was imported."),
        ("duplicate duplicate", "Both files were already stored: nothing new was imported."),
        ("imported imported imported", "All 3 files were imported."),
        ("imported imported duplicate", "2 of 3 files were imported; the other one was already stored."),
        ("rejected imported imported", "1 of 3 files was rejected; the other 2 were imported."),
        ("rejected rejected duplicate", "2 of 3 files were rejected; the other one was already stored: nothing new was imported."),
        ("rejected imported duplicate duplicate", "1 of 4 files was rejected; of the other 3, 1 was imported and 2 were already stored."),
    ],
)
def test_the_batch_summary_is_true_for_every_mix(statuses, sentence):
    # The import page said "the others were imported" whenever a file was rejected, also when none was.
    assert importer.batch_summary(statuses.split()) == sentence
