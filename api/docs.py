"""/docs (Swagger UI) and /redoc served without the internet.

FastAPI's own pages load their JavaScript and CSS from a CDN (and ReDoc its fonts from Google), so on a
machine without internet access they stay blank. Here the same pages point at copies shipped inside the
``fastapi-offline`` package, served under ``/docs-assets/``; the pages name no other host, Swagger UI's
online validator is switched off, ReDoc uses the browser's fonts, and a Content-Security-Policy keeps
the browser from contacting any other host on the pages' behalf.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
# The bundles are the packages' own and one of them hard-codes an image on a vendor's CDN (ReDoc's menu
# logo): the pages may load and contact nothing but this server, so the browser never tries another host
# (the logo hides itself when it cannot load). Inline scripts and styles: the pages' init code and the
# bundles' styled components.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
       "frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}
ASSET_NAMES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def asset_dir() -> Path:
    """The installed package's copies of the Swagger UI and ReDoc bundles."""
    directory = Path(str(files("fastapi_offline") / "static"))
    missing = [name for name in ASSET_NAMES if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline is installed without {', '.join(missing)}")
    return directory


def _confined(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(HEADERS)
    return page


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the two pages and their assets. ``app`` must be built with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS, StaticFiles(directory=asset_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or f"{docs_url}/oauth2-redirect"
    parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _confined(get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png", oauth2_redirect_url=oauth2_redirect,
            swagger_ui_parameters=parameters))

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _confined(get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc",
                                        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
                                        redoc_favicon_url=f"{ASSETS}/favicon.png", with_google_fonts=False))
