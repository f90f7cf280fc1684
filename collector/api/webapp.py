"""The gateway's web screens: static files served beside the API (no build step, no CDN).

:func:`mount_web` serves ``collector/api/web/index.html`` at ``/`` and every
file of that folder at ``/static/<name>``. The screens are one ES-module page
(``app.js``) that signs in at ``/api/v1/auth/login``, reads the REST API and
listens to ``/api/v1/stream``; hash routes pick the screen (``#/overview``,
``#/alarms``, ``#/chart/<path>``, ``#/engineer/<path>``).

Caching: every file answers with a strong ``ETag`` (content hash) and
``Cache-Control: no-cache`` — the browser keeps its copy but revalidates
(``304`` when unchanged), so an upgraded gateway never serves stale scripts.
The API's security headers (CSP ``default-src 'self'``) stay as they are:
the pages hold no inline script or style, SVG is drawn by DOM calls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

__all__ = ["WEB_DIR", "mount_web"]

WEB_DIR = Path(__file__).with_name("web")

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_CACHE = "no-cache"


@dataclass(frozen=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def _load(folder: Path) -> dict[str, _File]:
    """Every servable file of ``folder`` by name (read once: the set is fixed, no path walking)."""
    files = {}
    for p in sorted(folder.iterdir()):
        kind = _TYPES.get(p.suffix)
        if p.is_file() and kind is not None:
            body = p.read_bytes()
            files[p.name] = _File(body, kind, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    if "index.html" not in files:
        raise FileNotFoundError(f"{folder}: no index.html (the web screens are missing)")
    return files


def _answer(request: Request, f: _File) -> Response:
    headers = {"ETag": f.etag, "Cache-Control": _CACHE}
    match = request.headers.get("if-none-match", "")
    if f.etag in (t.strip() for t in match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(f.body, media_type=f.media_type, headers=headers)


def mount_web(app: FastAPI, settings: Any = None, folder: Path | None = None) -> None:
    """Serve the web screens on ``app``: ``GET /`` (the page) and ``GET /static/{name}``.

    ``settings`` (the :class:`~collector.api.app.ApiSettings`) is accepted for
    symmetry with ``create_app``; nothing in it changes the static files.
    ``folder`` replaces the packaged ``web`` folder (tests). Unknown names are
    404 in the API's error shape; only files of known types are served.
    """
    files = _load(folder or WEB_DIR)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        """The single page of the web screens."""
        return _answer(request, files["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        """One static file of the web screens (scripts, styles, translations)."""
        f = files.get(name)
        if f is None:
            return JSONResponse(
                {"error": {"what": "static", "message": f"no file {name!r}"}},
                status_code=404,
                headers={"Cache-Control": "no-store"},
            )
        return _answer(request, f)
