"""The sign-in cookie, set and cleared from the browser: Streamlit can read cookies (`st.context.cookies`, sent
with the websocket handshake) but not set them, so a zero-height component frame of the same origin writes
`document.cookie` (pages/_session_cookie/index.html). The cookie holds a random token only; the server keeps
its sha256 with the user and the expiry (services.auth)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

COOKIE = "cxr_review_session"
_component = components.declare_component(
    "cxr_session_cookie", path=str(Path(__file__).with_name("_session_cookie"))
)


def token() -> str | None:
    """The session token this browser sent when the page was loaded (None without one, and outside a browser
    session, e.g. under streamlit.testing, where the cookie mapping holds no strings)."""
    value = st.context.cookies.get(COOKIE)
    return value if isinstance(value, str) and value else None


def write(value: str | None, expires: dt.datetime | None = None, confirm: bool = False) -> bool:
    """Set the cookie to `value` until `expires` (the session's own expiry), or clear it (None). The arguments
    stay the same from run to run, so the frame writes the cookie once.

    `confirm`: the frame reports back once it has written the cookie (one rerun); returns True from then on.
    Without it nothing reruns and the result is False."""
    secure = str(getattr(st.context, "url", "") or "").startswith("https:")
    expires_ms = int(expires.timestamp() * 1000) if value and expires else 0
    key = f"{COOKIE}_{bool(value)}" + ("_confirm" if confirm else "")
    return bool(_component(name=COOKIE, value=value, expires_ms=expires_ms, secure=secure, confirm=confirm,
                           key=key, default=False, height=0))  # fmt: skip
