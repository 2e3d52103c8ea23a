"""The OpenAPI document, made to tell the truth about errors.

FastAPI documents its own ``HTTPValidationError`` for 422s, but ``api.errors`` rewrites every error into
``{"detail", "field"}`` (plus ``errors`` for validation failures); and some statuses come from layers no
route declares (the request guard's 400/413, the JSON reader's 400). This post-processing replaces and adds
those responses on every operation, so clients generated from the schema and the schema fuzz tests
(tests/fuzz) see every status a route can return, each with the model its body really has.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import ErrorBody, ValidationErrorBody

_REF = "#/components/schemas/{model}"
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def _ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=name)}}}


def _add_model(components: dict[str, Any], model: type[ErrorBody]) -> None:
    schema = model.model_json_schema(ref_template=_REF)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components[model.__name__] = schema


def fix_error_responses(spec: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``spec`` in place (and return it): see the module docstring."""
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    _add_model(components, ErrorBody)
    _add_model(components, ValidationErrorBody)
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            has_input = bool(operation.get("parameters") or operation.get("requestBody"))
            if has_input or "422" in responses:
                responses["422"] = {"description": responses.get("422", {}).get(
                    "description", "Invalid field; `field` names it, `errors` lists every problem."),
                    "content": _ref("ValidationErrorBody")}
            responses.setdefault("400", {"description": "Malformed request: an unreadable body or a NUL "
                                         "character in the URL.", "content": _ref("ErrorBody")})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": "Request body larger than "
                                             "GLAI_MAX_REQUEST_BYTES.", "content": _ref("ErrorBody")})
                responses.setdefault("415", {"description": "Body sent with the wrong content type.",
                                             "content": _ref("ErrorBody")})
            if path.startswith("/v1"):
                responses.setdefault("401", {"description": "Missing, unknown or revoked API key.",
                                             "content": _ref("ErrorBody")})
                responses.setdefault("429", {"description": "Too many failed API-key attempts from this "
                                             "client (GLAI_AUTH_FAILURE_LIMIT); retry after `Retry-After`.",
                                             "headers": {"Retry-After": {
                                                 "description": "Seconds to wait.",
                                                 "schema": {"type": "integer", "minimum": 1}}},
                                             "content": _ref("ErrorBody")})
    text = repr(spec["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"/{unused}'" not in text:
            components.pop(unused, None)
    return spec


def install_openapi(app: FastAPI) -> None:
    """Serve the fixed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes, tags=app.openapi_tags)
            app.openapi_schema = fix_error_responses(spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
