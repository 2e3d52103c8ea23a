"""Run the real API for the browser test: ``python -m tests.browser.serve_app PORT [module[:attr]]``.

Loads ``api.main`` (``create_app()`` when it has one, else ``app``), makes sure the dashboard is mounted,
and serves it on 127.0.0.1. Settings come from the ``GLAI_*`` environment the test sets.
"""

from __future__ import annotations

import importlib
import sys

import uvicorn
from fastapi import FastAPI

from api.dashboard import mount_dashboard


def load_app(spec: str) -> FastAPI:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attr) if attr else getattr(module, "create_app", None) or module.app
    app = target if isinstance(target, FastAPI) else target()
    mount_dashboard(app)  # a no-op when api.main already did it
    return app


def main() -> None:
    port = int(sys.argv[1])
    spec = sys.argv[2] if len(sys.argv) > 2 else "api.main"
    uvicorn.run(load_app(spec), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
