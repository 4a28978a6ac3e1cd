import streamlit as st

from db.engine import DatabaseBusy, DatabaseUnavailable
from screens import _deps, _signin
from services import auth

user = _signin.require_page("account")
st.title("Account")
st.write(f"Signed in as **{user.username}** ({user.role}).")
st.caption(
    f"A sign-in lasts {auth.SESSION_HOURS:g} hours and ends after {auth.IDLE_MINUTES:g} minutes without an action."
)
with st.form("change_password", clear_on_submit=True):
    current = st.text_input(
        "Current password", type="password", key="current_password", autocomplete="current-password"
    )
    new = st.text_input("New password", type="password", key="new_password", autocomplete="new-password")
    again = st.text_input("Repeat it", type="password", key="new_password_again", autocomplete="new-password")
    if st.form_submit_button("Change password"):
        if new != again:
            st.error("The two new passwords differ.")
        else:
            try:
                auth.set_password(
                    _deps.ctx().engine, user.username, new, st.session_state.get(_signin.TOKEN_KEY),
                    current=current, client=_signin.client(),
                )  # fmt: skip
                st.success(
                    "Password changed. Your other browsers and tabs are signed out at their next action."
                )
            except auth.AuthError as exc:
                st.error(_signin.sentence(exc))
            except (DatabaseBusy, DatabaseUnavailable) as exc:
                st.error(f"Password not changed: {exc}")
