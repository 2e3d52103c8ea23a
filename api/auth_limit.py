"""A bound on failed API-key attempts per client, so keys cannot be guessed at full speed.

After ``limit`` failed attempts within ``window_s`` seconds a client is refused with 429 and
``Retry-After`` (any key, valid or not, until its oldest failure leaves the window): answering a right
key differently while blocked would let the guessing go on. Clients are IP addresses, IPv6 ones by
their /64 (one host usually holds a whole /64); behind a reverse proxy run uvicorn with proxy headers so
that the peer is the real client. State is per API process and holds at most ``max_clients`` clients
(the least recently failing are forgotten first).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


def client_key(host: str | None) -> str:
    """The unit a limit applies to: an IPv4 address, an IPv6 /64, or the host string as given."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class FailedAuthLimiter:
    """Sliding window of failure times per client; thread-safe (sync routes run in a thread pool)."""

    def __init__(self, limit: int, window_s: float, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.max_clients, self.clock = limit, window_s, max_clients, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if times is not None and not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: it may now)."""
        if self.limit <= 0:
            return 0
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            if times is None or len(times) < self.limit:
                return 0
            return max(1, math.ceil(times[0] + self.window_s - now))

    def record_failure(self, client: str) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            if times is None:
                times = self._failures[client] = deque(maxlen=self.limit)
            times.append(now)
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
