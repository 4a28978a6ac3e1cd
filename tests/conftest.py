"""Fixtures shared by every test package: the real shared data, and a fresh app context on a real SQLite file."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CXR_REVIEW_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"shared data not found at {data} (set CXR_REVIEW_SHARED_DIR)")
    return data


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
