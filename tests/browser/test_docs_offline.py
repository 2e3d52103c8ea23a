"""/docs and /redoc render in a real headless Chromium that may reach nothing but the API: every request
to another host is aborted and recorded, and the pages must still show every operation of the API.

Uses Debian's ``/usr/bin/chromium`` through Playwright, like the dashboard test; locally a missing browser
skips with the reason, under CI=true it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from api.main import create_app
from glai_common.migrate import upgrade
from glai_common.settings import Settings
from tests.uvicorn_thread import serve_in_thread

CHROMIUM = os.environ.get("GLAI_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser test must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require(Path(CHROMIUM).is_file(), f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    data_dir = tmp_path_factory.mktemp("docs-offline")
    database = f"sqlite:///{data_dir / 'glai.db'}"
    upgrade(database)
    app = create_app(Settings(data_dir=data_dir, database_url=database, broker_url="memory://"))
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def offline_page(base_url: str):  # type: ignore[no-untyped-def]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "Playwright for Python is not installed (pip install playwright)")
    own = urlsplit(base_url).netloc
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.external = []  # every request for another host: aborted, and the test fails on it

        def route(request_route) -> None:  # type: ignore[no-untyped-def]
            url = request_route.request.url
            if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).netloc == own:
                request_route.continue_()
            else:
                context.external.append(url)
                request_route.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.errors = []  # uncaught exceptions, failed requests and console errors
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("requestfailed", lambda req: page.errors.append(f"failed: {req.url} [{req.failure}]"))
        page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
        yield page
        context.close()
        browser.close()


def _operations(base_url: str) -> list[str]:
    import httpx

    spec = httpx.get(f"{base_url}/openapi.json").json()
    return [op["summary"] for item in spec["paths"].values() for op in item.values() if "summary" in op]


def test_swagger_ui_renders_every_operation_offline(base_url: str, offline_page) -> None:  # type: ignore[no-untyped-def]
    page = offline_page
    page.goto(f"{base_url}/docs")
    page.locator(".opblock-summary").first.wait_for()
    summaries = page.locator(".opblock-summary-description").all_inner_texts()
    assert set(_operations(base_url)) <= set(summaries), sorted(set(_operations(base_url)) - set(summaries))
    assert "Submit a training job" in summaries
    assert page.context.external == [] and page.errors == [], (page.context.external, page.errors)


def test_redoc_renders_offline(base_url: str, offline_page) -> None:  # type: ignore[no-untyped-def]
    page = offline_page
    page.goto(f"{base_url}/redoc")
    page.locator("h2", has_text="Submit a training job").first.wait_for()
    headings = page.locator("h2").all_inner_texts()  # one per operation in ReDoc's main column
    missing = [summary for summary in _operations(base_url) if summary not in headings]
    assert not missing, missing
    # ReDoc's bundle hard-codes its menu logo on a vendor CDN: the page's policy refuses it before any
    # connection is made (so no request leaves the browser), and the logo hides itself.
    assert page.context.external == [], page.context.external
    refused = [e for e in page.errors if "cdn.redoc.ly/redoc/logo-mini.svg" in e
               and ("Content Security Policy" in e or e.endswith("[csp]"))]
    assert refused, "the logo was neither loaded nor refused: was the page's policy dropped?"
    assert [e for e in page.errors if e not in refused] == [], page.errors
