"""Admin: accounts. Add, disable / enable, change a role, reset a password (a new one-time password), unlock a
user name locked after failed sign-ins. Every change is audited (the Audit page)."""

import streamlit as st

from db import accounts
from db import engine as dbe
from db.models import Role
from screens import _deps, _signin
from services import auth

admin = _signin.require_page("admin")
st.title("Users")
engine = _deps.ctx().engine
note = st.empty()
if message := st.session_state.pop("users_msg", None):
    kind, text, secret = message
    getattr(note.container(), kind)(text)
    if secret:
        st.code(secret, language=None)

locked = auth.locked_names(engine)
with dbe.read(engine) as s:
    users = [(u.username, u.role.value, u.is_active, u.must_change_password, u.created_at) for u in accounts.list_users(s)]
st.dataframe(
    [
        {
            "user": name, "role": role, "active": active,
            "locked until": f"{locked[name].astimezone():%H:%M %Z}" if name in locked else "",
            "must change password": must_change, "created (UTC)": created,
        }
        for name, role, active, must_change, created in users
    ],
    hide_index=True, width="stretch",
)  # fmt: skip


def _done(kind: str, text: str, secret: str | None = None) -> None:
    st.session_state["users_msg"] = (kind, text, secret)
    st.rerun()


st.subheader("Change an account")
names = [u[0] for u in users]
name = st.selectbox("Account", names, key="acct_name")
if name:
    role, active = next((r, a) for n, r, a, _, _ in users if n == name)
    c1, c2, c3, c4, c5 = st.columns([1.4, 1, 1, 1, 1], vertical_alignment="bottom")
    new_role = c1.selectbox("New role", [r.value for r in Role], index=[r.value for r in Role].index(role), key="acct_role")
    try:
        if c2.button("Change role", key="acct_set_role", disabled=new_role == role):
            auth.set_role(engine, name, new_role, actor=admin)
            _done("success", f"**{name}** is now {new_role}.")
        if c3.button("Disable" if active else "Enable", key="acct_toggle", disabled=name == admin.username):
            auth.set_active(engine, name, not active, actor=admin)
            _done("success", f"**{name}** {'disabled: signed out everywhere' if active else 'enabled'}.")
        if c4.button("Reset password", key="acct_reset", disabled=name == admin.username):  # own: Account page
            password = auth.reset_password(engine, name, actor=admin)
            _done("success", f"New one-time password of **{name}**, shown only now (to be changed at sign-in):",
                  password)  # fmt: skip
        if c5.button("Unlock", key="acct_unlock", disabled=name not in locked):
            auth.unlock(engine, name, actor=admin)
            _done("success", f"**{name}** unlocked.")
    except (auth.AuthError, dbe.DatabaseBusy) as exc:
        st.error(_signin.sentence(exc))

st.subheader("Add a user")
with st.form("add_user", clear_on_submit=True):
    new_name = st.text_input("User name", key="new_user_name")
    new_user_role = st.selectbox("Role", [r.value for r in Role], key="new_user_role")
    if st.form_submit_button("Add user", type="primary"):
        try:
            password = auth.add_user(engine, new_name.strip(), new_user_role, actor=admin)
        except (auth.AuthError, dbe.DatabaseBusy) as exc:
            st.error(_signin.sentence(exc))
        else:
            _done("success", f"User **{new_name.strip()}** ({new_user_role}) created. One-time password, shown only "
                  "now (to be changed at the first sign-in):", password)  # fmt: skip
