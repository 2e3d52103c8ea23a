"""Escalating a cancel that training does not honour.

Cooperative first: the training thread polls ``should_stop`` between steps (and within epochs). A step
that never returns to that check (a stuck kernel, a huge batch, a hung read) would leave the job in
``cancelling`` for as long as it takes, so the reporter thread escalates:

1. after ``cancel_grace_s``: raise ``Cancelled`` inside the training thread
   (``PyThreadState_SetAsyncExc``). It lands at the next Python bytecode, i.e. mid-epoch between two
   batches, and the runner records ``cancelled`` through its normal path. A signal is not used: Celery
   owns the worker's signal handlers, and the training may run outside the main thread.
2. after ``cancel_force_s`` (the thread is stuck inside native code, which no Python exception can
   interrupt): the reporter records ``cancelled`` itself, as the lease holder, then calls
   ``exit_process`` (by default ``os._exit``) so the device is freed; the worker's supervisor starts a
   fresh one and the broker's redelivered message is dropped because the job is final.

Either way the final state is written exactly once: ``jobs.finish`` lets only the lease holder finish a
job that is not final yet, so the runner's own late ``finish`` (if the thread ever returns) is refused.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from glai_core.hooks import Cancelled

log = logging.getLogger(__name__)

EXIT_CODE = 75  # EX_TEMPFAIL: "stopped on purpose, restart me"


def raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> bool:
    """Schedule ``exc_type`` in another thread (None clears a pending one). True if a thread matched."""
    result = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type is not None else None)
    return int(result) == 1


def exit_now() -> None:
    logging.shutdown()
    os._exit(EXIT_CODE)


class CancelEscalation:
    """Owned by one attempt; ``check`` is called from the reporter thread, ``armed`` wraps training."""

    def __init__(self, grace_s: float, force_s: float, record_cancelled: Callable[[str], bool],
                 exit_process: Callable[[], None] = exit_now, thread_id: int | None = None) -> None:
        self.grace_s, self.force_s = grace_s, force_s
        self.record_cancelled = record_cancelled
        self.exit_process = exit_process
        self.thread_id = thread_id if thread_id is not None else threading.get_ident()
        self.interrupted = False  # step 1 happened
        self.forced = False  # step 2 happened
        self._armed = False
        self._lock = threading.Lock()

    @contextmanager
    def armed(self) -> Iterator[None]:
        """Training runs inside: only here may an exception be injected. Leaving it also clears one that
        was scheduled but not delivered yet, so it can never hit the runner's final bookkeeping."""
        with self._lock:
            self._armed = True
        try:
            yield
        finally:
            with self._lock:
                self._armed = False
                raise_in_thread(self.thread_id, None)

    def check(self, cancel_since: float | None, now: float | None = None) -> None:
        if cancel_since is None:
            return
        waited = (now if now is not None else time.monotonic()) - cancel_since
        if not self.interrupted and self.grace_s > 0 and waited >= self.grace_s:
            with self._lock:
                if self._armed:
                    self.interrupted = True
                    log.warning("cancel not honoured after %.0f s: interrupting the training step", waited)
                    raise_in_thread(self.thread_id, Cancelled)
        if not self.forced and self.force_s > 0 and waited >= self.force_s:
            with self._lock:
                armed = self._armed
            if armed:
                self.forced = True
                reason = (f"cancelled: training did not stop within {self.force_s:g} s of the request; "
                          "the worker process was stopped")
                recorded = self.record_cancelled(reason)
                log.error("job still running %.0f s after its cancel (recorded: %s): exiting the process",
                          waited, recorded)
                self.exit_process()
