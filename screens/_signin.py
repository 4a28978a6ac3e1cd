"""Sign-in gate, the role check every page makes itself, and the signed-in sidebar. The session holds ids and
names only, never ORM objects.

Two lines of defence: app.py calls `require_user()` before it builds the navigation, and every page module
starts with `require_page(<its name>)`, which checks the session against the database and the role against
PAGE_ROLES on the server before anything renders (a page file run by any route, or directly, shows only the
sign-in form)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from db.engine import DatabaseBusy, DatabaseUnavailable
from screens import _deps, _session_cookie
from services import auth, session_cookie

log = logging.getLogger(__name__)
USER_KEY = "signed_in"
TOKEN_KEY = "session_token"
SIGNED_OUT_KEY = "signed_out"
EXPIRES_KEY = "session_expires"
ENDED_KEY = "session_ended"  # this tab's session was ended elsewhere: the form says so
COOKIE_PENDING_KEY = "session_cookie_pending"  # signed in, the browser has not confirmed the cookie yet
GRANT_KEY = "session_cookie_grant"
CLEAR_KEY = "session_cookie_to_clear"  # the token of this tab's ended session, whose cookie the browser drops
STALE_KEY = "session_cookie_stale"  # the ended token this tab's page load sent
REFUSED_KEY = "page_refused"  # why the reader was sent to the worklist instead of the page asked for

ALL_ROLES = frozenset({"radiologist", "annotator", "researcher", "admin"})
# Page file stem -> the roles that may open it. app.py builds the navigation from this; each page checks it.
PAGE_ROLES: dict[str, frozenset[str]] = {
    "worklist": ALL_ROLES,
    "review": ALL_ROLES,
    "import_studies": frozenset({"radiologist", "annotator", "admin"}),
    "annotate": frozenset({"radiologist", "annotator", "admin"}),
    "models": frozenset({"admin"}),
    "admin": frozenset({"admin"}),
    "audit": frozenset({"admin"}),
    "tasks": frozenset({"admin", "researcher"}),
    "evaluation": frozenset({"admin", "researcher"}),
    "thresholds": frozenset({"admin", "researcher"}),
    "failures": frozenset({"admin", "researcher"}),
    "account": ALL_ROLES,
}


def sentence(exc: Exception) -> str:
    """An error's message as a sentence: first letter up, a full stop at the end (the rest as written)."""
    text = str(exc)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def client() -> str:
    """This browser's address as sessions and the slowdown see it."""
    return session_cookie.client_key(st.context.ip_address)


def _resume() -> auth.SignedIn | None:
    """The user of the sign-in cookie this browser sent, when its session is still open (a page reload)."""
    token = _session_cookie.token()
    if not token:
        return None
    if st.session_state.get(SIGNED_OUT_KEY):  # the cookie this tab's page load sent is signed out or stale
        st.session_state[STALE_KEY] = token
        return None
    try:
        resumed = auth.resume_session(_deps.ctx().engine, token, client())
    except (DatabaseUnavailable, DatabaseBusy):
        return None  # the form below says what is wrong with the database when the reader signs in
    if resumed is None:
        # Ended, idle or expired: the browser forgets it, and this tab (whose page load sent it) stops asking.
        st.session_state[SIGNED_OUT_KEY] = True
        st.session_state[STALE_KEY] = token
        return None
    user, expires = resumed
    st.session_state[USER_KEY], st.session_state[TOKEN_KEY] = user, token
    st.session_state[EXPIRES_KEY] = expires
    log.info("session resumed (user id %d)", user.user_id)
    return user


