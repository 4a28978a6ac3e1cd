"""Fixtures shared by every test package: the real shared data, and a fresh app context on a real SQLite file."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", REPO.parent / "shared"))
MODELS = Path(os.environ.get("CXR_REVIEW_MODELS_DIR", SHARED / "models"))


def run_cli(command: str, args, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`cxr-review COMMAND ARGS...` as a user runs it: a real process, this environment plus `env`."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", command, *map(str, args)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def models_env(tmp_path_factory, weights: str) -> dict[str, str]:
    """Environment for the CLI: the shared models and a fresh data folder; skips when `weights` is missing."""
    if not (MODELS / weights).is_file():
        pytest.skip(f"model weights not in {MODELS} (set CXR_REVIEW_MODELS_DIR)")
    data = tmp_path_factory.mktemp("data")
    return {"CXR_REVIEW_DATA_DIR": str(data), "CXR_REVIEW_MODELS_DIR": str(MODELS), "CXR_REVIEW_SETTINGS": ""}


def nih_subset_csv(nih: Path, names: list[str] | int, out: Path) -> Path:
    """`out`: the rows of NIH labels.csv for `names` (or its first `names` rows), with its columns."""
    with open(nih / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_name = {r["Image Index"]: r for r in rows}
    chosen = rows[:names] if isinstance(names, int) else [by_name[n] for n in names]
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(chosen)
    return out


def finished_run(ctx, runner, set_id: int, ref: str, timeout: float = 300) -> int:
    """Run `ref` on the evaluation set in the background, as the Run button does, and wait until it is done."""
    import time

    from services import eval_runs

    [run_id] = eval_runs.start(ctx, runner, set_id, [ref], 1)
    deadline = time.monotonic() + timeout
    while (status := eval_runs.get(ctx, run_id).status) not in ("done", "failed"):
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.2)
    assert status == "done", eval_runs.get(ctx, run_id).error
    return run_id


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"shared data not found at {data} (set CXR_REVIEW_SHARED_DIR)")
    return data


@pytest.fixture(autouse=True)
def _fresh_client_throttle(monkeypatch):
    """The per-client sign-in slowdown lives in the process: each test starts with none (AppTests all sign in
    from the same address)."""
    from services import auth

    monkeypatch.setattr(auth, "clients", auth._ClientThrottle())


@pytest.fixture
def app_env(tmp_path) -> dict[str, str]:
    """Environment for the CLI and the app: a data dir (image store + SQLite file) of this test alone."""
    return {
        "CXR_REVIEW_DATA_DIR": str(tmp_path / "data"),
        "CXR_REVIEW_MODELS_DIR": str(SHARED / "models"),
        "CXR_REVIEW_SETTINGS": "",
    }


@pytest.fixture
def ctx(app_env):
    from db import engine as dbe
    from services import context, settings

    s = settings.load(app_env)
    dbe.upgrade(s.db_url)
    return context.build(s)


TEST_MODEL = "cxr14_multilabel_test"


@pytest.fixture
def versioned_models(tmp_path) -> Path:
    """A models directory with the shared weights (linked) and trained versions of one test classifier under
    trained/: 0.1.0 usable (with validation metrics), 0.2.0 without its weights file, 0.3.0 whose weights
    do not match the sha256 of its model.json. The test weights are never loaded, only checked."""
    import hashlib
    import json

    from inference import registry

    shared = SHARED / "models"
    if not any(shared.glob("*.pt")):
        pytest.skip(f"shared model weights not found in {shared}")
    family = "cxr14_mobilenetv3_multilabel"
    if family not in registry._discover()[1]:
        pytest.skip(f"model family {family} is not in inference/models")
    root = tmp_path / "models"
    root.mkdir()
    for pt in shared.glob("*.pt"):
        (root / pt.name).symlink_to(pt)
    labels = ["Cardiomegaly", "Effusion"]
    for version, weights, declared in [
        ("0.1.0", b"weights 0.1.0", None),
        ("0.2.0", None, b"weights 0.2.0"),
        ("0.3.0", b"weights 0.3.0, changed", b"weights 0.3.0"),
    ]:
        d = root / "trained" / TEST_MODEL / version
        d.mkdir(parents=True)
        if weights is not None:
            (d / "weights.pt").write_bytes(weights)
        meta = {
            "model_id": TEST_MODEL, "version": version, "task": "classification", "family": family,
            "labels": labels, "thresholds": {"Cardiomegaly": 0.4, "Effusion": 0.6}, "activation": "sigmoid",
            "input_size": [256, 256], "weights_file": "weights.pt",
            "weights_sha256": hashlib.sha256(declared or weights).hexdigest(),
            "intended_use": "Test fixture only", "source": "made by tests/conftest.py",
            "created": f"2026-01-0{version[2]}T00:00:00Z",
            "validation": {"auc": {"Cardiomegaly": 0.81, "Effusion": 0.77}, "macro_auc": 0.79, "n_images": 400},
        }  # fmt: skip
        (d / "model.json").write_text(json.dumps(meta))
    return root


def sign_in_through_the_form(username: str, password: str):
    """app.py under AppTest, signed in through the form. AppTest runs no component scripts, so the browser's
    confirmation that it stored the session cookie is given the way the page's cookie element gives it (its
    state)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    at.text_input(key="signin_username").input(username)
    at.text_input(key="signin_password").input(password)
    at.button[0].click().run()
    if "session_cookie_pending" in at.session_state:  # signed in: the first page waits for the cookie
        at.session_state["cxr_session_set"] = {"value": True}
        at.run()
    return at


def without_file_meta(src: Path, dst: Path, *, implicit_vr: bool, **changes) -> Path:
    """`src`'s dataset written as older modalities and some PACS exports write it: no 128-byte preamble, no
    'DICM', no file meta (pydicom.dcmwrite with enforce_file_format=False), in implicit or explicit VR little
    endian with native pixel data. `changes` sets (or with None deletes) attributes first."""
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(src)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # the same instance, stored uncompressed
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    bare = Dataset(ds)  # a plain Dataset: neither the preamble nor the file meta of the FileDataset
    pydicom.dcmwrite(dst, bare, enforce_file_format=False, implicit_vr=implicit_vr, little_endian=True)
    assert dst.read_bytes()[:2] == b"\x08\x00"  # the dataset's first tag, group 0x0008, at byte 0
    return dst
