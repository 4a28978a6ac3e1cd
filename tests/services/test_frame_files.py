"""The viewer's frame served in one request (services/frame_files.py), called as ASGI without a server."""

import asyncio
import concurrent.futures
import os
from pathlib import Path

import pytest

from services import frame_files

REPO = Path(__file__).resolve().parents[2]
PATH = "/component/screens._canvas.cxr_canvas/index.html"


def _call(
    app, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict, bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path, "query_string": b"streamlitUrl=x", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }  # fmt: skip
    # in a thread of its own: earlier browser tests leave Playwright's event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def _streamlit(scope, receive, send):  # what the middleware hands everything else to
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"streamlit"})


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text(
        '<body><div id="x"></div>\n<script src="a.js"></script>\n<script src="b.js"></script>\n'
        '<script src="https://elsewhere.example/c.js"></script></body>'
    )
    (tmp_path / "a.js").write_text("const a = 1;")
    (tmp_path / "b.js").write_text("const b = a + 1;")
    return tmp_path


def test_the_page_comes_with_its_own_scripts_in_it_and_an_etag(tmp_path):
    app = frame_files.InlineScripts(_streamlit, path=PATH, folder=_folder(tmp_path))
    status, headers, body = _call(app, PATH)
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "<script>\nconst a = 1;\n</script>" in page and "<script>\nconst b = a + 1;\n</script>" in page
    assert page.index("const a") < page.index("const b")  # in the order the page named them
    assert '<script src="https://elsewhere.example/c.js"></script>' in page  # only the folder's own files
    assert headers["cache-control"] == "no-cache" and headers["etag"].startswith('"')
    # The browser that has it asks again and gets no body.
    status, again, body = _call(app, PATH, headers={"If-None-Match": headers["etag"]})
    assert (status, body, again["etag"]) == (304, b"", headers["etag"])
    # An edit shows on the next visit, under a new ETag.
    (tmp_path / "b.js").write_text("const b = a + 2;")
    os.utime(tmp_path / "b.js", ns=(1, 1))
    status, edited, body = _call(app, PATH, headers={"If-None-Match": headers["etag"]})
    assert status == 200 and b"const b = a + 2;" in body and edited["etag"] != headers["etag"]


def test_every_other_request_goes_on_to_streamlit(tmp_path):
    app = frame_files.InlineScripts(_streamlit, path=PATH, folder=_folder(tmp_path))
    for path, method in [(PATH.replace("index.html", "a.js"), "GET"), ("/component/other/index.html", "GET"),
                         (PATH, "POST"), ("/", "GET")]:  # fmt: skip
        assert _call(app, path, method)[::2] == (299, b"streamlit"), (path, method)


def test_a_script_that_would_end_its_element_early_is_refused(tmp_path):
    (_folder(tmp_path) / "b.js").write_text('const b = "</SCRIPT>";')
    with pytest.raises(ValueError, match="b.js holds '</script'"):
        frame_files.inline_scripts(tmp_path)


def test_asgi_serves_the_viewer_component_in_one_page():
    """asgi.py names the viewer's component as Streamlit does, and its folder's scripts go into the page whole."""
    import ast

    from screens import _canvas

    tree = ast.parse((REPO / "asgi.py").read_text())
    (name,) = [
        n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and n.targets[0].id == "VIEWER_COMPONENT"
    ]
    assert name == _canvas._component.name
    assert frame_files.component_path("", name) == PATH
    assert frame_files.component_path("/reading/", name) == "/reading" + PATH
    page = frame_files.inline_scripts(REPO / "screens" / "_canvas").decode()
    assert "<script src=" not in page
    for script in ("canvas.js", "annotate.js"):
        assert (REPO / "screens" / "_canvas" / script).read_text() in page
