"""A real Orthanc (Debian's, with its DICOMweb plugin) for the PACS tests: one per test session on loopback, on free
ports, with its own configuration and storage in a temporary folder; emptied before each test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.pacs import orthanc_server

CLI = [sys.executable, "-m", "services.cli"]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    if orthanc_server.binary() is None:
        pytest.skip("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb dcmtk)")
    if orthanc_server.dicomweb_plugin() is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)")
    with orthanc_server.running(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def pacs(orthanc):
    """The session's Orthanc, empty."""
    orthanc.clear()
    return orthanc


@pytest.fixture
def pacs_env(app_env, pacs) -> dict[str, str]:
    """The app's environment, a migrated database, and the PACS configured with its registered user."""
    env = {**app_env, "CXR_REVIEW_PACS_URL": pacs.dicomweb, "CXR_REVIEW_PACS_USER": orthanc_server.USER,
           "CXR_REVIEW_PACS_PASSWORD": orthanc_server.PASSWORD, "CXR_REVIEW_DEVICE": "cpu"}  # fmt: skip
    assert cli(["db", "upgrade"], env).returncode == 0
    return env


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def lines(done: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in done.stdout.splitlines()]


def variant(src: Path, dst: Path, **changes) -> Path:
    """`src` as another instance: new SOP Instance UID (and what `changes` set: a new series or study, a modality)."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(dst, enforce_file_format=True)
    return dst


from tests.screens.conftest import app_ctx  # noqa: E402,F401 (the page tests' app context, for the PACS tab)
