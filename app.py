"""CXR Review composition root: page config, sign-in gate, navigation by role."""

import streamlit as st

from db.engine import DatabaseBusy, DatabaseUnavailable
from pages import _signin

st.set_page_config(page_title="CXR Review", page_icon="assets/logo.png", layout="wide")

user = _signin.require_user()  # renders only the sign-in form (and stops) without a session

PAGES = {
    "worklist": st.Page("pages/worklist.py", title="Worklist", icon=":material/list:", default=True),
    "review": st.Page("pages/review.py", title="Viewer", icon=":material/radiology:"),
    "import": st.Page("pages/import_studies.py", title="Import", icon=":material/upload:"),
    "models": st.Page("pages/models.py", title="Models", icon=":material/model_training:"),
    "admin": st.Page("pages/admin.py", title="Users", icon=":material/group:"),
    "account": st.Page("pages/account.py", title="Account", icon=":material/person:"),
}
ROLE_PAGES = {
    "radiologist": ["worklist", "review", "import", "account"],
    "annotator": ["worklist", "review", "import", "account"],
    "researcher": ["worklist", "review", "account"],
    "admin": ["worklist", "review", "import", "models", "admin", "account"],
}
pages = [PAGES[name] for name in ROLE_PAGES[user.role]]
nav = st.navigation(pages, position="hidden")
_signin.sidebar(user, pages)
try:
    nav.run()
except (DatabaseBusy, DatabaseUnavailable) as exc:  # one clear line, never a traceback
    st.error(f"Database problem: {exc}")
