"""What every backend shares: the store protocol, validation, the hash chain and the log rules.

A backend (`apollo_es.stores.sqlite`, `apollo_es.stores.postgres`) only decides how rows are
stored, locked and found; what a valid event is, how a row is hashed, and what `verify`
calls a broken row are decided here once, so the two backends cannot drift apart.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

import anyio
import msgspec

import events
from apollo_es import errors
from apollo_es.errors import ConcurrencyError, StoreError, StreamNotFound
from apollo_es.invariants import event_problem, identifier_problem, placement_problem
from events import BranchCreated, Event
from events.envelope import (
    ANY,
    NO_STREAM,
    ExpectedVersion,
    Lease,
    NewEvent,
    RecordedEvent,
    StreamInfo,
    TimelineRow,
    VerifyReport,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "GENESIS_HASH",
    "LineageReads",
    "Store",
    "chain_hash",
    "envelope_tail",
    "new_event_ids",
    "utc_now",
]

GENESIS_HASH = "0" * 64
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
COLUMNS = (
    "position, stream_id, version, event_id, kind, schema, recorded_at, actor, causation_id, payload, prev_hash, hash"
)
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~@/+=-]{0,199}")
_ACTOR = re.compile(r"agent|system|(human|judge|import):[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]{0,199}")


@runtime_checkable
class Store(Protocol):
    """Everything outside the backends uses of a store; nothing outside them runs SQL.

    `apollo_es.store.open_store(url)` returns one: SQLite for a path, PostgreSQL for a
    `postgresql://` URL.
    """

    read_only: bool

    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc_info: object) -> None: ...

    # writing
    def append(self, stream_id: str, new_events: Iterable[Event | NewEvent],
               expected_version: int | ExpectedVersion = ANY, *, actor: str = "system") -> list[RecordedEvent]: ...
    def branch(self, stream_id: str, at_version: int, new_stream_id: str | None = None, reason: str = "", *,
               actor: str = "system", then: Iterable[Event | NewEvent] = ()) -> str: ...

    # reading
    def head(self, stream_id: str) -> int: ...
    def exists(self, stream_id: str) -> bool: ...
    def read(self, stream_id: str, up_to: int | None = None) -> list[RecordedEvent]: ...
    def event(self, stream_id: str, version: int) -> RecordedEvent: ...
    def read_all(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]: ...
    def last_position(self) -> int: ...
    def streams(self) -> list[StreamInfo]: ...
    def lineage(self, stream_id: str) -> list[tuple[str, int | None]]: ...
    def stream_positions(self) -> dict[str, int]: ...
    def events_by_ids(self, event_ids: Iterable[str]) -> dict[str, RecordedEvent]: ...
    def caused_by(self, causation_ids: Iterable[str], kinds: Sequence[str] = ()) -> list[RecordedEvent]: ...
    def timeline(self, run_id: str, *, kinds: Sequence[str] = (), actors: Sequence[str] = (),
                 since: str | None = None, after_version: int = 0, limit: int | None = None) -> list[TimelineRow]: ...
    async def _await_news(self, position: int, timeout: float) -> None:
        await anyio.sleep(timeout)

    def subscribe(self, after: int = 0, *, poll_interval: float = 0.05,
                  idle_timeout: float | None = None) -> Iterator[RecordedEvent]: ...
    def asubscribe(self, after: int = 0, *, poll_interval: float = 0.05,
                   idle_timeout: float | None = None) -> AsyncIterator[RecordedEvent]: ...

    # derived state outside the chain
    def checkpoint(self, name: str) -> tuple[int, str] | None: ...
    def save_checkpoint(self, name: str, position: int, fingerprint: str) -> None: ...
    def acquire_lease(self, stream_id: str, holder: str, seconds: float, *,
                      take_over: str | None = None) -> Lease | None: ...
    def release_lease(self, stream_id: str, holder: str) -> None: ...
    def leases(self) -> dict[str, Lease]: ...

    # integrity and accounting
    # moving a log (`apollo_es.stores.copy`)
    def stored_rows(self, after: int = 0, limit: int = 1000) -> list[tuple]: ...
    def append_stored(self, streams: Sequence[StreamInfo], rows: Sequence[Sequence[Any]]) -> None: ...

    def verify(self, progress: Callable[[int], None] | None = None, *,
               anchors: Sequence[tuple[str, int]] = (), fast: bool = False) -> VerifyReport: ...
    def stats(self) -> dict[str, Any]: ...
    def costs(self) -> dict[str, float]: ...


class Prepared(msgspec.Struct, frozen=True):
    """An event validated and encoded before its transaction, waiting for a position."""

    event_id: str
    kind: str
    schema: int
    recorded_at: str | None
    actor: str
    causation_id: str | None
    payload: bytes
    event: Event
    chosen_id: bool


class Segment(msgspec.Struct, frozen=True):
    """A stream's own share of a lineage: its events with `version <= up_to` (None: all)."""

    stream_id: str
    up_to: int | None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def chain_hash(prev_hash: str, header: Sequence[Any], payload: bytes) -> str:
    """The hash of one row: SHA-256 over the previous hash, the envelope and the payload.

    The envelope is the JSON array `[position, stream_id, version, event_id, kind, schema,
    recorded_at, actor, causation_id]`; the payload's UTF-8 bytes follow a newline as stored
    (hashing them directly, not re-encoded inside the array, keeps appends fast). Both
    backends hash this way, so a log keeps its hashes when it moves between them.
    """
    digest = _EMPTY_SHA256.copy()  # copying a fresh hash skips OpenSSL's per-call setup
    digest.update(prev_hash.encode())
    digest.update(_header_encoder.encode(header))
    digest.update(b"\n")
    digest.update(payload)
    return digest.hexdigest()


