"""Helpers of the live-event tests: publish events as the engine does, and wait for subscriptions."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from pathlib import Path

import pytest
import redis
from django.conf import settings

from flows import events
from jobs.vocabulary import FlowEvent

SUBSCRIBE_TIMEOUT = 5.0

try:
    from channels.testing import WebsocketCommunicator
except ModuleNotFoundError as missing:
    if missing.name != "daphne":
        raise
    # channels.testing's __init__ also imports its live-server test case, which needs
    # daphne (not installed here); load the package without it to get the communicator.
    import channels

    _package = types.ModuleType("channels.testing")
    _package.__path__ = [str(Path(channels.__file__).parent / "testing")]
    sys.modules["channels.testing"] = _package
    from channels.testing.websocket import WebsocketCommunicator

__all__ = ["WebsocketCommunicator", "publish", "until_subscribed", "wait_subscribed"]


def publish(flow, seq: int, name: FlowEvent = FlowEvent.UPDATED, *, broadcast: bool = True, **data) -> None:
    """Publish one event of ``flow`` through ``flows.events``, as the engine does after a commit."""
    payload = {"flowId": flow.pk, "seq": seq, **data}
    events.publish([events.Event(name=name, data=payload, flow_id=flow.pk, owner_id=flow.owner_id, broadcast=broadcast)])


def _unsubscribed(groups: tuple[str, ...]) -> list[str]:
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    channels = [f"{config['prefix']}__group__{group}" for group in groups]
    client = redis.Redis.from_url(config["hosts"][0])
    try:
        counts = dict(client.pubsub_numsub(*channels))
    finally:
        client.close()
    return [group for group, channel in zip(groups, channels) if not counts.get(channel.encode())]


def wait_subscribed(*groups: str, timeout: float = SUBSCRIBE_TIMEOUT) -> None:
    """Wait until some process listens to every group in Redis (a publish then reaches it)."""
    deadline = time.monotonic() + timeout
    while missing := _unsubscribed(groups):
        if time.monotonic() > deadline:
            pytest.fail(f"Nobody subscribed to {missing} within {timeout}s")
        time.sleep(0.02)


async def until_subscribed(*groups: str, timeout: float = SUBSCRIBE_TIMEOUT) -> None:
    """``wait_subscribed`` for async tests."""
    deadline = time.monotonic() + timeout
    while missing := _unsubscribed(groups):
        if time.monotonic() > deadline:
            pytest.fail(f"Nobody subscribed to {missing} within {timeout}s")
        await asyncio.sleep(0.02)
