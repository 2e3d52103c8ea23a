"""Where the CLI finds the API and its key: GLAI_API_URL / GLAI_API_KEY, else what `glai serve` left in
the data directory (GLAI_DATA_DIR, default ./var)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_API_URL = "http://127.0.0.1:8000"
LOCAL_KEY_FILE = "local_api_key"


def data_dir() -> Path:
    return Path(os.environ.get("GLAI_DATA_DIR", "var"))


def local_key_path(directory: Path | None = None) -> Path:
    return (directory or data_dir()) / LOCAL_KEY_FILE


def api_url() -> str:
    return os.environ.get("GLAI_API_URL", DEFAULT_API_URL).rstrip("/")


def api_key() -> str | None:
    key = os.environ.get("GLAI_API_KEY")
    if key:
        return key.strip()
    path = local_key_path()
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None
