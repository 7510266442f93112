"""What one client can make the console hold: open event streams, a run's backlog, a body.

A page that opens event streams and never reads them keeps its send suspended; before these
limits, a hundred such clients each held a decoded copy of the whole run (1.3 GB). Now:
- `StreamSlots`: a cap on open event streams per client address and in all (429 when full);
- `Backlogs`: a run's backlog is read, decoded and encoded once and shared by every viewer
  (kept for the few runs viewed last), so a stuck viewer holds a reference, not a copy;
- `read_body`: a request body is counted while it streams in and refused past the limit,
  never buffered whole first.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator

from starlette.requests import Request

from apollo_es.store import EventStore, RecordedEvent

__all__ = ["Backlogs", "BodyTooLarge", "Slot", "StreamSlots", "TooManyStreams", "read_body"]


class TooManyStreams(Exception):
    """Every event-stream slot for this client, or for the server, is taken."""


class BodyTooLarge(Exception):
    """A request body over the limit (found while reading it)."""


class StreamSlots:
    def __init__(self, per_client: int, total: int) -> None:
        self.per_client, self.total = per_client, total
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> Slot:
        """A slot for one stream from `client`, or TooManyStreams."""
        with self._lock:
            if sum(self._open.values()) >= self.total:
                raise TooManyStreams(f"the console serves {self.total} event streams at most; try again shortly")
            if self._open.get(client, 0) >= self.per_client:
                raise TooManyStreams(f"{self.per_client} event streams are open from your address; close a page first")
            self._open[client] = self._open.get(client, 0) + 1
        return Slot(self, client)

    def _give_back(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if not self._open[client]:
                del self._open[client]

    @property
    def open(self) -> int:
        with self._lock:
            return sum(self._open.values())


class Slot:
    """One taken stream slot; released once, by `release`, by leaving a `with`, or when dropped."""

    def __init__(self, slots: StreamSlots, client: str) -> None:
        self._release = weakref.finalize(self, slots._give_back, client)

    def release(self) -> None:
        self._release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Backlogs:
    """The encoded event-stream chunks of each run, shared by all its viewers."""

    def __init__(self, store: EventStore, encode: Callable[[list[RecordedEvent]], bytes], *, batch: int, keep: int = 8) -> None:
        self.store, self.encode, self.batch, self.keep = store, encode, batch, keep
        self._runs: OrderedDict[str, tuple[int, list[tuple[int, int, bytes]]]] = OrderedDict()
        self._lock = threading.Lock()

    def chunks(self, run: str) -> list[tuple[int, int, bytes]]:
        """(first version, last version, bytes) of each chunk of the run as recorded now; call in a thread."""
        head = self.store.head(run)
        with self._lock:
            cached = self._runs.get(run)
            if cached is not None and cached[0] == head:
                self._runs.move_to_end(run)
                return cached[1]
        events = self.store.read(run)
        chunks = [(part[0].version, part[-1].version, self.encode(part)) for part in _slices(events, self.batch)]
        with self._lock:
            self._runs[run] = (head, chunks)
            self._runs.move_to_end(run)
            while len(self._runs) > self.keep:
                self._runs.popitem(last=False)
        return chunks


def _slices(events: list[RecordedEvent], size: int) -> Iterator[list[RecordedEvent]]:
    for start in range(0, len(events), size):
        yield events[start:start + size]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (BodyTooLarge) as soon as it passes `limit` bytes, declared or not."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body over {limit} bytes")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise BodyTooLarge(f"request body over {limit} bytes")
    return bytes(received)
