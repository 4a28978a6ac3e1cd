"""The browser side of the HttpOnly sign-in cookie (services/session_cookie.py has the server side). Streamlit
can read cookies (`st.context.cookies`, sent with the websocket handshake) but not set them, so a zero-height
component frame of the same origin posts to the app's own endpoint, whose answer sets or clears the cookie.
Page script never sees the token: the frame only ever holds a one-time grant."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from services import session_cookie

_component = components.declare_component(
    "cxr_session_cookie", path=str(Path(__file__).with_name("_session_cookie"))
)


def token() -> str | None:
    """The session token this browser sent when the page was loaded (None without one, and outside a browser
    session, e.g. under streamlit.testing, where the cookie mapping holds no strings)."""
    value = st.context.cookies.get(session_cookie.COOKIE)
    return value if isinstance(value, str) and value else None


def _endpoint() -> str:
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return ("/" + base if base else "") + session_cookie.PATH


def store(grant: str) -> bool | None:
    """Have the browser exchange `grant` for the cookie: None until the frame has answered (its answer reruns
    the page), then True when the cookie is stored, False when the server or the browser refused."""
    value = _component(action="set", url=_endpoint(), grant=grant, key="cxr_session_set", default=None, height=0)
    return None if value is None else value is True


def clear(token: str) -> None:
    """Have the server end the session of `token` and clear the cookie, when the browser's cookie still holds
    that token (not a newer sign-in's). The frame carries only the token's sha256; nothing reruns."""
    if session_cookie.mounted():
        digest = hashlib.sha256(token.encode()).hexdigest()
        _component(action="clear", url=_endpoint() + "/clear", grant=digest, key=f"cxr_session_clear_{digest[:16]}",
                   default=None, height=0)  # fmt: skip
