"""The browser side of the HttpOnly sign-in cookie (services/session_cookie.py has the server side). Streamlit
can read cookies (`st.context.cookies`, sent with the websocket handshake) but not set them, so an empty element of
the page (screens/_session_cookie/cookie.js, a components v2 element) posts to the app's own endpoint, whose answer
sets or clears the cookie. Page script never sees the token: the element only ever holds a one-time grant."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from screens._element import sent
from services import session_cookie

_component = st.components.v2.component(
    "cxr_session_cookie", js=(Path(__file__).with_name("_session_cookie") / "cookie.js").read_text()
)
SET_KEY = "cxr_session_set"


def token() -> str | None:
    """The session token this browser sent when the page was loaded (None without one, and outside a browser
    session, e.g. under streamlit.testing, where the cookie mapping holds no strings)."""
    value = st.context.cookies.get(session_cookie.COOKIE)
    return value if isinstance(value, str) and value else None


def _endpoint() -> str:
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return ("/" + base if base else "") + session_cookie.PATH


def store(grant: str) -> bool | None:
    """Have the browser exchange `grant` for the cookie: None until the browser has answered (its answer reruns
    the page), then True when the cookie is stored, False when the server or the browser refused."""
    _component(key=SET_KEY, data={"action": "set", "url": _endpoint(), "grant": grant}, default={"value": None},
               on_value_change=lambda: None)  # fmt: skip
    value = sent(SET_KEY, "value")
    return None if value is None else value is True


def clear(token: str) -> None:
    """Have the server end the session of `token` and clear the cookie, when the browser's cookie still holds
    that token (not a newer sign-in's). The element carries only the token's sha256; nothing reruns."""
    if session_cookie.mounted():
        digest = hashlib.sha256(token.encode()).hexdigest()
        _component(key=f"cxr_session_clear_{digest[:16]}",
                   data={"action": "clear", "url": _endpoint() + "/clear", "grant": digest})  # fmt: skip
