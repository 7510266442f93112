"""The SQLite backend: the whole log in one file, every run and branch a stream in it.

How it keeps the store contract (DESIGN §3):
- Appends run in `BEGIN IMMEDIATE` transactions, so the whole batch lands or none of it,
  the version check and the insert see the same state, and writers from several processes
  queue on SQLite's lock (WAL mode, busy timeout) instead of failing.
- Positions are assigned as `last + 1` inside that transaction, so the global log is gapless.
- Every row carries `prev_hash` and `hash` (`stores.base.chain_hash`). Triggers refuse UPDATE
  and DELETE; `verify()` catches edits made around them.
- A branch is a row in `streams` (parent, fork version) plus a `BranchCreated` event: no
  event is copied, so branching costs the same at version 10 or 100,000. Reading a branch
  walks its lineage: each ancestor's events up to the next fork, then its own.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from apollo_es import errors
from apollo_es.errors import StoreError, StreamNotFound
from apollo_es.schema import SCHEMA_SQL, STORE_FORMAT
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
    hash_rows,
    in_given_order,
    prepare,
    prepare_append,
    stats_dict,
    to_recorded,
    utc_now,
    walk_chain,
    GENESIS_HASH,
)
from apollo_es.wal import BACKSTOP_PAGES, DEFAULT_EVERY_BYTES, WalCheckpointer
from events import BranchCreated, Event
from events.envelope import ANY, ExpectedVersion, Lease, NewEvent, RecordedEvent, StreamInfo, TimelineRow, VerifyReport

__all__ = ["SQLiteStore"]

_SQLITE_MAX_PARAMS = 900
# Payloads as bytes: a flipped bit may leave text that is not UTF-8, which must be reported
# as a bad row, not raised from the driver's text decoding.
_STORED_COLUMNS = COLUMNS.replace("payload", "CAST(payload AS BLOB)")
_PAGES_PER_COMMIT = 4  # rewritten by every commit, however small; see SQLiteStore._wrote
_MAX_ROWS_PER_INSERT = 64  # 8 parameters a row: under the 999 that older SQLite builds allow


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
    return f"INSERT INTO events ({COLUMNS}) VALUES {', '.join(values)}"


def _insert_chunks(prepared: list[Prepared]) -> Iterator[list[Prepared]]:
    """`prepared` in runs of 64 events, then of 32, 16 ... 1: few statements to compile and cache."""
    start = 0
    while start < len(prepared):
        size = min(_MAX_ROWS_PER_INSERT, 1 << (len(prepared) - start).bit_length() - 1)
        yield prepared[start : start + size]
        start += size


class SQLiteStore(LineageReads):
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
        self._lineages = {}
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

    def __enter__(self) -> SQLiteStore:
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
        prepared = prepare_append(stream_id, new_events, actor, self.max_payload_bytes)
        if not prepared:
            return []
        with self._transaction() as conn:
            # Only ids the caller chose can already be recorded; generated ones are new.
            known = self._existing(conn, stream_id, [p.event_id for p in prepared if p.chosen_id])
            fresh = [p for p in prepared if p.event_id not in known] if known else prepared
            inserted: list[RecordedEvent] = []
            if fresh:
                actual = self._head_or_zero(conn, stream_id)
                exists = actual > 0
                check_expected(stream_id, expected_version, actual)
                check_placement(stream_id, fresh, actual, self._fork_version(conn, stream_id) if exists else None)
                if not exists:
                    conn.execute(
                        "INSERT INTO streams (stream_id, parent_id, fork_version, created_at) VALUES (?, NULL, NULL, ?)",
                        (stream_id, utc_now()),
                    )
                inserted = self._insert(conn, stream_id, actual, fresh)
        if fresh:
            self._wrote(p.payload for p in fresh)
        return in_given_order(prepared, known, inserted)

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
        check_actor(actor)
        following = prepare(then, actor, self.max_payload_bytes)
        with self._transaction() as conn:
            check_branch_point(stream_id, at_version, self._head_or_zero(conn, stream_id))
            if new_stream_id is None:
                new_stream_id = self._free_branch_id(conn, stream_id)
            check_stream_id(new_stream_id)
            if self._head_or_zero(conn, new_stream_id) > 0:
                raise errors.StreamExistsError(f"stream {new_stream_id!r} already exists")
            conn.execute(
                "INSERT INTO streams (stream_id, parent_id, fork_version, created_at) VALUES (?, ?, ?, ?)",
                (new_stream_id, stream_id, at_version, utc_now()),
            )
            marker = BranchCreated(parent_stream=stream_id, fork_version=at_version, reason=reason, created_by=actor)
            prepared = [*prepare([marker], actor, self.max_payload_bytes), *following]
            check_unique_ids(prepared, "branch")
            self._existing(conn, new_stream_id, [p.event_id for p in following if p.chosen_id])  # raises if recorded
            self._insert(conn, new_stream_id, at_version, prepared)
        self._wrote(p.payload for p in prepared)
        return new_stream_id

    def _insert(self, conn: sqlite3.Connection, stream_id: str, head: int, prepared: list[Prepared]) -> list[RecordedEvent]:
        last = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
        position, prev_hash = last if last else (0, GENESIS_HASH)
        recorded = hash_rows(stream_id, head, position, prev_hash, prepared, utc_now())
        done = 0
        for chunk in _insert_chunks(prepared):
            caused = any(p.causation_id is not None for p in chunk)
            first = recorded[done]
            params: list[Any] = [first.position, stream_id, first.version, first.prev_hash]  # see _insert_statement
            for p, r in zip(chunk, recorded[done : done + len(chunk)]):
                if caused:
                    params += (p.event_id, p.kind, p.schema, r.recorded_at, p.actor, p.causation_id, p.payload, r.hash)
                else:
                    params += (p.event_id, p.kind, p.schema, r.recorded_at, p.actor, p.payload, r.hash)
            conn.execute(_insert_statement(len(chunk), caused), params)
            done += len(chunk)
        return recorded

    def _wrote(self, payloads: Iterable[bytes]) -> None:
        """Tell the checkpointer about a commit: its payloads plus the pages any commit rewrites
        (the last table leaf, index leaves, their parents, page 1), about 55 KB of WAL for a
        one-event commit at 16 KB pages."""
        if self._wal is not None:
            self._wal.wrote(sum(map(len, payloads)) + _PAGES_PER_COMMIT * self._page_size)

    # -- moving a log ----------------------------------------------------------------

    def stored_rows(self, after: int = 0, limit: int = 1000) -> list[tuple]:
        """Rows exactly as stored, payloads as bytes, in position order (for `stores.copy`)."""
        with self._lock, self._translate_errors():
            return self._conn.execute(
                f"SELECT {_STORED_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?", (after, limit)
            ).fetchall()

    def append_stored(self, streams: Sequence[StreamInfo], rows: Sequence[Sequence[Any]]) -> None:
        """Add rows copied byte for byte from another log, with the stream records they need,
        in one transaction. Each row must continue this log exactly, or nothing is written."""
        if not rows:
            return
        with self._transaction() as conn:
            last = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
            check_extends(*(last or (0, GENESIS_HASH)), rows, self.path)
            conn.executemany(
                "INSERT INTO streams (stream_id, parent_id, fork_version, created_at) VALUES (?, ?, ?, ?)",
                [(info.stream_id, info.parent_id, info.fork_version, info.created_at) for info in streams],
            )
            conn.executemany(
                f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS TEXT), ?, ?)", rows
            )
        self._wrote(row[9] for row in rows)

    def _existing(self, conn: sqlite3.Connection, stream_id: str, event_ids: list[str]) -> dict[str, RecordedEvent]:
        found: dict[str, RecordedEvent] = {}
        for start in range(0, len(event_ids), _SQLITE_MAX_PARAMS):
            chunk = event_ids[start : start + _SQLITE_MAX_PARAMS]
            marks = ", ".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {COLUMNS} FROM events WHERE event_id IN ({marks})", chunk):
                duplicate_elsewhere(row, stream_id)
                found[row[3]] = to_recorded(row)
        return found

    def _free_branch_id(self, conn: sqlite3.Connection, stream_id: str) -> str:
        n = conn.execute("SELECT count(*) FROM streams WHERE parent_id = ?", (stream_id,)).fetchone()[0]
        for candidate in branch_id_candidates(stream_id, n):
            if conn.execute("SELECT 1 FROM streams WHERE stream_id = ?", (candidate,)).fetchone() is None:
                return candidate
        raise AssertionError("unreachable: the candidates never run out")

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

    def _parent_row(self, stream_id: str) -> tuple[str | None, int | None] | None:
        with self._lock, self._translate_errors():
            return self._conn.execute(
                "SELECT parent_id, fork_version FROM streams WHERE stream_id = ?", (stream_id,)
            ).fetchone()

    def _own_rows(self, stream_id: str, up_to: int | None) -> list[Sequence[Any]]:
        with self._lock, self._translate_errors():
            return self._conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE stream_id = ? AND version <= ? ORDER BY version",
                (stream_id, up_to if up_to is not None else 2**62),
            ).fetchall()

    def _own_row(self, stream_id: str, version: int) -> Sequence[Any] | None:
        with self._lock, self._translate_errors():
            return self._conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE stream_id = ? AND version = ?", (stream_id, version)
            ).fetchone()

    def read_all(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events of every stream with `position > after`, in position order."""
        with self._lock, self._translate_errors():
            rows = self._conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (after, -1 if limit is None else limit),
            ).fetchall()
            return [to_recorded(row) for row in rows]

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

    def events_by_ids(self, event_ids: Iterable[str]) -> dict[str, RecordedEvent]:
        """The recorded events with these ids, by id (ids not recorded are absent)."""
        return {row[3]: to_recorded(row) for row in self._in_chunks("event_id", list(event_ids))}

    def caused_by(self, causation_ids: Iterable[str], kinds: Sequence[str] = ()) -> list[RecordedEvent]:
        """Events whose `causation_id` is one of these (of `kinds`, if given), in position order."""
        rows = self._in_chunks("causation_id", list(causation_ids))
        return [to_recorded(row) for row in sorted(rows) if not kinds or row[4] in kinds]

    def _in_chunks(self, column: str, values: list[str]) -> list[Sequence[Any]]:
        """Rows whose `column` is in `values`, in chunks under SQLite's parameter limit."""
        found: list[Sequence[Any]] = []
        with self._lock, self._translate_errors():
            for start in range(0, len(values), _SQLITE_MAX_PARAMS):
                chunk = values[start : start + _SQLITE_MAX_PARAMS]
                found += self._conn.execute(
                    f"SELECT {COLUMNS} FROM events WHERE {column} IN ({', '.join('?' * len(chunk))})", chunk
                ).fetchall()
        return found

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
        """A run's events (inherited ones included) in version order, as the `timeline` view
        shows them. `actors` are GLOB patterns (`human:*`); `since` an ISO-8601 UTC timestamp
        compared as text; `limit` keeps the newest rows."""
        self.head(run_id)  # raises StreamNotFound for an unknown run
        where, params = ["run_id = ?", "version > ?"], [run_id, after_version]
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            params.extend(kinds)
        if actors:
            where.append("(" + " OR ".join("actor GLOB ?" for _ in actors) + ")")
            params.extend(actors)
        if since:
            where.append("recorded_at >= ?")
            params.append(since)
        query = (
            "SELECT run_id, version, kind, actor, recorded_at, coalesce(summary, ''), stream_id, position, event_id,"
            f" causation_id FROM timeline WHERE {' AND '.join(where)} ORDER BY version DESC LIMIT ?"
        )
        rows = self.query(query, (*params, -1 if limit is None else limit))
        return [TimelineRow(*row) for row in reversed(rows)]

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
        return anchor_problem(anchored_hash, position, row[0] if row else None)

    def _walk(self, progress: Callable[[int], None] | None) -> VerifyReport:
        with self._lock, self._translate_errors():
            forks = {sid: (parent, fork) for sid, parent, fork in self._conn.execute(
                "SELECT stream_id, parent_id, fork_version FROM streams"
            )}
            return walk_chain(self._conn.execute(f"SELECT {_STORED_COLUMNS} FROM events ORDER BY position"), forks, progress)

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
        return stats_dict(self.path, by_kind, streams, branches, last, page_count * page_size, costs)

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

    def __init__(self, store: SQLiteStore) -> None:
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

