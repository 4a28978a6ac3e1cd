"""What the browser sent from a Streamlit components v2 element of this app (the viewer, the worklist's table, the
sign-in cookie element): Streamlit keeps an element's states and triggers in st.session_state[key], one dict."""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st


def sent(key: str, name: str) -> object:
    """The state or trigger `name` of element `key` as it is at the start of this run, or None (never sent, or an
    element without one). The caller checks its type: it comes from the browser."""
    state = st.session_state.get(key)
    return state.get(name) if isinstance(state, Mapping) else None
