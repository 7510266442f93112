"""One reader tails the log for every open page.

Each page viewer could poll SQLite itself, but twenty viewers would then mean twenty
readers. The hub polls once, folds the new events into the runs index, and hands each batch
to every subscriber. A subscriber that falls too far behind is dropped rather than allowed
to hold memory: its page reconnects with the last version it has and reads the rest from
the store, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from apollo_es.console.runs import RunsIndex, RunSummary
from apollo_es.store import EventStore, RecordedEvent

__all__ = ["Batch", "EventHub"]

log = logging.getLogger("apollo_es.console")


class Batch(msgspec.Struct, frozen=True):
    """New events in position order, and the runs-page rows they changed."""

    events: list[RecordedEvent]
    changed: list[RunSummary]


class EventHub:
    def __init__(self, store: EventStore, *, poll_interval: float = 0.1, page_size: int = 1000, backlog: int = 1000) -> None:
        self.store = store
        self.index = RunsIndex(store)
        self.poll_interval = poll_interval
        self.page_size = page_size
        self.backlog = backlog
        """Batches a subscriber may have waiting before it is dropped."""
        self._subscribers: set[ObjectSendStream[Batch]] = set()
        self._lock = anyio.Lock()

    async def catch_up(self) -> None:
        """Fold everything recorded so far into the index (before the server takes requests)."""
        while await self.poll():
            pass

    async def run(self) -> None:
        """Poll the log until cancelled."""
        while True:
            try:
                more = await self.poll()
            except Exception:  # a locked or damaged file must not kill the live pages for good
                log.exception("reading new events failed; retrying")
                more = False
            if not more:
                await anyio.sleep(self.poll_interval)

    async def poll(self) -> bool:
        """Read and publish one page of new events; whether there were any."""
        async with self._lock:
            batch = await anyio.to_thread.run_sync(self._read)
        if batch is None:
            return False
        for subscriber in list(self._subscribers):
            try:
                subscriber.send_nowait(batch)
            except anyio.WouldBlock:
                log.warning("dropping a viewer that fell %d batches behind", self.backlog)
                self._drop(subscriber)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop(subscriber)
        return True

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[ObjectReceiveStream[Batch]]:
        """Every batch published from now on, until the block ends or the subscriber falls behind."""
        send, receive = anyio.create_memory_object_stream[Batch](max_buffer_size=self.backlog or math.inf)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._drop(send)
            receive.close()

    def close(self) -> None:
        """End every subscription (the server is shutting down; pages reconnect elsewhere)."""
        for subscriber in list(self._subscribers):
            self._drop(subscriber)

    @property
    def viewers(self) -> int:
        return len(self._subscribers)

    def _read(self) -> Batch | None:
        events = self.store.read_all(after=self.index.position, limit=self.page_size)
        if not events:
            return None
        return Batch(events=events, changed=self.index.apply(events))

    def _drop(self, subscriber: ObjectSendStream[Batch]) -> None:
        self._subscribers.discard(subscriber)
        subscriber.close()
