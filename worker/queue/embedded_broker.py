"""The embedded broker: kombu's filesystem transport, with messages that appear whole.

kombu's own transport creates a message's file in the queue folder, then locks and writes it;
a consumer takes a file by renaming it away, without looking at the lock. A worker that polls
between the create and the write takes an empty file: the message is lost, and decoding the
empty payload raised out of the worker's consumer and stopped it (seen on a busy CI machine:
every delivery after that one waited forever).

Here a message is written and closed under a name no consumer looks at, in a folder on the same
filesystem, and then renamed into the queue folder: a rename within one filesystem is atomic, so
a consumer sees the whole file or none. A consumer moves what it takes into `taken/` (beside the
queue too, so that this move is also a rename, not kombu's copy to the system's temp folder)
and deletes it once read; a file that still is not a message (a disk that filled up, a file
made by hand) is set aside in `rejected/` with a log line naming it, instead of stopping the
worker. And a consumer lists the queue folder once per backlog, not once per message.
"""
from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections import deque
from contextlib import suppress
from functools import cached_property
from pathlib import Path
from time import monotonic_ns

from kombu.transport import filesystem
from kombu.transport.virtual import Empty
from kombu.utils.json import dumps, loads

log = logging.getLogger("bbsync.broker")

#: What Celery's `broker_transport` setting names to use this module.
TRANSPORT = f"{__name__}:Transport"


class Channel(filesystem.Channel):

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._listed: dict[str, deque] = {}

    def _restore(self, message):
        # A message handed back (its worker was lost) comes again marked redelivered where
        # Celery reads it, in its delivery_info (kombu marks only the payload's top level):
        # a task told "redelivered" counts its runs apart before working (worker.queue.tasks).
        message.delivery_info["redelivered"] = True
        super()._restore(message)

    def _put(self, queue, payload, **kwargs):
        # Consumers take files in name order: nanoseconds of the system-wide monotonic clock,
        # zero-padded so that the order of the names is the order of the puts (kombu's
        # milliseconds, unpadded, tie within a millisecond and misorder when a digit is added).
        name = f"{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        data = dumps(payload).encode()
        fd, staged = tempfile.mkstemp(dir=self._staging_folder, prefix="put-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(staged, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            _remove_quietly(staged)
            raise filesystem.ChannelError(f"Cannot add a message to {self.data_folder_out}") from exc

    def _get(self, queue):
        # kombu lists the whole queue folder for every message it takes: draining a backlog of
        # n messages cost n listings of up to n names. The names listed once are taken in order
        # until they run out (a name another consumer took first is skipped); then the folder
        # is listed again. Messages put meanwhile are newer, so the order holds.
        while True:
            names, fresh = self._listing(queue)
            while names:
                message = self._take(names.popleft())
                if message is not None:
                    return message
            if fresh:
                raise Empty()

    def _listing(self, queue) -> tuple[deque, bool]:
        """The names not yet tried from the last listing, or a new listing; and which it is."""
        names = self._listed.setdefault(queue, deque())
        if names:
            return names, False
        wanted = f"{queue}.msg"
        # A listing is not a snapshot: a message renamed in while the folder is being read can
        # be missed while a later one is seen. Each name starts with the moment it was named,
        # which comes before its rename; so every message named before the listing began and
        # missed by it was renamed in during it, before anything named after that began. Taking
        # only names older than the listing keeps the order; the rest come with the next one.
        began = f"{monotonic_ns():020d}"
        names.extend(sorted(n for n in os.listdir(self.data_folder_in)
                            if n.partition(".")[2] == wanted and (n[:20] < began or n[20:21] != "_")))
        return names, True

    def _take(self, name: str):
        """The message in the file `name`, or None if it is gone or is not a message."""
        taken = os.path.join(self._taken_folder, name)
        try:
            os.replace(os.path.join(self.data_folder_in, name), taken)
        except FileNotFoundError:
            return None  # another consumer took it first, or it was purged
        try:
            with open(taken, "rb") as f:
                payload = f.read()
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot read the message {name}") from exc
        try:
            message = loads(payload)
        except ValueError:
            message = None
        if not isinstance(message, dict):  # every kombu message is a JSON object
            self._reject(taken, name, len(payload))
            return None
        if not self.store_processed:
            _remove_quietly(taken)
        return message

    def _reject(self, path: str, name: str, size: int) -> None:
        os.replace(path, self._rejected_folder / name)
        log.error("broker.message_rejected file=%s bytes=%d reason=not-a-message kept_in=%s",
                  name, size, self._rejected_folder)

    # Beside the queue folder, so that moving a file between them is a rename, not a copy.
    @cached_property
    def _staging_folder(self) -> Path:
        return _beside(self.data_folder_out, "staging")

    @cached_property
    def _taken_folder(self) -> Path:
        if self.store_processed:
            return Path(self.processed_folder)
        return _beside(self.data_folder_in, "taken")

    @cached_property
    def _rejected_folder(self) -> Path:
        return _beside(self.data_folder_in, "rejected")


class Transport(filesystem.Transport):
    Channel = Channel


def _beside(queue_folder: str, name: str) -> Path:
    folder = Path(queue_folder).parent / name
    folder.mkdir(exist_ok=True)
    return folder


def _remove_quietly(path) -> None:
    with suppress(OSError):
        os.remove(path)
