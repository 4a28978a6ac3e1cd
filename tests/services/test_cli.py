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
    return subprocess.run(
        CLI + args, env={**os.environ, **env}, capture_output=True, text=True, timeout=300, **kw
    )


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
        ("imported", None),
        ("imported", None),
        ("rejected", "uid_conflict"),
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


def test_import_and_render_a_dicom_without_preamble_and_file_meta(migrated, shared_data, tmp_path):
    import cv2

    from tests.conftest import without_file_meta

    original = shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm"
    bare = without_file_meta(original, tmp_path / "bare.dcm", implicit_vr=False)
    r = run(["import", str(bare)], migrated)
    assert r.returncode == 0, r.stdout + r.stderr
    line = json.loads(r.stdout)
    assert (line["status"], line["code"]) == ("imported", None) and "no DICOM preamble" in line["warnings"][0]
    again = run(["import", str(original)], migrated)  # the Part 10 original: the same instance and pixels
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "duplicate"

    pictures, stderr = [], []
    for src in (bare, original):
        out = tmp_path / f"{src.stem}.png"
        r = run(["render", str(src), "--out", str(out)], migrated)
        assert r.returncode == 0, r.stderr
        pictures.append(cv2.imread(str(out), cv2.IMREAD_UNCHANGED))
        stderr.append(r.stderr)
    assert pictures[0].shape == (1024, 1024) and np.array_equal(pictures[0], pictures[1])
    assert stderr == [
        f"cxr-review: {bare}: warning: no DICOM preamble and file meta information: read as Explicit VR Little "
        "Endian, the encoding of its first elements, with uncompressed pixel data\n",
        "",
    ]


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


def _rewritten(src, dst, **changes):
    import pydicom

    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(dst)
    return dst


def _jpeg_bomb(src, dst):
    """The JPEG DICOM with its frame header (SOF0) claiming 65535 x 65535 pixels: 127 KB that made a decoder
    allocate 16.5 GB."""
    import struct

    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    frame = bytearray(next(generate_frames(pydicom.dcmread(src).PixelData, number_of_frames=1)))
    sof = frame.index(b"\xff\xc0")
    frame[sof + 5 : sof + 9] = struct.pack(">HH", 65535, 65535)
    return _rewritten(src, dst, PixelData=encapsulate([bytes(frame)]))


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_render_falls_back_on_bad_header_values_and_refuses_broken_files_cleanly(
    app_env, shared_data, tmp_path
):
    import cv2

    dx = shared_data / "dicom" / "nih_dx_chest_1024_nofinding_nccid.dcm"
    clean = windowing.render(dicom_io.load(dx))
    out = tmp_path / "out.png"
    for name, changes, warning in [
        ("slope_nan.dcm", {"RescaleSlope": "NaN"}, "RescaleSlope / RescaleIntercept"),
        ("spacing_inf.dcm", {"PixelSpacing": ["inf", "inf"]}, "PixelSpacing is not two numbers"),
        (
            "window_nan.dcm",
            {"WindowCenter": "NaN", "WindowWidth": "inf"},
            "WindowCenter/WindowWidth are not finite",
        ),
    ]:
        r = run(["render", str(_rewritten(dx, tmp_path / name, **changes)), "--out", str(out)], app_env)
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("\n") == 1 and f": warning: {warning}" in r.stderr, r.stderr
        assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), clean)  # the safe default picture

    bomb = _jpeg_bomb(shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm", tmp_path / "bomb.dcm")
    r = run(["render", str(bomb), "--out", str(out)], app_env)
    assert r.returncode == 1 and r.stderr.startswith(f"cxr-review: {bomb}: rejected (frame_size_mismatch): ")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = run(
        ["render", str(dx), "--out", str(out)], {**app_env, "CXR_REVIEW_MAX_UPLOAD_MB": "1"}
    )  # 1.0 MB + header
    assert r.returncode == 1 and "rejected (too_large)" in r.stderr and r.stderr.count("\n") == 1
    r = run(["render", str(dx), "--out", str(out), "--window", "nan", "400"], app_env)
    assert r.returncode == 2 and "--window" in r.stderr


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


def test_users_disable_enable_role_reset_unlock_and_the_audit_csv(migrated, tmp_path):
    import csv

    from db import engine as dbe
    from services import auth, context, settings

    assert (
        run(
            ["users", "add", "rad", "--role", "radiologist", "--password-env", "PW"],
            {**migrated, "PW": "long-enough-pw"},
        ).returncode
        == 0
    )
    assert run(["users", "add", "boss", "--role", "admin"], migrated).returncode == 0
    engine = context.build(settings.load(migrated)).engine
    for _ in range(auth.LOCKOUT_FAILURES):
        auth.authenticate(engine, "rad", "wrong password!")
    listed = run(["users", "list"], migrated).stdout
    assert (
        "rad\tradiologist\tactive, locked until" in listed
        and "boss\tadmin\tactive, must change password" in listed
    )

    steps = [
        (["users", "unlock", "rad"], "'rad' unlocked"),
        (["users", "unlock", "rad"], "'rad' was not locked"),
        (["users", "role", "rad", "researcher"], "'rad' is now researcher"),
        (["users", "disable", "rad"], "'rad' disabled"),
        (["users", "enable", "rad"], "'rad' enabled"),
    ]
    for args, said in steps:
        done = run(args, migrated)
        assert (done.returncode, done.stdout.strip()) == (0, said), done.stderr
    reset = run(["users", "reset", "rad"], migrated)
    password = reset.stdout.strip().rsplit(": ", 1)[1]
    assert auth.authenticate(engine, "rad", password).must_change_password
    refused = run(["users", "disable", "boss"], migrated)
    assert refused.returncode == 2 and "last active admin" in refused.stderr
    assert run(["users", "role", "nobody", "admin"], migrated).returncode == 2

    out = tmp_path / "audit.csv"
    exported = run(["audit", "--out", str(out), "--user", "rad"], migrated)
    assert exported.returncode == 0 and oct(out.stat().st_mode & 0o777) == "0o600"
    rows = list(csv.DictReader(out.open()))
    assert [r["action"] for r in reversed(rows)][-5:] == [
        "unlock",
        "role_changed",
        "user_disabled",
        "user_enabled",
        "password_reset",
    ]
    assert all(json.loads(r["details"]).get("via") == "command line" for r in rows[:5])
    assert password not in out.read_text()
    with dbe.read(engine) as s:
        from db import audit

        assert audit.events(s, actions=("export",))[0].target == "audit.csv"


@pytest.mark.parametrize("value", ["0", "-1", "99999", "ten"])
def test_a_bad_upload_limit_stops_every_command_with_the_reason(app_env, value, shared_data, tmp_path):
    env = {**app_env, "CXR_REVIEW_MAX_UPLOAD_MB": value}
    for args in (
        ["db", "upgrade"],
        [
            "render",
            str(shared_data / "dicom" / "siim_cr_chest_pa_1024_jpeg_mono2.dcm"),
            "--out",
            str(tmp_path / "x.png"),
        ],
    ):
        done = run(args, env)
        assert (
            done.returncode == 2
            and "CXR_REVIEW_MAX_UPLOAD_MB must be" in done.stderr
            and "Traceback" not in done.stderr
        )
