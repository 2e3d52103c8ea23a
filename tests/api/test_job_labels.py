"""A job's name and tags: optional at submission, stored, returned on every job body, part of the request
an Idempotency-Key stands for."""

from __future__ import annotations

from glai_common.models import Job
from tests.api.helpers import Api, dataset_id, submit


def test_name_and_tags_are_stored_and_returned(api: Api) -> None:
    ds = dataset_id(api)
    response = submit(api, ds, name="iris wide", tags=["sweep", "r=2", "sweep", "ünïcode"])
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["name"] == "iris wide" and job["tags"] == ["sweep", "r=2", "ünïcode"]  # repeats dropped
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["tags"] == job["tags"]
    (listed,) = api.client.get("/v1/jobs").json()["items"]
    assert (listed["name"], listed["tags"]) == ("iris wide", job["tags"])
    with api.session() as session:
        row = session.get(Job, job["id"])
        assert row is not None and (row.name, row.tags) == ("iris wide", job["tags"])
    plain = submit(api, ds).json()
    assert plain["name"] is None and plain["tags"] == []


def test_the_idempotency_key_covers_name_and_tags(api: Api) -> None:
    ds = dataset_id(api)
    first = submit(api, ds, key="labelled", name="a", tags=["x"])
    assert submit(api, ds, key="labelled", name="a", tags=["x", "x"]).status_code == 200  # same meaning
    for changed in ({"name": "b", "tags": ["x"]}, {"name": "a"}, {"tags": ["x"]}):
        response = submit(api, ds, key="labelled", **changed)
        assert response.status_code == 409 and response.json()["field"] == "Idempotency-Key", changed
    unlabelled = submit(api, ds, key="plain")
    assert submit(api, ds, key="plain", tags=[]).json()["id"] == unlabelled.json()["id"]  # [] is no tags
    assert first.status_code == 202
