"""No page renders for a browser that has not signed in, whatever URL it opens first, on a server that has just
started (one fresh server per URL: the very first request) and on one where someone else has signed in.
A real server (`streamlit run asgi.py`, as scripts/start.sh runs it) with its own database, driven by Chromium.

Before the fix, Streamlit ran a requested file of a `pages/` folder directly until the first run called
st.navigation: `/admin` as the first request showed the Users page to anyone."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS, REPO, fresh_app_data, sign_in, streamlit_server

pytestmark = pytest.mark.e2e
ADMIN_PASSWORD = "admin-password-1"
# Every page of app.py's navigation, the root, and a name that is no page.
URLS = ["", "worklist", "review", "import_studies", "annotate", "tasks", "evaluation", "thresholds", "failures", "models", "admin", "audit", "account", "no_such_page"]
SIGN_IN_TEXT = {
    "CXR Review", "Chest X-ray review workstation · Research use only", "User name", "Password", "Sign in",
    "visibility",  # the icon of the password field's show-password button
}  # fmt: skip


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    """A database of its own with an admin: what a page would leak is an account."""
    return lambda: fresh_app_data(tmp_path_factory.mktemp("access-data"), {"admin": ("admin", ADMIN_PASSWORD)})[0]


def _only_the_sign_in_form(page, url: str, shot: str) -> None:
    page.goto(url)
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=30_000)  # the first run is over
    main = page.locator('[data-testid="stMain"]')
    try:
        page.get_by_label("User name").wait_for(timeout=5_000)  # text inputs render a moment after the run
        page.get_by_role("textbox", name="Password").wait_for(timeout=5_000)
    finally:
        page.screenshot(path=ARTIFACTS / shot)
    texts = {t.strip() for t in main.inner_text().split("\n") if t.strip()}
    assert texts <= SIGN_IN_TEXT, f"{url}: more than the sign-in form: {sorted(texts - SIGN_IN_TEXT)}"
    for testid in ("stDataFrame", "stBidiComponentIsolated", "stFileUploader", "stTabs", "stSidebar", "stPageLink-NavLink", "stCode"):
        assert page.locator(f'[data-testid="{testid}"]').count() == 0, f"{url}: {testid} rendered"
    assert page.locator("input").count() == 2  # user name and password
    assert "Traceback" not in page.content()


@pytest.mark.parametrize("path", URLS)
def test_the_very_first_request_to_a_fresh_server_gets_only_the_sign_in_form(browser, fresh_env, path):
    with streamlit_server(REPO / "asgi.py", fresh_env()) as url:
        context = browser.new_context()
        try:
            _only_the_sign_in_form(context.new_page(), f"{url}/{path}", f"access-first-{path or 'root'}.png")
        finally:
            context.close()


def test_after_someone_signed_in_elsewhere_a_browser_without_a_session_still_gets_only_the_form(
    browser, fresh_env
):
    with streamlit_server(REPO / "asgi.py", fresh_env()) as url:
        admin = browser.new_context()
        page = admin.new_page()
        sign_in(page, url, "admin", ADMIN_PASSWORD)
        page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
        page.get_by_role("link", name="Users").click()
        page.get_by_role("heading", name="Users").wait_for(timeout=30_000)
        for path in URLS:
            stranger = browser.new_context()
            try:
                _only_the_sign_in_form(stranger.new_page(), f"{url}/{path}", f"access-later-{path or 'root'}.png")
            finally:
                stranger.close()
        admin.close()


def test_a_page_of_another_role_opened_by_its_url_sends_to_the_worklist_and_says_why(browser, tmp_path):
    # A researcher who opened /admin (a bookmark, a link from a colleague) landed on the worklist without a reason.
    env, _ = fresh_app_data(tmp_path / "data", {"res": ("researcher", "researcher-pw")})
    with streamlit_server(REPO / "asgi.py", env) as url:
        context = browser.new_context()
        try:
            page = context.new_page()
            sign_in(page, url, "res", "researcher-pw")
            page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
            for path, title in [("admin", "Users"), ("import_studies", "Import")]:
                page.goto(f"{url}/{path}")  # a new page load: the session resumes from the cookie
                page.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
                page.get_by_text(f"Your role (researcher) may not open {title}; you are on the Worklist.").wait_for()
                page.screenshot(path=ARTIFACTS / f"access-researcher-{path}.png")
                assert page.url.rstrip("/") == url  # the worklist is the default page: the root
                assert page.get_by_role("heading", name=title).count() == 0
                assert page.locator('[data-testid="stFileUploader"]').count() == 0
        finally:
            context.close()