def _still_open(user: auth.SignedIn) -> auth.SignedIn | None:
    """This tab's user as the database has it now (role included), or None when the session was ended
    elsewhere: signed out in another tab, a new password, a disabled account, idle or expired. One indexed
    query per rerun, so an open tab loses access at its next click instead of at its next reload."""
    token = st.session_state.get(TOKEN_KEY)
    if not token:
        return user
    try:
        resumed = auth.resume_session(_deps.ctx().engine, token, client())
    except (DatabaseUnavailable, DatabaseBusy):
        return user  # a busy database does not sign the reader out; the page says what is wrong
    if resumed is None:
        log.info("session ended elsewhere (user id %d)", user.user_id)
        _forget_tab(ended=True)
        return None
    st.session_state[USER_KEY] = resumed[0]
    return resumed[0]


def require_user() -> auth.SignedIn:
    """The signed-in user of this tab; otherwise renders only the sign-in form (or the forced change of a
    one-time password) and stops the run."""
    user = st.session_state.get(USER_KEY)
    user = _still_open(user) if user is not None else _resume()
    if user is None:  # the browser drops a cookie of an ended session (the elements render at every run)
        for token in dict.fromkeys(filter(None, (st.session_state.get(k) for k in (STALE_KEY, CLEAR_KEY)))):
            _session_cookie.clear(token)
    if user is not None:
        if st.session_state.get(COOKIE_PENDING_KEY):
            _await_cookie()
        if user.must_change_password:
            _change_one_time_password(user)
        return user
    _sign_in_form()
    st.stop()


_this_run = threading.local()


@contextmanager
def signed_in_run(user: auth.SignedIn) -> Iterator[None]:
    """app.py runs the page inside this after require_user(): the page's own check reuses that verification
    of this run instead of asking the database again (a page run any other way checks for itself)."""
    _this_run.user = user
    try:
        yield
    finally:
        _this_run.user = None


def keep_to_role(user: auth.SignedIn, page: str, title: str, worklist) -> None:
    """app.py, once the navigation resolved the page asked for (a typed URL, a bookmark, a page whose role was
    changed meanwhile): one the role may not open is not run; the reader goes to the worklist, which says why."""
    if user.role in PAGE_ROLES[page]:
        if why := st.session_state.pop(REFUSED_KEY, None):
            st.warning(why)
        return
    log.warning("page %s refused to role %s: sent to the worklist", page, user.role)
    st.session_state[REFUSED_KEY] = f"Your role ({user.role}) may not open {title}; you are on the Worklist."
    st.switch_page(worklist)


def require_page(page: str) -> auth.SignedIn:
    """The first line of every page module: the signed-in user when their role may open `page`; otherwise only
    the sign-in form or a refusal renders, and the run stops."""
    user = getattr(_this_run, "user", None) or require_user()
    if user.role not in PAGE_ROLES[page]:
        log.warning("page %s refused to role %s", page, user.role)
        st.error("This page is not available to your role.")
        st.stop()
    return user


