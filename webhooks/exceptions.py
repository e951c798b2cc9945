"""Webhook errors, mapped to the API's error shape by ``flowsite.api``."""

from jobs.exceptions import FlowsiteError, SpecValidationError


class WebhookTargetRefused(SpecValidationError):
    """A webhook URL the SSRF guard refuses (400, naming the reason under ``url``)."""


class WebhookInactive(FlowsiteError):
    """An action that needs an active webhook (409)."""
