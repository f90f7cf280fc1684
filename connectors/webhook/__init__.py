"""Alarm webhook: POST every alarm event (JSON, HMAC-SHA256 signed) to an HTTP endpoint.

A notifier, not a series sink: ``collector.notify.WebhookNotifier`` drains the
outbox stream through :class:`WebhookClient`. Receivers verify requests with
:func:`verify_signature`.
"""

from connectors.webhook.client import WebhookClient, sign, verify_signature
from connectors.webhook.config import WebhookConfig

__all__ = ["WebhookClient", "WebhookConfig", "sign", "verify_signature"]
