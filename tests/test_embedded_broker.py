"""The embedded mode's on-disk broker never hands a consumer a half-written message."""

from __future__ import annotations

import threading

from kombu import Connection

import flowsite.celery  # noqa: F401  (registers the flowsitefs:// transport)


def test_messages_written_while_being_consumed_are_always_whole(tmp_path):
    folders = {name: tmp_path / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir()
    options = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "polling_interval": 0,
    }
    count = 3000

    def produce():
        with Connection("flowsitefs://localhost//", transport_options=options) as conn:
            queue = conn.SimpleQueue("stress")
            for index in range(count):
                queue.put({"index": index, "padding": "x" * 2000})

    producer = threading.Thread(target=produce)
    producer.start()
    received = []
    with Connection("flowsitefs://localhost//", transport_options=options) as conn:
        queue = conn.SimpleQueue("stress")
        while len(received) < count:
            message = queue.get(timeout=60)  # generous: the machine may be busy with other processes
            received.append(message.payload["index"])
            message.ack()
    producer.join()

    assert sorted(received) == list(range(count))
    assert not list((tmp_path / "staging").iterdir())
