"""`glai worker`: the Celery command it becomes, and the options it refuses (one line, status 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from glai_client.worker_cmd import WorkerOptionError, WorkerOptions, command
from glai_common.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_pools_become_queues_high_first() -> None:
    settings = Settings(queues=["glai", "gpu-a100", "cpu"])
    argv, env = command(WorkerOptions(queues="gpu-a100,cpu", name="n1@%h"), settings)
    assert argv[1:6] == ["-m", "celery", "-A", "worker.celery_app", "worker"]
    assert argv[argv.index("-Q") + 1] == "gpu-a100.high,cpu.high,gpu-a100,cpu,gpu-a100.low,cpu.low"
    assert argv[argv.index("--pool") + 1] == "solo" and argv[argv.index("--concurrency") + 1] == "1"
    assert argv[argv.index("-n") + 1] == "n1@%h"
    assert env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")  # GPUs left as they are
    default, _ = command(WorkerOptions(), settings)  # the default pool only
    assert default[default.index("-Q") + 1] == "glai.high,glai,glai.low"
    _, cpu_env = command(WorkerOptions(queues="cpu", cpu=True), settings)
    assert cpu_env["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize("queues", ["gpu-h100", "Bad", "glai,", "a.b"])
def test_bad_queues_are_refused(queues: str) -> None:
    with pytest.raises(WorkerOptionError, match="^--queues: "):
        command(WorkerOptions(queues=queues), Settings(queues=["glai", "cpu"]))


def test_the_cli_prints_one_error_line_and_exits_2() -> None:
    env = {**os.environ, "GLAI_QUEUES": "glai,cpu"}
    result = subprocess.run([sys.executable, "-m", "glai_client.cli", "worker", "--queues", "gpu-h100"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --queues: 'gpu-h100' is not one of GLAI_QUEUES")
    assert "Traceback" not in result.stderr
