"""The embedded broker (kombu's SQLAlchemy transport) with its queues read in order, high first.

Kombu's virtual transports take turns between the queues a worker consumes (a fair cycle), so a high job
could wait behind a normal one; Redis takes ``queue_order_strategy`` for this, the SQL transport has no
such option. This channel tries the queues in the order the worker consumes them (``consumed_routes``:
high, normal, low) every time it fetches a message. Only the worker installs it; the API sends with the
stock transport, which writes the same tables.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as SqlChannel
from kombu.transport.sqlalchemy import Transport as SqlTransport
from kombu.utils.scheduling import FairCycle

NAME = f"{__name__}:Transport"


class InOrder(FairCycle):
    """Always start from the first resource: the first queue with a message wins."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        for resource in list(self.resources):
            try:
                return self.fun(resource, callback, **kwargs)
            except self.predicate:
                continue
        raise self.predicate()


class Channel(SqlChannel):
    def _reset_cycle(self) -> None:
        self._cycle = InOrder(self._get_and_deliver, self._active_queues, Empty)


class Transport(SqlTransport):
    Channel = Channel


def install() -> None:
    """Make ``sqla+...`` and ``sqlalchemy+...`` broker URLs use this transport in this process."""
    TRANSPORT_ALIASES["sqla"] = NAME
    TRANSPORT_ALIASES["sqlalchemy"] = NAME
