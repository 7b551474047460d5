"""The web console at ``/console`` (docs/console.md): static HTML, CSS and JavaScript
modules shipped in the package and served by every worker, with no build step.

The page talks to agentd only through its public API (``/v1/...``, the WebSocket
protocol), with the credential the user signs in with; serving it needs none, and the
only thing it learns here is whether the server asks for one at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from .. import __version__

__all__ = ("STATIC", "setup")

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/console"

# Everything the page loads comes from this server: no inline script, no other origin.
# The WebSocket goes to the page's own host, named with its scheme since 'self' does not
# cover ws:/wss: in every browser.
_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws://{host} wss://{host}; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,300}")
_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}


async def _page(request: web.Request) -> web.StreamResponse:
    """``/console`` and ``/console/``: the page itself."""
    return _file(request, STATIC / "index.html")


# The files that may be served, found once: a request's name is looked up here, never
# on the file system (a hostile name can neither escape the directory nor make the
# system call fail, as one longer than the file system allows would).
_ASSETS = {p.name: p for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES}


async def _asset(request: web.Request) -> web.StreamResponse:
    """``/console/{name}``: one file of the static directory, never anything outside it."""
    path = _ASSETS.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(text="no such console file")
    return _file(request, path)


def _file(request: web.Request, path: Path) -> web.FileResponse:
    # A Host that is not a plain host[:port] gets no WebSocket in the policy, rather than
    # a policy it could bend.
    host = request.host if _HOST.fullmatch(request.host) else "invalid.invalid"
    headers = {
        "Content-Security-Policy": _POLICY.format(host=host),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidated on every load (cheap: 304 by Last-Modified): an upgrade shows at once.
        "Cache-Control": "no-cache",
    }
    response = web.FileResponse(path, headers=headers)
    response.content_type = _TYPES[path.suffix]
    if path.suffix in (".html", ".css", ".js", ".txt"):
        response.charset = "utf-8"
    return response


def setup(app: web.Application, auth_mode: str) -> None:
    """Serve the console on ``app``; ``auth_mode`` is the server's ``auth.mode``, what the
    page needs before sign-in (whether to ask for a credential: a 401 would tell the
    same) at ``/console/settings.json``, beside the version it shows."""
    settings = {"auth_mode": auth_mode, "version": __version__}

    async def _settings(request: web.Request) -> web.Response:
        return web.json_response(settings, headers={"Cache-Control": "no-cache"})

    app.router.add_get(PREFIX, _page)
    app.router.add_get(PREFIX + "/", _page)
    app.router.add_get(PREFIX + "/settings.json", _settings)
    app.router.add_get(PREFIX + "/{name:[A-Za-z0-9_.-]+}", _asset)
