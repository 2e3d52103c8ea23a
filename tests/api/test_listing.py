"""Listing jobs and datasets: cursors that were never issued, filters, unknown query parameters."""

from __future__ import annotations

import base64
import json

import pytest

from tests.api.helpers import Api, dataset_id, insert_job, submit


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


def test_jobs_filter_by_dataset_and_name(api: Api) -> None:
    first, second = dataset_id(api), dataset_id(api)
    a = submit(api, first, name="wide").json()["id"]
    b = submit(api, second, name="wide").json()["id"]
    c = submit(api, first, name="narrow").json()["id"]
    d = submit(api, first).json()["id"]

    def ids(**params: str) -> list[str]:
        response = api.client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["items"]]

    assert ids(dataset_id=first) == [d, c, a]
    assert ids(dataset_id=second) == [b]
    assert ids(name="wide") == [b, a]
    assert ids(name="wide", dataset_id=first) == [a]
    assert ids(name="Wide") == [] and ids(dataset_id="f" * 32) == []
    other = {"Authorization": f"Bearer {api.new_key()}"}
    assert api.client.get("/v1/jobs", params={"dataset_id": first}, headers=other).json()["items"] == []
    page = api.client.get("/v1/jobs", params={"dataset_id": first, "limit": 2}).json()
    rest = api.client.get("/v1/jobs", params={"dataset_id": first, "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in page["items"] + rest["items"]] == [d, c, a]
    bad = api.client.get("/v1/jobs", params={"dataset_id": "../x"})
    assert bad.status_code == 422 and bad.json()["field"] == "dataset_id"


def test_jobs_filter_by_tags(api: Api) -> None:
    ds = dataset_id(api)
    a = submit(api, ds, tags=["baseline", "lr-3e-4"]).json()["id"]
    b = submit(api, ds, tags=["baseline"]).json()["id"]
    c = submit(api, ds, tags=["base", "sweep \"q\" 100%"]).json()["id"]  # quotes, a prefix, a %
    submit(api, ds)

    def ids(*tags: str, **params: str) -> list[str]:
        response = api.client.get("/v1/jobs", params={"tag": list(tags), **params})
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["items"]]

    assert ids("baseline") == [b, a]
    assert ids("baseline", "lr-3e-4") == [a]  # every one of them
    assert ids("base") == [c]  # exact: not a prefix of "baseline"
    assert ids('sweep "q" 100%') == [c] and ids("sweep") == [] and ids("%") == []
    assert ids("baseline", dataset_id=ds, limit="1") == [b]
    other = {"Authorization": f"Bearer {api.new_key()}"}
    assert api.client.get("/v1/jobs", params={"tag": "baseline"}, headers=other).json()["items"] == []
    many = api.client.get("/v1/jobs", params={"tag": [f"t{i}" for i in range(9)]})
    assert many.status_code == 422 and many.json()["field"] == "tag"
    assert api.client.get("/v1/jobs", params={"tag": "x" * 65}).status_code == 422


@pytest.mark.parametrize(("path", "query", "name"), [
    ("/v1/jobs", "dataset=abc", "dataset"),  # the filter is dataset_id: never silently every job
    ("/v1/jobs", "limit=5&stat=failed", "stat"),
    ("/v1/datasets", "name=iris", "name"),
    ("/v1/datasets/{ds}", "verbose=1", "verbose"),
    ("/v1/jobs/{job}/curves", "keys=a&key=b", "key"),
    ("/v1/jobs/{job}/logs", "offset=0&follow=1", "follow"),
    ("/v1/jobs/{job}/artifacts", "x=", "x"),
])
def test_unknown_query_parameters_are_422(api: Api, path: str, query: str, name: str) -> None:
    ds = dataset_id(api)
    job = insert_job(api, ds, "succeeded")
    url = f"{path.replace('{ds}', ds).replace('{job}', job)}?{query}"
    response = api.client.get(url)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == name and f"unknown query parameter '{name}'" in body["detail"]
    assert api.client.get(url, headers={"Authorization": ""}).status_code == 401  # the key is checked first
    posted = api.client.post(f"/v1/jobs?{query}", json={"dataset_id": ds})
    assert posted.status_code == 422 and api.client.get("/v1/jobs").json()["items"][0]["id"] == job


def test_every_documented_query_parameter_is_known(api: Api) -> None:
    """The parameters read from each endpoint's signature are the ones the OpenAPI document lists: none of
    them is ever refused as unknown (its value may still be wrong)."""
    ds = dataset_id(api)
    job = insert_job(api, ds, "succeeded", artifact=b"model")
    spec = api.client.get("/openapi.json").json()
    checked = 0
    for template, item in spec["paths"].items():
        path = template.replace("{dataset_id}", ds).replace("{job_id}", job).replace("{name}", "trained")
        for method, operation in item.items():
            if method not in ("get", "head", "post", "delete"):
                continue
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            for name in names:
                response = api.client.request(method.upper(), path, params={name: ""})
                if response.status_code == 422:
                    assert "unknown query parameter" not in response.json()["detail"], (method, path, name)
                checked += 1
    assert checked >= 12
