"""The web console: ``GET /`` is its page, ``GET /console/{path}`` its other built assets.

The console is a static front-end over the public HTTP API; its files hold no data, so they
are answered without the API key (the page asks the user for the key when the API answers
401). Only files inside the static folder are served: a path that resolves outside it (``..``,
a symbolic link pointing away) is a 404, like any file that is not there.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

STATIC = Path(__file__).resolve().parent.parent / "console" / "static"
PREFIX = "/console/"
NOT_BUILT = (
    "The trimtab web console is not built: run `make console` (it writes "
    "trimtab/console/static/), then reload this page. The API under /v1 works without it.\n"
)
# Set here rather than guessed: the system's MIME table differs between machines, and a
# browser refuses a module or stylesheet served with the wrong type (nosniff).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
}
# Revalidated on every load (the ETag makes that a 304): a rebuilt console shows at once.
HEADERS = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}


def is_public(method: str, path: str) -> bool:
    """Whether a request is for the console's files, which need no API key."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(PREFIX))


def install(app: FastAPI, folder: Path = STATIC) -> None:
    """Serve the console built in ``folder`` at ``/`` and ``/console/``."""
    router = APIRouter()
    root = folder.resolve()

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        page = root / "index.html"
        if not page.is_file():
            return PlainTextResponse(NOT_BUILT, status_code=404)
        return FileResponse(page, media_type=CONTENT_TYPES[".html"], headers=HEADERS)

    @router.get(PREFIX + "{path:path}", include_in_schema=False)
    async def asset(path: str) -> Response:
        return FileResponse(asset_path(root, path), media_type=content_type(path), headers=HEADERS)

    app.include_router(router)


def asset_path(root: Path, path: str) -> Path:
    """The file ``path`` names inside ``root``; a 404 for anything else (missing, a folder,
    hidden, or outside ``root`` once links and ``..`` are resolved)."""
    parts = Path(path).parts
    if not parts or any(p.startswith(".") for p in parts):
        raise HTTPException(404)
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404)
    return target


def content_type(path: str) -> str:
    return CONTENT_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")