def envelope_tail(header_after_position: Sequence[Any]) -> str:
    """The envelope's JSON as `chain_hash` hashes it, less its opening `[position,`.

    PostgreSQL appends hash on the server, where positions are taken: it hashes the previous
    hash, `[`, the position, `,`, this text, a newline and the payload, which are the bytes
    `chain_hash` hashes for the whole envelope (a JSON integer is its decimal digits).
    """
    return _header_encoder.encode(header_after_position)[1:].decode()


def new_event_ids(count: int) -> list[str]:
    """`count` UUIDv7s: time-ordered, so new ids land at the end of the event-id index.

    Random (v4) ids scatter inserts over the whole index and double the pages a batch dirties.
    A batch shares one millisecond timestamp and one `os.urandom` call, hex-encoded in one go;
    each id is then one f-string of slices: made one at a time, an id cost more than hashing
    the event it names.
    """
    millis = f"{time.time_ns() // 1_000_000:012x}"  # 48-bit timestamp
    head = f"{millis[:8]}-{millis[8:]}-7"  # ... and the version nibble
    text = os.urandom(16 * count).hex()  # 32 random hex digits per id, of which 19 are used
    variant = _V7_VARIANT
    return [
        f"{head}{text[i:i + 3]}-{variant[text[i + 3]]}{text[i + 4:i + 7]}-{text[i + 7:i + 19]}"
        for i in range(0, 32 * count, 32)
    ]


_header_encoder = msgspec.json.Encoder()
_EMPTY_SHA256 = hashlib.sha256()
_V7_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}  # RFC 9562 variant bits 10


# -- validation ---------------------------------------------------------------------------


def prepare(items: Iterable[Event | NewEvent], default_actor: str, max_payload_bytes: int) -> list[Prepared]:
    """Validate and encode events before any transaction starts (no lock held)."""
    items = list(items)
    prepared = []
    # One generated id per event, made in one go; an event with a chosen id leaves its one unused.
    for item, generated_id in zip(items, new_event_ids(len(items))):
        if isinstance(item, NewEvent):
            event, event_id, actor, causation_id, recorded_at = (
                item.event, item.event_id, item.actor, item.causation_id, item.recorded_at
            )
            if actor is not None:
                check_actor(actor)
            if event_id is not None and not (isinstance(event_id, str) and 0 < len(event_id) <= 200):
                raise errors.InvalidEventError(f"event id must be 1 to 200 characters, got {event_id!r}")
            for name, value in (("causation_id", causation_id), ("recorded_at", recorded_at)):
                if value is not None and not isinstance(value, str):
                    raise errors.InvalidEventError(f"{name} must be a string or None, got {value!r}")
            for name, value in (("event id", event_id), ("causation_id", causation_id)):
                if problem := identifier_problem(name, value):
                    raise errors.InvalidEventError(problem)
        else:
            event, event_id, actor, causation_id, recorded_at = item, None, None, None, None
        try:
            payload, decoded = events.encode_checked(event)
            kind = decoded.__class__.__name__
        except events.EventError as exc:
            raise errors.InvalidEventError(str(exc)) from exc
        if problem := event_problem(decoded):
            raise errors.InvalidEventError(f"{kind}: {problem}")
        if len(payload) > max_payload_bytes:
            raise errors.PayloadTooLarge(
                f"{kind} payload is {len(payload):,} bytes, over the limit of {max_payload_bytes:,}"
            )
        prepared.append(Prepared(
            event_id or generated_id, kind, events.CURRENT_SCHEMA[kind], recorded_at,
            actor or default_actor, causation_id, payload, decoded, event_id is not None,
        ))
    return prepared


