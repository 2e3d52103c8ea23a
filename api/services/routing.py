"""Where a job runs and whom it tells: its queue (one of the deployment's pools) and its webhook URL.

The schema has already checked the shapes (a queue name's pattern, the URL's scheme and host); what
depends on the deployment is checked here, each a 422 naming the field, before anything is stored.
"""

from __future__ import annotations

from api.errors import ApiError
from api.schemas import JobCreate
from glai_common import webhook_urls
from glai_common.settings import Settings


def queue_of(body: JobCreate, settings: Settings) -> str:
    """The named pool, or the default one (the first of GLAI_QUEUES)."""
    if body.queue is None:
        return settings.queues[0]
    if body.queue not in settings.queues:
        raise ApiError(422, f"queue: unknown queue {body.queue!r}; this deployment runs "
                            f"{', '.join(settings.queues)} (GLAI_QUEUES)", "queue")
    return body.queue


def webhook_url_of(body: JobCreate, settings: Settings) -> str | None:
    """The webhook URL, if one was given and the service may call it (its host resolved and checked)."""
    if body.notify is None:
        return None
    url = body.notify.webhook_url
    try:
        webhook_urls.check(url, allow_private=settings.webhook_allow_private, resolve_host=False)
    except webhook_urls.WebhookUrlError as exc:
        raise ApiError(422, f"notify.webhook_url: {exc}", "notify.webhook_url") from None
    return url
