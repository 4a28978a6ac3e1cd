"""What an admin does with accounts, in a real Chromium against `streamlit run asgi.py`: add a user (a one-time
password the user must change at the first sign-in), unlock a user name locked by failed sign-ins, disable an
account (its open tab is signed out at its next action), read the audit and export it as CSV."""

from __future__ import annotations

import csv
import io

import pytest

from tests.e2e.conftest import ARTIFACTS, REPO, fresh_app_data, pick, sign_in

pytestmark = pytest.mark.e2e
ADMIN_PASSWORD = "admin-password-1"


@pytest.fixture(scope="module")
def app(run_streamlit, tmp_path_factory):
    env, ctx = fresh_app_data(tmp_path_factory.mktemp("admin-e2e"), {"boss": ("admin", ADMIN_PASSWORD)})
    return run_streamlit(REPO / "asgi.py", env), ctx


def _press(page, name):
    """The enabled button of that name: while a rerun redraws the row, the previous account's (disabled) button can
    still be on the page beside the new one."""
    page.get_by_role("button", name=name, exact=True, disabled=False).click()


def test_add_a_user_force_a_new_password_unlock_disable_and_export_the_audit(browser, app, record_errors):
    from services import auth

    url, ctx = app
    admin = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
    errors = record_errors(admin)
    sign_in(admin, url, "boss", ADMIN_PASSWORD)
    admin.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    admin.get_by_role("link", name="Users").click()
    admin.get_by_role("heading", name="Add a user").wait_for(timeout=30_000)
    admin.get_by_label("User name").fill("ann")
    pick(admin, "Role", "annotator")
    admin.get_by_role("button", name="Add user").click()
    admin.get_by_text("User ann (annotator) created.").wait_for(timeout=30_000)
    one_time = admin.locator('[data-testid="stCode"] code').inner_text().strip()
    assert len(one_time) >= auth.MIN_PASSWORD_LENGTH
    admin.screenshot(path=ARTIFACTS / "admin-01-user-added.png", full_page=True)

    # The one-time password gets in only as far as choosing a new password.
    ann = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    ann_errors = record_errors(ann)
    sign_in(ann, url, "ann", one_time)
    ann.get_by_role("heading", name="Choose your password").wait_for(timeout=30_000)
    assert ann.get_by_role("link", name="Worklist").count() == 0
    ann.get_by_label("New password", exact=True).fill(one_time)
    ann.get_by_label("Repeat it").fill(one_time)
    ann.get_by_role("button", name="Set password").click()
    ann.get_by_text("Choose a password other than the one-time password.").wait_for(timeout=30_000)
    ann.get_by_label("New password", exact=True).fill("anns-own-password")
    ann.get_by_label("Repeat it").fill("anns-own-password")
    ann.get_by_role("button", name="Set password").click()
    ann.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)

    # Ten failed sign-ins lock the name: even the right password is refused, with the time it ends.
    for _ in range(auth.LOCKOUT_FAILURES):
        auth.authenticate(ctx.engine, "ann", "a wrong guess!")
    until = auth.locked_names(ctx.engine)["ann"].astimezone()
    other = browser.new_context().new_page()
    sign_in(other, url, "ann", "anns-own-password")
    other.get_by_text(f"Too many failed attempts; try again after {until:%H:%M}").wait_for(timeout=30_000)
    other.screenshot(path=ARTIFACTS / "admin-02-locked.png")

    admin.get_by_role("link", name="Worklist").click()  # the Users page again, now with the lock
    admin.get_by_role("link", name="Users").click()
    admin.get_by_role("heading", name="Change an account").wait_for(timeout=30_000)
    pick(admin, "Account", "ann")
    _press(admin, "Unlock")
    admin.get_by_text("ann unlocked.").wait_for(timeout=30_000)
    sign_in(other, url, "ann", "anns-own-password")
    other.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)

    # Disabled: ann's open tab is signed out at its next action.
    pick(admin, "Account", "ann")
    _press(admin, "Disable")
    admin.get_by_text("ann disabled: signed out everywhere.").wait_for(timeout=30_000)
    ann.get_by_role("link", name="Account").click()
    ann.get_by_text("Your session ended").wait_for(timeout=30_000)
    ann.get_by_role("button", name="Sign in").wait_for(timeout=30_000)

    # The audit shows all of it, and exports it as CSV (the export itself is audited).
    admin.get_by_role("link", name="Audit").click()
    admin.get_by_role("heading", name="Audit").wait_for(timeout=30_000)
    admin.screenshot(path=ARTIFACTS / "admin-03-audit.png", full_page=True)
    with admin.expect_download() as download:
        admin.get_by_role("button", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    actions = [r["action"] for r in reversed(rows)]
    for expected in ("user_added", "password_changed", "sign_in_failed", "lockout", "unlock", "user_disabled"):
        assert expected in actions, (expected, actions)
    assert actions.index("lockout") < actions.index("unlock") < actions.index("user_disabled")
    assert one_time not in download.value.path().read_text()
    admin.get_by_role("link", name="Worklist").click()
    admin.get_by_role("link", name="Audit").click()
    admin.get_by_text("export").first.wait_for(timeout=30_000)
    for text in (admin.content(), ann.content(), other.content()):
        assert "Traceback" not in text
    assert errors == [] and ann_errors == []


def test_a_stale_tab_does_not_sign_out_the_newer_session_of_its_browser(browser, app):
    """Tab A's session ends (here: idle, ended on the server); the reader signs in again in tab B, which sets a
    new cookie; the next click in tab A shows A the sign-in form, and must leave B's cookie and session alone."""
    from services import auth

    url, ctx = app
    auth.add_user(ctx.engine, "rad2", "radiologist", "radiologist-pw")
    browser_context = browser.new_context()
    tab_a = browser_context.new_page()
    sign_in(tab_a, url, "rad2", "radiologist-pw")
    tab_a.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    old = {c["name"]: c["value"] for c in browser_context.cookies()}["cxr_review_session"]
    auth.end_session(ctx.engine, old)
    tab_b = browser_context.new_page()
    tab_b.goto(url)
    sign_in(tab_b, url, "rad2", "radiologist-pw")
    tab_b.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    new = {c["name"]: c["value"] for c in browser_context.cookies()}["cxr_review_session"]
    assert new != old
    with tab_a.expect_response(lambda r: r.url.endswith("/_cxr/session/clear"), timeout=30_000) as cleared:
        tab_a.get_by_role("link", name="Account").click()
    tab_a.get_by_text("Your session ended").wait_for(timeout=30_000)
    assert cleared.value.status == 409  # the browser's cookie is B's, not the ended one A asked to clear
    assert {c["name"]: c["value"] for c in browser_context.cookies()}.get("cxr_review_session") == new
    assert auth.resume_session(ctx.engine, new, "local") is not None
    tab_b.reload()
    tab_b.get_by_role("heading", name="Worklist").wait_for(timeout=30_000)
    browser_context.close()


def test_the_cookie_endpoint_refuses_large_bodies_and_unknown_grants(app):
    import urllib.error
    import urllib.request

    url, _ = app
    for body, status in ((b"x" * 100_000, 413), (b"not-a-grant", 403)):
        request = urllib.request.Request(f"{url}/_cxr/session", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == status
        assert "set-cookie" not in {k.lower() for k in refused.value.headers}
