"""Shared pieces of route declarations: documented error responses."""

from __future__ import annotations

from typing import Any

from api.schemas import ErrorBody

_TEXT = {
    400: "Malformed request.",
    401: "Missing, unknown or revoked API key.",
    404: "Not found, or owned by someone else.",
    409: "Conflicts with the current state.",
    410: "The file is gone from storage (the row remains).",
    413: "Too large: an upload over GLAI_MAX_UPLOAD_BYTES or GLAI_MAX_DECOMPRESSED_BYTES, or a dataset "
         "past the owner's GLAI_MAX_OWNER_STORAGE_BYTES.",
    415: "Wrong content type.",
    416: "Requested byte range cannot be satisfied.",
    422: "Invalid field; `field` names it.",
    503: "A dependency (database or broker) is unavailable.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given status codes, all with the ErrorBody schema."""
    return {code: {"model": ErrorBody, "description": _TEXT[code]} for code in (401, *codes)}