def prepare_append(stream_id: str, items: Iterable[Event | NewEvent], actor: str, max_payload_bytes: int) -> list[Prepared]:
    """Everything an append checks before its transaction, the same on every backend."""
    check_stream_id(stream_id)
    check_actor(actor)
    prepared = prepare(items, actor, max_payload_bytes)
    check_unique_ids(prepared, "append")
    return prepared


def check_unique_ids(prepared: Sequence[Prepared], what: str) -> None:
    if len({p.event_id for p in prepared}) != len(prepared):
        raise errors.DuplicateEventError(f"the same event id appears twice in one {what}")


def check_stream_id(stream_id: str) -> None:
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        raise errors.InvalidStreamIdError(
            f"invalid stream id {stream_id!r}: use 1-200 letters, digits and ._:~@/+=- , starting with a letter or digit"
        )


def check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not _ACTOR.fullmatch(actor):
        raise errors.InvalidEventError(
            f"invalid actor {actor!r}: use agent, system, human:<name>, judge:<id> or import:<format>"
        )


def check_expected(stream_id: str, expected: int | ExpectedVersion, actual: int) -> None:
    """ConcurrencyError (with the actual version) unless the stream is where the writer expects."""
    if expected is ANY:
        return
    if expected is NO_STREAM:
        if actual > 0:
            raise ConcurrencyError(stream_id, NO_STREAM, actual)
        return
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise TypeError(f"expected_version must be an int, ANY or NO_STREAM, not {expected!r}")
    if expected != actual:
        raise ConcurrencyError(stream_id, expected, actual)


def check_placement(stream_id: str, fresh: Sequence[Prepared], head: int, fork: int | None) -> None:
    for offset, p in enumerate(fresh, 1):
        if problem := placement_problem(p.event, head + offset, fork):
            raise errors.InvalidEventError(f"{p.kind} at {stream_id!r} v{head + offset}: {problem}")


def check_branch_point(stream_id: str, at_version: int, head: int) -> None:
    if head == 0:
        raise StreamNotFound(f"no stream {stream_id!r}")
    if isinstance(at_version, bool) or not isinstance(at_version, int) or not 1 <= at_version <= head:
        raise errors.VersionOutOfRange(f"cannot branch {stream_id!r} at version {at_version}: it has versions 1..{head}")


def branch_id_candidates(stream_id: str, siblings: int) -> Iterator[str]:
    """`stream_id~bN` for N past the branches it already has, cut to fit 200 characters."""
    n = siblings
    while True:
        n += 1
        suffix = f"~b{n}"
        yield stream_id[: 200 - len(suffix)] + suffix


def hash_rows(stream_id: str, head: int, position: int, prev_hash: str, prepared: Sequence[Prepared],
              now: str) -> list[RecordedEvent]:
    """The envelopes of `prepared` placed after `head` in their stream and `position` in the log."""
    recorded = []
    for offset, p in enumerate(prepared, 1):
        header = (position + offset, stream_id, head + offset, p.event_id, p.kind, p.schema,
                  p.recorded_at or now, p.actor, p.causation_id)
        digest = chain_hash(prev_hash, header, p.payload)
        recorded.append(RecordedEvent(*header, p.event, prev_hash, digest))
        prev_hash = digest
    return recorded


def in_given_order(prepared: Sequence[Prepared], known: dict[str, RecordedEvent],
                   inserted: list[RecordedEvent]) -> list[RecordedEvent]:
    """An append's result: stored envelopes for ids already recorded, new ones for the rest."""
    if not known:  # the usual case: every event is new, and `inserted` is already in order
        return inserted
    known.update({r.event_id: r for r in inserted})
    return [known[p.event_id] for p in prepared]


def duplicate_elsewhere(row: Sequence[Any], stream_id: str) -> None:
    if row[1] != stream_id:
        raise errors.DuplicateEventError(
            f"event id {row[3]!r} is already recorded in stream {row[1]!r} at position {row[0]}"
        )


# -- rows ---------------------------------------------------------------------------------


