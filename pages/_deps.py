"""Every st.cache_* of the app lives here, so what is cached and for how long is visible in one place."""

from __future__ import annotations

import streamlit as st

from services import context, studies
from viewer import dicom_io


@st.cache_resource(show_spinner=False)
def ctx() -> context.Context:
    return context.build()


@st.cache_resource(max_entries=6, show_spinner="Decoding image…")
def decoded(file_sha256: str) -> dicom_io.DecodedImage:
    """Decoded pixels per stored file (read-only: render() never writes into them)."""
    return dicom_io.load(ctx().store.path_for(file_sha256))


@st.cache_data(max_entries=24, show_spinner=False)
def display_png(file_sha256: str, center: float | None, width: float | None, invert: bool) -> bytes:
    return studies.display_png(decoded(file_sha256), center, width, invert)


@st.cache_data(max_entries=12, show_spinner=False)
def header_elements(file_sha256: str) -> list[tuple[str, str, str, str]]:
    return dicom_io.header_elements(ctx().store.path_for(file_sha256))


@st.cache_data(max_entries=24, show_spinner=False)
def value_range(file_sha256: str) -> tuple[float, float]:
    return studies.value_range(decoded(file_sha256))
