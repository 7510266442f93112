"""The append-only event store: one SQLite file, every run and branch a stream in it.

How it keeps its contract (DESIGN §5):
- Appends run in `BEGIN IMMEDIATE` transactions, so the whole batch lands or none of it,
  the version check and the insert see the same state, and writers from several processes
  queue on SQLite's lock (WAL mode, busy timeout) instead of failing.
- Positions are assigned as `last + 1` inside that transaction, so the global log is gapless.
- Every row carries `prev_hash` and `hash = sha256(prev_hash || canonical row)`. Triggers
  refuse UPDATE and DELETE; `verify()` catches edits made around them.
- A branch is a row in `streams` (parent, fork version) plus a `BranchCreated` event: no
  event is copied, so branching costs the same at version 10 or 100,000. Reading a branch
  walks its lineage: each ancestor's events up to the next fork, then its own.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import sqlite3
import contextlib
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import msgspec

import events
from apollo_es import errors
from apollo_es.errors import ConcurrencyError, StoreError, StreamNotFound
from apollo_es.invariants import event_problem, identifier_problem, placement_problem
from apollo_es.schema import SCHEMA_SQL, STORE_FORMAT
from apollo_es.wal import BACKSTOP_PAGES, DEFAULT_EVERY_BYTES, WalCheckpointer
from events import BranchCreated, Event

__all__ = [
    "ANY",
    "NO_STREAM",
    "EventStore",
    "Lease",
    "NewEvent",
    "RecordedEvent",
    "StreamInfo",
    "VerifyReport",
]

GENESIS_HASH = "0" * 64
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~@/+=-]{0,199}")
_ACTOR = re.compile(r"agent|system|(human|judge|import):[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]{0,199}")
_COLUMNS = (
    "position, stream_id, version, event_id, kind, schema, recorded_at, actor, causation_id, payload, prev_hash, hash"
)
_SQLITE_MAX_PARAMS = 900
_PAGES_PER_COMMIT = 4  # rewritten by every commit, however small; see EventStore._wrote
_MAX_ROWS_PER_INSERT = 64  # 8 parameters a row: under the 999 that older SQLite builds allow


class Lease(msgspec.Struct, frozen=True):
    """An agent's hold on a run (`EventStore.acquire_lease`)."""

    stream_id: str
    holder: str
    expires_at: float
    """Unix time."""


class ExpectedVersion(enum.Enum):
    ANY = "any"
    NO_STREAM = "no_stream"

    def __repr__(self) -> str:
        return self.name


ANY = ExpectedVersion.ANY
"""Append whatever the stream's version is."""
NO_STREAM = ExpectedVersion.NO_STREAM
"""Append only if the stream does not exist yet."""


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to append, with the envelope fields a writer may choose.

    `event_id` makes an append idempotent: appending an id that is already recorded in the
    same stream returns the stored envelope and writes nothing.
    """

    event: Event
    event_id: str | None = None
    actor: str | None = None
    causation_id: str | None = None
    recorded_at: str | None = None


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """One row of the log: the envelope and the decoded event (untracked by the cycle
    collector, like the events: see `events.kinds._Event`)."""

    position: int
    stream_id: str
    version: int
    event_id: str
    kind: str
    schema: int
    recorded_at: str
    actor: str
    causation_id: str | None
    event: Event
    prev_hash: str
    hash: str


class StreamInfo(msgspec.Struct, frozen=True):
    """A stream (run or branch) with its lineage and where it stands."""

    stream_id: str
    parent_id: str | None
    fork_version: int | None
    created_at: str
    head: int
    own_events: int
    last_kind: str | None
    last_recorded_at: str | None


class VerifyReport(msgspec.Struct, frozen=True):
    ok: bool
    events_checked: int
    first_bad_position: int | None = None
    reason: str = ""
    corruption: bool = False
    """SQLite itself found the file damaged (`integrity_check`, or an index that disagrees with
    its table): reads may return wrong data, whatever the chain says."""
    anchors_checked: int = 0


class _Prepared(msgspec.Struct, frozen=True):
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


class _Segment(msgspec.Struct, frozen=True):
    """A stream's own share of a lineage: its events with `version <= up_to` (None: all)."""

    stream_id: str
    up_to: int | None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def chain_hash(prev_hash: str, header: Sequence[Any], payload: bytes) -> str:
    """The hash of one row: SHA-256 over the previous hash, the envelope and the payload.

    The envelope is the JSON array `[position, stream_id, version, event_id, kind, schema,
    recorded_at, actor, causation_id]`; the payload's UTF-8 bytes follow a newline as stored
    (hashing them directly, not re-encoded inside the array, keeps appends fast).
    """
    digest = _EMPTY_SHA256.copy()  # copying a fresh hash skips OpenSSL's per-call setup
    digest.update(prev_hash.encode())
    digest.update(_header_encoder.encode(header))
    digest.update(b"\n")
    digest.update(payload)
    return digest.hexdigest()


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


