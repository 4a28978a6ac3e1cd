"""The server entry point: the Streamlit app (app.py) served as an st.App, with the endpoint that sets the
HttpOnly sign-in cookie (services/session_cookie.py) and the viewer's frame served in one request
(services/frame_files.py). `streamlit run asgi.py` (what scripts/start.sh and `cxr-review serve` do) discovers
`app` and serves it with uvicorn. Invalid settings stop the start with the reason."""

import sys
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware
from streamlit import config

from services import frame_files, session_cookie, settings

# The viewer's component (screens/_canvas.py): Streamlit names it after its module.
VIEWER_COMPONENT = "screens._canvas.cxr_canvas"

try:
    settings.load()
except settings.SettingsError as exc:
    sys.exit(f"cxr-review: error: {exc}")

base = config.get_option("server.baseUrlPath")
app = st.App(
    "app.py",
    routes=session_cookie.routes(base),
    middleware=[
        Middleware(
            frame_files.InlineScripts,
            path=frame_files.component_path(base, VIEWER_COMPONENT),
            folder=Path(__file__).with_name("screens") / "_canvas",
        )
    ],
)
