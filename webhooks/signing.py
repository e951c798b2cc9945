"""Standard Webhooks signatures (https://www.standardwebhooks.com), by the ``standardwebhooks`` library.

Every delivery carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed
with the webhook's secret (``whsec_`` + base64). Receivers written in Python verify
with ``verify_signature`` (it needs only ``standardwebhooks``, not Django).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from standardwebhooks.webhooks import Webhook as _Signer
from standardwebhooks.webhooks import WebhookVerificationError


class InvalidSignature(ValueError):
    """A request whose signature, id or timestamp does not check out."""


def signature_headers(*, secret: str, message_id: str, body: str, at: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers of a request with this body, signed now (or ``at``)."""
    at = at or datetime.now(timezone.utc)
    signature = _Signer(secret).sign(msg_id=message_id, timestamp=at, data=body)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes | str) -> Any:
    """Check a delivery received from Flowsite; return its parsed JSON body.

    ``headers``: the request's headers (any case); ``body``: the raw body, exactly
    as received. Raises ``InvalidSignature`` if a header is missing, the signature
    does not match, or the timestamp is more than 5 minutes away from now (a
    replay). Receivers should also drop a ``webhook-id`` they have already handled.
    """
    try:
        return _Signer(secret).verify(body, dict(headers))
    except (WebhookVerificationError, ValueError) as exc:
        raise InvalidSignature(str(exc) or "Invalid signature") from None
