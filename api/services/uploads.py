"""Read a multipart upload straight from the request stream: the file part goes to a temp file in
chunks, hashed on the way, and the upload stops with a 413 the moment it passes the size limit.

FastAPI's ``UploadFile`` would spool the whole body before the route runs, so a 50 GB upload would fill
the disk before anyone could say no; this parser never holds more than one chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from api.errors import ApiError

MAX_FIELD_BYTES = 64 * 1024
MULTIPART_OVERHEAD = 1024 * 1024  # headers and text fields on top of the file itself
MAX_PARTS = 16  # the form has five documented fields; more is abuse, not a dataset


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    filename: str | None = None
    size_bytes: int = 0
    sha256: str = ""

    def cleanup(self) -> None:
        if self.file_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.file_path.unlink()


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"upload exceeds the limit of {limit} bytes ({limit / 1024**2:.0f} MiB, "
                         "set by GLAI_MAX_UPLOAD_BYTES)", "file")


def _is_file_part(params: dict[bytes, bytes], headers: dict[bytes, bytes]) -> bool:
    """A part sent as a file: it names a file, or declares a content type other than text (text fields
    are sent without one by curl, browsers and httpx alike)."""
    media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return b"filename" in params or b"filename*" in params or (bool(media) and not media.startswith(b"text/"))


class _FormSink:
    """Callbacks for python-multipart: route each part's bytes to a text field or the temp file."""

    def __init__(self, tmp_dir: Path, max_file_bytes: int, file_field: str) -> None:
        self.form = ReceivedForm()
        self.tmp_dir, self.limit, self.file_field = tmp_dir, max_file_bytes, file_field
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._buffer = bytearray()
        self._file: object | None = None
        self._hash = hashlib.sha256()
        self._parts = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(413, f"the form has more than {MAX_PARTS} parts", None)
        self._headers, self._name, self._buffer = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        if name is None:
            raise ApiError(422, "a multipart part has no name", None)
        self._name = name.decode("utf-8", "replace")
        if self._name != self.file_field and _is_file_part(params, self._headers):
            raise ApiError(422, f"the form field '{self._name[:64]}' carries a file; send the dataset file "
                                f"in the multipart field '{self.file_field}' (the other fields are text)",
                           self.file_field)
        if self._name == self.file_field:
            if self.form.file_path is not None:
                raise ApiError(422, "send exactly one file", self.file_field)
            filename = params.get(b"filename", b"")
            if b"\x00" in filename:  # PostgreSQL refuses NUL in text; no real file name has one
                raise ApiError(422, "the file name contains a NUL character", self.file_field)
            # Only the last path component survives, and only as a display name: storage keys are ids.
            self.form.filename = Path(filename.decode("utf-8", "replace").replace("\\", "/")).name
            fd, path = tempfile.mkstemp(prefix="upload-", dir=self.tmp_dir)
            self.form.file_path = Path(path)
            self._file = os.fdopen(fd, "wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None:
            self.form.size_bytes += len(chunk)
            if self.form.size_bytes > self.limit:
                raise too_large(self.limit)
            self._hash.update(chunk)
            self._file.write(chunk)  # type: ignore[attr-defined]
        else:
            self._buffer += chunk
            if len(self._buffer) > MAX_FIELD_BYTES:
                raise ApiError(413, f"form field '{self._name}' exceeds {MAX_FIELD_BYTES} bytes", self._name)

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None
            self.form.sha256 = self._hash.hexdigest()
        elif self._name is not None:
            if b"\x00" in self._buffer:
                raise ApiError(422, f"form field '{self._name}' contains a NUL character; it is a text field "
                                    f"(binary data, such as the dataset file, goes in '{self.file_field}')",
                               self._name)
            self.form.fields[self._name] = self._buffer.decode("utf-8", "replace")

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None
        self.form.cleanup()


async def receive_form(content_type: str | None, content_length: str | None, body: AsyncIterator[bytes],
                       tmp_dir: Path, max_file_bytes: int, file_field: str = "file") -> ReceivedForm:
    """Parse a multipart/form-data body. On any error the temp file is gone before the error leaves."""
    mime, params = parse_options_header(content_type or "")
    if mime != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "send the upload as multipart/form-data", None)
    declared = int(content_length) if content_length and content_length.isdigit() else 0
    if declared > max_file_bytes + MULTIPART_OVERHEAD:
        raise too_large(max_file_bytes)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    sink = _FormSink(tmp_dir, max_file_bytes, file_field)
    parser = MultipartParser(params[b"boundary"], sink.callbacks())  # type: ignore[arg-type]
    received, body_limit = 0, max_file_bytes + MULTIPART_OVERHEAD
    try:
        async for chunk in body:
            received += len(chunk)  # counted here too: a chunked body has no Content-Length to trust
            if received > body_limit:
                raise too_large(max_file_bytes)
            parser.write(chunk)
        parser.finalize()
        if sink._file is not None:
            raise ApiError(400, "the multipart body ended in the middle of the file", file_field)
    except MultipartParseError as exc:
        sink.abort()
        raise ApiError(400, f"malformed multipart body: {exc}", None) from exc
    except BaseException:
        sink.abort()
        raise
    return sink.form
