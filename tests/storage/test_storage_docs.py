"""Every storage setting is documented in the README's configuration table, with a description in
``Settings`` itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from glai_common.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
STORAGE_SETTINGS = [name for name in Settings.model_fields
                    if name.startswith(("storage_", "s3_", "staging_"))]


def test_the_storage_settings_are_the_expected_ones() -> None:
    assert {"storage_url", "s3_endpoint_url", "s3_access_key_id", "s3_secret_access_key", "s3_region",
            "s3_multipart_chunk_bytes", "staging_dir", "staging_max_bytes"} <= set(STORAGE_SETTINGS)


@pytest.mark.parametrize("name", STORAGE_SETTINGS)
def test_each_is_in_the_readme_table_and_described(name: str) -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `GLAI_")]
    assert any(f"`GLAI_{name.upper()}`" in row.split("|")[1] for row in rows), name
    assert Settings.model_fields[name].description, name