@functools.lru_cache(maxsize=None)  # called with 1, 2, 4 ... 64 rows only
def _insert_statement(rows: int, caused: bool) -> str:
    """One INSERT of `rows` consecutive events of one stream.

    A statement of many rows binds fewer parameters and steps once: a batch cost about 15%
    less to insert than with `executemany` over one-row inserts. ?1 is the first row's
    position, ?2 the stream, ?3 the first version, ?4 the first prev_hash; positions and
    versions count up from there, and each later prev_hash is the previous row's hash
    parameter. Each row then binds event_id, kind, schema, recorded_at, actor, causation_id
    (only if `caused`: sqlite3 binds None through its adapter lookup, which costs about as
    much as a small event's hash, so a chunk without causation ids gets a literal NULL),
    payload and hash. The payload is bound as the encoder's UTF-8 bytes and cast to TEXT,
    which is what the audit views' json_extract reads, and cheaper than a Python str of it.
    """
    per_row = 8 if caused else 7
    values = []
    for k in range(rows):
        first = 5 + k * per_row  # the row's first parameter
        causation = f"?{first + 5}" if caused else "NULL"
        payload = first + per_row - 2
        prev_hash = f"?{first - 1}" if k else "?4"
        values.append(
            f"(?1 + {k}, ?2, ?3 + {k}, ?{first}, ?{first + 1}, ?{first + 2}, ?{first + 3}, ?{first + 4}, "
            f"{causation}, CAST(?{payload} AS TEXT), {prev_hash}, ?{payload + 1})"
        )
    return f"INSERT INTO events ({_COLUMNS}) VALUES {', '.join(values)}"


def _insert_chunks(prepared: list[_Prepared]) -> Iterator[list[_Prepared]]:
    """`prepared` in runs of 64 events, then of 32, 16 ... 1: few statements to compile and cache."""
    start = 0
    while start < len(prepared):
        size = min(_MAX_ROWS_PER_INSERT, 1 << (len(prepared) - start).bit_length() - 1)
        yield prepared[start : start + size]
        start += size


