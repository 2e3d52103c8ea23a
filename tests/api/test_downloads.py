"""Artifact downloads at the edges of HTTP: absurd Range numbers."""

from __future__ import annotations

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
