"""The PostgreSQL backend: one log shared by many hosts, same contract as SQLite.

Positions: `log_head` is a one-row table (last position, last hash). An append locks that
row as its *last* step before inserting, so the row lock is held from the moment positions
are taken until commit. The next writer cannot take positions before this one commits or
rolls back, hence positions are gapless (a rollback restores the counter) and commit order
equals position order: a reader tailing `position > n` never sees n + 2 before n + 1 is
visible, so it never skips an event. (A sequence would leave gaps and commit out of order;
`LOCK TABLE events IN EXCLUSIVE MODE`, as the eventsourcing library does, would hold a
table lock for the whole transaction.)

The client does everything that does not need a position first, without a lock and without
a transaction: validation, encoding, the idempotency lookup, reading the stream's head and
checking the expected version and the event invariants against it. Then one statement,
`apollo_es_append(...)` (`postgres_schema.py`), run in autocommit, takes the stream's lock,
checks that its head has not moved since (if it has, the append starts over, or fails with
`ConcurrencyError` when a version was expected), takes the positions, hashes the batch with
the server's `sha256`, inserts it and queues a NOTIFY; the server commits at once. So no
client round trip happens while the log head is held. An append is two round trips (the
head, the statement), three when the caller chose event ids (they are looked up first). A
branch claims its stream row and appends in one transaction, so its COMMIT is one round trip
under the lock; branches are rare.

Subscriptions poll `read_all`, woken early by NOTIFY: one listening connection per process
and database (`_Listener`) wakes every waiting subscriber, threads and asyncio tasks alike.
If that connection is lost, subscribers fall back to polling while it reconnects, and every
subscriber re-reads from the last position it yielded, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import anyio

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from apollo_es import errors
from apollo_es.errors import StoreError
from apollo_es.stores.base import (
    COLUMNS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    LineageReads,
    Prepared,
    anchor_problem,
    branch_id_candidates,
    check_actor,
    check_branch_point,
    check_extends,
    check_expected,
    check_placement,
    check_stream_id,
    check_unique_ids,
    duplicate_elsewhere,
    envelope_tail,
    in_given_order,
    prepare,
    prepare_append,
    stats_dict,
    to_recorded,
    utc_now,
    walk_chain,
)
from apollo_es.stores.postgres_schema import CHANNEL, PG_SCHEMA_SQL, SCHEMA_DIGEST, STORE_FORMAT
from events import BranchCreated, Event
from events.envelope import ANY, ExpectedVersion, Lease, NewEvent, RecordedEvent, StreamInfo, TimelineRow, VerifyReport

__all__ = ["PostgresStore"]

# Arrays go in binary (%b): psycopg's text format escapes every element with a regex, which
# took 60% of a 500-event append's time.
_APPEND = (
    "SELECT * FROM apollo_es_append(%b, %b::bigint, %b, %b::text[], %b::text[], %b::int[], %b::text[], %b::text[],"
    " %b::text[], %b::text[], %b::text[])"
)
_INSERT_STORED = (
    f"INSERT INTO events ({COLUMNS}) SELECT * FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::text[],"
    " %b::text[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
)
_STORED_COLUMNS = COLUMNS.replace("payload", "convert_to(payload, 'UTF8')")
_PING_AFTER_IDLE_S = 2.0
_SERVER_NOW = "extract(epoch FROM clock_timestamp())"  # leases expire by the server's clock
_STREAM_MOVED = "AP001"  # raised by apollo_es_append when the stream's head is not the one checked
_MAX_STARTS = 100
_HEAD = """
    SELECT coalesce((SELECT max(version) FROM events WHERE stream_id = s.stream_id), s.fork_version, 0), s.fork_version
    FROM streams s WHERE s.stream_id = %s
