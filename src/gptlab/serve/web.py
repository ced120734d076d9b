"""The web page at / : a chat with the served model over the OpenAI chat API, and with
`--runs DIR` a browser of the run folders under DIR (gptlab.serve.browse). The page is three
static files shipped in the package (static/), with no build step and nothing fetched from
elsewhere, so it works offline.

With an `api_key`, every API request (Ollama's, OpenAI's, the runs browser's) must carry it as
`Authorization: Bearer KEY`, as OpenAI's clients send it; the page asks for the key and sends
it. Only the page's own files and /web/info (which tells the page whether a key is needed)
are open.
"""

from __future__ import annotations

import secrets
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from gptlab.serve import browse
from gptlab.serve.errors import error_response

STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
# The page runs only its own script and style, talks only to this server, and cannot be framed.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_file(name: str) -> bytes:
    return resources.files("gptlab.serve").joinpath("static", name).read_bytes()


def authorized(headers: Any, api_key: str | None) -> bool:
    """Whether a request carries the key (always, when the server has none)."""
    if api_key is None:
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip(), api_key)


class BearerAuth:
    """Refuse (401, in the API's own error shape) a request without the key, except for the
    page's own files and /web/info."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.open(scope["path"]):
            request = Request(scope)
            if not authorized(request.headers, self.api_key):
                response = error_response(request, 401, "missing or wrong API key (Bearer)")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def open(path: str) -> bool:
        return path == "/" or path.startswith("/web/")


def mount(app: FastAPI, runs: Path | None, api_key: str | None) -> None:
    """Add the page, its files, /web/info, the runs browser's API (with `runs`) and the key
    check (with `api_key`) to `app`."""
    files = {name: static_file(name) for name in STATIC}

    async def page(request: Request) -> Response:
        # A browser gets the page; a script checking that the server is up gets a line.
        if "text/html" not in request.headers.get("accept", ""):
            return PlainTextResponse("gptlab is running")
        return Response(files["index.html"], media_type="text/html", headers=PAGE_HEADERS)

    async def asset(name: str) -> Response:
        if name not in files or name == "index.html":
            return PlainTextResponse("not found", status_code=404)
        return Response(files[name], media_type=STATIC[name], headers=PAGE_HEADERS)

    async def info(request: Request) -> dict[str, Any]:
        """What the page shows: a chat (when a model is served), runs (with --runs); before
        the key is given, only that one is needed."""
        if not authorized(request.headers, api_key):
            return {"auth": True, "authorized": False}
        chat = request.app.state.service is not None
        return {"auth": api_key is not None, "authorized": True, "chat": chat, "runs": bool(runs)}

    app.add_api_route("/", page, methods=["GET"], response_class=PlainTextResponse)
    app.add_api_route("/web/info", info, methods=["GET"], include_in_schema=False)
    app.add_api_route("/web/{name}", asset, methods=["GET"], include_in_schema=False)
    if runs is not None:
        app.include_router(browse.router(runs))
    if api_key is not None:
        app.add_middleware(BearerAuth, api_key=api_key)
