"""Sign-in gate and the signed-in sidebar. The session holds ids and names only, never ORM objects."""

from __future__ import annotations

import logging

import streamlit as st

from db.engine import DatabaseBusy, DatabaseUnavailable
from pages import _deps
from services import auth

log = logging.getLogger(__name__)
USER_KEY = "signed_in"


def require_user() -> auth.SignedIn:
    user = st.session_state.get(USER_KEY)
    if user is not None:
        return user
    # Only the form renders; the page menu is drawn by sidebar() for signed-in users only
    # (client.showSidebarNavigation is off, so Streamlit never lists pages/ on its own).
    st.title("CXR Review")
    st.caption("Chest X-ray review workstation · Research use only")
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
            st.session_state[USER_KEY] = user
            st.session_state.pop("signin_password", None)
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


def _sign_out() -> None:
    # In a callback, so the run that follows already has no session and renders only the sign-in form.
    for key in list(st.session_state.keys()):
        del st.session_state[key]