def to_recorded(row: Sequence[Any]) -> RecordedEvent:
    position, stream_id, version, event_id, kind, schema, recorded_at, actor, causation_id, payload, prev, digest = row
    try:
        event = events.decode(kind, schema, payload)
    except events.EventError as exc:
        raise StoreError(f"position {position} ({stream_id} v{version}) does not decode: {exc}") from exc
    return RecordedEvent(position, stream_id, version, event_id, kind, schema, recorded_at, actor, causation_id, event, prev, digest)


def row_problem(
    row: Sequence[Any],
    expected_position: int,
    prev_hash: str,
    forks: dict[str, tuple[str | None, int | None]],
    last_version: dict[str, int],
) -> str:
    """Why this row (payload as bytes) breaks the log, or '' if it is sound."""
    position, stream_id, version, _event_id, kind, schema, *_rest, payload, stored_prev, stored_hash = row
    if position != expected_position:
        return f"expected position {expected_position}, found {position}: rows are missing"
    if stored_prev != prev_hash:
        return "prev_hash does not match the previous row's hash"
    if chain_hash(prev_hash, row[:9], payload) != stored_hash:
        return "hash does not match the row's content: the row was changed"
    if stream_id not in forks:
        return f"stream {stream_id!r} has no row in the streams table"
    parent, fork = forks[stream_id]
    expected_version = last_version.get(stream_id, fork or 0) + 1
    if version != expected_version:
        return f"stream {stream_id!r} jumps to version {version}, expected {expected_version}"
    try:
        event = events.decode(kind, schema, payload)
    except events.EventError as exc:
        return f"payload does not decode: {exc}"
    if parent is not None and version == fork + 1:
        if not isinstance(event, BranchCreated) or (event.parent_stream, event.fork_version) != (parent, fork):
            return f"branch {stream_id!r} does not start with a BranchCreated matching its parent and fork"
    return placement_problem(event, version, fork) or event_problem(event) or identifier_problem("actor", row[7])


class ChainWalk:
    """The log's rules checked row by row in position order, from the first row: what
    `verify` walks, and what `copy` checks each source row against before writing it."""

    def __init__(self, forks: dict[str, tuple[str | None, int | None]]) -> None:
        self.forks = forks
        self.checked = 0
        self.prev_hash = GENESIS_HASH
        self._last_version: dict[str, int] = {}

    def check(self, row: Sequence[Any]) -> str:
        """Why `row` (payload as bytes) breaks the log after the rows checked so far, or ''."""
        problem = row_problem(row, self.checked + 1, self.prev_hash, self.forks, self._last_version)
        if not problem:
            self.checked += 1
            self._last_version[row[1]] = row[2]
            self.prev_hash = row[11]
        return problem


def walk_chain(rows: Iterable[Sequence[Any]], forks: dict[str, tuple[str | None, int | None]],
               progress: Callable[[int], None] | None) -> VerifyReport:
    """Walk rows in position order (payloads as bytes) and report the first that breaks the log."""
    walk = ChainWalk(forks)
    for row in rows:
        if problem := walk.check(row):
            return VerifyReport(ok=False, events_checked=walk.checked + 1, first_bad_position=row[0], reason=problem)
        if progress is not None and walk.checked % 10_000 == 0:
            progress(walk.checked)
    return VerifyReport(ok=True, events_checked=walk.checked)


def check_extends(position: int, head_hash: str, rows: Sequence[Sequence[Any]], location: str) -> None:
    """Refuse rows copied from elsewhere that do not continue this log exactly (`append_stored`)."""
    for row in rows:
        if (row[0], row[10]) != (position + 1, head_hash):
            raise StoreError(f"{location}: position {row[0]} does not continue this log "
                             f"(its head is position {position}); nothing was written")
        position, head_hash = row[0], row[11]


def anchor_problem(anchored_hash: str, position: int, found: str | None) -> str:
    """Why the row at an anchored position (its hash `found`, None if gone) breaks the anchor."""
    if found is None:
        return f"anchor {anchored_hash[:12]}…@{position}: the log no longer reaches position {position} (rows deleted)"
    if found != anchored_hash:
        return f"anchor {anchored_hash[:12]}…@{position}: the row there has another hash (the log was rewritten)"
    return ""


def stats_dict(location: str, by_kind: dict[str, int], streams: int, branches: int,
               last: Sequence[Any] | None, database_bytes: int, costs: dict[str, float]) -> dict[str, Any]:
    """`stats()` as both backends report it."""
    return {
        "path": location,
        "events": sum(by_kind.values()),
        "streams": streams,
        "runs": streams - branches,
        "branches": branches,
        "events_by_kind": by_kind,
        "last_position": last[0] if last else 0,
        "head_hash": last[1] if last else GENESIS_HASH,
        "anchor": f"{last[1]}@{last[0]}" if last else "",
        "database_bytes": database_bytes,
        "cost_usd": sum(costs.values()) if costs else None,
    }


