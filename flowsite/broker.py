"""The embedded mode's on-disk Celery broker: kombu's file-system transport, made atomic.

Kombu's transport creates a message file and then writes it, so a consumer
listing the folder at that moment can read an empty file, fail to decode it, and
the worker stops for good. Here a message is written under a temporary name in
a sibling folder and renamed into the queue folder: a reader sees it whole or
not at all.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        staging = Path(self.data_folder_out).parent / "staging"
        staging.mkdir(exist_ok=True)
        temporary = staging / name
        try:
            temporary.write_bytes(str_to_bytes(dumps(payload)))
            os.replace(temporary, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to the queue folder") from exc


class Transport(filesystem.Transport):
    Channel = Channel
