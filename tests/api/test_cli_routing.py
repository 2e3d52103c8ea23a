"""`glai submit --priority/--queue/--webhook-url` and `glai webhook-secret` against a live API (uvicorn on
a real socket): stored as given, and a refused value exits 1 with the API's message naming the field."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from glai_client.cli import app
from glai_common.models import Job
from tests.api.helpers import Api

runner = CliRunner()


@pytest.fixture
def cli_env(server: tuple[Api, str], monkeypatch: pytest.MonkeyPatch) -> Api:
    api, url = server
    monkeypatch.setenv("GLAI_API_URL", url)
    monkeypatch.setenv("GLAI_API_KEY", api.key)
    return api


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_submit_routing_and_the_webhook_secret(cli_env: Api) -> None:
    ds = re.findall(r"\b[0-9a-f]{32}\b", _ok("datasets", "builtin", "iris"))[0]
    out = _ok("submit", ds, "--priority", "high", "--webhook-url", "https://93.184.215.14/glai")
    job_id = re.findall(r"\b[0-9a-f]{32}\b", out)[0]
    with cli_env.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.priority, job.queue, job.webhook_url) == (
            "high", "glai", "https://93.184.215.14/glai")
    secret = _ok("webhook-secret").strip()
    assert secret.startswith("whsec_") and _ok("webhook-secret").strip() == secret
    rotated = _ok("webhook-secret", "--rotate").strip()
    assert rotated != secret and _ok("webhook-secret").strip() == rotated

    for args, field in ((["--queue", "gpu-h100"], "queue"), (["--priority", "urgent"], "priority"),
                        (["--webhook-url", "http://127.0.0.1/x"], "notify.webhook_url")):
        result = runner.invoke(app, ["submit", ds, *args])
        assert result.exit_code == 1 and field in result.output, (args, result.output)
