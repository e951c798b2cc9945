"""The one event point: every public flow event is built and published here.

The engine and the services call the ``*_event`` builders after their state
changes; the events go out after the database commit, from whichever process
made the change (web process, worker, embedded worker). Consumers of the events
(the Channels websocket consumers, the Socket.IO endpoint, the admin console)
receive them through the channel layer and never build payloads or group names
themselves.

Delivery:

- Service mode uses channels-redis's pub/sub layer. Sync code (a worker) does not
  pay an event loop per event: the events of one transaction go out in one Redis
  pipeline of ``PUBLISH`` commands, in the layer's own wire format, and every web
  process receives them for the groups its consumers joined.
- Embedded mode uses the in-memory layer of the server process. Events made in
  that process (the API, the embedded worker) reach its consumers; events made in
  another process (``manage.py submit_flow`` from a second terminal) do not (see
  README "Live events").

Webhooks must not lose an event: the events they want are recorded *inside* the
transaction of each change by a recorder (``add_recorder``, see "RECORDERS" below
and ``webhooks.recording``), not from the after-commit path, and whether or not
anybody listens here.

Events are notifications; the database is the truth. Each event's ``data``
carries ``seq``, the flow's event sequence number (``Flow.event_seq``), taken in
the same transaction as the change it reports, so for one flow the numbers follow
commit order without holes. A client that sees a gap asks for a snapshot.

With nobody connected (no live connection in any web process, no second
consumer) the engine neither numbers nor publishes events: see ``live()`` and
"WHO IS LISTENING" below.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from jobs.selectors import error_payload, iso
from jobs.vocabulary import FINAL_FLOW_STATUSES, FlowEvent, FlowStatus, JobStatus

logger = logging.getLogger(__name__)

# Channel-layer message type of every event (handled by ``flow_event`` on consumers).
MESSAGE_TYPE = "flow.event"
# The consumers of everyone who sees every flow join this group (superusers, staff with
# flows.view_flow: accounts.permissions).
STAFF_GROUP = "flows.staff"


def flow_group(flow_id: str) -> str:
    """The group of one flow's subscribers (``/ws/flows/{flowId}/``, ``subscribe``)."""
    return f"flows.flow.{flow_id}"


def user_group(user_id: int) -> str:
    """The group of every connection of one user that watches all their flows."""
    return f"flows.user.{user_id}"


def legacy_room(flow_id: str) -> str:
    """The Socket.IO room of one flow, as the legacy service named it."""
    return f"flow:{flow_id}"


@dataclass(frozen=True)
class Event:
    """One public event: its name, its payload, and who may hear it.

    ``broadcast`` events go to the flow's owner and to staff as well as to the
    flow's own subscribers; the others (``flow:progress``) only to the latter.
    """

    name: FlowEvent
    data: dict[str, Any]
    flow_id: str
    owner_id: int
    broadcast: bool = True

    def message(self) -> dict[str, Any]:
        """The channel-layer message; ``text`` is the client frame, encoded once for every client."""
        event = str(self.name)
        text = json.dumps({"event": event, "data": self.data}, separators=(",", ":"), default=str)
        return {"type": MESSAGE_TYPE, "event": event, "data": self.data, "text": text}

    def groups(self) -> list[str]:
        if not self.broadcast:
            return [flow_group(self.flow_id)]
        return [flow_group(self.flow_id), user_group(self.owner_id), STAFF_GROUP]


def client_frame(message: dict[str, Any]) -> dict[str, Any]:
    """The frame a websocket client receives for a channel-layer event message."""
    return {"event": message["event"], "data": message["data"]}


# TRANSPORT
# ------------------------------------------------------------------------------


# How long the publishing thread lets events gather between two writes to Redis.
PUBLISH_GATHER_SECONDS = 0.002


