"""The CLI as a user runs it: a real process, JSON lines on stdout, exit codes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from viewer import dicom_io, windowing

CLI = [sys.executable, "-m", "services.cli"]


def run(args, env, **kw):
    return subprocess.run(CLI + args, env={**os.environ, **env}, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def migrated(app_env):
    assert run(["db", "upgrade"], app_env).returncode == 0
    return app_env


def test_import_prints_one_json_object_per_file_and_exit_codes(migrated, shared_data, tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM" + b"\0" * 50)
    ok = run(["import", str(shared_data / "dicom")], migrated)
    lines = [json.loads(line) for line in ok.stdout.splitlines()]
    # The SIIM MONOCHROME1 variant reuses the SOP Instance UID of its MONOCHROME2 twin with other content.
    assert [(line["status"], line["code"]) for line in lines] == [
        ("imported", None), ("imported", None), ("rejected", "uid_conflict")
    ]
    assert ok.returncode == 1
    assert all({"file", "status", "reason"} <= line.keys() for line in lines)
    assert [line["reason"] is None for line in lines] == [True, True, False]

    dx = shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"
    again = run(["import", str(dx)], migrated)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "duplicate"

    mixed = run(["import", str(dx), str(bad)], migrated)
    assert mixed.returncode == 1
    lines = [json.loads(line) for line in mixed.stdout.splitlines()]
    assert [line["status"] for line in lines] == ["duplicate", "rejected"]
    assert lines[-1]["reason"] and lines[-1]["file"] == str(bad)

    assert run(["import"], migrated).returncode == 2  # usage error
    assert run(["frobnicate"], migrated).returncode == 2


def test_render_writes_exactly_what_the_viewer_shows(migrated, shared_data, tmp_path):
    import cv2

    src = shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"
    out = tmp_path / "out.png"
    r = run(["render", str(src), "--out", str(out)], migrated)
    assert r.returncode == 0, r.stderr
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    expected = windowing.render(dicom_io.load(src))
    assert written.dtype == np.uint8 and np.array_equal(written, expected)

    r = run(["render", str(src), "--out", str(out), "--window", "1000", "500"], migrated)
    assert r.returncode == 0
    narrow = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(narrow, windowing.render(dicom_io.load(src), windowing.Window(1000, 500)))


def test_users_add_prints_a_one_time_password_and_refuses_bad_roles(migrated):
    r = run(["users", "add", "dr_who", "--role", "radiologist"], migrated)
    assert r.returncode == 0 and "one-time password" in r.stdout
    assert run(["users", "add", "x", "--role", "janitor"], migrated).returncode == 2
    assert "dr_who\tradiologist" in run(["users", "list"], migrated).stdout


def test_a_database_that_was_never_migrated_is_a_clear_error(app_env, shared_data):
    r = run(["import", str(shared_data / "dicom")], app_env)
    assert r.returncode == 2 and "cxr-review db upgrade" in r.stderr


def test_import_with_a_metadata_csv_and_a_bad_csv(migrated, shared_data, tmp_path):
    png = sorted((shared_data / "nih" / "images").glob("*.png"))[0]
    r = run(["import", str(png), "--metadata", str(shared_data / "nih" / "labels.csv")], migrated)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "imported"
    bad = tmp_path / "bad.csv"
    bad.write_text("name,age\nx.png,3\n")
    r = run(["import", str(png), "--metadata", str(bad)], migrated)
    assert r.returncode == 2 and "no file name column" in r.stderr
