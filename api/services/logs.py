"""Job logs by byte cursor: ``end_offset`` of each stored line is the log's UTF-8 length just past it
(newline included), so a reader asks for everything after the offset it last got."""

from __future__ import annotations

from sqlalchemy.orm import Session

from glai_common.jobs import read_log

MAX_LINES = 2000


def read_chunk(db: Session, job_id: str, offset: int) -> tuple[str, int]:
    lines = read_log(db, job_id, after=offset, limit=MAX_LINES)
    if not lines:
        return "", offset
    parts: list[bytes] = []
    for line in lines:
        data = (line.text + "\n").encode("utf-8")
        start = line.end_offset - len(data)
        if start < offset:  # the cursor points inside this line: send only the rest of it
            data = data[offset - start:]
        parts.append(data)
    return b"".join(parts).decode("utf-8", "replace"), int(lines[-1].end_offset)
