"""The OpenAPI document and the validation say the same thing: what the schema allows is accepted, what
it forbids is refused, at the edges where they used to differ (sparsities, built-in names, strict types)."""

from __future__ import annotations

from typing import Any

import pytest

from glai_core.data import BUILTIN_NAMES
from tests.api.helpers import Api, dataset_id, submit


def _component(api: Api, name: str) -> dict[str, Any]:
    return dict(api.client.get("/openapi.json").json()["components"]["schemas"][name])


def _allows(bounds: dict[str, Any], value: float) -> bool:
    low, high = float("-inf"), float("inf")
    return (bounds.get("exclusiveMinimum", low) < value < bounds.get("exclusiveMaximum", high)
            and bounds.get("minimum", low) <= value <= bounds.get("maximum", high))


@pytest.mark.parametrize("value", [-0.5, 0, 0.0, 1e-9, 0.5, 1 - 1e-9, 1, 1.0, 2])
def test_sparsity_bounds_of_the_schema_are_the_validations(api: Api, value: float) -> None:
    items = _component(api, "PruningIn")["properties"]["sparsities"]["items"]
    assert items["type"] == "number"
    response = submit(api, dataset_id(api), pruning={"sparsities": [value]})
    assert (response.status_code == 202) == _allows(items, value), (value, items, response.text)
    if response.status_code != 202:
        assert response.status_code == 422 and response.json()["field"] == "pruning.sparsities"


def test_builtin_names_of_the_schema_are_the_services(api: Api) -> None:
    name = _component(api, "BuiltinDatasetCreate")["properties"]["name"]
    assert name["enum"] == list(BUILTIN_NAMES) and name["type"] == "string"
    for unknown in ("imagenet", "", "DIGITS", "digits ", "x" * 200):
        response = api.client.post("/v1/datasets/builtin", json={"name": unknown})
        assert response.status_code == 422 and response.json()["field"] == "name", response.text
        assert "one of: digits" in response.json()["detail"]
    response = api.client.post("/v1/datasets/builtin", json={"name": "iris", "seed": 1})
    assert response.status_code == 201, response.text
    strict = api.client.post("/v1/datasets/builtin", json={"name": "iris", "seed": "1"})
    assert strict.status_code == 422 and strict.json()["field"] == "seed"


def test_an_integer_is_a_number_where_a_float_is_due(api: Api) -> None:
    """Strict types refuse look-alikes ("0", "yes", true), not JSON's own integer-valued numbers."""
    response = submit(api, dataset_id(api), pruning={"lr": 1, "sparsities": [0.5]}, validation_fraction=0.25,
                      structural={"weight_decay": 0}, seed=3)
    assert response.status_code == 202, response.text
    config = response.json()["spec"]["config"]
    assert config["pruning"]["lr"] == 1.0 and config["structural"]["weight_decay"] == 0.0
