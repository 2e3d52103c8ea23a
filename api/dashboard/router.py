"""The dashboard: one static page (``index.html``, ``app.js``, ``style.css``) that reads the REST API.

There is no build step and no third-party JavaScript. The page is served at ``/dashboard``; its assets
at ``/dashboard/static/`` (only those three files: the package's Python is never served).

Auth: the page itself holds no data and needs no key. It asks for the API key once, keeps it in the
browser's localStorage and sends it as ``Authorization: Bearer`` on every request; a 401 asks again.
A ready link may carry the key as ``/dashboard#token=<key>`` (preferred: a fragment never reaches the
server or its logs) or ``/dashboard?token=<key>``; the page stores it and strips it from the address bar.
Downloads are fetched with the same header and saved through a Blob URL (checked against the artifact's
SHA-256 where the browser offers WebCrypto), so the API needs no token-in-URL support.

Use::

    from api.dashboard import mount_dashboard
    mount_dashboard(app)
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_PREFIX = "/dashboard/static"
ASSETS = ("app.js", "style.css")

# No inline script or style anywhere, so the policy can be strict. ``blob:`` lets downloads be saved
# through an object URL; ``img-src data:`` is for the favicon.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # A key passed as ?token= must never leak to another site through the Referer header.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class DashboardFiles(StaticFiles):
    """StaticFiles over the package directory that serves only the page's assets, never the Python."""

    def lookup_path(self, path: str):  # type: ignore[no-untyped-def]
        if Path(path).name not in ASSETS:
            return "", None
        return super().lookup_path(path)

    def file_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().file_response(*args, **kwargs)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


@lru_cache
def _asset_version() -> str:
    digest = hashlib.sha256()
    for name in ASSETS:
        digest.update((PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


@lru_cache
def _template() -> str:
    return (PACKAGE_DIR / "index.html").read_text(encoding="utf-8")


def render_page(root_path: str = "") -> str:
    """index.html with the asset URLs (cache-busted) and the API base filled in for this mount point."""
    root = root_path.rstrip("/")
    return (_template()
            .replace("{{static}}", f"{root}{STATIC_PREFIX}")
            .replace("{{version}}", _asset_version())
            .replace("{{api_base}}", f"{root}/v1"))


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request) -> HTMLResponse:
    return HTMLResponse(render_page(request.scope.get("root_path", "")), headers=PAGE_HEADERS)


@router.get("/dashboard/", response_class=RedirectResponse)
def dashboard_slash(request: Request) -> RedirectResponse:
    # Keep the query (a ?token= link); the fragment never reaches the server and survives on its own.
    query = request.url.query
    target = request.scope.get("root_path", "").rstrip("/") + "/dashboard" + (f"?{query}" if query else "")
    return RedirectResponse(target, status_code=307)


def mount_dashboard(app: FastAPI) -> None:
    """Add the page route and the static assets to ``app``. Safe to call twice."""
    routes = app.router.routes
    # FastAPI may keep an included router as one wrapper route that remembers the original.
    if not any(r is router or getattr(r, "original_router", None) is router
               or getattr(r, "path", None) == "/dashboard" for r in routes):
        app.include_router(router)
    if not any(getattr(r, "path", None) == STATIC_PREFIX for r in routes):
        app.mount(STATIC_PREFIX, DashboardFiles(directory=PACKAGE_DIR, check_dir=True),
                  name="dashboard-static")
