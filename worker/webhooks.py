"""Sends webhook deliveries (rows written with every final state, ``glai_common.webhooks``).

A daemon thread in every worker's main process, next to the reaper: every ``webhook_poll_interval_s`` it
claims the deliveries that are due, POSTs each one and records the outcome. Claiming counts the attempt
and takes a short lease in one conditional update, so two workers never send the same attempt, and an
attempt whose worker died mid-send (the lease runs out) is sent again by whichever worker looks next:
delivery is at least once, and ``GLAI-Delivery`` lets a receiver drop a repeat. A failed attempt (no
answer, or not a 2xx) waits ``webhook_retry_base_s`` doubling up to ``webhook_retry_max_s``; after
``webhook_max_attempts`` the delivery is ``failed``. Redirects are not followed, and the URL is checked
again against the addresses it resolves to now (``glai_common.webhook_urls``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import or_, select, update

from glai_common import webhook_urls, webhooks
from glai_common.models import WebhookDelivery, utcnow
from glai_common.settings import Settings
from worker.context import WorkerContext

log = logging.getLogger(__name__)
BATCH = 20
USER_AGENT = "glai-webhooks/1"


@dataclass(frozen=True)
class Claimed:
    id: str
    owner: str
    url: str
    event: str
    payload: str
    attempt: int


def lease_s(settings: Settings) -> float:
    """Longer than one attempt can take (connect and read each get the timeout), plus a margin."""
    return 2 * settings.webhook_timeout_s + 5.0


def retry_delay_s(settings: Settings, attempt: int) -> float:
    return min(settings.webhook_retry_base_s * 2 ** max(attempt - 1, 0), settings.webhook_retry_max_s)


def _due(now: datetime) -> tuple[object, ...]:
    return (WebhookDelivery.state == webhooks.PENDING, WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now))


def claim_due(ctx: WorkerContext, now: datetime | None = None, limit: int = BATCH) -> list[Claimed]:
    """Take up to ``limit`` due deliveries: one more attempt each, under a lease. A delivery whose last
    allowed attempt was lost with its worker is failed here instead."""
    settings = ctx.settings
    now = now or utcnow()
    with ctx.session() as session:
        candidates = list(session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts).where(*_due(now))
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)))
    claimed: list[Claimed] = []
    for row in candidates:
        with ctx.session() as session:
            if row.attempts >= settings.webhook_max_attempts:
                session.execute(update(WebhookDelivery).where(
                    WebhookDelivery.id == row.id, WebhookDelivery.attempts == row.attempts, *_due(now))
                    .values(state=webhooks.FAILED, lease_expires_at=None,
                            last_error=f"attempt {row.attempts} was lost with its worker; no attempts left"))
                continue
            taken = session.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == row.id, WebhookDelivery.attempts == row.attempts, *_due(now))
                .values(attempts=row.attempts + 1, last_attempt_at=now,
                        lease_expires_at=now + timedelta(seconds=lease_s(settings))))
            if taken.rowcount != 1:
                continue  # another worker took it first
            delivery = session.get(WebhookDelivery, row.id)
            assert delivery is not None
            claimed.append(Claimed(delivery.id, delivery.owner, delivery.url, delivery.event,
                                   delivery.payload, row.attempts + 1))
    return claimed


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None


def send(ctx: WorkerContext, claimed: Claimed, client: httpx.Client) -> Outcome:
    """One attempt: re-check the URL, sign the stored body with the owner's current secret, POST it to
    the checked address."""
    settings = ctx.settings
    try:
        target = webhook_urls.check(claimed.url, allow_private=settings.webhook_allow_private)
    except webhook_urls.WebhookUrlError as exc:
        return Outcome(False, error=f"refused: {exc}")
    assert target is not None
    with ctx.session() as session:
        key = webhooks.secret_for(session, claimed.owner).secret
    body = claimed.payload.encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Host": target.host_header,
               webhooks.SIGNATURE_HEADER: webhooks.sign(key, body), webhooks.EVENT_HEADER: claimed.event,
               webhooks.DELIVERY_HEADER: claimed.id, webhooks.ATTEMPT_HEADER: str(claimed.attempt)}
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        response = client.post(target.connect_url, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= response.status_code < 300:
        return Outcome(True, response.status_code)
    return Outcome(False, response.status_code, f"the receiver answered HTTP {response.status_code}")


def record(ctx: WorkerContext, claimed: Claimed, outcome: Outcome, now: datetime | None = None) -> str | None:
    """Write the attempt's outcome, unless the attempt is no longer ours (its lease ran out and another
    worker took the next one). Returns the delivery's new state."""
    settings = ctx.settings
    now = now or utcnow()
    values: dict[str, object] = {"lease_expires_at": None, "last_status_code": outcome.status_code,
                                 "last_error": outcome.error}
    if outcome.ok:
        values.update(state=webhooks.DELIVERED, delivered_at=now)
    elif claimed.attempt >= settings.webhook_max_attempts:
        values.update(state=webhooks.FAILED)
    else:
        values.update(next_attempt_at=now + timedelta(seconds=retry_delay_s(settings, claimed.attempt)))
    with ctx.session() as session:
        done = session.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == claimed.id, WebhookDelivery.attempts == claimed.attempt,
            WebhookDelivery.state == webhooks.PENDING).values(**values))
    if done.rowcount != 1:
        return None
    return str(values.get("state", webhooks.PENDING))


def deliver_due(ctx: WorkerContext, client: httpx.Client) -> int:
    """One pass; returns how many attempts were made."""
    claimed = claim_due(ctx)
    for item in claimed:
        outcome = send(ctx, item, client)
        state = record(ctx, item, outcome)
        if outcome.ok:
            log.info("webhook %s (%s) delivered on attempt %d", item.id, item.event, item.attempt)
        else:
            log.warning("webhook %s (%s) attempt %d failed: %s%s", item.id, item.event, item.attempt,
                        outcome.error, "; giving up" if state == webhooks.FAILED else "")
    return len(claimed)


class Deliverer:
    """The thread. A pass that fails (database away) is retried at the next poll."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.interval_s = ctx.settings.webhook_poll_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        timeout = ctx.settings.webhook_timeout_s
        self.client = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False)

    def start(self) -> Deliverer:
        self._thread = threading.Thread(target=self._loop, name="glai-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                deliver_due(self.ctx, self.client)
            except Exception:  # noqa: BLE001 - a database hiccup: the rows wait for the next pass
                log.exception("webhook delivery pass failed")
            if self._stop.wait(self.interval_s):
                return
