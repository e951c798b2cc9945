"""Helpers of the live-event tests: publish events as the engine does, and wait for subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
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

__all__ = ["WebsocketCommunicator", "LiveServer", "publish", "run_server", "until_subscribed", "wait_subscribed"]

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT = 60.0


def publish(flow, seq: int, name: FlowEvent = FlowEvent.UPDATED, *, broadcast: bool = True, **data) -> None:
    """Publish one event of ``flow`` through ``flows.events``, as the engine does after a commit.

    Through ``publish_now``: a made-up event must not start the coalesced
    ``flow:updated`` of a flow whose rows did not change (it would take a number).
    """
    payload = {"flowId": flow.pk, "seq": seq, **data}
    events.publish_now([events.Event(name=name, data=payload, flow_id=flow.pk, owner_id=flow.owner_id, broadcast=broadcast)])


def unsubscribed_groups(groups: tuple[str, ...]) -> list[str]:
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
    while missing := unsubscribed_groups(groups):
        if time.monotonic() > deadline:
            pytest.fail(f"Nobody subscribed to {missing} within {timeout}s")
        time.sleep(0.02)


async def until_subscribed(*groups: str, timeout: float = SUBSCRIBE_TIMEOUT) -> None:
    """``wait_subscribed`` for async tests."""
    deadline = time.monotonic() + timeout
    while missing := unsubscribed_groups(groups):
        if time.monotonic() > deadline:
            pytest.fail(f"Nobody subscribed to {missing} within {timeout}s")
        await asyncio.sleep(0.02)


# A REAL SERVER
# ------------------------------------------------------------------------------


class LiveServer:
    """A running ``manage.py up``: its address and its log (stdout and stderr)."""

    def __init__(self, port: int, log_path: Path, env: dict[str, str]) -> None:
        self.port = port
        self.env = env  # the server's environment, for manage.py commands on its data
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def run_server(env: dict[str, str], directory: Path, *, worker: bool = False) -> Iterator[LiveServer]:
    """Start ``manage.py up`` (one web process) at a free port; stop it afterwards.

    Without ``worker`` the server runs none (``--no-worker``); with it, embedded mode
    runs its worker in the server process, as ``./scripts/run`` does.
    """
    env = {**env, "FLOWSITE_DATA_DIR": str(directory)}
    server = LiveServer(free_port(), directory / "server.log", env)
    with open(server.log_path, "w") as log:
        process = subprocess.Popen(
            # No webhooks worker: webhook tests start theirs, with their own settings.
            [sys.executable, "manage.py", "up", *([] if worker else ["--no-worker"]), "--no-beat",
             "--no-webhook-worker", "--workers", "1",
             "--port", str(server.port), "--admin-user", "live-server-admin"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while not _healthy(server.url):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"The server did not start:\n{server.log()}")
                time.sleep(0.1)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