class EventStore:
    """An append-only, hash-chained event log in one SQLite file.

    Example:
        store = EventStore("apollo.db")
        store.append("run-1", [RunStarted(task_id="t", task="...")], expected_version=NO_STREAM)
        child = store.branch("run-1", at_version=1, reason="try another plan")

    One object may be shared between threads; every call takes an internal lock. Several
    processes may open the same file at once.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 60.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        synchronous: str = "NORMAL",
        checkpoint_every: int | None = DEFAULT_EVERY_BYTES,
        read_only: bool = False,
    ) -> None:
        """`checkpoint_every`: bytes written to the WAL (payloads, plus the pages every commit
        rewrites) between checkpoints run on a background thread (see `apollo_es.wal`); None
        leaves them all to the commits that cross SQLite's `wal_autocheckpoint`.

        `read_only` opens an existing store without changing anything in the file (no schema
        upgrade, no journal mode switch; SQLite refuses writes). A file that is an SQLite
        database but not an apollo-es store is refused either way, never converted. A store
        file this call created is removed again if setting it up fails (a full disk)."""
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = str(path)
        self.max_payload_bytes = max_payload_bytes
        self.read_only = read_only
        self._lock = threading.RLock()
        self._lineages: dict[str, tuple[_Segment, ...]] = {}
        in_memory = self.path == ":memory:"
        if read_only and (in_memory or not os.path.isfile(self.path)):
            raise StoreError(f"no store at {self.path}")
        created = not in_memory and not os.path.exists(self.path)
        self._wal = (
            WalCheckpointer(self.path, synchronous=synchronous.upper(), every_bytes=checkpoint_every)
            if not in_memory and checkpoint_every is not None and not read_only
            else None
        )
        # A store dropped without close() still stops its thread (which holds a connection).
        self._close_wal = weakref.finalize(self, self._wal.close) if self._wal is not None else None
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        try:
            self._set_up(busy_timeout, synchronous.upper())
        except BaseException:
            self.close()
            if created:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(OSError):
                        os.remove(self.path + suffix)
            raise

    def _set_up(self, busy_timeout: float, synchronous: str) -> None:
        with self._translate_errors():
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._check_is_store()
            if self.read_only:
                self._conn.execute("PRAGMA query_only = ON")
                self._page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
                return
            # Events are 1-4 KB: 16 KB pages hold several, so a batch writes fewer WAL frames and
            # checkpoints fewer pages than on 4 or 8 KB pages, while the few pages every commit
            # rewrites (index leaves, the last table leaf, their parents) stay small; 32 KB pages
            # wrote more in all. Takes effect only while the file is still empty, before WAL.
            self._conn.execute("PRAGMA page_size = 16384")
            # 16 MiB holds the pages appends revisit and a long stream being re-read. A bigger
            # cache only costs page faults while it fills (the first 64 MiB of appends, at 64 MiB).
            self._conn.execute("PRAGMA cache_size = -16384")
            # A multi-row INSERT keeps a statement journal (to undo itself alone if a later row
            # fails). SQLite spills one over 64 KiB to a temporary file, and the few 16 KB pages
            # an append rewrites are more than that: every commit created, wrote and deleted a
            # file. In memory that cost 8% of a batched append. Temp tables of this connection's
            # queries live in memory too; none of the store's own queries makes a large one.
            self._conn.execute("PRAGMA temp_store = MEMORY")
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
            if self._wal is not None and synchronous in {"OFF", "NORMAL"}:
                self._conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            self._create_schema()
            self._page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]

    def _check_is_store(self) -> None:
        """StoreError unless the file is empty or an apollo-es store (its `meta` names a format)."""
        tables = {name for (name,) in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if self.read_only:
                raise StoreError(f"{self.path} is not an apollo-es store (it is empty)")
            return
        found = self._conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() if "meta" in tables else None
        if found is None:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"{self.path} is an SQLite database but not an apollo-es store (tables: {shown}); "
                             "nothing was changed in it")

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        if self._close_wal is not None:
            self._close_wal()  # before the last connection closes, which checkpoints and drops the WAL
        with self._lock:
            self._conn.close()

    def wait_for_checkpoints(self, timeout: float | None = None) -> bool:
        """Wait until the background WAL checkpoints asked for so far are done; False on timeout.

        Nothing needs this for correctness. It lets a benchmark charge its own time with the
        checkpoints its appends caused, and a test see their effect.
        """
        return self._wal.wait(timeout) if self._wal is not None else True

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for read-only queries over the audit views."""
        return self._conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run a read query (for example over the audit views) under the store's lock."""
        with self._lock, self._translate_errors():
            return self._conn.execute(sql, params).fetchall()

    def _create_schema(self) -> None:
        with self._transaction() as conn:
            for statement in SCHEMA_SQL:
                conn.execute(statement)
            found = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if found is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (str(STORE_FORMAT),))
            elif int(found[0]) != STORE_FORMAT:
                raise StoreError(
                    f"{self.path} has store format {found[0]}, this apollo-es reads format {STORE_FORMAT}"
                )

    # -- writing ---------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        new_events: Iterable[Event | NewEvent],
        expected_version: int | ExpectedVersion = ANY,
        *,
        actor: str = "system",
    ) -> list[RecordedEvent]:
        """Append events to a stream atomically, creating it if needed.

        Returns the recorded envelopes in the order given. Raises `ConcurrencyError` when
        `expected_version` does not match, `InvalidEventError` for an event that would not
        decode back, and writes nothing in either case.
        """
        _check_stream_id(stream_id)
        _check_actor(actor)
        prepared = self._prepare(new_events, actor)
        if not prepared:
            return []
        if len({p.event_id for p in prepared}) != len(prepared):
            raise errors.DuplicateEventError("the same event id appears twice in one append")
        with self._transaction() as conn:
            # Only ids the caller chose can already be recorded; generated ones are new.
            known = self._existing(conn, stream_id, [p.event_id for p in prepared if p.chosen_id])
            fresh = [p for p in prepared if p.event_id not in known] if known else prepared
            inserted: list[RecordedEvent] = []
            if fresh:
                actual = self._head_or_zero(conn, stream_id)
                exists = actual > 0
                _check_expected(stream_id, expected_version, actual, exists)
                fork = self._fork_version(conn, stream_id) if exists else None
                for offset, p in enumerate(fresh, 1):
                    if problem := placement_problem(p.event, actual + offset, fork):
                        raise errors.InvalidEventError(f"{p.kind} at {stream_id!r} v{actual + offset}: {problem}")
                if not exists:
                    conn.execute(
                        "INSERT INTO streams (stream_id, parent_id, fork_version, created_at) VALUES (?, NULL, NULL, ?)",
                        (stream_id, utc_now()),
                    )
                inserted = self._insert(conn, stream_id, actual, fresh)
        self._wrote(fresh)
        if not known:  # the usual case: every event is new, and `inserted` is already in order
            return inserted
        known.update({r.event_id: r for r in inserted})
        return [known[p.event_id] for p in prepared]

    def branch(
        self,
        stream_id: str,
        at_version: int,
        new_stream_id: str | None = None,
        reason: str = "",
        *,
        actor: str = "system",
        then: Iterable[Event | NewEvent] = (),
    ) -> str:
        """Create a child stream that shares `stream_id`'s events up to `at_version`.

        Nothing is copied: the child records its parent and fork version, and its first own
        event is a `BranchCreated` (at version `at_version + 1`) saying who branched and why.
        Events in `then` (say, the guidance that motivated the branch) are appended right
        after it in the same transaction: the branch never exists without them.
        """
        _check_actor(actor)
        following = self._prepare(then, actor)
        with self._transaction() as conn:
            head = self._head_or_zero(conn, stream_id)
            if head == 0:
                raise StreamNotFound(f"no stream {stream_id!r}")
            if isinstance(at_version, bool) or not isinstance(at_version, int) or not 1 <= at_version <= head:
                raise errors.VersionOutOfRange(
                    f"cannot branch {stream_id!r} at version {at_version}: it has versions 1..{head}"
                )
            if new_stream_id is None:
                new_stream_id = self._free_branch_id(conn, stream_id)
            _check_stream_id(new_stream_id)
            if self._head_or_zero(conn, new_stream_id) > 0:
                raise errors.StreamExistsError(f"stream {new_stream_id!r} already exists")
            conn.execute(
                "INSERT INTO streams (stream_id, parent_id, fork_version, created_at) VALUES (?, ?, ?, ?)",
                (new_stream_id, stream_id, at_version, utc_now()),
            )
            marker = BranchCreated(parent_stream=stream_id, fork_version=at_version, reason=reason, created_by=actor)
            prepared = [*self._prepare([marker], actor), *following]
            if len({p.event_id for p in prepared}) != len(prepared):
                raise errors.DuplicateEventError("the same event id appears twice in one branch")
            self._existing(conn, new_stream_id, [p.event_id for p in following if p.chosen_id])  # raises if recorded
            self._insert(conn, new_stream_id, at_version, prepared)
        self._wrote(prepared)
        return new_stream_id

    def _prepare(self, items: Iterable[Event | NewEvent], default_actor: str) -> list[_Prepared]:
        """Validate and encode events before the transaction starts (no lock held)."""
        items = list(items)
        prepared = []
        # One generated id per event, made in one go; an event with a chosen id leaves its one unused.
        for item, generated_id in zip(items, new_event_ids(len(items))):
            if isinstance(item, NewEvent):
                event, event_id, actor, causation_id, recorded_at = (
                    item.event, item.event_id, item.actor, item.causation_id, item.recorded_at
                )
                if actor is not None:
                    _check_actor(actor)
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
            if len(payload) > self.max_payload_bytes:
                raise errors.PayloadTooLarge(
                    f"{kind} payload is {len(payload):,} bytes, over the limit of {self.max_payload_bytes:,}"
                )
            prepared.append(_Prepared(
                event_id or generated_id, kind, events.CURRENT_SCHEMA[kind], recorded_at,
                actor or default_actor, causation_id, payload, decoded, event_id is not None,
            ))
        return prepared

    def _insert(self, conn: sqlite3.Connection, stream_id: str, head: int, prepared: list[_Prepared]) -> list[RecordedEvent]:
        last = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
        position, prev_hash = last if last else (0, GENESIS_HASH)
        now = utc_now()
        recorded: list[RecordedEvent] = []
        version = head
        for chunk in _insert_chunks(prepared):
            caused = any(p.causation_id is not None for p in chunk)
            params = [position + 1, stream_id, version + 1, prev_hash]  # see _insert_statement
            for p in chunk:
                position += 1
                version += 1
                recorded_at = p.recorded_at or now
                header = (position, stream_id, version, p.event_id, p.kind, p.schema, recorded_at, p.actor, p.causation_id)
                digest = chain_hash(prev_hash, header, p.payload)
                if caused:
                    params += (p.event_id, p.kind, p.schema, recorded_at, p.actor, p.causation_id, p.payload, digest)
                else:
                    params += (p.event_id, p.kind, p.schema, recorded_at, p.actor, p.payload, digest)
                recorded.append(RecordedEvent(*header, p.event, prev_hash, digest))
                prev_hash = digest
            conn.execute(_insert_statement(len(chunk), caused), params)
        return recorded

    def _wrote(self, committed: list[_Prepared]) -> None:
        """Tell the checkpointer about a commit: its payloads plus the pages any commit rewrites
        (the last table leaf, index leaves, their parents, page 1), about 55 KB of WAL for a
        one-event commit at 16 KB pages."""
        if self._wal is not None and committed:
            self._wal.wrote(sum(len(p.payload) for p in committed) + _PAGES_PER_COMMIT * self._page_size)

    def _existing(self, conn: sqlite3.Connection, stream_id: str, event_ids: list[str]) -> dict[str, RecordedEvent]:
        found: dict[str, RecordedEvent] = {}
        for start in range(0, len(event_ids), _SQLITE_MAX_PARAMS):
            chunk = event_ids[start : start + _SQLITE_MAX_PARAMS]
            marks = ", ".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {_COLUMNS} FROM events WHERE event_id IN ({marks})", chunk):
                if row[1] != stream_id:
                    raise errors.DuplicateEventError(
                        f"event id {row[3]!r} is already recorded in stream {row[1]!r} at position {row[0]}"
                    )
                found[row[3]] = _to_recorded(row)
        return found

    def _free_branch_id(self, conn: sqlite3.Connection, stream_id: str) -> str:
        n = conn.execute("SELECT count(*) FROM streams WHERE parent_id = ?", (stream_id,)).fetchone()[0]
        while True:
            n += 1
            suffix = f"~b{n}"
            candidate = stream_id[: 200 - len(suffix)] + suffix
            if conn.execute("SELECT 1 FROM streams WHERE stream_id = ?", (candidate,)).fetchone() is None:
                return candidate

    # -- reading ---------------------------------------------------------------------

    def head(self, stream_id: str) -> int:
        """The stream's latest version, inherited events included. Raises `StreamNotFound`."""
        with self._lock, self._translate_errors():
            head = self._head_or_zero(self._conn, stream_id)
        if head == 0:
            raise StreamNotFound(f"no stream {stream_id!r}")
        return head

    def exists(self, stream_id: str) -> bool:
        with self._lock, self._translate_errors():
            return self._head_or_zero(self._conn, stream_id) > 0

    def read(self, stream_id: str, up_to: int | None = None) -> list[RecordedEvent]:
        """The stream's events in version order: its ancestors' up to each fork, then its own."""
        if up_to is not None and up_to < 0:
            raise errors.VersionOutOfRange(f"up_to must be >= 0, got {up_to}")
        with self._lock, self._translate_errors():
            result: list[RecordedEvent] = []
            for segment in self._lineage(stream_id):
                bound = segment.up_to if up_to is None else min(up_to, segment.up_to or up_to)
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version <= ? ORDER BY version",
                    (segment.stream_id, bound if bound is not None else 2**62),
                ).fetchall()
                result.extend(_to_recorded(row) for row in rows)
            return result

    def event(self, stream_id: str, version: int) -> RecordedEvent:
        """The event at `version` of a stream (possibly inherited from an ancestor)."""
        head = self.head(stream_id)
        if not 1 <= version <= head:
            raise errors.VersionOutOfRange(f"stream {stream_id!r} has versions 1..{head}, not {version}")
        with self._lock, self._translate_errors():
            for segment in self._lineage(stream_id):
                if segment.up_to is None or version <= segment.up_to:
                    row = self._conn.execute(
                        f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version = ?",
                        (segment.stream_id, version),
                    ).fetchone()
                    if row is not None:
                        return _to_recorded(row)
        raise StoreError(f"stream {stream_id!r} is missing version {version}; run verify")

    def read_all(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events of every stream with `position > after`, in position order."""
        with self._lock, self._translate_errors():
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (after, -1 if limit is None else limit),
            ).fetchall()
            return [_to_recorded(row) for row in rows]

    def last_position(self) -> int:
        with self._lock, self._translate_errors():
            return self._conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]

    def streams(self) -> list[StreamInfo]:
        """Every stream with its parent, fork version, head and latest own event."""
        with self._lock, self._translate_errors():
            rows = self._conn.execute(
                """
                WITH own AS (
                    SELECT stream_id, max(version) AS head, count(*) AS n, max(position) AS last
                    FROM events GROUP BY stream_id
                )
                SELECT s.stream_id, s.parent_id, s.fork_version, s.created_at,
                       coalesce(own.head, s.fork_version, 0), coalesce(own.n, 0), e.kind, e.recorded_at
                FROM streams s
                LEFT JOIN own ON own.stream_id = s.stream_id
                LEFT JOIN events e ON e.position = own.last
                ORDER BY s.created_at, s.stream_id
                """
            ).fetchall()
        return [StreamInfo(*row) for row in rows]

    def lineage(self, stream_id: str) -> list[tuple[str, int | None]]:
        """(stream id, fork version taken from it) from the root down to `stream_id` (None for itself)."""
        with self._lock, self._translate_errors():
            return [(s.stream_id, s.up_to) for s in self._lineage(stream_id)]

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
            time.sleep(poll_interval)

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
            await anyio.sleep(poll_interval)

    def checkpoint(self, name: str) -> tuple[int, str] | None:
        """(position, fingerprint) a projection named `name` has processed up to, if any."""
        with self._lock, self._translate_errors():
            row = self._conn.execute(
                "SELECT position, fingerprint FROM projection_checkpoints WHERE name = ?", (name,)
            ).fetchone()
        return tuple(row) if row else None

    def save_checkpoint(self, name: str, position: int, fingerprint: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO projection_checkpoints (name, position, fingerprint, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
                "fingerprint = excluded.fingerprint, updated_at = excluded.updated_at",
                (name, position, fingerprint, utc_now()),
            )

    def acquire_lease(self, stream_id: str, holder: str, seconds: float, *, take_over: str | None = None) -> Lease | None:
        """Hold `stream_id` for `seconds` as `holder`: the held lease, or None if another holds it.

        One transaction reads and writes, so of two agents starting on one run only one gets
        it; the holder renews it by acquiring again before it runs out. `take_over` names a
        holder known to be dead whose lease may be taken before it runs out.
        """
        with self._transaction() as conn:
            row = conn.execute("SELECT holder, expires_at FROM leases WHERE stream_id = ?", (stream_id,)).fetchone()
            now = time.time()
            if row is not None and row[0] not in (holder, take_over) and row[1] > now:
                return None
            conn.execute(
                "INSERT INTO leases (stream_id, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (stream_id) "
                "DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (stream_id, holder, now + seconds),
            )
        return Lease(stream_id=stream_id, holder=holder, expires_at=now + seconds)

    def release_lease(self, stream_id: str, holder: str) -> None:
        """Let go of `stream_id`, if `holder` holds it."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM leases WHERE stream_id = ? AND holder = ?", (stream_id, holder))

    def leases(self) -> dict[str, Lease]:
        """The leases not yet run out, by stream."""
        with self._lock, self._translate_errors():
            if self.read_only and not self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'leases'").fetchone():
                return {}  # a store from before leases, opened without upgrading it
            rows = self._conn.execute("SELECT stream_id, holder, expires_at FROM leases WHERE expires_at > ?", (time.time(),))
            return {row[0]: Lease(stream_id=row[0], holder=row[1], expires_at=row[2]) for row in rows}

    def stream_positions(self) -> dict[str, int]:
        """Each stream's newest own position (a branch with no own events is absent)."""
        with self._lock, self._translate_errors():
            return dict(self._conn.execute("SELECT stream_id, max(position) FROM events GROUP BY stream_id"))

    # -- integrity -------------------------------------------------------------------

    def verify(
        self,
        progress: Callable[[int], None] | None = None,
        *,
        anchors: Sequence[tuple[str, int]] = (),
        fast: bool = False,
    ) -> VerifyReport:
        """Check the file, then walk the whole log and report the first row that breaks the
        chain or the stream rules, then check the anchors.

        1. SQLite's `integrity_check` (`quick_check` with `fast`: no index-content check): a
           damaged page or index can make reads return wrong data with every row intact.
        2. The walk catches edits made around the triggers (a changed byte anywhere in a
           row), deleted or reordered rows, version gaps, rows that break the placement and
           identifier rules, and branch rows that disagree with their `BranchCreated`.
        3. Each stream read through its `(stream_id, version)` index must give what the walk
           counted, as `read` would.
        4. `anchors`: (hash, position) pairs kept elsewhere (`stats()` gives the head's). The
           row at each position must still have that hash: the log still extends what was
           anchored, which catches deleted newest rows and a chain re-hashed after an edit.
        """
        damage = self._sqlite_check("quick_check" if fast else "integrity_check")
        if damage:
            return VerifyReport(ok=False, events_checked=0, reason=f"SQLite reports the file damaged: {damage}",
                                corruption=True)
        report = self._walk(progress)
        if not report.ok:
            return report
        index_problem = self._index_problem(report.events_checked)
        if index_problem:
            return msgspec.structs.replace(report, ok=False, reason=index_problem, corruption=True)
        for anchored_hash, position in anchors:
            problem = self._anchor_problem(anchored_hash, position)
            if problem:
                return msgspec.structs.replace(report, ok=False, first_bad_position=position, reason=problem)
        return msgspec.structs.replace(report, anchors_checked=len(anchors))

    def _sqlite_check(self, pragma: str) -> str:
        with self._lock, self._translate_errors():
            found = [row[0] for row in self._conn.execute(f"PRAGMA {pragma}")]
        return "" if found == ["ok"] else "; ".join(found[:5])

    def _index_problem(self, walked: int) -> str:
        """Why reading streams through their index would not give the rows the walk saw, or ''."""
        with self._lock, self._translate_errors():
            streams = [row[0] for row in self._conn.execute("SELECT stream_id FROM streams")]
            total = 0
            for stream_id in streams:
                # As `read` does: the index gives the rows' ids, the table the rows (a column the
                # index lacks forces that step), so a damaged id in the index shows here.
                rows = self._conn.execute(
                    "SELECT stream_id, version, hash FROM events WHERE stream_id = ? ORDER BY version", (stream_id,)
                ).fetchall()
                total += len(rows)
                versions = [row[1] for row in rows]
                if not rows or any(row[0] != stream_id for row in rows) or versions != list(range(versions[0], versions[0] + len(rows))):
                    return f"stream {stream_id!r} read through its index gives wrong rows: the index is damaged"
        if total != walked:
            return f"the (stream_id, version) index holds {total} rows, the table {walked}: the index is damaged"
        return ""

    def _anchor_problem(self, anchored_hash: str, position: int) -> str:
        with self._lock, self._translate_errors():
            row = self._conn.execute("SELECT hash FROM events WHERE position = ?", (position,)).fetchone()
        if row is None:
            return f"anchor {anchored_hash[:12]}…@{position}: the log no longer reaches position {position} (rows deleted)"
        if row[0] != anchored_hash:
            return f"anchor {anchored_hash[:12]}…@{position}: the row there has another hash (the log was rewritten)"
        return ""

    def _walk(self, progress: Callable[[int], None] | None) -> VerifyReport:
        with self._lock, self._translate_errors():
            forks = {sid: (parent, fork) for sid, parent, fork in self._conn.execute(
                "SELECT stream_id, parent_id, fork_version FROM streams"
            )}
            last_version: dict[str, int] = {}
            prev_hash, checked = GENESIS_HASH, 0
            # Payloads as bytes: a flipped bit may leave text that is not UTF-8, which must be
            # reported as a bad row, not raised from the driver's text decoding.
            columns = _COLUMNS.replace("payload", "CAST(payload AS BLOB)")
            cursor = self._conn.execute(f"SELECT {columns} FROM events ORDER BY position")
            for row in cursor:
                checked += 1
                problem = _row_problem(row, checked, prev_hash, forks, last_version)
                if problem:
                    return VerifyReport(ok=False, events_checked=checked, first_bad_position=row[0], reason=problem)
                last_version[row[1]] = row[2]
                prev_hash = row[11]
                if progress is not None and checked % 10_000 == 0:
                    progress(checked)
            return VerifyReport(ok=True, events_checked=checked)

    def stats(self) -> dict[str, Any]:
        """Counts an operator wants at a glance, and the head hash to anchor the chain elsewhere."""
        with self._lock, self._translate_errors():
            conn = self._conn
            by_kind = dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind"))
            streams, branches = conn.execute("SELECT count(*), count(parent_id) FROM streams").fetchone()
            last = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            costs = self._costs(conn)
            spent = sum(costs.values()) if costs else None
        return {
            "path": self.path,
            "events": sum(by_kind.values()),
            "streams": streams,
            "runs": streams - branches,
            "branches": branches,
            "events_by_kind": by_kind,
            "last_position": last[0] if last else 0,
            "head_hash": last[1] if last else GENESIS_HASH,
            "anchor": f"{last[1]}@{last[0]}" if last else "",
            "database_bytes": page_count * page_size,
            "cost_usd": spent,
        }

    def costs(self) -> dict[str, float]:
        """Dollars recorded per stream for its own model calls (actions with the answers they
        dropped, summaries, verdicts); streams with no priced call are absent."""
        with self._lock, self._translate_errors():
            return self._costs(self._conn)

    @staticmethod
    def _costs(conn: sqlite3.Connection) -> dict[str, float]:
        rows = conn.execute(
            "SELECT stream_id, sum(cost) FROM ("
            " SELECT stream_id, json_extract(payload, '$.cost_usd') AS cost FROM events"
            " WHERE kind IN ('AgentActed', 'ContextSummarized', 'ActionJudged')"
            " UNION ALL SELECT e.stream_id, json_extract(d.value, '$.cost_usd') FROM events e, json_each(e.payload, '$.discarded') d"
            " WHERE e.kind = 'AgentActed'"
            ") WHERE cost IS NOT NULL GROUP BY stream_id"
        )
        return dict(rows)

    # -- internals -------------------------------------------------------------------

    def _lineage(self, stream_id: str) -> tuple[_Segment, ...]:
        """Root-first segments of a stream; cached, because a stream's parent never changes."""
        cached = self._lineages.get(stream_id)
        if cached is not None:
            return cached
        segments: list[_Segment] = []
        current, up_to = stream_id, None
        while current is not None:
            row = self._conn.execute(
                "SELECT parent_id, fork_version FROM streams WHERE stream_id = ?", (current,)
            ).fetchone()
            if row is None:
                raise StreamNotFound(f"no stream {stream_id!r}")
            segments.append(_Segment(current, up_to))
            current, fork = row
            # A branch may fork below its parent's own fork point: the tightest bound wins.
            up_to = fork if up_to is None or fork is None else min(up_to, fork)
        lineage = tuple(reversed(segments))
        self._lineages[stream_id] = lineage
        return lineage

    @staticmethod
    def _fork_version(conn: sqlite3.Connection, stream_id: str) -> int | None:
        row = conn.execute("SELECT fork_version FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
        return row[0] if row else None

    def _head_or_zero(self, conn: sqlite3.Connection, stream_id: str) -> int:
        row = conn.execute(
            """
            SELECT coalesce((SELECT max(version) FROM events WHERE stream_id = s.stream_id), s.fork_version, 0)
            FROM streams s WHERE s.stream_id = ?
            """,
            (stream_id,),
        ).fetchone()
        return row[0] if row else 0

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _translate_errors(self) -> _TranslateErrors:
        return _TranslateErrors(self.path)


class _TranslateErrors:
    """Re-raise sqlite3 errors as the project's own, keeping the original as the cause."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or not isinstance(exc, sqlite3.Error):
            return
        message = str(exc)
        if "locked" in message or "busy" in message:
            raise errors.StoreBusyError(f"the store at {self.path} stayed locked past the busy timeout") from exc
        raise StoreError(f"store {self.path}: {message}") from exc


class _Transaction:
    """`BEGIN IMMEDIATE ... COMMIT` under the store's lock; rolls back on any exception."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.translate = _TranslateErrors(store.path)

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        try:
            with self.translate:
                self.store._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store._lock.release()
            raise
        return self.store._conn

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        conn = self.store._conn
        try:
            with self.translate:
                if exc is None:
                    conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")
        finally:
            self.store._lock.release()
        if exc is not None:
            self.translate.__exit__(exc_type, exc, tb)


def _to_recorded(row: Sequence[Any]) -> RecordedEvent:
    position, stream_id, version, event_id, kind, schema, recorded_at, actor, causation_id, payload, prev, digest = row
    try:
        event = events.decode(kind, schema, payload)
    except events.EventError as exc:
        raise StoreError(f"position {position} ({stream_id} v{version}) does not decode: {exc}") from exc
    return RecordedEvent(position, stream_id, version, event_id, kind, schema, recorded_at, actor, causation_id, event, prev, digest)


def _row_problem(
    row: Sequence[Any],
    expected_position: int,
    prev_hash: str,
    forks: dict[str, tuple[str | None, int | None]],
    last_version: dict[str, int],
) -> str:
    """Why this row breaks the log, or '' if it is sound."""
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


def _check_stream_id(stream_id: str) -> None:
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        raise errors.InvalidStreamIdError(
            f"invalid stream id {stream_id!r}: use 1-200 letters, digits and ._:~@/+=- , starting with a letter or digit"
        )


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not _ACTOR.fullmatch(actor):
        raise errors.InvalidEventError(
            f"invalid actor {actor!r}: use agent, system, human:<name>, judge:<id> or import:<format>"
        )


def _check_expected(stream_id: str, expected: int | ExpectedVersion, actual: int, exists: bool) -> None:
    if expected is ANY:
        return
    if expected is NO_STREAM:
        if exists:
            raise ConcurrencyError(stream_id, NO_STREAM, actual)
        return
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise TypeError(f"expected_version must be an int, ANY or NO_STREAM, not {expected!r}")
    if expected != actual:
        raise ConcurrencyError(stream_id, expected, actual)