# -- reads every backend builds from the same primitives -----------------------------------


class LineageReads:
    """`read`, `event`, `lineage` and the polling subscriptions, built on three primitives a
    backend provides: a stream's (parent, fork) row, its own rows up to a version, and one
    own row. A stream's parent never changes, so lineages are cached per store object."""

    _lineages: dict[str, tuple[Segment, ...]]

    def _parent_row(self, stream_id: str) -> tuple[str | None, int | None] | None:
        raise NotImplementedError

    def _own_rows(self, stream_id: str, up_to: int | None) -> list[Sequence[Any]]:
        raise NotImplementedError

    def _own_row(self, stream_id: str, version: int) -> Sequence[Any] | None:
        raise NotImplementedError

    def head(self, stream_id: str) -> int:
        raise NotImplementedError

    def read_all(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        raise NotImplementedError

    def _lineage(self, stream_id: str) -> tuple[Segment, ...]:
        """Root-first segments of a stream."""
        cached = self._lineages.get(stream_id)
        if cached is not None:
            return cached
        segments: list[Segment] = []
        current, up_to = stream_id, None
        while current is not None:
            row = self._parent_row(current)
            if row is None:
                raise StreamNotFound(f"no stream {stream_id!r}")
            segments.append(Segment(current, up_to))
            current, fork = row
            # A branch may fork below its parent's own fork point: the tightest bound wins.
            up_to = fork if up_to is None or fork is None else min(up_to, fork)
        lineage = tuple(reversed(segments))
        self._lineages[stream_id] = lineage
        return lineage

    def read(self, stream_id: str, up_to: int | None = None) -> list[RecordedEvent]:
        """The stream's events in version order: its ancestors' up to each fork, then its own."""
        if up_to is not None and up_to < 0:
            raise errors.VersionOutOfRange(f"up_to must be >= 0, got {up_to}")
        result: list[RecordedEvent] = []
        for segment in self._lineage(stream_id):
            bound = segment.up_to if up_to is None else min(up_to, segment.up_to or up_to)
            result.extend(to_recorded(row) for row in self._own_rows(segment.stream_id, bound))
        return result

    def event(self, stream_id: str, version: int) -> RecordedEvent:
        """The event at `version` of a stream (possibly inherited from an ancestor)."""
        head = self.head(stream_id)
        if not 1 <= version <= head:
            raise errors.VersionOutOfRange(f"stream {stream_id!r} has versions 1..{head}, not {version}")
        for segment in self._lineage(stream_id):
            if segment.up_to is None or version <= segment.up_to:
                row = self._own_row(segment.stream_id, version)
                if row is not None:
                    return to_recorded(row)
        raise StoreError(f"stream {stream_id!r} is missing version {version}; run verify")

    def lineage(self, stream_id: str) -> list[tuple[str, int | None]]:
        """(stream id, fork version taken from it) from the root down to `stream_id` (None for itself)."""
        return [(s.stream_id, s.up_to) for s in self._lineage(stream_id)]

    def _wait_for_news(self, position: int, timeout: float) -> None:
        """Block until something may have been appended past `position`, at most `timeout` s."""
        time.sleep(timeout)

    async def _await_news(self, position: int, timeout: float) -> None:
        await anyio.sleep(timeout)

    def subscribe(self, after: int = 0, *, poll_interval: float = 0.05, idle_timeout: float | None = None) -> Iterator[RecordedEvent]:
        """Tail the global log from `after`, forever or until nothing new came for `idle_timeout` s."""
        position, idle_since = after, time.monotonic()
        while True:
            page = self.read_all(after=position, limit=1000)
            for recorded in page:
                yield recorded
                position = recorded.position
            if page:
                idle_since = time.monotonic()
                continue
            if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                return
            self._wait_for_news(position, poll_interval)

    async def asubscribe(
        self, after: int = 0, *, poll_interval: float = 0.05, idle_timeout: float | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """The anyio variant of `subscribe`: reads run in a worker thread, waits are async."""
        position, idle_since = after, time.monotonic()
        while True:
            page = await anyio.to_thread.run_sync(lambda: self.read_all(after=position, limit=1000))
            for recorded in page:
                yield recorded
                position = recorded.position
            if page:
                idle_since = time.monotonic()
                continue
            if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                return
            await self._await_news(position, poll_interval)