"""


class PostgresStore(LineageReads):
    """The event log in a PostgreSQL database (`postgresql://user@host/db`).

    One object may be shared between threads: each call takes a connection from a pool.
    Any number of processes on any number of hosts may open the same database.
    `lock_timeout` (seconds) bounds the wait for another writer's locks (`StoreBusyError`).
    """

    def __init__(
        self,
        url: str,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        read_only: bool = False,
        pool_size: int = 4,
        lock_timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.path = url
        self.max_payload_bytes = max_payload_bytes
        self.read_only = read_only
        self._lineages = {}
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        timeout_ms = int(lock_timeout * 1000)

        def configure(conn: psycopg.Connection) -> None:
            conn.execute(f"SET lock_timeout = {timeout_ms}")
            if read_only:
                conn.execute("SET default_transaction_read_only = on")

        # A connection that sat in the pool a while is pinged before use: the server may have
        # restarted or ended it meanwhile, and the call that got it would fail. A busy
        # connection is not, which keeps appends at two round trips.
        returned: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()

        def check(conn: psycopg.Connection) -> None:
            if time.monotonic() - returned.get(conn, 0.0) > _PING_AFTER_IDLE_S:
                psycopg_pool.ConnectionPool.check_connection(conn)

        def reset(conn: psycopg.Connection) -> None:
            returned[conn] = time.monotonic()

        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, configure=configure, open=False,
            timeout=lock_timeout, check=check, reset=reset,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
            self._set_up()
        except psycopg_pool.PoolTimeout as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to the store at {_safe(url)} within {connect_timeout:g} s") from exc
        except BaseException:
            self._pool.close()
            raise

    def _set_up(self) -> None:
        with self._translate(), self._pool.connection() as conn:
            if self.read_only:
                found = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
                if not found:
                    raise StoreError(f"no store at {_safe(self.path)}")
            elif self._schema_digest(conn) != SCHEMA_DIGEST:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('apollo_es schema'))")
                    for statement in PG_SCHEMA_SQL:
                        conn.execute(statement)
                    conn.execute("INSERT INTO meta VALUES ('format', %s) ON CONFLICT DO NOTHING", (str(STORE_FORMAT),))
                    conn.execute("INSERT INTO meta VALUES ('ddl', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                                 (SCHEMA_DIGEST,))
            found = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if found is None or int(found[0]) != STORE_FORMAT:
                raise StoreError(f"{_safe(self.path)} has store format {found and found[0]}, "
                                 f"this apollo-es reads format {STORE_FORMAT}")

    @staticmethod
    def _schema_digest(conn: psycopg.Connection) -> str | None:
        """The `ddl` digest the database's schema was made with (None for an empty database)."""
        if not conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'ddl'").fetchone()
        return row[0] if row else None

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                self._listener.release()
                self._listener = None
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """Re-raise driver errors as the project's own, keeping the original as the cause."""
        try:
            yield
        except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled, pg_errors.SerializationFailure,
                pg_errors.DeadlockDetected, psycopg_pool.PoolTimeout) as exc:
            raise errors.StoreBusyError(f"the store at {_safe(self.path)} stayed locked past the lock timeout") from exc
        except psycopg.Error as exc:
            raise StoreError(f"store {_safe(self.path)}: {exc}") from exc

    @contextlib.contextmanager
    def _cursor(self, transaction: bool = False) -> Iterator[psycopg.Cursor]:
        with self._translate(), self._pool.connection() as conn:
            if transaction:
                with conn.transaction():
                    yield conn.cursor()
            else:
                yield conn.cursor()

    # -- writing ---------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        new_events: Iterable[Event | NewEvent],
        expected_version: int | ExpectedVersion = ANY,
        *,
        actor: str = "system",
    ) -> list[RecordedEvent]:
        """Append events to a stream atomically, creating it if needed (see `Store.append`).

        A retry with the same event ids (after a lost connection) returns the stored envelopes.
        If a concurrent writer records one of the ids between the lookup and the insert, the
        unique index refuses this transaction and it is tried once more, finding them stored.
        """
        prepared = prepare_append(stream_id, new_events, actor, self.max_payload_bytes)
        if not prepared:
            return []
        try:
            return self._append_once(stream_id, prepared, expected_version)
        except StoreError as exc:
            if not isinstance(exc.__cause__, pg_errors.UniqueViolation) or not any(p.chosen_id for p in prepared):
                raise
            return self._append_once(stream_id, prepared, expected_version)

    def _append_once(self, stream_id: str, prepared: list[Prepared], expected: int | ExpectedVersion) -> list[RecordedEvent]:
        """Look up and check without a lock, then append in one statement; start over if the
        stream moved in between (with an expected version, that is a `ConcurrencyError`)."""
        with self._translate(), self._pool.connection() as conn:
            cur = conn.cursor()
            for _ in range(_MAX_STARTS):
                known = self._existing(cur, stream_id, [p.event_id for p in prepared if p.chosen_id])
                fresh = [p for p in prepared if p.event_id not in known] if known else prepared
                if not fresh:
                    return in_given_order(prepared, known, [])
                actual, fork = cur.execute(_HEAD, (stream_id,)).fetchone() or (0, None)
                check_expected(stream_id, expected, actual)
                check_placement(stream_id, fresh, actual, fork)
                try:
                    inserted = self._insert(cur, stream_id, actual, fresh)
                except psycopg.Error as exc:
                    if exc.sqlstate != _STREAM_MOVED:
                        raise
                    continue
                return in_given_order(prepared, known, inserted)
        raise errors.StoreBusyError(f"stream {stream_id!r} kept moving: {_MAX_STARTS} appends in a row lost the race")

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
        """Create a child stream sharing `stream_id`'s events up to `at_version` (see `Store.branch`).

        Generated ids are claimed with `INSERT ... ON CONFLICT DO NOTHING`, so two hosts
        branching the same run at once get different ids instead of an error."""
        check_actor(actor)
        following = prepare(then, actor, self.max_payload_bytes)
        with self._cursor(transaction=True) as cur:
            check_branch_point(stream_id, at_version, self._head_or_zero(cur, stream_id))
            if new_stream_id is not None:
                check_stream_id(new_stream_id)
                candidates: Iterable[str] = [new_stream_id]
            else:
                siblings = cur.execute("SELECT count(*) FROM streams WHERE parent_id = %s", (stream_id,)).fetchone()[0]
                candidates = branch_id_candidates(stream_id, siblings)
            for candidate in candidates:
                check_stream_id(candidate)
                claimed = cur.execute(
                    "INSERT INTO streams (stream_id, parent_id, fork_version, created_at) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING RETURNING stream_id", (candidate, stream_id, at_version, utc_now()),
                ).fetchone()
                if claimed:
                    new_stream_id = candidate
                    break
                if new_stream_id is not None:
                    raise errors.StreamExistsError(f"stream {new_stream_id!r} already exists")
            assert new_stream_id is not None
            marker = BranchCreated(parent_stream=stream_id, fork_version=at_version, reason=reason, created_by=actor)
            prepared = [*prepare([marker], actor, self.max_payload_bytes), *following]
            check_unique_ids(prepared, "branch")
            self._existing(cur, new_stream_id, [p.event_id for p in following if p.chosen_id])  # raises if recorded
            self._insert(cur, new_stream_id, at_version, prepared)
        return new_stream_id

    def _insert(self, cur: psycopg.Cursor, stream_id: str, head: int, prepared: list[Prepared]) -> list[RecordedEvent]:
        """Append `prepared` after version `head` with `apollo_es_append` (positions, hashes, notify)."""
        now = utc_now()
        headers = [(stream_id, head + offset, p.event_id, p.kind, p.schema, p.recorded_at or now, p.actor, p.causation_id)
                   for offset, p in enumerate(prepared, 1)]
        first, prev_hash, digests = cur.execute(_APPEND, (
            stream_id, head, now, [p.event_id for p in prepared], [p.kind for p in prepared], [p.schema for p in prepared],
            [h[5] for h in headers], [p.actor for p in prepared], [p.causation_id for p in prepared],
            [p.payload.decode() for p in prepared], [envelope_tail(h) for h in headers],
        )).fetchone()
        recorded = []
        for position, header, p, digest in zip(range(first, first + len(prepared)), headers, prepared, digests):
            recorded.append(RecordedEvent(position, *header, p.event, prev_hash, digest))
            prev_hash = digest
        return recorded

    def _existing(self, cur: psycopg.Cursor, stream_id: str, event_ids: list[str]) -> dict[str, RecordedEvent]:
        if not event_ids:
            return {}
        found: dict[str, RecordedEvent] = {}
        for row in cur.execute(f"SELECT {COLUMNS} FROM events WHERE event_id = ANY(%s)", (event_ids,)):
            duplicate_elsewhere(row, stream_id)
            found[row[3]] = to_recorded(row)
        return found

    # -- reading ---------------------------------------------------------------------

    @staticmethod
    def _head_or_zero(cur: psycopg.Cursor, stream_id: str) -> int:
        row = cur.execute(_HEAD, (stream_id,)).fetchone()
        return row[0] if row else 0

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._cursor() as cur:
            return cur.execute(sql, params).fetchall()

    def head(self, stream_id: str) -> int:
        """The stream's latest version, inherited events included. Raises `StreamNotFound`."""
        with self._cursor() as cur:
            head = self._head_or_zero(cur, stream_id)
        if head == 0:
            raise errors.StreamNotFound(f"no stream {stream_id!r}")
        return head

    def exists(self, stream_id: str) -> bool:
        with self._cursor() as cur:
            return self._head_or_zero(cur, stream_id) > 0

    def _parent_row(self, stream_id: str) -> tuple[str | None, int | None] | None:
        rows = self._all("SELECT parent_id, fork_version FROM streams WHERE stream_id = %s", (stream_id,))
        return rows[0] if rows else None

    def _own_rows(self, stream_id: str, up_to: int | None) -> list[Sequence[Any]]:
        return self._all(f"SELECT {COLUMNS} FROM events WHERE stream_id = %s AND version <= %s ORDER BY version",
                         (stream_id, up_to if up_to is not None else 2**62))

    def _own_row(self, stream_id: str, version: int) -> Sequence[Any] | None:
        rows = self._all(f"SELECT {COLUMNS} FROM events WHERE stream_id = %s AND version = %s", (stream_id, version))
        return rows[0] if rows else None

    def read_all(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events of every stream with `position > after`, in position order."""
        rows = self._all(f"SELECT {COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s", (after, limit))
        return [to_recorded(row) for row in rows]

    def last_position(self) -> int:
        return self._all("SELECT coalesce(max(position), 0) FROM events")[0][0]

    def streams(self) -> list[StreamInfo]:
        """Every stream with its parent, fork version, head and latest own event."""
        rows = self._all(
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
        )
        return [StreamInfo(*row) for row in rows]

    def stream_positions(self) -> dict[str, int]:
        """Each stream's newest own position (a branch with no own events is absent)."""
        return dict(self._all("SELECT stream_id, max(position) FROM events GROUP BY stream_id"))

    def events_by_ids(self, event_ids: Iterable[str]) -> dict[str, RecordedEvent]:
        """The recorded events with these ids, by id (ids not recorded are absent)."""
        rows = self._all(f"SELECT {COLUMNS} FROM events WHERE event_id = ANY(%s)", (list(event_ids),))
        return {row[3]: to_recorded(row) for row in rows}

    def caused_by(self, causation_ids: Iterable[str], kinds: Sequence[str] = ()) -> list[RecordedEvent]:
        """Events whose `causation_id` is one of these (of `kinds`, if given), in position order."""
        rows = self._all(
            f"SELECT {COLUMNS} FROM events WHERE causation_id = ANY(%s) AND (%s OR kind = ANY(%s)) ORDER BY position",
            (list(causation_ids), not kinds, list(kinds)),
        )
        return [to_recorded(row) for row in rows]

    def timeline(
        self,
        run_id: str,
        *,
        kinds: Sequence[str] = (),
        actors: Sequence[str] = (),
        since: str | None = None,
        after_version: int = 0,
        limit: int | None = None,
    ) -> list[TimelineRow]:
        """A run's events through the `timeline` view (see `SQLiteStore.timeline`); `actors`
        are glob patterns, matched as LIKE patterns here."""
        self.head(run_id)  # raises StreamNotFound for an unknown run
        rows = self._all(
            "SELECT run_id, version, kind, actor, recorded_at, coalesce(summary, ''), stream_id, position, event_id,"
            " causation_id FROM timeline WHERE run_id = %s AND version > %s AND (%s OR kind = ANY(%s))"
            " AND (%s OR actor LIKE ANY(%s)) AND (%s::text IS NULL OR recorded_at >= %s)"
            " ORDER BY version DESC LIMIT %s",
            (run_id, after_version, not kinds, list(kinds), not actors, [_glob_to_like(a) for a in actors],
             since or None, since or None, limit),
        )
        return [TimelineRow(*row) for row in reversed(rows)]

    # -- subscriptions ---------------------------------------------------------------

    def _listening(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener.share(self.path)
            return self._listener

    def _wait_for_news(self, position: int, timeout: float) -> None:
        """Wait until an append past `position` is announced, or `timeout` s (then poll)."""
        self._listening().wait(position, timeout)

    async def _await_news(self, position: int, timeout: float) -> None:
        await self._listening().await_news(position, timeout)

    # -- moving a log ----------------------------------------------------------------

    def stored_rows(self, after: int = 0, limit: int = 1000) -> list[tuple]:
        """Rows exactly as stored, payloads as bytes, in position order (for `stores.copy`)."""
        return self._all(f"SELECT {_STORED_COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s",
                         (after, limit))

    def append_stored(self, streams: Sequence[StreamInfo], rows: Sequence[Sequence[Any]]) -> None:
        """Add rows copied byte for byte from another log, with the stream records they need,
        in one transaction under the log head's lock. Each row must continue this log exactly,
        or nothing is written."""
        if not rows:
            return
        columns = [list(column) for column in zip(*rows)]
        try:
            columns[9] = [bytes(payload).decode() for payload in columns[9]]
        except UnicodeDecodeError as exc:
            raise StoreError(f"a copied payload is not UTF-8: {exc}") from exc
        with self._cursor(transaction=True) as cur:
            position, head_hash = cur.execute("SELECT position, hash FROM log_head FOR UPDATE").fetchone()
            check_extends(position, head_hash, rows, _safe(self.path))
            cur.executemany(
                "INSERT INTO streams (stream_id, parent_id, fork_version, created_at) VALUES (%s, %s, %s, %s)",
                [(info.stream_id, info.parent_id, info.fork_version, info.created_at) for info in streams],
            )
            cur.execute(_INSERT_STORED, columns)
            cur.execute("UPDATE log_head SET position = %s, hash = %s", (rows[-1][0], rows[-1][11]))
            cur.execute("SELECT pg_notify(%s, current_schema() || ' ' || %s)", (CHANNEL, str(rows[-1][0])))

    # -- derived state outside the chain --------------------------------------------

    def checkpoint(self, name: str) -> tuple[int, str] | None:
        """(position, fingerprint) a projection named `name` has processed up to, if any."""
        rows = self._all("SELECT position, fingerprint FROM projection_checkpoints WHERE name = %s", (name,))
        return tuple(rows[0]) if rows else None

    def save_checkpoint(self, name: str, position: int, fingerprint: str) -> None:
        self._all(
            "INSERT INTO projection_checkpoints (name, position, fingerprint, updated_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position, fingerprint = excluded.fingerprint,"
            " updated_at = excluded.updated_at RETURNING 1",
            (name, position, fingerprint, utc_now()),
        )

    def acquire_lease(self, stream_id: str, holder: str, seconds: float, *, take_over: str | None = None) -> Lease | None:
        """Hold `stream_id` for `seconds` as `holder`: the held lease, or None if another holds it.

        One statement inserts or takes over the row only where it is free, ours, `take_over`'s
        or run out, so of two hosts starting on one run only one gets it. Times are the
        server's clock, so a host whose clock runs ahead cannot judge a live lease run out."""
        rows = self._all(
            f"INSERT INTO leases (stream_id, holder, expires_at) VALUES (%s, %s, {_SERVER_NOW} + %s) ON CONFLICT (stream_id)"
            " DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
            f" WHERE leases.holder IN (%s, %s) OR leases.expires_at <= {_SERVER_NOW} RETURNING expires_at",
            (stream_id, holder, seconds, holder, take_over or holder),
        )
        return Lease(stream_id=stream_id, holder=holder, expires_at=rows[0][0]) if rows else None

    def release_lease(self, stream_id: str, holder: str) -> None:
        """Let go of `stream_id`, if `holder` holds it."""
        self._all("DELETE FROM leases WHERE stream_id = %s AND holder = %s RETURNING 1", (stream_id, holder))

    def leases(self) -> dict[str, Lease]:
        """The leases not yet run out, by stream."""
        rows = self._all(f"SELECT stream_id, holder, expires_at FROM leases WHERE expires_at > {_SERVER_NOW}")
        return {row[0]: Lease(stream_id=row[0], holder=row[1], expires_at=row[2]) for row in rows}

    # -- integrity and accounting ----------------------------------------------------

    def verify(
        self,
        progress: Callable[[int], None] | None = None,
        *,
        anchors: Sequence[tuple[str, int]] = (),
        fast: bool = False,
    ) -> VerifyReport:
        """Walk the whole log (chain, numbering, invariants: `stores.base.walk_chain`), check
        that `log_head` agrees with the last row, then the anchors. PostgreSQL checks its own
        pages (checksums, if the cluster has them), so `fast` changes nothing here."""
        with self._translate(), self._pool.connection() as conn, conn.transaction():
            forks = {sid: (parent, fork) for sid, parent, fork in conn.execute(
                "SELECT stream_id, parent_id, fork_version FROM streams")}
            with conn.cursor(name="apollo_es_verify") as rows:
                rows.itersize = 2000
                rows.execute(f"SELECT {_STORED_COLUMNS} FROM events ORDER BY position")
                report = walk_chain(rows, forks, progress)
            head = conn.execute("SELECT position, hash FROM log_head").fetchone()
            last = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
            found = {position: conn.execute("SELECT hash FROM events WHERE position = %s", (position,)).fetchone()
                     for _hash, position in anchors}
        if not report.ok:
            return report
        if tuple(head) != (tuple(last) if last else (0, head[1] if head[0] == 0 else None)):
            return VerifyReport(ok=False, events_checked=report.events_checked, first_bad_position=head[0],
                                reason=f"log_head says position {head[0]}, the last row is {last[0] if last else 0}")
        for anchored_hash, position in anchors:
            row = found[position]
            if problem := anchor_problem(anchored_hash, position, row[0] if row else None):
                return VerifyReport(ok=False, events_checked=report.events_checked, first_bad_position=position,
                                    reason=problem)
        return VerifyReport(ok=True, events_checked=report.events_checked, anchors_checked=len(anchors))

    def stats(self) -> dict[str, Any]:
        """Counts an operator wants at a glance, and the head hash to anchor the chain elsewhere."""
        by_kind = dict(self._all("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind"))
        streams, branches = self._all("SELECT count(*), count(parent_id) FROM streams")[0]
        last = self._all("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
        size = self._all("SELECT pg_total_relation_size('events') + pg_total_relation_size('streams')")[0][0]
        return stats_dict(_safe(self.path), by_kind, streams, branches, last[0] if last else None, size, self.costs())

    def costs(self) -> dict[str, float]:
        """Dollars recorded per stream for its own model calls (see `SQLiteStore.costs`)."""
        rows = self._all(
            "SELECT stream_id, sum(cost) FROM ("
            " SELECT stream_id, (payload::json->>'cost_usd')::float8 AS cost FROM events"
            " WHERE kind IN ('AgentActed', 'ContextSummarized', 'ActionJudged')"
            " UNION ALL SELECT e.stream_id, (d->>'cost_usd')::float8 FROM events e,"
            " json_array_elements(CASE WHEN e.kind = 'AgentActed' THEN e.payload::json->'discarded' END) d"
            ") c WHERE cost IS NOT NULL GROUP BY stream_id"
        )
        return {stream_id: float(total) for stream_id, total in rows}


class _Listener:
    """The one `LISTEN` connection of this process for one database, shared by every store
    object and every subscriber on it (threads and asyncio tasks alike).

    A daemon thread holds the connection and records the highest position announced for its
    schema (stores in other schemas of the database share the channel). After
    each (re)connection it reads the log head, since appends made while nobody listened were
    announced to no one. Waiters wait for that position to pass theirs, at most their poll
    interval, so while the connection is down they simply poll.
    """

    _shared: dict[str, _Listener] = {}
    _shared_lock = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url
        self.users = 0
        self.backend_pid: int | None = None  # of the listening connection, for tests and operators
        self._latest = 0
        self._changed = threading.Condition()
        self._async_waiters: dict[asyncio.Event, tuple[asyncio.AbstractEventLoop, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="apollo-es-listen", daemon=True)

    @classmethod
    def share(cls, url: str) -> _Listener:
        with cls._shared_lock:
            listener = cls._shared.get(url)
            if listener is None:
                listener = cls._shared[url] = cls(url)
                listener._thread.start()
            listener.users += 1
            return listener

    def release(self) -> None:
        with self._shared_lock:
            self.users -= 1
            if self.users == 0:
                del self._shared[self.url]
                self._stop.set()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                     application_name="apollo-es listener") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    schema, position = conn.execute("SELECT current_schema(), position FROM log_head").fetchone()
                    self._announce(position)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_LISTEN_SLICE):
                            where, _, position = note.payload.rpartition(" ")
                            if where == schema:
                                self._announce(int(position))
            except (psycopg.Error, ValueError):
                self.backend_pid = None
                self._stop.wait(_RECONNECT_DELAY)  # meanwhile waiters poll

    def _announce(self, position: int) -> None:
        with self._changed:
            if position <= self._latest:
                return
            self._latest = position
            self._changed.notify_all()
            woken = [(event, loop) for event, (loop, after) in self._async_waiters.items() if after < position]
        for event, loop in woken:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(event.set)

    def wait(self, position: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._latest > position, timeout)

    async def await_news(self, position: int, timeout: float) -> None:
        """`wait` for async code: an `asyncio.Event` set from the listening thread on asyncio,
        a worker thread elsewhere (trio)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio
            await anyio.to_thread.run_sync(self.wait, position, timeout, abandon_on_cancel=True)
            return
        event = asyncio.Event()
        with self._changed:
            if self._latest > position:
                return
            self._async_waiters[event] = (loop, position)
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
        finally:
            with self._changed:
                del self._async_waiters[event]


_LISTEN_SLICE = 0.5  # s between checks of the stop flag while listening
_RECONNECT_DELAY = 1.0


def _glob_to_like(pattern: str) -> str:
    """A GLOB pattern (`*`, `?`) as a LIKE pattern, LIKE's own wildcards escaped."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _safe(url: str) -> str:
    """The URL without a password, for messages."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"postgresql://{info.get('user', '')}@{info.get('host', '')}/{info.get('dbname', '')}"
