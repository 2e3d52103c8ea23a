"""Webhook notifications: the owner's signing secret, the delivery row written with every final state,
and the signature a receiver checks.

A delivery is created by ``glai_common.states.transition`` in the same transaction that makes a job
succeeded, failed or cancelled, whoever does it (the worker, a reaper, the API cancelling a queued job).
So a notification is never lost between "the job is final" and "someone meant to tell the owner": if the
process dies right after the commit, the row is there for any worker to send (``worker.webhooks``).

Signature (header ``GLAI-Signature``): ``t=<unix seconds>,v1=<hex>`` where ``hex`` is
HMAC-SHA256(secret, ``"<t>." + body``). The receiver recomputes it over the raw body and refuses stale
``t`` values; ``verify`` does exactly that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from glai_common.models import Job, WebhookDelivery, WebhookSecret, new_id, utcnow

SIGNATURE_HEADER = "GLAI-Signature"
EVENT_HEADER = "GLAI-Event"
DELIVERY_HEADER = "GLAI-Delivery"
ATTEMPT_HEADER = "GLAI-Attempt"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
DELIVERY_STATES = (PENDING, DELIVERED, FAILED)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()


def secret_for(session: Session, owner: str) -> WebhookSecret:
    """The owner's secret, created on first use. Commits (on its own, before any other write of the
    caller's): of two racing creators the second reads the first's."""
    row = session.get(WebhookSecret, owner)
    if row is not None:
        return row
    session.add(WebhookSecret(owner=owner, secret=_new_secret()))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
    row = session.get(WebhookSecret, owner, populate_existing=True)
    assert row is not None
    return row


def rotate_secret(session: Session, owner: str) -> WebhookSecret:
    """A new secret, committed; deliveries from now on (retries included) are signed with it."""
    row = secret_for(session, owner)
    row.secret = _new_secret()
    row.created_at = utcnow()
    session.commit()
    return row


def _new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def payload_of(job: Job, event: str, delivery_id: str) -> dict[str, Any]:
    """What the receiver gets: the job as it ended (no spec, no history: GET the job for those)."""
    return {
        "event": event,
        "delivery_id": delivery_id,
        "job": {
            "id": job.id, "name": job.name, "tags": list(job.tags or []), "dataset_id": job.dataset_id,
            "queue": job.queue, "priority": job.priority, "state": job.state,
            "failure_kind": job.failure_kind, "failure_message": job.failure_message,
            "attempts": job.attempts, "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at), "summary": job.summary or {},
            "url": f"/v1/jobs/{job.id}",
        },
    }


def record_final(session: Session, job: Job) -> WebhookDelivery | None:
    """Called by ``transition`` once ``job`` is final: a pending delivery if the job asked for one."""
    if not job.webhook_url:
        return None
    delivery_id = new_id()
    event = f"job.{job.state}"
    body = json.dumps(payload_of(job, event, delivery_id), sort_keys=True, separators=(",", ":"),
                      default=str)
    delivery = WebhookDelivery(id=delivery_id, job_id=job.id, owner=job.owner, url=job.webhook_url,
                               event=event, payload=body, state=PENDING, attempts=0,
                               next_attempt_at=utcnow())
    session.add(delivery)
    return delivery


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``GLAI-Signature`` header value for ``body``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its time is within ``tolerance_s``."""
    fields: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError, IndexError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def deliveries_of(session: Session, job_id: str) -> list[WebhookDelivery]:
    stmt = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    return list(session.scalars(stmt.order_by(WebhookDelivery.created_at)))
