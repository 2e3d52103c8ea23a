"""Listing jobs and datasets: cursors that were never issued, filters, unknown query parameters."""

from __future__ import annotations

import base64
import json

import pytest

from tests.api.helpers import Api, dataset_id, insert_job


def forged_cursor(ident: str, stamp: str = "2026-01-01T00:00:00+00:00") -> str:
    raw = json.dumps({"t": stamp, "id": ident}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets"])
@pytest.mark.parametrize("ident", ["ab\x00cd", "\x00" * 32, "not-an-id", "A" * 32])
def test_a_cursor_that_decodes_to_a_non_id_is_422(api: Api, path: str, ident: str) -> None:
    """Base64 hides a NUL from the URL guard; PostgreSQL would refuse it in the query with a 500."""
    ds = dataset_id(api)
    insert_job(api, ds, "queued")
    response = api.client.get(path, params={"cursor": forged_cursor(ident)})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "cursor" and "cursor" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets"])
def test_a_cursor_with_a_nul_in_its_time_or_of_the_wrong_type_is_422(api: Api, path: str) -> None:
    for cursor in (forged_cursor("0" * 32, "2026-01-01\x00"),
                   base64.urlsafe_b64encode(json.dumps({"t": 5, "id": 7}).encode()).decode(),
                   base64.urlsafe_b64encode(b"[1, 2]").decode()):
        response = api.client.get(path, params={"cursor": cursor})
        assert response.status_code == 422 and response.json()["field"] == "cursor", response.text


def test_a_forged_cursor_with_a_real_id_shape_still_pages(api: Api) -> None:
    ds = dataset_id(api)
    job = insert_job(api, ds, "queued")
    response = api.client.get("/v1/jobs", params={"cursor": forged_cursor("f" * 32, "2999-01-01T00:00:00")})
    assert response.status_code == 200 and [j["id"] for j in response.json()["items"]] == [job]
