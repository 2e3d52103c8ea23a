"""/docs and /redoc work without the internet: every script, style sheet and icon the pages reference is
served by the app itself, from the installed package, and no reference names another host."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from api.docs import ASSETS, asset_dir
from tests.api.helpers import Api

PAGES = ("/docs", "/redoc")
URL_ATTRIBUTES = {"src", "href", "action", "data", "poster", "srcset"}
# Anything that would make the browser contact a host: absolute or scheme-relative URLs, CSS imports.
EXTERNAL = re.compile(r"(?i)\b(?:https?|wss?|ftp):|(?<![:\w])//[\w.-]+\.\w|@import")


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in URL_ATTRIBUTES and value]

    def handle_data(self, data: str) -> None:
        self.inline.append(data)


def _references(html: str) -> _References:
    parser = _References()
    parser.feed(html)
    return parser


@pytest.mark.parametrize("page", PAGES)
def test_the_page_references_no_external_host(api: Api, page: str) -> None:
    response = api.client.get(page, headers={"Authorization": ""})  # public, as FastAPI's pages were
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]  # nor may the bundles reach out on their own
    assert "default-src 'self'" in policy and "img-src 'self' data:;" in policy and "http" not in policy
    found = _references(response.text)
    assert found.urls, "the page references no assets at all"
    for url in found.urls:
        assert url.startswith("/") and not url.startswith("//"), url
    assert not EXTERNAL.findall(response.text), EXTERNAL.findall(response.text)
    scripts = [url for url in found.urls if url.endswith(".js")]
    assert scripts and all(url.startswith(f"{ASSETS}/") for url in scripts)
    for url in found.urls:  # each one is there, served by the app, and is what the package ships
        asset = api.client.get(url)
        assert asset.status_code == 200, url
        assert asset.content == (asset_dir() / Path(url).name).read_bytes()
        kind = {".js": "javascript", ".css": "text/css", ".png": "image/png"}[Path(url).suffix]
        assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
    assert "'/openapi.json'" in response.text or '"/openapi.json"' in response.text


def test_swagger_ui_works_offline_with_the_validator_off(api: Api) -> None:
    html = api.client.get("/docs").text
    assert '"validatorUrl": null' in html  # Swagger UI would otherwise send the schema to a public host
    redirect = api.client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "oauth2" in redirect.text.lower()
    assert not EXTERNAL.findall(redirect.text)


def test_the_assets_are_real_bundles(api: Api) -> None:
    bundle = api.client.get(f"{ASSETS}/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle and len(bundle) > 500_000
    assert "Redoc" in api.client.get(f"{ASSETS}/redoc.standalone.js").text
    assert api.client.get(f"{ASSETS}/../docs.py").status_code == 404
    assert api.client.get(f"{ASSETS}/nothing.js").status_code == 404
