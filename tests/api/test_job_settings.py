"""Training settings left to the data ("auto"), adaptive width and the new phase-2 solvers at the API."""

from __future__ import annotations

import pytest

from glai_core.defaults import AUTO_FIELDS
from tests.api.helpers import Api, dataset_id, submit


def test_auto_settings_are_stored_for_the_worker_to_choose(api: Api) -> None:
    """`{}` and explicit "auto" mean the same request; the stored config leaves them unset (None) so the
    worker chooses them from the data, and explicit numbers are kept."""
    ds = dataset_id(api)
    response = submit(api, ds, structural={"batch_size": 64}, baseline={"patience": "auto"})
    assert response.status_code == 202, response.text
    config = response.json()["spec"]["config"]
    assert config["structural"]["batch_size"] == 64
    for section, names in AUTO_FIELDS.items():
        for name in names:
            if (section, name) != ("structural", "batch_size"):
                assert config[section][name] is None, (section, name)
    same = submit(api, ds, key="k", baseline={"max_epochs": "auto", "lr": "auto"})
    again = submit(api, ds, key="k")
    assert same.status_code == 202 and again.status_code == 200  # the same request after defaults


@pytest.mark.parametrize(("body", "field"), [
    ({"quantitative": {"lr": "auto"}}, "quantitative.lr"),  # not a data-chosen setting
    ({"structural": {"batch_size": 0}}, "structural.batch_size"),
    ({"structural": {"batch_size": "big"}}, "structural.batch_size"),
    ({"baseline": {"lr": 50}}, "baseline.lr"),
    ({"quantitative": {"solver": "newton"}}, "quantitative.solver"),
    ({"architecture": {"reduction_factor": "wide"}}, "architecture.reduction_factor"),
    ({"structural": {"min_epochs": 9, "max_epochs": 3}}, "structural"),
])
def test_bad_settings_are_422_naming_the_field(api: Api, body: dict, field: str) -> None:
    response = submit(api, dataset_id(api), **body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_adaptive_width_and_convex_solvers_are_accepted(api: Api) -> None:
    response = submit(api, dataset_id(api), architecture={"hidden": [64], "reduction_factor": "adaptive"},
                      quantitative={"solver": "ridge+lbfgs", "lbfgs_iterations": 50})
    assert response.status_code == 202, response.text
    config = response.json()["spec"]["config"]
    assert config["architecture"]["reduction_factor"] == "adaptive"
    assert config["quantitative"]["solver"] == "ridge+lbfgs"
    assert config["quantitative"]["lbfgs_iterations"] == 50


def test_openapi_documents_auto_and_the_solvers(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()["components"]["schemas"]
    batch = schema["StructuralIn"]["properties"]["batch_size"]
    assert {"type": "integer", "minimum": 1, "maximum": 1_000_000} in batch["anyOf"]
    assert {"const": "auto", "type": "string"} in batch["anyOf"] or {"enum": ["auto"], "type": "string"} in \
        batch["anyOf"]
    assert "summary.effective_settings" in batch["description"]
    solvers = schema["QuantitativeIn"]["properties"]["solver"]["enum"]
    assert {"lbfgs", "ridge+lbfgs", "auto"} <= set(solvers)