class _RedisPublisher:
    """Publishes group messages from sync code, in the pub/sub layer's wire format.

    ``RedisPubSubChannelLayer.group_send`` is ``PUBLISH {prefix}__group__{group}
    <serialized message>``; doing the same from a plain Redis client costs a
    pipelined ``PUBLISH`` (about 0.01 ms) instead of an event loop per event.

    The caller does not wait for Redis: ``send`` queues the messages and one thread
    per process publishes whatever has queued, in order, one pipeline (one round
    trip) at a time. Waiting for each reply cost a worker 0.2 ms per transition, a
    fifth of a job; the thread batches the events of many transitions under load.
    Events are numbered by the database in commit order, so a client puts events
    from different processes back in order (``flows.streams``) whatever their delay.
    """

    def __init__(self) -> None:
        import redis
        from channels.layers import get_channel_layer

        config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
        self.prefix = config["prefix"]
        self.layer = get_channel_layer()
        self.client = redis.Redis.from_url(config["hosts"][0])
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._busy = False
        self._conn = None

    def send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        import os

        with self._wake:
            was_empty = not self._queue
            self._queue.extend(batch)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()  # a forked worker process starts its own thread and connection
                self._conn = None
                self._thread = threading.Thread(target=self._run, name="flowsite-events", daemon=True)
                self._thread.start()
            if was_empty:
                self._wake.notify_all()  # only a sleeping thread needs waking (flush() waits here too)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued message has been handed to Redis; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                self._publish(batch)
            except Exception as exc:
                logger.warning("Could not publish %d flow event messages: %s: %s", len(batch), type(exc).__name__, exc)
                logger.debug("Publishing flow events failed", exc_info=True)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()
            # Let the events of the next few transitions gather: one write, and one
            # wake-up of this thread, for all of them.
            time.sleep(PUBLISH_GATHER_SECONDS)

    def _publish(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        encoded: dict[int, bytes] = {}  # a message sent to several groups is serialized once
        commands = []
        for group, message in batch:
            if id(message) not in encoded:
                encoded[id(message)] = self.layer.serialize(message)
            commands.append(("PUBLISH", f"{self.prefix}__group__{group}", encoded[id(message)]))
        connection = self._connection()
        try:
            connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        except Exception:
            self._conn = None
            connection.disconnect()
            raise

    def _connection(self):
        """This thread's own Redis connection, on which Redis sends no replies.

        ``PUBLISH`` answers with a number of receivers that nobody here reads: with
        ``CLIENT REPLY OFF`` the thread only writes, one system call per batch, and
        neither it nor Redis spends time on answers. (The redis-py pipeline that
        read them cost a worker a fifth of its throughput.)
        """
        if self._conn is None:
            connection = self.client.connection_pool.make_connection()
            connection.connect()
            connection.send_command("CLIENT", "REPLY", "OFF", check_health=False)
            self._conn = connection
        return self._conn

    def listening(self, groups: set[str]) -> set[str]:
        """The groups that have a subscriber in some web process."""
        ordered = sorted(groups)
        if not ordered:
            return set()
        counts = self.client.pubsub_numsub(*(f"{self.prefix}__group__{group}" for group in ordered))
        return {group for group, (_, n) in zip(ordered, counts) if n}


class _LocalPublisher:
    """Hands group messages to the in-memory layer on the server's event loop (embedded mode).

    The in-memory layer is not thread-safe: messages from worker threads are
    scheduled onto the loop that serves the consumers, in order.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return  # no consumer in this process: nobody to tell
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(_send_all(batch))
        else:
            asyncio.run_coroutine_threadsafe(_send_all(batch), loop)

    def listening(self, groups: set[str]) -> set[str]:
        from channels.layers import get_channel_layer

        if self.loop is None:
            return set()
        joined = getattr(get_channel_layer(), "groups", {})
        return {group for group in groups if joined.get(group)}


async def _send_all(batch: list[tuple[str, dict[str, Any]]]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    for group, message in batch:
        await layer.group_send(group, message)


_publisher: _RedisPublisher | _LocalPublisher | None = None
_publisher_lock = threading.Lock()


def _get_publisher() -> _RedisPublisher | _LocalPublisher:
    global _publisher
    if _publisher is None:
        with _publisher_lock:
            if _publisher is None:
                _publisher = _LocalPublisher() if settings.EMBEDDED else _RedisPublisher()
    return _publisher


def flush_published(timeout: float = 5.0) -> bool:
    """Wait until this process's published events have left for Redis (service mode)."""
    publisher = _get_publisher()
    return publisher.flush(timeout) if isinstance(publisher, _RedisPublisher) else True


atexit.register(flush_published, 2.0)


def serve_here(loop: asyncio.AbstractEventLoop) -> None:
    """Declare that this process's consumers run on ``loop`` (embedded mode; no-op otherwise).

    Consumers call it when they connect, so the embedded worker's threads know
    where to hand their events.
    """
    publisher = _get_publisher()
    if isinstance(publisher, _LocalPublisher):
        publisher.loop = loop


Sink = Callable[[list[Event]], None]
# Consumers of events besides the channel layer (webhooks): each gets every batch.
_sinks: list[Sink] = []


def add_sink(sink: Sink) -> None:
    """Also hand every published batch of events to ``sink`` (called after commit, in order)."""
    if sink not in _sinks:
        _sinks.append(sink)


# RECORDERS
# ------------------------------------------------------------------------------
# Consumers that must not lose an event (webhook deliveries) write it to the
# database *inside the transaction of the change*, not after its commit, numbered
# or not. Each recorder has:
#
# - ``armed(name, status)``: a cheap cached flag, whether it may want events of that
#   name (for ``flow:job:updated``, of that new job status; None: any event). While
#   none is armed a change pays that flag read and nothing else;
# - ``record(events)``: writes what it wants of a change's events, in its transaction,
#   and returns how many records it wrote;
# - ``sql_arm(source)``: the same as one arm of a ``WITH`` statement, reading the job
#   status changes of the CTE ``source`` (columns ``RECORDED_JOB_COLUMNS``), so that
#   the engine's one-statement transitions stay one statement (``jobs.transitions``);
# - ``after_commit()``: runs after the commit of a change of which it wrote records.
Recorder = Callable[[list[Event]], int]
Armed = Callable[[FlowEvent | None, str | None], bool]
SqlArm = Callable[[str], str]
# What a statement hands to ``sql_arm``: one row per job status change, ``data`` being
# the ``flow:job:updated`` payload (``job_updated_data``) and ``status`` the new status.
RECORDED_JOB_COLUMNS = ("flow_id", "job_id", "queue_name", "data", "status")
_recorders: list[tuple[Recorder, Armed, SqlArm, Callable[[], None]]] = []


_recorder_progress_intervals: list[float] = []


def add_recorder(
    recorder: Recorder, *, armed: Armed, sql_arm: SqlArm, after_commit: Callable[[], None],
    progress_interval: float | None = None,
) -> None:
    """Hand the events of every change to ``recorder`` inside its transaction, while ``armed``.

    ``progress_interval``: while nobody listens live, the coalesced flow progress that
    only recorders want is summed up at most this often per flow (seconds; at least
    ``FLOW_UPDATE_INTERVAL``).
    """
    if all(recorder is not known for known, *_ in _recorders):
        _recorders.append((recorder, armed, sql_arm, after_commit))
        if progress_interval is not None:
            _recorder_progress_intervals.append(progress_interval)


def recording(name: FlowEvent | None = None, status: str | None = None) -> bool:
    """Whether some recorder wants such events now: read once, at the start of the change."""
    return any(armed(name, status) for _, armed, *_ in _recorders)


def record(events: list[Event]) -> None:
    """Give a change's events (numbered or not) to every recorder; call inside the change's transaction."""
    if not events:
        return
    for recorder, _, _, after_commit in _recorders:
        if recorder(events):
            transaction.on_commit(after_commit)
    # A flow's creation is no progress for the recorders: its jobs have not moved yet.
    recorded_progress({event.flow_id for event in events if event.name in _PROGRESS_EVENTS - {FlowEvent.CREATED}})


def recorder_sql_arms(source: str) -> list[str]:
    """The ``WITH`` arms (``rec0 AS (...)``, ...) of every recorder, reading job changes from ``source``.

    Each arm's ``RETURNING`` yields one row per record written.
    """
    return [f"rec{index} AS ({sql_arm(source)})" for index, (_, _, sql_arm, _) in enumerate(_recorders)]


def _after_commit(callback: Callable[[], None]) -> None:
    """``transaction.on_commit``, called at once outside a transaction (the engine's autocommit
    statements: one per job change, where Django's bookkeeping showed in profiles)."""
    if connection.in_atomic_block:
        transaction.on_commit(callback)
    else:
        callback()


def recorded_by_sql(flow_id: str) -> None:
    """After a statement whose recorder arms wrote records of a job change of ``flow_id``."""
    for *_, after_commit in _recorders:
        _after_commit(after_commit)
    recorded_progress({flow_id})


def recorded_progress(flow_ids: set[str]) -> None:
    """After commit, let the coalesced flow progress of these flows reach the recorders that want it.

    When nobody listens (``live()`` off) ``publish`` is not called, so a change whose
    events were recorded says so here.
    """
    if flow_ids and not live() and recording(FlowEvent.PROGRESS):
        _after_commit(lambda: _coalescer.touch(flow_ids))


def _send_to_channel_layer(events: list[Event]) -> None:
    if not live():
        return  # published for the recorders' flow progress only: nobody listens
    batch = [(group, message) for event in events for message in (event.message(),) for group in event.groups()]
    _get_publisher().send(batch)


# A flow's final events: one of them ends its stream.
_FINAL_EVENTS = frozenset({FlowEvent.COMPLETED, FlowEvent.FAILED, FlowEvent.CANCELLED})
# Events after which a flow's progress summary has changed.
_PROGRESS_EVENTS = frozenset({
    FlowEvent.CREATED, FlowEvent.JOB_UPDATED, FlowEvent.COMPLETED, FlowEvent.FAILED, FlowEvent.CANCELLED,
})


def publish_now(events: list[Event]) -> None:
    """Publish events that need no commit (their numbers were taken in a committed transaction)."""
    for sink in (_send_to_channel_layer, *_sinks):
        try:
            sink(events)
        except Exception:
            logger.warning("Could not deliver %d flow events to %s", len(events), sink, exc_info=True)


def publish(events: Iterable[Event]) -> None:
    """Send events now, in order. Call after the commit of the change they report.

    A broken channel layer or sink never breaks the engine: the failure is logged,
    and clients notice the gap in ``seq`` and take a snapshot. Flows whose progress
    changed get a coalesced ``flow:updated`` / ``flow:progress`` (see ``_Coalescer``).
    """
    events = list(events)
    if not events:
        return
    publish_now(events)
    changed = {event.flow_id for event in events if event.name in _PROGRESS_EVENTS}
    if changed:
        _coalescer.touch(changed)


# PAYLOADS
# ------------------------------------------------------------------------------
# Public payloads: camelCase, ISO-8601 times, every one carrying ``flowId`` and ``seq``.


def job_updated_data(
    *, flow_id: str, job_id: str, name: str, queue_name: str, status: str, attempts_made: int,
    result: Any = None, error: str | None = None, error_type: str = "", error_detail: Any = None,
) -> dict[str, Any]:
    """``flow:job:updated``: a job's new status; ``result`` or ``error`` once it finished or failed an attempt.

    ``error`` is the REST error object (``jobs.selectors.error_payload``) and
    ``errorMessage`` its text, as in the job's REST shape.
    """
    data = {
        "flowId": flow_id, "jobId": job_id, "name": name, "queueName": queue_name,
        "jobStatus": status, "attemptsMade": attempts_made,
    }
    if status == JobStatus.COMPLETED:
        data["result"] = result
    elif status in (JobStatus.FAILED, JobStatus.CANCELLED) or error:
        # Also a failed attempt's, on its way to a retry.
        data["error"] = error_payload(error, error_type=error_type, detail=error_detail)
        data["errorMessage"] = error or None
    return data


def _flow_updated_data(flow_id: str, status: str, progress: dict[str, Any], updated_at: Any) -> dict[str, Any]:
    return {"flowId": flow_id, "status": status, "progress": progress, "updatedAt": iso(updated_at)}


def _flow_progress_data(flow_id: str, status: str, progress: dict[str, Any]) -> dict[str, Any]:
    return {"flowId": flow_id, "status": status, "progress": progress}


def flow_final_data(
    *, flow_id: str, status: str, result: Any, error: str, at: Any, error_detail: Any = None
) -> tuple[FlowEvent, dict]:
    """``flow:completed`` / ``flow:failed`` / ``flow:cancelled`` for a flow that reached ``status``.

    ``flow:failed`` carries the flow's REST ``error`` object and ``errorMessage``.
    """
    if status == FlowStatus.COMPLETED:
        return FlowEvent.COMPLETED, {"flowId": flow_id, "result": result, "completedAt": iso(at)}
    if status == FlowStatus.FAILED:
        return FlowEvent.FAILED, {
            "flowId": flow_id, "error": error_payload(error, detail=error_detail), "errorMessage": error or None,
            "failedAt": iso(at),
        }
    return FlowEvent.CANCELLED, {"flowId": flow_id, "cancelledAt": iso(at)}


# SEQUENCE NUMBERS AND SENDING AFTER COMMIT
# ------------------------------------------------------------------------------


def live() -> bool:
    """Whether a change made now numbers and publishes its events.

    On when events are on and somebody may hear them: embedded mode (one process,
    nothing to ask), a second consumer (``add_sink``), or a live connection in some
    web process (``_Gate``). With nobody connected the engine pays one cached flag
    read per transition instead of numbering and publishing events nobody receives.
    Read it once per transaction: the numbering and the publishing of one change
    must agree.
    """
    if not settings.FLOWSITE_EVENTS:
        return False
    if settings.EMBEDDED or _sinks:
        return True
    return _gate.is_open()


# A new flow's first event, ``flow:created``.
FIRST_SEQ = 1


def take_seqs(
    counts: dict[str, int], *, finishing: frozenset[str] | set[str] = frozenset()
) -> dict[str, tuple[int, int, int | None]]:
    """Reserve ``n`` event numbers for each flow; return ``{flow_id: (last seq, owner id, again)}``.

    ``again``: the flow had already reached its final status (a job of a failed flow
    finished afterwards), so its final event must be sent again after these events,
    numbered ``again`` (see ``final_event_again``); None otherwise, and for the flows
    in ``finishing``, whose final event is among these.

    Must run inside the transaction of the change the events report: the flow
    row stays locked until it commits, so numbers follow commit order. Flows are
    locked in id order (no deadlock between two callers). Flows that no longer
    exist are left out. The caller decides whether to number at all (``live()``).
    """
    from django.db.models import F

    from flows.models import Flow

    taken: dict[str, tuple[int, int, int | None]] = {}
    for flow_id in sorted(counts):
        if Flow.objects.filter(pk=flow_id).update(event_seq=F("event_seq") + counts[flow_id]):
            seq, owner_id, status = Flow.objects.filter(pk=flow_id).values_list("event_seq", "owner_id", "status").get()
            again = None
            if status in FINAL_FLOW_STATUSES and flow_id not in finishing:
                Flow.objects.filter(pk=flow_id).update(event_seq=F("event_seq") + 1)
                again = seq + 1
            taken[flow_id] = (seq, owner_id, again)
    return taken


def final_event_again(flow_id: str, seq: int) -> Event | None:
    """A closed flow's final event once more, numbered ``seq``, after a later job event.

    A job can still change once its flow has failed (a sibling that was running
    finishes); clients are promised that ``flow:completed``/``flow:failed`` comes
    after the last ``flow:job:updated`` of the flow, so it is told again.
    """
    event = _final_event(flow_id)
    if event is not None:
        event.data["seq"] = seq
    return event


def flow_created(flow: Any, jobs: list[Any]) -> None:
    """Publish ``flow:created`` after the commit that created ``flow`` with ``jobs``: its event 1.

    The payload is the flow as ``GET /api/flows/{flowId}`` shows it, built from the
    rows just written rather than read back (no query). Its number needs no lock:
    the flow is created with ``event_seq = 1`` and nobody sees it before the commit.
    """
    from collections import Counter

    from flows import selectors
    from jobs.selectors import JOB_STATE_FIELDS

    if recording(FlowEvent.CREATED):
        record([Event(name=FlowEvent.CREATED, data={"flowId": flow.pk, "status": flow.status}, flow_id=flow.pk,
                      owner_id=flow.owner_id)])
    if not flow.event_seq:
        return  # created unnumbered: nobody was listening (``flows.services.flow_create``)
    row = {field: getattr(flow, field) for field in selectors.FLOW_FIELDS}
    ordered = sorted(jobs, key=lambda job: (job.created_at, job.position, job.pk))  # as selectors.flow_jobs
    body = selectors.flow_detail_payload(
        row=row, counts=Counter(job.status for job in jobs), structure=flow.job_structure,
        job_rows=[{field: getattr(job, field) for field in JOB_STATE_FIELDS} for job in ordered],
    )
    body["seq"] = FIRST_SEQ
    event = Event(name=FlowEvent.CREATED, data=body, flow_id=flow.pk, owner_id=flow.owner_id)
    transaction.on_commit(lambda: publish([event]))


def _final_event(flow_id: str) -> Event | None:
    """The final event of a flow that has reached a final status, numbered with its current ``seq``."""
    from flows.models import Flow

    row = Flow.objects.filter(pk=flow_id).values(
        "status", "result", "error", "error_detail", "completed_at", "event_seq", "owner_id"
    ).first()
    if row is None:
        return None
    name, data = flow_final_data(
        flow_id=flow_id, status=row["status"], result=row["result"], error=row["error"], at=row["completed_at"],
        error_detail=row["error_detail"],
    )
    data["seq"] = row["event_seq"]
    return Event(name=name, data=data, flow_id=flow_id, owner_id=row["owner_id"])


def flow_settled(flow_id: str, *, numbered: bool = True) -> None:
    """Record, and publish after commit, the final event of a flow just settled.

    ``flows.status.flow_settle(numbered=True)`` took the number in the update that
    settled the flow, in this transaction: one read builds the event. Unnumbered
    (nobody listens), it is only recorded.
    """
    event = _final_event(flow_id)
    if event is None:
        return
    if recording(event.name):
        record([event])
    if numbered:
        transaction.on_commit(lambda: publish([event]))


class Outbox:
    """The events of one transaction: numbered inside it, published after its commit.

    Add events while making the changes, then ``close()`` before the transaction
    ends::

        with transaction.atomic():
            outbox = events.Outbox()
            ...change rows; outbox.add(flow_id, FlowEvent.JOB_UPDATED, data)...
            outbox.close()
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, FlowEvent, dict[str, Any], bool]] = []
        self.live = live()  # once for the whole transaction
        self.recording = recording()

    def add(self, flow_id: str | None, name: FlowEvent, data: dict[str, Any], *, broadcast: bool = True) -> None:
        if flow_id and (self.live or self.recording):
            self._items.append((flow_id, name, data, broadcast))

    def job_updated(self, **fields: Any) -> None:
        self.add(fields["flow_id"], FlowEvent.JOB_UPDATED, job_updated_data(**fields))

    def flow_finished(self, flow_id: str) -> None:
        """Add the final event of a flow that has just reached a final status in this transaction."""
        event = _final_event(flow_id)
        if event is not None:
            del event.data["seq"]  # numbered with the outbox's other events
            self.add(flow_id, event.name, event.data)

    def close(self) -> list[Event]:
        """Number the events (one locked update per flow), record them, and publish them after commit.

        Nobody listening, they are recorded unnumbered, and neither numbered nor published.
        """
        if not self._items:
            return []
        if not self.live:
            record([Event(name=name, data=data, flow_id=flow_id, owner_id=0, broadcast=broadcast)
                    for flow_id, name, data, broadcast in self._items])
            self._items = []
            return []
        counts: dict[str, int] = {}
        for flow_id, *_ in self._items:
            counts[flow_id] = counts.get(flow_id, 0) + 1
        finishing = {flow_id for flow_id, name, *_ in self._items if name in _FINAL_EVENTS}
        taken = take_seqs(counts, finishing=finishing)
        next_seq = {flow_id: last - counts[flow_id] + 1 for flow_id, (last, _, _) in taken.items()}
        built = []
        for flow_id, name, data, broadcast in self._items:
            if flow_id not in taken:
                continue
            data["seq"] = next_seq[flow_id]
            next_seq[flow_id] += 1
            built.append(Event(name=name, data=data, flow_id=flow_id, owner_id=taken[flow_id][1], broadcast=broadcast))
        if self.recording:
            record(built)  # not a closed flow's final event told again (below): recorded once
        for flow_id, (_, _, again) in taken.items():
            if again is not None and (event := final_event_again(flow_id, again)) is not None:
                built.append(event)
        self._items = []
        transaction.on_commit(lambda: publish(built))
        return built


# COALESCED FLOW PROGRESS
# ------------------------------------------------------------------------------
# At most one ``flow:updated`` (+ ``flow:progress``) per flow every
# ``FLOW_UPDATE_INTERVAL``, and always one after the last change. While nobody
# listens live and only recorders want the progress, at most one per the recorders'
# ``progress_interval`` (``_progress_interval``).
FLOW_UPDATE_INTERVAL = 0.25


class _Coalescer:
    """Sends flow progress events for the flows touched since the last send, from one thread.

    Each process collects the flows whose jobs changed; a daemon thread sends
    their progress at once, then at most every ``FLOW_UPDATE_INTERVAL``. One
    transaction numbers the events of every due flow and counts their jobs (two
    statements, whatever the number of flows). Flows nobody listens to cost
    nothing: their progress is not even counted. Across processes, a Redis key per
    flow (``SET NX PX``) keeps the rate; a flow whose key is taken stays due.
    """

    def __init__(self) -> None:
        self._due: set[str] = set()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def touch(self, flow_ids: set[str]) -> None:
        if self._pid == os.getpid() and all(flow_id in self._due for flow_id in flow_ids):
            # Due already (a racy read, which is enough: the send that takes them
            # from ``_due`` reads the flows after this change's commit).
            return
        with self._wake:
            self._due |= flow_ids
            self._start()
            self._wake.notify()

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()  # a forked worker process starts its own thread
        self._thread = threading.Thread(target=self._run, name="flowsite-flow-updates", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from django.db import connections

        while True:
            with self._wake:
                while not self._due:
                    self._wake.wait()
                due, self._due = self._due, set()
            try:
                later = self.send(due)
            except Exception as exc:
                logger.warning("Could not send flow progress events: %s: %s", type(exc).__name__, exc)
                logger.debug("Sending flow progress events failed", exc_info=True)
                later = set()
            finally:
                connections.close_all()  # back to the pool: an idle thread holds no connection
            with self._wake:
                self._due |= later
            time.sleep(_progress_interval())

    def send(self, flow_ids: set[str]) -> set[str]:
        """Send the progress of these flows now; return those to try again later."""
        flow_ids = _interested(flow_ids)
        later = set()
        if not settings.EMBEDDED and flow_ids:
            flow_ids, later = _claim_turns(flow_ids, _progress_interval())
        if flow_ids:
            publish_now(flow_progress_events(flow_ids))
        return later

    def flush(self) -> None:
        """Send every pending flow update now (tests, and processes about to exit)."""
        with self._wake:
            due, self._due = self._due, set()
        if due:
            publish_now(flow_progress_events(_interested(due)))


_coalescer = _Coalescer()


def flush_flow_updates() -> None:
    """Send the pending coalesced flow updates of this process now."""
    _coalescer.flush()


def flow_progress_events(flow_ids: set[str]) -> list[Event]:
    """Number and build ``flow:updated`` and ``flow:progress`` for these flows (one transaction).

    The two are one change told twice (the second only to the flow's own
    subscribers), so they share one number: a ``/ws/flows/`` client, which does not
    receive ``flow:progress``, sees no gap.
    """
    from django.db.models import Count

    from flows.models import Flow
    from flows.selectors import progress_from_counts
    from jobs.models import Job

    if not flow_ids:
        return []
    with transaction.atomic():
        ids = list(Flow.objects.filter(pk__in=flow_ids).order_by("pk").select_for_update().values_list("pk", flat=True))
        if not ids:
            return []
        from django.db.models import F

        Flow.objects.filter(pk__in=ids).update(event_seq=F("event_seq") + 1)
        rows = Flow.objects.filter(pk__in=ids).values_list("pk", "event_seq", "status", "updated_at", "owner_id")
        counts: dict[str, dict[str, int]] = {flow_id: {} for flow_id in ids}
        for flow_id, status, n in (
            Job.objects.filter(flow_id__in=ids).values_list("flow_id", "status").annotate(n=Count("pk")).order_by()
        ):
            counts[flow_id][status] = n
        built = []
        for flow_id, seq, status, updated_at, owner_id in rows:
            progress = progress_from_counts(counts[flow_id])
            updated = _flow_updated_data(flow_id, status, progress, updated_at)
            updated["seq"] = seq
            built.append(Event(name=FlowEvent.UPDATED, data=updated, flow_id=flow_id, owner_id=owner_id))
            progressed = _flow_progress_data(flow_id, status, progress)
            progressed["seq"] = seq
            built.append(
                Event(name=FlowEvent.PROGRESS, data=progressed, flow_id=flow_id, owner_id=owner_id, broadcast=False)
            )
        if recording(FlowEvent.PROGRESS):
            record([event for event in built if event.name == FlowEvent.PROGRESS])
    return built


def _interested(flow_ids: set[str]) -> set[str]:
    """The flows whose progress somebody wants: all of them while a recorder wants progress, else the listened ones."""
    return set(flow_ids) if recording(FlowEvent.PROGRESS) else _listened(flow_ids)


def _listened(flow_ids: set[str]) -> set[str]:
    """The flows somebody listens to: their own group, their owner's, or staff."""
    from flows.models import Flow

    if not flow_ids:
        return set()
    owners = dict(Flow.objects.filter(pk__in=flow_ids).values_list("pk", "owner_id"))
    groups = {flow_id: Event(FlowEvent.UPDATED, {}, flow_id, owner_id).groups() for flow_id, owner_id in owners.items()}
    listening = _get_publisher().listening({group for names in groups.values() for group in names})
    return {flow_id for flow_id, names in groups.items() if listening.intersection(names)}


def _progress_interval() -> float:
    """How often a flow's progress is summed up: ``FLOW_UPDATE_INTERVAL`` while anybody listens
    live, else as often as the recorders that want it ask (webhooks: ``FLOWSITE_WEBHOOK_PROGRESS_INTERVAL_MS``)."""
    if live() or not _recorder_progress_intervals:
        return FLOW_UPDATE_INTERVAL
    return max(FLOW_UPDATE_INTERVAL, *_recorder_progress_intervals)


def _claim_turns(flow_ids: set[str], interval: float) -> tuple[set[str], set[str]]:
    """Split flows into those this process may update now and those updated elsewhere just now."""
    publisher = _get_publisher()
    pipe = publisher.client.pipeline(transaction=False)
    ordered = sorted(flow_ids)
    for flow_id in ordered:
        pipe.set(f"{publisher.prefix}:flow-update-turn:{flow_id}", 1, nx=True, px=int(interval * 1000))
    claimed = pipe.execute()
    mine = {flow_id for flow_id, ok in zip(ordered, claimed) if ok}
    return mine, flow_ids - mine


# WHO IS LISTENING
# ------------------------------------------------------------------------------
# Service mode. Web processes with live connections keep one Redis key alive
# (``{prefix}:listening``, its value the time it was created); workers number and
# publish events only while it exists. Its lifecycle:
#
# - The first connection of a web process opens it (``SET NX``, Redis's clock) and
#   the process renews it every ``LISTENING_RENEW_SECONDS`` while it has connections;
#   it expires ``LISTENING_TTL_MS`` after the last one leaves.
# - A process reads the key at most every ``GATE_POLL_SECONDS`` (``_Gate``), so a
#   change that started before the key appeared may still commit unnumbered: until
#   ``GATE_SETTLE_SECONDS`` after the key's creation, a connection's first ``seq``
#   (``subscribe``, ``snapshot``) waits (``Presence.settled``). Only the first
#   client after a quiet period waits, and at most that long.
LISTENING_TTL_MS = 15_000
LISTENING_RENEW_SECONDS = 5.0
GATE_POLL_SECONDS = 0.1
GATE_SETTLE_SECONDS = 0.5

# Create the key unless it exists, extend it, and return (created at, now) in ms of Redis's clock.
_OPEN_GATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now, 'NX', 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {tonumber(redis.call('GET', KEYS[1])), now}
"""


def _listening_key() -> str:
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}:listening"


class _Gate:
    """Whether some web process has a live connection, as a cached read of the Redis key."""

    def __init__(self) -> None:
        self._open = True
        self._until = 0.0

    def is_open(self) -> bool:
        now = time.monotonic()
        if now >= self._until:
            publisher = _get_publisher()
            try:
                self._open = bool(publisher.client.exists(_listening_key()))
            except Exception:
                self._open = True  # unsure: number and publish, as without the gate
                logger.debug("Could not read the listening key", exc_info=True)
            self._until = now + GATE_POLL_SECONDS
        return self._open

    def forget(self) -> None:
        """Read the key again at the next transition (tests)."""
        self._until = 0.0


_gate = _Gate()


def open_gate() -> float:
    """Open or renew the listening key; return the seconds until changes surely number their events.

    Sync: web processes call it through ``Presence``; a test listening on Redis
    directly calls it as a web process would.
    """
    if settings.EMBEDDED:
        return 0.0
    publisher = _get_publisher()
    created, now = publisher.client.eval(_OPEN_GATE_SCRIPT, 1, _listening_key(), LISTENING_TTL_MS)
    return max(0.0, (int(created) - int(now)) / 1000 + GATE_SETTLE_SECONDS)


class Presence:
    """This web process's live connections, keeping the listening key alive while there are any."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._count = 0
        self._renewer: asyncio.Task[None] | None = None
        self._settled_at = 0.0  # loop time from which every change is numbered

    async def enter(self) -> None:
        """A connection starts listening."""
        if settings.EMBEDDED:
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a server process has one loop; tests start one per test
            self._loop, self._count, self._renewer, self._settled_at = loop, 0, None, 0.0
        self._count += 1
        if self._renewer is None or self._renewer.done():
            await self._open()
            self._renewer = asyncio.create_task(self._renew())

    def leave(self) -> None:
        """A connection stopped listening."""
        if settings.EMBEDDED:
            return
        self._count = max(0, self._count - 1)
        if not self._count and self._renewer is not None:
            self._renewer.cancel()  # the key expires unless another process renews it
            self._renewer = None

    async def settled(self) -> None:
        """Return once every change is numbered and published (see the note above)."""
        delay = self._settled_at - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            wait = await asyncio.to_thread(open_gate)
        except Exception:
            logger.warning("Could not open the listening key; events may be missing until it opens", exc_info=True)
            return
        self._settled_at = max(self._settled_at, loop.time() + wait)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LISTENING_RENEW_SECONDS)
            await self._open()


presence = Presence()


# SNAPSHOT
# ------------------------------------------------------------------------------


def flow_snapshot(*, flow_id: str) -> dict[str, Any] | None:
    """The flow as ``GET /api/flows/{flowId}`` returns it, plus its current ``seq``.

    Read in one transaction, so ``seq`` is the number of the last event whose
    change the snapshot includes. None if the flow does not exist.
    """
    from flows import selectors
    from flows.models import Flow

    with transaction.atomic():
        # A share lock on the flow row holds back every change that takes a seq
        # (they all update this row) until the snapshot is read: nothing can commit
        # between reading ``seq`` and reading the jobs.
        _lock_for_share(flow_id)
        flow = Flow.objects.filter(pk=flow_id).first()
        if flow is None:
            return None
        body = json.loads(selectors.flow_detail_json(flow=flow))
        body["seq"] = flow.event_seq
    return body


def _lock_for_share(flow_id: str) -> None:
    from django.db import connection

    from flows.models import Flow

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {Flow._meta.db_table} WHERE id = %s FOR SHARE", [flow_id])
