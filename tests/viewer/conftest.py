"""Fixtures for the viewer tests: real files (shared data from tests/conftest.py, pydicom-data's NEMA chest CR)
and a writer of small hand-made DICOMs for exact windowing arithmetic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

# Identity written into every deliberately broken file; no rejection message may contain it.
PATIENT_NAME = "Doe^Jane^Secretname"
PATIENT_ID = "PID-0042-SECRET"


@pytest.fixture(scope="session")
def testdata():
    """Path of a pydicom-data file (never downloaded); skips when pydicom-data is not installed."""

    def get(name: str) -> Path:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"{name} not found: install pydicom-data (pip install pydicom-data)")
        return Path(path)

    return get


@pytest.fixture
def make_dicom(tmp_path):
    """Write a single-frame CR DICOM of `pixels` (uint16/int16/uint8) with extra attributes; return its path."""

    def make(pixels: np.ndarray, name: str = "hand_made.dcm", **attrs) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=True)
        return path

    return make


@pytest.fixture
def rewrite(tmp_path):
    """Copy a real DICOM with some attributes changed (and the test identity written in); return the new path.

    `changes` maps keywords to values; None deletes the element; TransferSyntaxUID goes to the file meta."""

    def rewrite(src: Path, name: str, **changes) -> Path:
        ds = pydicom.dcmread(src)
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        for keyword, value in changes.items():
            target = ds.file_meta if keyword == "TransferSyntaxUID" else ds
            if value is None:
                delattr(target, keyword)
            else:
                setattr(target, keyword, value)
        path = tmp_path / name
        ds.save_as(path)
        return path

    return rewrite
