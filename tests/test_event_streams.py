"""The per-connection order and deduplication of live events (flows/streams.py), without a server."""

from __future__ import annotations

import asyncio

import pytest

from flows.events import MESSAGE_TYPE
from flows.streams import HOLD_SECONDS, EventStream, FlowEventOrder
from jobs.vocabulary import FlowEvent


def message(seq: int | None, *, flow: str = "f1", name: FlowEvent = FlowEvent.UPDATED) -> dict:
    data = {"flowId": flow, "status": "running"}
    if seq is not None:
        data["seq"] = seq
    return {"type": MESSAGE_TYPE, "event": str(name), "data": data}


def seqs(messages: list[dict]) -> list[int]:
    return [m["data"]["seq"] for m in messages]


def test_events_in_order_go_out_at_once():
    order = FlowEventOrder()
    assert seqs(order.push(message(1), 0.0)) == [1]
    assert seqs(order.push(message(2), 0.0)) == [2]
    assert order.next_deadline() is None


def test_a_duplicate_is_delivered_once():
    order = FlowEventOrder()
    assert seqs(order.push(message(1), 0.0)) == [1]
    assert order.push(message(1), 0.0) == []
    assert seqs(order.push(message(2), 0.0)) == [2]
    assert order.push(message(2), 0.1) == []


def test_a_duplicate_of_a_held_event_is_held_once():
    order = FlowEventOrder()
    order.push(message(1), 0.0)
    assert order.push(message(3), 0.0) == []
    assert order.push(message(3), 0.0) == []
    assert seqs(order.push(message(2), 0.1)) == [2, 3]


def test_a_later_event_waits_for_the_missing_one():
    order = FlowEventOrder()
    order.push(message(1), 0.0)
    assert order.push(message(3), 10.0) == []
    assert order.push(message(4), 10.1) == []
    assert order.next_deadline() == pytest.approx(10.0 + HOLD_SECONDS)
    assert seqs(order.push(message(2), 10.2)) == [2, 3, 4]
    assert order.next_deadline() is None


def test_a_gap_that_never_fills_is_given_up_after_the_hold():
    order = FlowEventOrder(hold=0.3)
    order.push(message(1), 0.0)
    order.push(message(4), 1.0)
    order.push(message(3), 1.1)
    assert order.due(1.29) == []
    assert seqs(order.due(1.3)) == [3, 4]
    # The missing event arriving late is old news: the client already saw the gap.
    assert order.push(message(2), 1.4) == []
    assert seqs(order.push(message(5), 1.5)) == [5]


def test_an_unknown_flow_starts_at_seq_one_or_waits_for_earlier_events():
    order = FlowEventOrder(hold=0.3)
    assert seqs(order.push(message(1, flow="new"), 0.0)) == [1]
    # A flow first heard of in the middle may have earlier events still on their way.
    assert order.push(message(8, flow="old"), 0.0) == []
    assert seqs(order.push(message(7, flow="old"), 0.1)) == []
    assert seqs(order.due(0.3)) == [7, 8]


def test_expect_starts_a_flow_after_its_seq_at_subscription():
    order = FlowEventOrder()
    order.expect("f1", 5)
    assert order.push(message(5), 0.0) == []  # already included when the client subscribed
    assert seqs(order.push(message(6), 0.0)) == [6]
    order.expect("f1", 2)  # a flow already heard of keeps its order
    assert seqs(order.push(message(7), 0.0)) == [7]


def test_another_event_with_the_same_seq_is_not_a_duplicate():
    order = FlowEventOrder()
    order.push(message(1), 0.0)
    assert seqs(order.push(message(1, name=FlowEvent.JOB_UPDATED), 0.0)) == [1]
    assert order.push(message(1, name=FlowEvent.JOB_UPDATED), 0.0) == []


def test_flows_are_ordered_independently():
    order = FlowEventOrder()
    order.push(message(1, flow="a"), 0.0)
    order.push(message(1, flow="b"), 0.0)
    assert order.push(message(3, flow="a"), 0.0) == []
    assert seqs(order.push(message(2, flow="b"), 0.0)) == [2]
    assert seqs(order.push(message(2, flow="a"), 0.0)) == [2, 3]


def test_events_without_a_seq_pass_through():
    order = FlowEventOrder()
    assert len(order.push(message(None), 0.0)) == 1
    assert len(order.push(message(None), 0.0)) == 1
    assert order.push({"type": MESSAGE_TYPE, "event": "x", "data": "not an object"}, 0.0)


def test_a_forgotten_flow_releases_what_it_held():
    order = FlowEventOrder(max_flows=2)
    order.push(message(1, flow="a"), 0.0)
    order.push(message(3, flow="a"), 0.0)
    order.push(message(1, flow="b"), 0.0)
    released = order.push(message(1, flow="c"), 0.0)  # "a" is the least recently heard
    assert [(m["data"]["flowId"], m["data"]["seq"]) for m in released] == [("a", 3), ("c", 1)]
    assert order.next_deadline() is None


@pytest.mark.anyio
async def test_event_stream_releases_a_held_event_when_the_hold_is_over():
    frames: list[dict] = []
    two_frames = asyncio.Event()

    async def send(frame: dict) -> None:
        frames.append(frame)
        if len(frames) == 2:
            two_frames.set()

    stream = EventStream(send, hold=0.05)
    await stream.push(message(1))
    await stream.push(message(3))
    assert [f["data"]["seq"] for f in frames] == [1]
    assert set(frames[0]) == {"event", "data"}
    await asyncio.wait_for(two_frames.wait(), timeout=2)
    assert [f["data"]["seq"] for f in frames] == [1, 3]
    await stream.push(message(2))  # late: dropped
    await stream.push(message(4))
    assert [f["data"]["seq"] for f in frames] == [1, 3, 4]
    await stream.close()


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_repeated_events_with_one_seq_but_new_data_all_go_out():
    # Subscriber-only progress events may carry the seq of the change they follow.
    order = FlowEventOrder()
    order.push(message(1), 0.0)
    first, second = message(1, name=FlowEvent.JOB_PROGRESS), message(1, name=FlowEvent.JOB_PROGRESS)
    first["data"]["percentage"], second["data"]["percentage"] = 10, 20
    assert order.push(first, 0.0) == [first]
    assert order.push(second, 0.0) == [second]
    assert order.push(dict(second), 0.0) == []  # the same message through a second group
