"""What an upload may unfold into: columns (GLAI_MAX_COLUMNS). A refused upload stores nothing."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.api.helpers import Api, upload
from tests.api.test_datasets import assert_nothing_stored


def wide_csv(columns: int, rows: int) -> bytes:
    lines = [",".join([f"c{i}" for i in range(columns - 1)] + ["label"])]
    lines += [",".join(str((r + i) % 10) for i in range(columns - 1)) + f",{r % 2}" for r in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def test_the_issues_wide_csv_is_refused_at_once(api: Api) -> None:
    """100,000 columns, 4 rows (1.4 MB): accepted after 113 s of API CPU before."""
    started = time.perf_counter()
    response = upload(api, wide_csv(100_000, 4), "wide.csv")
    assert time.perf_counter() - started < 10
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "file" and "GLAI_MAX_COLUMNS" in body["detail"]
    assert "100,000 columns, above the limit of 16,384" in body["detail"]
    assert_nothing_stored(api)


def test_the_column_limit_is_a_setting(make_api: Callable[..., Api]) -> None:
    api = make_api(max_columns=6)
    for content, name in ((wide_csv(7, 10), "wide.csv"), (_parquet(7), "wide.parquet")):
        response = upload(api, content, name)
        assert response.status_code == 422 and "above the limit of 6" in response.json()["detail"], name
        assert "GLAI_MAX_COLUMNS" in response.json()["detail"]
    assert_nothing_stored(api)
    assert upload(api, wide_csv(6, 10), "ok.csv").status_code == 201
    assert upload(api, _parquet(6), "ok.parquet").status_code == 201


def _parquet(columns: int) -> bytes:
    table = pa.table({**{f"f{i}": np.arange(8.0) for i in range(columns - 1)}, "label": np.arange(8) % 2})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
