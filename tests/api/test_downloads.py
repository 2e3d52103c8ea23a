"""Artifact downloads at the edges of HTTP: absurd Range numbers, and HEAD."""

from __future__ import annotations

import hashlib

import pytest

from tests.api.helpers import Api, dataset_id, insert_job

CONTENT = bytes(range(256)) * 8  # 2048 bytes
HUGE = "9" * 5000  # int() refuses strings of more than 4,300 digits


@pytest.fixture
def artifact_url(api: Api) -> str:
    job = insert_job(api, dataset_id(api), "succeeded", artifact=CONTENT)
    return f"/v1/jobs/{job}/artifacts/trained"


@pytest.mark.parametrize(("header", "span"), [
    (f"bytes=0-{HUGE}", (0, 2047)),  # an end past the file is clipped to it
    (f"bytes=100-{HUGE}", (100, 2047)),
    (f"bytes=-{HUGE}", (0, 2047)),  # a suffix longer than the file is the whole file
    (f"bytes={'0' * 5000}10-{'0' * 5000}19", (10, 19)),  # leading zeros add nothing
    (f"bytes={HUGE}-", None),  # a start past the end cannot be satisfied
    (f"bytes={HUGE}-{HUGE}9", None),
])
def test_range_numbers_of_any_length(api: Api, artifact_url: str, header: str,
                                     span: tuple[int, int] | None) -> None:
    response = api.client.get(artifact_url, headers={"Range": header})
    if span is None:
        assert response.status_code == 416, response.text[:200]
        assert response.headers["content-range"] == f"bytes */{len(CONTENT)}"
        assert response.json()["field"] == "Range"
        return
    first, last = span
    assert response.status_code == 206, response.text[:200]
    assert response.content == CONTENT[first:last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(CONTENT)}"


def test_head_answers_what_get_would_without_the_body(api: Api, artifact_url: str) -> None:
    etag = f'"{hashlib.sha256(CONTENT).hexdigest()}"'
    head = api.client.head(artifact_url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(CONTENT)) and head.headers["etag"] == etag
    assert head.headers["accept-ranges"] == "bytes"
    assert head.headers["content-type"] == "application/octet-stream"
    get = api.client.get(artifact_url)
    for name in ("content-length", "etag", "accept-ranges", "content-type", "content-disposition"):
        assert head.headers[name] == get.headers[name], name
    part = api.client.head(artifact_url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == b""
    assert part.headers["content-range"] == f"bytes 10-19/{len(CONTENT)}"
    assert part.headers["content-length"] == "10"
    assert api.client.head(artifact_url, headers={"If-None-Match": etag}).status_code == 304
    assert api.client.head(artifact_url, headers={"Range": "bytes=5000-"}).status_code == 416
    assert api.client.head(artifact_url.replace("trained", "baseline")).status_code == 404
    other = {"Authorization": f"Bearer {api.new_key()}"}
    assert api.client.head(artifact_url, headers=other).status_code == 404
    assert api.client.head(artifact_url, headers={"Authorization": ""}).status_code == 401


def test_head_over_a_real_socket_sends_no_body(server: tuple[Api, str]) -> None:
    import httpx

    api, url = server
    job = insert_job(api, dataset_id(api), "succeeded", artifact=CONTENT)
    with httpx.Client(base_url=url, headers=api.headers, timeout=10) as client:
        head = client.head(f"/v1/jobs/{job}/artifacts/trained")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(CONTENT))
        again = client.get(f"/v1/jobs/{job}/artifacts/trained")  # same connection: framing intact
        assert again.status_code == 200 and again.content == CONTENT
