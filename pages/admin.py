import streamlit as st

from db import engine as dbe
from db import repo
from db.models import Role
from pages import _deps
from services import auth

st.title("Users")
engine = _deps.ctx().engine
with dbe.read(engine) as s:
    rows = [
        {"user": u.username, "role": u.role.value, "active": u.is_active, "created (UTC)": u.created_at}
        for u in repo.list_users(s)
    ]
st.dataframe(rows, hide_index=True, width="stretch")

st.subheader("Add a user")
with st.form("add_user", clear_on_submit=True):
    name = st.text_input("User name", key="new_user_name")
    role = st.selectbox("Role", [r.value for r in Role], key="new_user_role")
    if st.form_submit_button("Add user", type="primary"):
        try:
            password = auth.add_user(engine, name.strip(), role)
        except (auth.AuthError, dbe.DatabaseBusy) as exc:
            st.error(str(exc))
        else:
            st.success(f"User **{name}** ({role}) created. One-time password, shown only now:")
            st.code(password, language=None)
