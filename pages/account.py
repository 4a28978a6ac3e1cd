import streamlit as st

from pages import _deps
from pages._signin import TOKEN_KEY, USER_KEY
from services import auth

user = st.session_state[USER_KEY]
st.title("Account")
st.write(f"Signed in as **{user.username}** ({user.role}).")
with st.form("change_password", clear_on_submit=True):
    new = st.text_input("New password", type="password", key="new_password", autocomplete="new-password")
    again = st.text_input("Repeat it", type="password", key="new_password_again", autocomplete="new-password")
    if st.form_submit_button("Change password"):
        if new != again:
            st.error("The two passwords differ.")
        else:
            try:
                auth.set_password(_deps.ctx().engine, user.username, new, st.session_state.get(TOKEN_KEY))
                st.success(
                    "Password changed. Your other browsers and tabs are signed out at their next action."
                )
            except auth.AuthError as exc:
                st.error(str(exc).capitalize() + ".")
