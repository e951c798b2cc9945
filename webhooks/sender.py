"""One webhook POST, to the address the SSRF guard checked.

urllib3 connects to ``Target.address`` (an IP) while the ``Host`` header, TLS SNI
and certificate check name the URL's host: the name is resolved once, by
``webhooks.ssrf.check_target``, and nothing resolves it again behind our back.
Redirects are not followed, and nothing is retried here (``webhooks.services``
owns the retry schedule).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import urllib3
from django.conf import settings

from webhooks.ssrf import Target

# How much of a response body is kept in the delivery log.
RESPONSE_BODY_LIMIT = 2_000
USER_AGENT = "Flowsite-Webhooks/1.0"


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave: an HTTP status (None if there was no answer) or an error."""

    status: int | None
    body: str
    duration_ms: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(target: Target, *, body: bytes, headers: dict[str, str]) -> Outcome:
    """POST ``body`` to ``target``; never raises for network or HTTP failures."""
    timeout = urllib3.Timeout(
        connect=settings.FLOWSITE_WEBHOOK_CONNECT_TIMEOUT, read=settings.FLOWSITE_WEBHOOK_READ_TIMEOUT
    )
    options = {"timeout": timeout, "retries": False, "maxsize": 1}
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target.address, target.port, server_hostname=target.host, assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED", **options,
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, **options)
    request_headers = {
        **headers, "Host": target.host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT,
    }
    started = time.monotonic()
    try:
        response = pool.urlopen(
            "POST", target.path, body=body, headers=request_headers, redirect=False, retries=False,
            assert_same_host=False, preload_content=False,
        )
        try:
            text = response.read(RESPONSE_BODY_LIMIT, decode_content=False).decode("utf-8", "replace")
        finally:
            response.release_conn()
        outcome = Outcome(status=response.status, body=text, duration_ms=_since(started))
        if 300 <= response.status < 400:
            location = response.headers.get("Location", "")
            return Outcome(outcome.status, outcome.body, outcome.duration_ms,
                           error=f"HTTP {response.status}: redirects are not followed (Location: {location[:200]})")
        if not outcome.ok:
            return Outcome(outcome.status, outcome.body, outcome.duration_ms, error=f"HTTP {response.status}")
        return outcome
    except urllib3.exceptions.ReadTimeoutError:
        return Outcome(None, "", _since(started), error=f"No answer within {timeout.read_timeout} s (read timeout)")
    except urllib3.exceptions.NewConnectionError as exc:  # a subclass of ConnectTimeoutError: first
        return Outcome(None, "", _since(started), error=f"Could not connect: {_reason(exc)}")
    except urllib3.exceptions.ConnectTimeoutError:
        return Outcome(None, "", _since(started), error=f"Could not connect within {timeout.connect_timeout} s")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return Outcome(None, "", _since(started), error=f"{type(exc).__name__}: {_reason(exc)}")
    finally:
        pool.close()


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)[:500]
