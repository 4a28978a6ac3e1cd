"""CXR Review composition root: page config, sign-in gate, navigation by role. Served by asgi.py."""

import streamlit as st

from db.engine import DatabaseBusy, DatabaseUnavailable
from screens import _signin

st.set_page_config(page_title="CXR Review", page_icon="assets/logo.png", layout="wide")

user = _signin.require_user()  # renders only the sign-in form (and stops) without a session

PAGES = {
    "worklist": st.Page("screens/worklist.py", title="Worklist", icon=":material/list:", default=True),
    "review": st.Page("screens/review.py", title="Viewer", icon=":material/radiology:"),
    "import_studies": st.Page("screens/import_studies.py", title="Import", icon=":material/upload:"),
    "annotate": st.Page("screens/annotate.py", title="Annotate", icon=":material/draw:"),
    "tasks": st.Page("screens/tasks.py", title="Labelling tasks", icon=":material/checklist:"),
    "evaluation": st.Page("screens/evaluation.py", title="Evaluation", icon=":material/monitoring:"),
    "thresholds": st.Page("screens/thresholds.py", title="Threshold sets", icon=":material/tune:"),
    "failures": st.Page("screens/failures.py", title="Failure cases", icon=":material/bug_report:"),
    "models": st.Page("screens/models.py", title="Models", icon=":material/model_training:"),
    "admin": st.Page("screens/admin.py", title="Users", icon=":material/group:"),
    "audit": st.Page("screens/audit.py", title="Audit", icon=":material/policy:"),
    "account": st.Page("screens/account.py", title="Account", icon=":material/person:"),
}
# Each page checks its own role too (screens/_signin.PAGE_ROLES); the menu only lists what the role may open.
pages = [page for name, page in PAGES.items() if user.role in _signin.PAGE_ROLES[name]]
# Every page is in the navigation, so that the page asked for is known: one the role may not open is refused with
# the reason (with only the role's pages in it, a URL of another page ran the worklist without saying why).
nav = st.navigation(list(PAGES.values()), position="hidden")
_signin.keep_to_role(user, next(name for name, page in PAGES.items() if page is nav), nav.title, PAGES["worklist"])
_signin.sidebar(user, pages)
try:
    with _signin.signed_in_run(user):  # the page checks the role itself, on this run's verified session
        nav.run()
except (DatabaseBusy, DatabaseUnavailable) as exc:  # one clear line, never a traceback
    st.error(f"Database problem: {exc}")
