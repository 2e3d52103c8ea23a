"""The OpenAPI document reads well: every operation has a summary, every schema field a description."""

from __future__ import annotations

from tests.api.helpers import Api


def test_every_field_and_operation_is_documented(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    missing = []
    for name, schema in spec["components"]["schemas"].items():
        if name in {"HTTPValidationError", "ValidationError"} or name.startswith("ValidationError"):
            continue
        for prop, body in schema.get("properties", {}).items():
            if not body.get("description") and "$ref" not in body and not any(
                    "$ref" in option for option in body.get("anyOf", []) + body.get("allOf", [])):
                missing.append(f"{name}.{prop}")
    assert missing == [], missing
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            if path.startswith("/v1"):
                assert "401" in operation["responses"], f"{method.upper()} {path} does not document 401"
    upload = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["file"]["format"] == "binary"
    assert spec["paths"]["/v1/jobs"]["post"]["parameters"][0]["name"].lower() == "idempotency-key"
    assert "bearer" in str(spec["components"].get("securitySchemes", {})).lower()


def test_error_bodies_share_one_shape(api: Api) -> None:
    bad_json = {"Content-Type": "application/json"}
    for response in (api.client.get("/v1/jobs/nope"), api.client.post("/v1/jobs", json={}),
                     api.client.get("/v1/nothing-here"),
                     api.client.post("/v1/jobs", content=b"{not json", headers=bad_json)):
        body = response.json()
        assert isinstance(body["detail"], str) and "field" in body, body
