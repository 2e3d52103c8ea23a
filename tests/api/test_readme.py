"""The README's job examples, followed literally, work: each section has an Idempotency-Key of its own
(the curl section once reused the CLI's `run-1` with another body: a 409), and the curl body is accepted."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.api.helpers import Api, dataset_id

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _keys() -> list[str]:
    patterns = (r"--idempotency-key (\S+)", r'idempotency_key="([^"]+)"', r"Idempotency-Key: ([^'\s]+)'")
    return [key for pattern in patterns for key in re.findall(pattern, README)]


def test_every_example_has_a_key_of_its_own() -> None:
    keys = _keys()
    assert len(keys) >= 3, keys  # the CLI, Python and curl sections
    assert len(set(keys)) == len(keys), keys


def test_the_curl_submission_follows_the_cli_one(api: Api) -> None:
    ds = dataset_id(api)
    cli_key = re.search(r"--idempotency-key (\S+)", README)
    curl = re.search(r"-H 'Idempotency-Key: ([^']+)' \$API/jobs -d '(\{.*?\})'", README, re.S)
    assert cli_key and curl
    first = api.client.post("/v1/jobs", json={"dataset_id": ds, "architecture": {"hidden": [256]}},
                            headers={"Idempotency-Key": cli_key.group(1)})
    assert first.status_code == 202, first.text
    body = json.loads(curl.group(2).replace("<DATASET_ID>", ds))
    second = api.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": curl.group(1)})
    assert second.status_code == 202, second.text
    assert second.json()["id"] != first.json()["id"]
