"""Shared fixtures for browser tests: Debian's Chromium driven by Playwright against `streamlit run`."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.servers import free_port, wait_until_answers

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
# The viewer (screens/_canvas.py), in the page in a shadow root of its own, which Playwright's CSS reaches into; its
# parts by their ids (#status, #stage, #overlay, ...) within it.
VIEWER = ".cxr-viewer"
# The worklist's table (screens/_pick_table.py: in the page, in a shadow root, which Playwright's CSS reaches into);
# a 38 px header, then 35 px rows.
WORKLIST_TABLE = ".pick-table"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@contextmanager
def streamlit_server(
    script: str | Path,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> Iterator[str]:
    """Run `streamlit run script` from the repository root and yield its URL once it answers.

    `env` is laid over os.environ; the repository root is put first on PYTHONPATH so that a script
    outside the root (a test app) imports `screens`, `viewer`, ... from this checkout.
    """
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false",
        *extra_args,
    ]  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"streamlit-{Path(script).stem}.log"
    with open(log_path, "a") as log:  # appended: servers of one script may overlap
        log.write(f"--- port {port}: {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        def healthy() -> bool:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                return r.status == 200

        try:
            wait_until_answers(proc, healthy, timeout_s, f"streamlit (see {log_path})")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fresh_app_data(folder: Path, users: Mapping[str, tuple[str, str]], **env: str):
    """A data folder with a migrated database and `users` ({name: (role, password)}): (the environment for the
    server, the app context on it)."""
    from db import engine as dbe
    from services import auth, context, settings

    env = {"CXR_REVIEW_DATA_DIR": str(folder), "CXR_REVIEW_SETTINGS": "", **env}
    s = settings.load(env)
    dbe.upgrade(s.db_url)
    ctx = context.build(s)
    for name, (role, password) in users.items():
        auth.add_user(ctx.engine, name, role, password)
    return env, ctx


@pytest.fixture(scope="module")
def run_streamlit():
    """`run_streamlit(script, env=None, extra_args=()) -> url`: a server per distinct call, shared by the
    module's tests and stopped when the module ends."""
    with ExitStack() as stack:
        urls: dict[tuple, str] = {}

        def run(
            script: str | Path, env: Mapping[str, str] | None = None, extra_args: Sequence[str] = ()
        ) -> str:
            k = (str(script), tuple(sorted((env or {}).items())), tuple(extra_args))
            if k not in urls:
                urls[k] = stack.enter_context(streamlit_server(script, env, extra_args))
            return urls[k]

        yield run


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session; tests open their own contexts (viewport, device scale)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def record_errors(page) -> list[str]:
    """Return a list that fills with the console errors and uncaught exceptions of `page` (its frames included)."""
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


@pytest.fixture(name="record_errors")
def record_errors_fixture():
    """The `record_errors(page)` helper, for tests that cannot import this conftest."""
    return record_errors


def viewer_view(page, index: int = 0) -> dict[str, float]:
    """The view of viewer `index` on the page: screen (CSS px, from its top left) = image px * s + (tx, ty)."""
    s, tx, ty = page.locator(VIEWER).nth(index).locator("#stage").get_attribute("data-view").split(",")
    return {"s": float(s), "tx": float(tx), "ty": float(ty)}


def pick(page, label: str, option: str) -> None:
    """Choose `option` in the select box labelled `label`, then wait for the run it starts to end. A click that
    lands while Streamlit is redrawing the box does not open it: the option never shows, so click again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        page.get_by_label(label, exact=True).click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    page.locator('[data-test-script-state="notRunning"]').wait_for(timeout=60_000)


def sign_in(page, url: str, name: str, password: str) -> None:
    """Open the app and send the sign-in form (what shows next is the caller's to wait for)."""
    page.goto(url)
    page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)  # a cold server's first page is slow
    page.get_by_label("User name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
