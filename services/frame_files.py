"""The viewer's frame in one request. Streamlit serves a component's index.html, then each script it names, again on
every visit (without cache validators), and the viewer's frame is a new one each time a study opens: two more round
trips to a server that is busy running the viewer's page at that moment. This middleware answers
`<base>/component/<name>/index.html` itself, with the folder's own scripts (`<script src="x.js">`, a plain file name)
written into the page, and an ETag: a browser that has the page asks again and gets a 304.

The files are read again when they change (size or modification time), so an edit shows on the next visit. Every
other request goes on to Streamlit untouched."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

_SCRIPT = re.compile(r'<script src="([A-Za-z0-9_-]+\.js)"></script>')


def component_path(base_url_path: str, component_name: str) -> str:
    """The URL path of a Streamlit (v1) component's index.html under the server's base path."""
    base = "/" + base_url_path.strip("/") if base_url_path.strip("/") else ""
    return f"{base}/component/{component_name}/index.html"


def inline_scripts(folder: Path) -> bytes:
    """`folder`/index.html with each `<script src="name.js"></script>` replaced by the file's text in a script
    element. A script that holds `</script` (which would end the element early) is an error, not a broken page."""

    def body(match: re.Match) -> str:
        code = (folder / match.group(1)).read_text(encoding="utf-8")
        if "</script" in code.lower():
            raise ValueError(f"{match.group(1)} holds '</script' and cannot be written into the page")
        return f"<script>\n{code}\n</script>"

    return _SCRIPT.sub(body, (folder / "index.html").read_text(encoding="utf-8")).encode("utf-8")


class InlineScripts:
    """ASGI middleware: GET or HEAD of `path` is answered with inline_scripts(folder), no-cache with an ETag."""

    def __init__(self, app: ASGIApp, *, path: str, folder: Path) -> None:
        self.app, self.path, self.folder = app, path, Path(folder)
        self._stamp: tuple | None = None
        self._page = b""
        self._etag = ""

    def _current(self) -> tuple[bytes, str]:
        files = [self.folder / "index.html", *sorted(self.folder.glob("*.js"))]
        stamp = tuple((f.name, s.st_size, s.st_mtime_ns) for f in files for s in [f.stat()])
        if stamp != self._stamp:
            page = inline_scripts(self.folder)
            self._page, self._etag = page, '"' + hashlib.sha256(page).hexdigest()[:32] + '"'
            self._stamp = stamp
        return self._page, self._etag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        page, etag = self._current()
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if Headers(scope=scope).get("if-none-match") == etag:
            response = Response(status_code=304, headers=headers)
        else:
            response = Response(page, media_type="text/html", headers=headers)
        await response(scope, receive, send)
