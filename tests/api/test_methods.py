"""Methods a path does not answer: 405 with an ``Allow`` header naming every method it does answer (as the
OpenAPI document lists them), for the standard methods, TRACE and ones no RFC defines."""

from __future__ import annotations

import re

import pytest

from tests.api.helpers import Api, dataset_id, insert_job

PROBES = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "QUERY", "PURGE")


def test_every_unanswered_method_is_405_with_the_paths_methods(api: Api) -> None:
    ds = dataset_id(api)
    job = insert_job(api, ds, "succeeded", artifact=b"model")
    ids = {"{dataset_id}": ds, "{job_id}": job, "{name}": "trained"}
    spec = api.client.get("/openapi.json").json()
    patterns = {re.compile(re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"): item
                for template, item in spec["paths"].items()}
    probed = 0
    for template in spec["paths"]:
        path = template
        for placeholder, value in ids.items():
            path = path.replace(placeholder, value)
        # every operation whose template matches the path (/v1/datasets/builtin is also a {dataset_id})
        declared = {method.upper() for pattern, item in patterns.items() if pattern.match(path)
                    for method in item if method.upper() in PROBES}
        for method in PROBES:
            if method in declared:
                continue
            response = api.client.request(method, path)
            assert response.status_code == 405, (method, path, response.status_code)
            assert set(response.headers["allow"].split(", ")) == declared, (method, path, response.headers)
            if method != "HEAD":
                body = response.json()
                assert method in body["detail"] and "field" in body, body
            probed += 1
    assert probed > 50


@pytest.mark.parametrize(("path", "allow"), [
    ("/v1/jobs", "GET, POST"),  # Starlette alone says "POST": the first route on the path
    ("/v1/datasets", "GET, POST"),
    ("/v1/jobs/{job}/artifacts/trained", "GET, HEAD"),
    ("/v1/jobs/{job}", "GET, DELETE"),
])
def test_allow_lists_every_method_in_order(api: Api, path: str, allow: str) -> None:
    job = insert_job(api, dataset_id(api), "succeeded", artifact=b"model")
    response = api.client.request("TRACE", path.replace("{job}", job))
    assert response.status_code == 405 and response.headers["allow"] == allow
