"""mount_dashboard without a browser: one call mounts page and assets, a second call changes nothing."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.dashboard import mount_dashboard


def test_mount_serves_page_and_only_the_assets() -> None:
    app = FastAPI()
    mount_dashboard(app)
    routes = len(app.router.routes)
    mount_dashboard(app)
    assert len(app.router.routes) == routes

    client = TestClient(app)
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<meta name="glai-api-base" content="/v1">' in page.text
    assert "{{" not in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/dashboard/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert f"/dashboard/static/{asset}?v=" in page.text
    for hidden in ("router.py", "__init__.py", "index.html", "__pycache__/router.cpython-311.pyc"):
        assert client.get(f"/dashboard/static/{hidden}").status_code == 404
    redirect = client.get("/dashboard/?token=abc", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/dashboard?token=abc"
