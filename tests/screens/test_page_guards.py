"""Every page module checks the session and the role itself, on the server, before it renders anything: run on
its own (as Streamlit ran a `pages/` file before the first st.navigation call), a page without a session shows
only the sign-in form, and a role the page is not for gets a refusal and nothing else."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from screens._signin import PAGE_ROLES
from services import auth

SCREENS = Path(__file__).resolve().parents[2] / "screens"
PAGES = sorted(p.stem for p in SCREENS.glob("*.py") if not p.stem.startswith("_"))
PASSWORD = "long-enough-pw"
# What each page shows first to a role it serves (the viewer opened on a study id that does not exist).
SERVED = {
    "worklist": ("title", "Worklist"), "review": ("error", "This study no longer exists."),
    "import_studies": ("title", "Import studies"), "models": ("title", "Models"), "admin": ("title", "Users"),
    "audit": ("title", "Audit"), "account": ("title", "Account"), "annotate": ("title", "Annotate"),
    "tasks": ("title", "Labelling tasks"), "evaluation": ("title", "Evaluation"),
    "thresholds": ("title", "Threshold sets"), "failures": ("title", "Failure cases"),
}  # fmt: skip


def test_every_page_module_is_in_the_role_table():
    assert set(PAGES) == set(PAGE_ROLES) == set(SERVED)


@pytest.fixture
def env(app_ctx):
    for role in ("radiologist", "annotator", "researcher", "admin"):
        auth.add_user(app_ctx.engine, role, role, PASSWORD)
    return app_ctx


def _rendered(at: AppTest) -> dict:
    return {
        "titles": [t.value for t in at.title],
        "inputs": [t.label for t in at.text_input],
        "dataframes": len(at.dataframe),
        "buttons": [b.label for b in at.button],
        "errors": [e.value for e in at.error],
    }


@pytest.mark.parametrize("page", PAGES)
def test_a_page_run_without_a_session_renders_only_the_sign_in_form(env, page):
    at = AppTest.from_file(str(SCREENS / f"{page}.py"), default_timeout=60).run()
    assert not at.exception
    assert _rendered(at) == {
        "titles": ["CXR Review"], "inputs": ["User name", "Password"], "dataframes": 0, "buttons": ["Sign in"],
        "errors": [],
    }  # fmt: skip


@pytest.mark.parametrize("page", PAGES)
def test_a_page_refuses_a_role_it_is_not_for_and_serves_the_others(env, page):
    for role in ("radiologist", "annotator", "researcher", "admin"):
        user = auth.authenticate(env.engine, role, PASSWORD)
        token, _ = auth.start_session(env.engine, user)
        at = AppTest.from_file(str(SCREENS / f"{page}.py"), default_timeout=60)
        at.session_state["signed_in"], at.session_state["session_token"] = user, token
        at.session_state["study_id"] = 10**6  # the viewer without navigation: a study id, not the worklist link
        at.run()
        assert not at.exception, (page, role)
        refused = ["This page is not available to your role."]
        if role in PAGE_ROLES[page]:
            kind, first = SERVED[page]
            assert getattr(at, kind)[0].value == first, (page, role)
        else:
            assert _rendered(at) == {"titles": [], "inputs": [], "dataframes": 0, "buttons": [], "errors": refused}


def test_a_stale_session_in_the_tab_is_not_enough(env):
    user = auth.authenticate(env.engine, "admin", PASSWORD)
    token, _ = auth.start_session(env.engine, user)
    auth.end_session(env.engine, token)
    at = AppTest.from_file(str(SCREENS / "admin.py"), default_timeout=60)
    at.session_state["signed_in"], at.session_state["session_token"] = user, token
    at.run()
    assert [t.label for t in at.text_input] == ["User name", "Password"] and not at.dataframe
