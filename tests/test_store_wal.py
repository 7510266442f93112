"""WAL checkpoints on the store's background thread (apollo_es/wal.py).

Seen from outside: pages reach the database file while the WAL is still far below SQLite's
own autocheckpoint threshold (1,000 pages = 16 MiB), so only the thread can have copied
them; and nothing changes about what is stored or how it reads back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from apollo_es import EventStore
from apollo_es.wal import WalCheckpointer
from events import ToolObserved


def big_events(count: int, size: int = 8_000) -> list[ToolObserved]:
    return [ToolObserved(tool_call_id=f"call-{i}", output=f"{i} " + "x" * size) for i in range(count)]


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wal-checkpoint")]


def test_background_checkpoint_copies_pages_into_the_database(tmp_path: Path) -> None:
    db = tmp_path / "apollo.db"
    with EventStore(db, checkpoint_every=64 * 1024) as store:
        empty = db.stat().st_size
        for i in range(10):
            store.append(f"run-{i % 2}", big_events(10))  # 800 KB in all, 50 WAL pages
        assert store.wait_for_checkpoints(timeout=30)
        assert db.stat().st_size > empty + 500_000
        assert store.verify().ok
        assert len(store.read("run-0")) == 50


def test_without_it_pages_stay_in_the_wal_until_the_threshold(tmp_path: Path) -> None:
    """The control for the test above: the same appends, no background thread."""
    db = tmp_path / "apollo.db"
    with EventStore(db, checkpoint_every=None) as store:
        empty = db.stat().st_size
        for i in range(10):
            store.append(f"run-{i % 2}", big_events(10))
        assert store.wait_for_checkpoints(timeout=1)
        assert db.stat().st_size == empty
        assert not checkpoint_threads()


def test_thread_starts_only_when_needed_and_stops_on_close(tmp_path: Path) -> None:
    db = tmp_path / "apollo.db"
    before = set(checkpoint_threads())
    store = EventStore(db, checkpoint_every=64 * 1024)
    store.append("run-1", big_events(2))  # 16 KB: under the threshold
    assert set(checkpoint_threads()) == before
    store.append("run-1", big_events(10))
    store.wait_for_checkpoints(timeout=30)
    started = set(checkpoint_threads()) - before
    assert len(started) == 1
    store.close()
    assert not any(t.is_alive() for t in started)
    # the last connection closed: SQLite checkpointed the rest and removed the WAL
    assert not Path(f"{db}-wal").exists()
    with EventStore(db) as reopened:
        assert reopened.head("run-1") == 12
        assert reopened.verify().ok


def test_memory_store_has_no_checkpointer() -> None:
    with EventStore(":memory:", checkpoint_every=1) as store:
        store.append("run-1", big_events(3))
        assert store.wait_for_checkpoints(timeout=0)
        assert not checkpoint_threads()


def test_threshold_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_bytes must be positive"):
        EventStore(tmp_path / "apollo.db", checkpoint_every=0)
    assert not (tmp_path / "apollo.db").exists()  # refused before the file was created


def test_a_failing_checkpoint_loses_nothing(tmp_path: Path, monkeypatch, caplog) -> None:
    """If the thread cannot checkpoint, appends go on and SQLite's autocheckpoint remains."""

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    db = tmp_path / "apollo.db"
    with EventStore(db, checkpoint_every=16 * 1024) as store:
        monkeypatch.setattr("apollo_es.wal.sqlite3.connect", refuse)
        with caplog.at_level(logging.WARNING, logger="apollo_es.wal"):
            for i in range(5):
                store.append("run-1", big_events(4))
            assert store.wait_for_checkpoints(timeout=30)
        assert "no background WAL checkpoints" in caplog.text
        assert store.head("run-1") == 20
        assert store.verify().ok


def test_checkpoints_follow_the_stores_durability(tmp_path: Path) -> None:
    """A checkpoint's fsyncs follow its own connection's `synchronous`: the thread takes the store's."""
    with EventStore(tmp_path / "apollo.db", synchronous="FULL") as store:
        assert store._wal is not None and store._wal.synchronous == "FULL"


class SlowConnection:
    """Stands in for the thread's sqlite3 connection: each checkpoint waits to be let go."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.release = threading.Semaphore(0)
        self.started = threading.Semaphore(0)

    def execute(self, sql: str):
        self.statements.append(sql)
        if "wal_checkpoint" in sql:
            self.started.release()
            assert self.release.acquire(timeout=30)
        return self

    def fetchone(self) -> tuple:
        return (0, 0, 0)

    def close(self) -> None:
        pass


def test_a_request_during_a_checkpoint_gets_one_more(monkeypatch) -> None:
    conn = SlowConnection()
    monkeypatch.setattr("apollo_es.wal.sqlite3.connect", lambda *a, **k: conn)
    checkpointer = WalCheckpointer("unused.db", synchronous="NORMAL", every_bytes=100)
    checkpointer.wrote(60)
    assert checkpointer.wait(timeout=0)  # under the threshold: nothing asked for
    checkpointer.wrote(60)  # 120 bytes: the first checkpoint starts and blocks
    assert conn.started.acquire(timeout=30)
    checkpointer.wrote(100)  # asked for while the first runs: it may have missed these pages
    checkpointer.wrote(100)  # and again: one more checkpoint covers both
    assert not checkpointer.wait(timeout=0.05)
    conn.release.release()
    assert conn.started.acquire(timeout=30)  # the second checkpoint
    conn.release.release()
    assert checkpointer.wait(timeout=30)
    assert checkpointer.checkpoints == 2
    assert conn.statements == ["PRAGMA synchronous = NORMAL", *["PRAGMA wal_checkpoint(PASSIVE)"] * 2]
    checkpointer.close()
    checkpointer.wrote(1_000)  # after close: ignored, no new thread
    assert checkpointer.wait(timeout=0)
    assert checkpointer.checkpoints == 2
