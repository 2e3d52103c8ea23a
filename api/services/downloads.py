"""Artifact downloads: ETag/If-None-Match and single byte ranges, streamed from storage in chunks.

Multi-range requests and malformed Range headers are ignored (RFC 9110 allows it) and get the whole
file with 200; a syntactically valid range that starts past the end gets 416.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi.responses import Response, StreamingResponse

from api.errors import ApiError
from glai_common.models import Artifact
from glai_common.storage import Storage

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
_MAX_DIGITS = 18  # more digits than any file size: read as "past every file", never handed to int()
BEYOND = 10**_MAX_DIGITS


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def etag_for(sha256: str) -> str:
    return f'"{sha256}"'


def etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match uses weak comparison: W/ prefixes are ignored, `*` matches anything."""
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return any(t == "*" or t.removeprefix("W/") == etag for t in tags)


def _position(digits: str) -> int:
    """A byte position from the header. Past ``_MAX_DIGITS`` digits it is ``BEYOND`` (larger than any file,
    which is what such a number means here): ``int()`` refuses strings of over 4,300 digits with a
    ValueError, and a header is the client's to make as long as the server's limit allows."""
    digits = digits.lstrip("0") or "0"
    return BEYOND if len(digits) > _MAX_DIGITS else int(digits)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One byte range or None for 'send everything'; raises 416 when it cannot be satisfied."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:  # several ranges or not bytes: ignore the header
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = _position(last)
        if length == 0 or size == 0:
            raise _unsatisfiable(size)
        return ByteRange(max(size - length, 0), size - 1)
    start = _position(first)
    end = min(_position(last), size - 1) if last else size - 1
    if last and _position(last) < start:
        return None  # invalid per RFC: ignore
    if start >= size:
        raise _unsatisfiable(size)
    return ByteRange(start, end)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, f"requested range is outside the file ({size} bytes)", "Range",
                    headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})


def _stream(storage: Storage, key: str, start: int, length: int) -> Iterator[bytes]:
    """From a local file, or one ranged GET on object storage, in blocks of ``CHUNK``."""
    yield from storage.read_range(key, start, length, CHUNK)


def _reply(storage: Storage, key: str, status: int, headers: dict[str, str], start: int, length: int,
           head: bool) -> Response:
    """The file's bytes, streamed; for HEAD the same status and headers (Content-Length included) and
    no body, without opening the file."""
    if head:
        return Response(status_code=status, media_type="application/octet-stream", headers=headers)
    return StreamingResponse(_stream(storage, key, start, length), status_code=status,
                             media_type="application/octet-stream", headers=headers)


def artifact_response(storage: Storage, artifact: Artifact, filename: str, range_header: str | None,
                      if_none_match: str | None, if_range: str | None, head: bool = False) -> Response:
    """GET (``head=False``) or HEAD of an artifact: the same checks, statuses and headers."""
    etag = etag_for(artifact.sha256)
    common = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0, must-revalidate"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=common)
    stored = storage.stat(artifact.storage_key)  # one HEAD on object storage
    if stored is None:
        raise ApiError(410, f"the file of artifact '{artifact.name}' is missing from storage", None)
    size = stored.size
    if if_range is not None and if_range.strip() != etag:
        range_header = None  # the client's copy is stale: send the whole current file
    byte_range = parse_range(range_header, size)
    headers = {**common, "Content-Disposition": f'attachment; filename="{filename}"'}
    if byte_range is None:
        headers["Content-Length"] = str(size)
        return _reply(storage, artifact.storage_key, 200, headers, 0, size, head)
    headers["Content-Length"] = str(byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"
    return _reply(storage, artifact.storage_key, 206, headers, byte_range.start, byte_range.length, head)
