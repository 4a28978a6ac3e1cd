"""Fixtures of the page tests (Streamlit AppTest)."""

from __future__ import annotations

import pytest
import streamlit as st


@pytest.fixture
def app_ctx(ctx, app_env, monkeypatch):
    """The app context of this test, with the environment the page reads and no cache left from the previous test
    (the cached context belongs to its database)."""
    for k, v in app_env.items():
        monkeypatch.setenv(k, v)
    st.cache_resource.clear()
    st.cache_data.clear()
    return ctx
