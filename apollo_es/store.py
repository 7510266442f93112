"""The public entry to the event store: `EventStore(path)` for SQLite, `open_store(url)` for any backend.

The log itself (positions, versions, the hash chain, branches) is the same whatever the
backend; `apollo_es.stores.base` holds what they share and the `Store` protocol everything
outside the backends uses. SQLite (`apollo_es.stores.sqlite`) is the embedded default;
PostgreSQL (`apollo_es.stores.postgres`, the `postgres` extra) lets many hosts share one log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apollo_es.errors import StoreError
from apollo_es.stores.base import DEFAULT_MAX_PAYLOAD_BYTES, GENESIS_HASH, Store, chain_hash, new_event_ids, utc_now
from apollo_es.stores.sqlite import SQLiteStore
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
    "ANY",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "GENESIS_HASH",
    "NO_STREAM",
    "EventStore",
    "ExpectedVersion",
    "Lease",
    "NewEvent",
    "RecordedEvent",
    "Store",
    "StreamInfo",
    "TimelineRow",
    "VerifyReport",
    "chain_hash",
    "is_postgres_url",
    "sqlite_file",
    "new_event_ids",
    "open_store",
    "utc_now",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class EventStore(SQLiteStore):
    """An append-only, hash-chained event log in one SQLite file (`EventStore(path)`).

    Example:
        store = EventStore("apollo.db")
        store.append("run-1", [RunStarted(task_id="t", task="...")], expected_version=NO_STREAM)
        child = store.branch("run-1", at_version=1, reason="try another plan")

    `EventStore.open(url)` picks the backend from a URL instead (see `open_store`).
    """

    @staticmethod
    def open(url: str | Path, **options: Any) -> Store:
        return open_store(url, **options)


def is_postgres_url(url: str | Path) -> bool:
    return str(url).startswith(_POSTGRES_SCHEMES)


def sqlite_file(url: str | Path) -> Path | None:
    """The file a store URL names (`sqlite:///` removed), or None when there is none
    (PostgreSQL, `:memory:`): the path commands create directories for, check and clean up."""
    text = str(url)
    if is_postgres_url(text):
        return None
    text = text.removeprefix("sqlite:///")
    return None if text in ("", ":memory:") else Path(text)


def open_store(url: str | Path, **options: Any) -> Store:
    """The store at `url`: a path, `:memory:` or `sqlite:///path` opens SQLite; a
    `postgresql://user@host/db` URL opens PostgreSQL. `options` go to the backend."""
    text = str(url)
    if is_postgres_url(text):
        try:
            from apollo_es.stores.postgres import PostgresStore
        except ImportError as exc:  # psycopg is an optional extra
            raise StoreError(f"PostgreSQL needs the postgres extra (pip install 'apollo-es[postgres]'): {exc}") from exc
        return PostgresStore(text, **options)
    if text.startswith("sqlite:///"):
        text = str(sqlite_file(text) or ":memory:")
    elif "://" in text:
        raise StoreError(f"unknown store URL {text!r}: use a file path, sqlite:///PATH or postgresql://USER@HOST/DB")
    return EventStore(text, **options)
