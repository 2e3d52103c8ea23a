"""`glai serve` restarts a dead worker after a wait that doubles up to a bound and resets once a worker
stayed up (the restart itself, with a real killed worker, is in tests/e2e/test_e2e.py)."""

from __future__ import annotations

from glai_client.serve import WorkerBackoff


def test_restart_waits_double_up_to_the_bound_and_reset_after_a_healthy_run() -> None:
    backoff = WorkerBackoff(first_s=1.0, max_s=30.0, healthy_s=60.0)
    assert [backoff.after_exit(uptime_s=2.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after_exit(uptime_s=600.0) == 1  # it ran fine for a while: a fresh crash
    assert backoff.after_exit(uptime_s=0.5) == 2
