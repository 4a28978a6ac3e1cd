"""Sign-in gate and the signed-in sidebar. The session holds ids and names only, never ORM objects."""

from __future__ import annotations

import logging

import streamlit as st

from db.engine import DatabaseBusy, DatabaseUnavailable
from pages import _deps, _session_cookie
from services import auth

log = logging.getLogger(__name__)
USER_KEY = "signed_in"
TOKEN_KEY = "session_token"
SIGNED_OUT_KEY = "signed_out"
EXPIRES_KEY = "session_expires"
ENDED_KEY = "session_ended"  # this tab's session was ended elsewhere: the form says so
COOKIE_PENDING_KEY = "session_cookie_pending"  # signed in, the browser has not confirmed the cookie yet


def _resume() -> auth.SignedIn | None:
    """The user of the sign-in cookie this browser sent, when its session is still open (a page reload)."""
    token = _session_cookie.token()
    if not token:
        return None
    if st.session_state.get(SIGNED_OUT_KEY):  # the cookie this tab's page load sent is signed out or stale
        _session_cookie.write(None)
        return None
    try:
        resumed = auth.resume_session(_deps.ctx().engine, token)
    except (DatabaseUnavailable, DatabaseBusy):
        return None  # the form below says what is wrong with the database when the reader signs in
    if resumed is None:
        # Ended or expired: the browser forgets it, and this tab (whose page load sent it) stops asking.
        st.session_state[SIGNED_OUT_KEY] = True
        _session_cookie.write(None)
        return None
    user, expires = resumed
    st.session_state[USER_KEY], st.session_state[TOKEN_KEY] = user, token
    st.session_state[EXPIRES_KEY] = expires
    log.info("session resumed (user id %d)", user.user_id)
    return user


def _still_open(user: auth.SignedIn) -> auth.SignedIn | None:
    """This tab's user as the database has it now (role included), or None when the session was ended
    elsewhere: signed out in another tab, a new password, a disabled account, or expired. One indexed
    query per rerun, so an open tab loses access at its next click instead of at its next reload."""
    token = st.session_state.get(TOKEN_KEY)
    if not token:
        return user
    try:
        resumed = auth.resume_session(_deps.ctx().engine, token)
    except (DatabaseUnavailable, DatabaseBusy):
        return user  # a busy database does not sign the reader out; the page says what is wrong
    if resumed is None:
        log.info("session ended elsewhere (user id %d)", user.user_id)
        _forget_tab(ended=True)
        _session_cookie.write(None)
        return None
    st.session_state[USER_KEY] = resumed[0]
    return resumed[0]


def require_user() -> auth.SignedIn:
    user = st.session_state.get(USER_KEY)
    user = _still_open(user) if user is not None else _resume()
    if user is not None:
        if st.session_state.get(COOKIE_PENDING_KEY):
            _await_cookie()
        return user
    # Only the form renders; the page menu is drawn by sidebar() for signed-in users only
    # (client.showSidebarNavigation is off, so Streamlit never lists pages/ on its own).
    st.title("CXR Review")
    st.caption("Chest X-ray review workstation · Research use only")
    if st.session_state.get(ENDED_KEY):
        st.warning(
            "Your session ended: signed out in another tab or browser, a new password, the account was "
            f"disabled, or its {auth.SESSION_HOURS:g} hours ran out. Sign in again."
        )
    with st.form("sign_in", clear_on_submit=False):
        username = st.text_input("User name", key="signin_username", autocomplete="username")
        password = st.text_input(
            "Password", type="password", key="signin_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            user = auth.authenticate(_deps.ctx().engine, username.strip(), password)
        except (DatabaseUnavailable, DatabaseBusy) as exc:
            st.error(f"Cannot sign in: {exc}")
            st.stop()
        if user is None:
            log.info("failed sign-in")
            st.error("Wrong user name or password.")
        else:
            try:
                token, st.session_state[EXPIRES_KEY] = auth.start_session(_deps.ctx().engine, user)
            except (DatabaseUnavailable, DatabaseBusy) as exc:
                st.error(f"Cannot sign in: {exc}")
                st.stop()
            st.session_state[USER_KEY], st.session_state[TOKEN_KEY] = user, token
            st.session_state.pop("signin_password", None)
            st.session_state.pop(SIGNED_OUT_KEY, None)
            st.session_state.pop(ENDED_KEY, None)
            st.session_state[COOKIE_PENDING_KEY] = True
            st.rerun()
    st.stop()


def _await_cookie() -> None:
    """Right after sign-in, the first page waits until the browser has stored the session cookie (the frame
    that writes it loads a moment after the page; without the wait, a reload in that moment signed out)."""
    st.title("CXR Review")
    st.caption("Signing in…")
    if not _session_cookie.write(
        st.session_state[TOKEN_KEY], st.session_state.get(EXPIRES_KEY), confirm=True
    ):
        st.stop()  # the frame's confirmation reruns the page
    del st.session_state[COOKIE_PENDING_KEY]
    st.rerun()


def sidebar(user: auth.SignedIn, pages: list) -> None:
    with st.sidebar:
        st.markdown("### CXR Review")
        for page in pages:
            st.page_link(page)
        st.divider()
        st.markdown(f"**{user.username}** · {user.role}")
        st.button("Sign out", key="sign_out", icon=":material/logout:", on_click=_sign_out)
        if token := st.session_state.get(TOKEN_KEY):
            _session_cookie.write(token, st.session_state.get(EXPIRES_KEY))


def _sign_out() -> None:
    # In a callback, so the run that follows already has no session and renders only the sign-in form.
    try:
        auth.end_session(_deps.ctx().engine, st.session_state.get(TOKEN_KEY))
    except (DatabaseUnavailable, DatabaseBusy) as exc:
        log.warning("sign-out could not end the stored session: %s", exc)
    _forget_tab()


def _forget_tab(ended: bool = False) -> None:
    """This tab's session state dropped; it no longer resumes from the cookie its page load sent, and with
    `ended` the sign-in form says that the session was ended elsewhere."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    st.session_state[SIGNED_OUT_KEY] = True
    if ended:
        st.session_state[ENDED_KEY] = True
