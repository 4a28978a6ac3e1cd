"""The sign-in cookie, set by the server as HttpOnly (page scripts cannot read it).

Streamlit renders over a websocket and cannot set cookies, so the app is served as an `st.App` (asgi.py)
with two small HTTP endpoints of its own:

- `POST <base>/_cxr/session` with a one-time grant in the body: the tab that has just signed in gets a grant
  (random, in this process's memory, valid for GRANT_SECONDS) and an empty element of its page posts it; the answer
  sets the session token as an HttpOnly, SameSite=Strict cookie (Secure over HTTPS) that expires with the
  session. The grant is the only thing page script ever sees, and it is spent at once.
- `POST <base>/_cxr/session/clear` with the sha256 of a token in the body: when the cookie the request
  carries holds that token, ends its session and clears the cookie (a sign-out, and a stale cookie after the
  session ended elsewhere). A cookie of a newer sign-in, made in another tab since, is left alone.

Bodies are tiny: anything over MAX_BODY bytes is refused before it is read.

The websocket handshake of the next page load carries the cookie, and the app resumes the session from it
(`st.context.cookies`)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import secrets
import threading
import time

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from db import engine as dbe
from services import auth, context

COOKIE = "cxr_review_session"
PATH = "/_cxr/session"
GRANT_SECONDS = 60.0
MAX_GRANTS = 10_000
MAX_BODY = 256

log = logging.getLogger(__name__)
_lock = threading.Lock()
_grants: dict[str, tuple[str, dt.datetime, float]] = {}  # sha256(grant) -> (token, expiry, deadline)
_mounted = False


def mounted() -> bool:
    """Whether this process serves the endpoints (started through asgi.py); without them no cookie is set
    and a reload signs the reader out."""
    return _mounted


def grant(token: str, expires: dt.datetime) -> str:
    """A one-time grant that the browser exchanges for the HttpOnly cookie holding `token`."""
    value = secrets.token_urlsafe(32)
    now = time.monotonic()
    with _lock:
        for key in [k for k, (_, _, deadline) in _grants.items() if deadline < now]:
            del _grants[key]
        if len(_grants) >= MAX_GRANTS:
            _grants.pop(next(iter(_grants)))
        _grants[hashlib.sha256(value.encode()).hexdigest()] = (token, expires, now + GRANT_SECONDS)
    return value


def redeem(value: str) -> tuple[str, dt.datetime] | None:
    """(token, expiry) of an unspent, unexpired grant; spends it."""
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        return None
    with _lock:
        found = _grants.pop(hashlib.sha256(value.encode()).hexdigest(), None)
    if found is None or found[2] < time.monotonic():
        return None
    return found[0], found[1]


def _cookie_header(request: Request, value: str, expires: dt.datetime | None) -> str:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    when = (
        f"Expires={expires.astimezone(dt.UTC):%a, %d %b %Y %H:%M:%S GMT}" if expires else "Max-Age=0"
    )
    return f"{COOKIE}={value}; {when}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


async def _small_body(request: Request) -> str | None:
    """The request body as text, or None when it is (or claims to be) longer than MAX_BODY."""
    try:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return None
    except ValueError:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return body.decode("ascii", "replace")


def _too_large() -> Response:
    return _no_store(Response("request body too large", status_code=413, media_type="text/plain"))


async def _set(request: Request) -> Response:
    body = await _small_body(request)
    if body is None:
        return _too_large()
    found = redeem(body)
    if found is None:
        return _no_store(Response("unknown or expired grant", status_code=403, media_type="text/plain"))
    token, expires = found
    response = Response(status_code=204)
    response.headers["Set-Cookie"] = _cookie_header(request, token, expires)
    return _no_store(response)


@functools.cache
def _engine():
    return context.build().engine


def _end(token: str | None, client: str | None) -> None:
    try:
        auth.end_session(_engine(), token, client)
    except (dbe.DatabaseBusy, dbe.DatabaseUnavailable, SQLAlchemyError) as exc:
        # The cookie is cleared anyway, and the session ends by itself (idle timeout, expiry).
        log.warning("sign-out could not end the stored session (%s)", type(exc).__name__)


async def _clear(request: Request) -> Response:
    body = await _small_body(request)
    if body is None:
        return _too_large()
    token = request.cookies.get(COOKIE)
    if token and hashlib.sha256(token.encode()).hexdigest() != body.strip():
        return _no_store(Response(status_code=409))  # the cookie of another, newer sign-in: not this tab's
    if token:
        client = request.client.host if request.client else None
        await run_in_threadpool(_end, token, client_key(client))
    response = Response(status_code=204)
    response.headers["Set-Cookie"] = _cookie_header(request, "", None)
    return _no_store(response)


def client_key(address: object) -> str:
    """The address a session is bound to. Streamlit reports no address for loopback connections (and a mock
    one under streamlit.testing)."""
    return address if isinstance(address, str) and address and address not in ("127.0.0.1", "::1") else "local"


def routes(base_url_path: str = "") -> list[Route]:
    global _mounted
    _mounted = True
    base = "/" + base_url_path.strip("/") if base_url_path.strip("/") else ""
    return [
        Route(base + PATH, _set, methods=["POST"]),
        Route(base + PATH + "/clear", _clear, methods=["POST"]),
    ]