def _sign_in_form() -> None:
    # Only the form renders; the page menu is drawn by sidebar() for signed-in users only
    # (client.showSidebarNavigation is off, so Streamlit never lists the screens on its own).
    st.title("CXR Review")
    st.caption("Chest X-ray review workstation · Research use only")
    if st.session_state.get(ENDED_KEY):
        st.warning(
            "Your session ended: signed out in another tab or browser, a new password, the account was "
            f"disabled, no action for {auth.IDLE_MINUTES:g} minutes, or its {auth.SESSION_HOURS:g} hours ran "
            "out. Sign in again."
        )
    with st.form("sign_in", clear_on_submit=False):
        username = st.text_input("User name", key="signin_username", autocomplete="username")
        password = st.text_input(
            "Password", type="password", key="signin_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    engine = _deps.ctx().engine
    try:
        result = auth.authenticate(engine, username.strip(), password, client())
    except (DatabaseUnavailable, DatabaseBusy) as exc:
        st.error(f"Cannot sign in: {exc}")
        return
    if isinstance(result, auth.Locked | auth.SlowDown):
        st.error(result.message)
        return
    if result is None:
        log.info("failed sign-in")
        st.error("Wrong user name or password.")
        return
    try:
        token, expires = auth.start_session(engine, result, client=client())
    except (DatabaseUnavailable, DatabaseBusy) as exc:
        st.error(f"Cannot sign in: {exc}")
        return
    st.session_state.pop("signin_password", None)
    st.session_state.pop(SIGNED_OUT_KEY, None)
    st.session_state.pop(ENDED_KEY, None)
    st.session_state[USER_KEY], st.session_state[TOKEN_KEY] = result, token
    st.session_state[EXPIRES_KEY] = expires
    if session_cookie.mounted():
        st.session_state[GRANT_KEY] = session_cookie.grant(token, expires)
        st.session_state[COOKIE_PENDING_KEY] = True
    else:
        log.warning("the session-cookie endpoint is not served (start the app through asgi.py): a reload signs out")
    st.rerun()


def _await_cookie() -> None:
    """Right after sign-in, the first page waits until the browser has stored the session cookie (the element
    that asks the server for it runs a moment after the page; without the wait, a reload in that moment
    signed out)."""
    stored = _session_cookie.store(st.session_state[GRANT_KEY])
    if stored is None:
        st.title("CXR Review")
        st.caption("Signing in…")
        st.stop()  # the browser's answer reruns the page
    del st.session_state[COOKIE_PENDING_KEY], st.session_state[GRANT_KEY]
    if stored is False:
        st.session_state["cookie_refused"] = True
    # The page renders in this same run, under the (empty) cookie element: no further rerun before the reader sees it.


def _change_one_time_password(user: auth.SignedIn) -> None:
    st.title("Choose your password")
    st.caption(f"Signed in as **{user.username}** with a one-time password · Research use only")
    st.info("Your password was set by an administrator. Choose your own before you go on.")
    with st.form("first_password", clear_on_submit=True):
        new = st.text_input("New password", type="password", key="first_password", autocomplete="new-password")
        again = st.text_input(
            "Repeat it", type="password", key="first_password_again", autocomplete="new-password"
        )
        submitted = st.form_submit_button("Set password", type="primary")
    st.button("Sign out", key="sign_out_first", on_click=_sign_out)
    if submitted:
        if new != again:
            st.error("The two passwords differ.")
        else:
            try:
                auth.set_password(
                    _deps.ctx().engine, user.username, new, st.session_state.get(TOKEN_KEY), client=client()
                )
            except auth.AuthError as exc:
                st.error(sentence(exc))
            except (DatabaseUnavailable, DatabaseBusy) as exc:
                st.error(f"Password not changed: {exc}")
            else:
                st.session_state[USER_KEY] = auth.SignedIn(user.user_id, user.username, user.role, False)
                st.rerun()
    st.stop()


def sidebar(user: auth.SignedIn, pages: list) -> None:
    with st.sidebar:
        st.markdown("### CXR Review")
        for page in pages:
            st.page_link(page)
        st.divider()
        st.markdown(f"**{user.username}** · {user.role}")
        st.button("Sign out", key="sign_out", icon=":material/logout:", on_click=_sign_out)
        if st.session_state.get("cookie_refused"):
            st.caption("This browser did not store the sign-in cookie: a reload will ask you to sign in again.")


def _sign_out() -> None:
    # In a callback, so the run that follows already has no session and renders only the sign-in form.
    try:
        auth.end_session(_deps.ctx().engine, st.session_state.get(TOKEN_KEY), client())
    except (DatabaseUnavailable, DatabaseBusy) as exc:
        log.warning("sign-out could not end the stored session: %s", exc)
    _forget_tab()


def _forget_tab(ended: bool = False) -> None:
    """This tab's session state dropped; it no longer resumes from the cookie its page load sent, the browser
    drops the cookie of the session that ended, and with `ended` the sign-in form says that the session was
    ended elsewhere."""
    token = st.session_state.get(TOKEN_KEY)
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    st.session_state[SIGNED_OUT_KEY] = True
    if token:
        st.session_state[CLEAR_KEY] = token
    if ended:
        st.session_state[ENDED_KEY] = True

