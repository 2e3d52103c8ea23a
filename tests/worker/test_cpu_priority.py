"""A worker yields the CPU to the API and the database it shares a machine with (``GLAI_WORKER_NICE``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, nice: int = 0, own_session: bool = False) -> list[str]:
    """Run ``code`` in a fresh interpreter started at niceness ``nice``: the change is for good."""
    command = [sys.executable, "-c", code]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60,
                          start_new_session=own_session).stdout.split()


def test_raises_niceness_and_never_lowers_it() -> None:
    code = ("import os; from worker.celery_app import lower_cpu_priority as lower; "
            "print(lower(7), lower(3), os.getpriority(os.PRIO_PROCESS, 0))")
    assert _run(code) == ["7", "7", "7"]
    assert _run(code, nice=12) == ["12", "12", "12"]  # an operator's higher niceness is kept


def test_threads_started_afterwards_inherit_it() -> None:
    code = ("import os, threading; from worker.celery_app import lower_cpu_priority as lower; lower(9); "
            "seen = []; read = lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)); "
            "t = threading.Thread(target=read); t.start(); t.join(); print(seen[0])")
    assert _run(code) == ["9"]


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduling here")
def test_a_session_leader_lowers_its_autogroup_and_no_one_elses() -> None:
    """Autogroup weighs sessions, not nice values: a worker alone in its session lowers its group; one
    started inside someone's session (``glai serve``'s, a test's) must leave that session's group alone.
    A process in the root group (started by a daemon that never called setsid) reads the file as empty."""
    code = ("import sys; from pathlib import Path; from worker.celery_app import lower_cpu_priority; "
            "lower_cpu_priority(6); sys.stdout.write(Path('/proc/self/autogroup').read_text())")
    assert _run(code, own_session=True)[-2:] == ["nice", "6"]
    assert _run(code) == Path("/proc/self/autogroup").read_text().split()
