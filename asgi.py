"""The server entry point: the Streamlit app (app.py) served as an st.App, with the endpoint that sets the
HttpOnly sign-in cookie (services/session_cookie.py). `streamlit run asgi.py` (what scripts/start.sh and
`cxr-review serve` do) discovers `app` and serves it with uvicorn. Invalid settings stop the start with the reason."""

import sys

import streamlit as st
from streamlit import config

from services import session_cookie, settings

try:
    settings.load()
except settings.SettingsError as exc:
    sys.exit(f"cxr-review: error: {exc}")

base = config.get_option("server.baseUrlPath")
app = st.App("app.py", routes=session_cookie.routes(base))
