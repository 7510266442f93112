"""WAL checkpoints on the store's background thread (apollo_es/wal.py).

Seen from outside: pages reach the database file while the WAL is still far below SQLite's
own autocheckpoint threshold (4,000 pages of 16 KB), so only the thread can have copied
them; and nothing changes about what is stored or how it reads back.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from apollo_es import EventStore
from apollo_es.wal import BACKSTOP_PAGES, WalCheckpointer
from events import ToolObserved


def big_events(count: int, size: int = 8_000) -> list[ToolObserved]:
    return [ToolObserved(tool_call_id=f"call-{i}", output=f"{i} " + "x" * size) for i in range(count)]


def checkpoint_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("wal-checkpoint")}


# -- what the thread does ------------------------------------------------------------


def test_background_checkpoint_copies_pages_into_the_database(tmp_path: Path) -> None:
    db = tmp_path / "apollo.db"
    with EventStore(db, checkpoint_every=256 * 1024) as store:
        empty = db.stat().st_size
        for i in range(10):
            store.append(f"run-{i % 2}", big_events(10))  # 800 KB in all
        assert store.wait_for_checkpoints(timeout=30)
        assert db.stat().st_size > empty + 500_000
        assert store.verify().ok
        assert len(store.read("run-0")) == 50


def test_without_it_pages_stay_in_the_wal_until_the_threshold(tmp_path: Path) -> None:
    """The control for the test above: the same appends, no background thread."""
    db = tmp_path / "apollo.db"
    before = checkpoint_threads()
    with EventStore(db, checkpoint_every=None) as store:
        empty = db.stat().st_size
        for i in range(10):
            store.append(f"run-{i % 2}", big_events(10))
        assert store.wait_for_checkpoints(timeout=1)
        assert db.stat().st_size == empty
        assert checkpoint_threads() == before


def test_small_commits_count_the_pages_they_rewrite(tmp_path: Path) -> None:
    """A one-event commit writes a few whole pages to the WAL, however small the event."""
    db = tmp_path / "apollo.db"
    with EventStore(db, checkpoint_every=512 * 1024) as store:
        empty = db.stat().st_size
        for version in range(20):  # 20 tiny commits: about a MB of WAL for 2 KB of payload
            store.append("run-1", [ToolObserved(tool_call_id=f"c{version}", output="ok")], expected_version=version)
        assert store.wait_for_checkpoints(timeout=30)
        assert db.stat().st_size > empty


@pytest.mark.parametrize(
    ("synchronous", "checkpoint_every", "autocheckpoint"),
    [
        ("OFF", 4 << 20, BACKSTOP_PAGES),
        ("NORMAL", 4 << 20, BACKSTOP_PAGES),
        ("FULL", 4 << 20, 1000),  # every commit syncs: a WAL kept growing made each sync dearer
        ("EXTRA", 4 << 20, 1000),
        ("NORMAL", None, 1000),  # no thread: SQLite's default, all inline
    ],
)
def test_connection_settings(tmp_path: Path, synchronous: str, checkpoint_every: int | None, autocheckpoint: int) -> None:
    with EventStore(tmp_path / "apollo.db", synchronous=synchronous, checkpoint_every=checkpoint_every) as store:
        assert store.connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == autocheckpoint
        assert store.connection.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY: statement journals


# -- the thread's life ---------------------------------------------------------------


def test_thread_starts_only_when_needed_and_stops_on_close(tmp_path: Path) -> None:
    db = tmp_path / "apollo.db"
    before = checkpoint_threads()
    store = EventStore(db, checkpoint_every=256 * 1024)
    store.append("run-1", big_events(2))  # one commit of 16 KB: under the threshold
    assert checkpoint_threads() == before
    store.append("run-1", big_events(30))
    store.wait_for_checkpoints(timeout=30)
    started = checkpoint_threads() - before
    assert len(started) == 1
    store.close()
    store.close()  # twice is fine
    assert not any(t.is_alive() for t in started)
    # the last connection closed: SQLite checkpointed the rest and removed the WAL
    assert not Path(f"{db}-wal").exists()
    with EventStore(db) as reopened:
        assert reopened.head("run-1") == 32
        assert reopened.verify().ok


def test_a_store_dropped_without_close_stops_its_thread(tmp_path: Path) -> None:
    before = checkpoint_threads()
    store = EventStore(tmp_path / "apollo.db", checkpoint_every=64 * 1024)
    store.append("run-1", big_events(20))
    store.wait_for_checkpoints(timeout=30)
    [started] = checkpoint_threads() - before
    del store
    gc.collect()
    started.join(timeout=30)
    assert not started.is_alive()


def test_memory_store_has_no_checkpointer() -> None:
    before = checkpoint_threads()
    with EventStore(":memory:", checkpoint_every=1) as store:
        store.append("run-1", big_events(3))
        assert store.wait_for_checkpoints(timeout=0)
        assert checkpoint_threads() == before


def test_threshold_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_bytes must be positive"):
        EventStore(tmp_path / "apollo.db", checkpoint_every=0)
    assert not (tmp_path / "apollo.db").exists()  # refused before the file was created


# -- failures lose nothing -----------------------------------------------------------


def test_a_failing_checkpoint_loses_nothing(tmp_path: Path, monkeypatch, caplog) -> None:
    """If the thread cannot checkpoint, appends go on and SQLite's autocheckpoint remains."""

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    db = tmp_path / "apollo.db"
    with EventStore(db, checkpoint_every=16 * 1024) as store:
        monkeypatch.setattr("apollo_es.wal.sqlite3.connect", refuse)
        with caplog.at_level(logging.WARNING, logger="apollo_es.wal"):
            for _ in range(5):
                store.append("run-1", big_events(4))
            assert store.wait_for_checkpoints(timeout=30)
        assert "no background WAL checkpoints" in caplog.text
        assert store.head("run-1") == 20
        assert store.verify().ok


def test_a_thread_that_cannot_start_loses_nothing(tmp_path: Path, monkeypatch, caplog) -> None:
    """Out of threads, or at interpreter shutdown: the append has committed and must say so."""

    def cannot_start(self) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr("apollo_es.wal.threading.Thread.start", cannot_start)
    db = tmp_path / "apollo.db"
    with caplog.at_level(logging.WARNING, logger="apollo_es.wal"):
        with EventStore(db, checkpoint_every=16 * 1024) as store:
            recorded = [store.append("run-1", big_events(4)) for _ in range(3)]
            assert [r.version for batch in recorded for r in batch] == list(range(1, 13))
            assert store.wait_for_checkpoints(timeout=1)
    assert "can't start new thread" in caplog.text
    with EventStore(db) as reopened:
        assert reopened.head("run-1") == 12


def test_a_moved_store_gets_no_empty_twin(tmp_path: Path, caplog) -> None:
    """The thread opens the file by path when first needed. If it has gone, the thread must
    not create an empty database there (SQLite would also delete a WAL lying next to it)."""
    db = tmp_path / "apollo.db"
    with caplog.at_level(logging.WARNING, logger="apollo_es.wal"):
        with EventStore(db, checkpoint_every=256 * 1024) as store:
            store.append("run-1", big_events(1))  # under the threshold: no thread, no connection yet
            db.rename(tmp_path / "moved.db")
            store.append("run-1", big_events(20))  # the first checkpoint, with nothing at the path
            assert store.wait_for_checkpoints(timeout=30)
            assert not db.exists()
            assert store.head("run-1") == 21
    assert "no background WAL checkpoints" in caplog.text


# -- the request bookkeeping, with a connection that holds each checkpoint ----------


class HeldConnection:
    """Stands in for the thread's sqlite3 connection: each checkpoint waits to be let go."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.release = threading.Semaphore(0)
        self.started = threading.Semaphore(0)

    def execute(self, sql: str) -> HeldConnection:
        self.statements.append(sql)
        if "wal_checkpoint" in sql:
            self.started.release()
            self.release.acquire(timeout=30)
        return self

    def fetchone(self) -> tuple:
        return (0, 0, 0)

    def close(self) -> None:
        pass


@pytest.fixture
def held(monkeypatch) -> Iterator[HeldConnection]:
    conn = HeldConnection()
    real = sqlite3.connect  # the same module object as the store's: replace only the thread's call
    monkeypatch.setattr("apollo_es.wal.sqlite3.connect", lambda *a, **k: conn if k.get("uri") else real(*a, **k))
    yield conn
    for _ in range(10):  # whatever the test did, no thread stays blocked
        conn.release.release()


def test_a_request_during_a_checkpoint_gets_one_more(held: HeldConnection) -> None:
    checkpointer = WalCheckpointer("unused.db", synchronous="NORMAL", every_bytes=100)
    try:
        checkpointer.wrote(60)
        assert checkpointer.wait(timeout=0)  # under the threshold: nothing asked for
        checkpointer.wrote(60)  # 120 bytes: the first checkpoint starts and blocks
        assert held.started.acquire(timeout=30)
        checkpointer.wrote(100)  # asked for while the first runs: it may have missed these pages
        checkpointer.wrote(100)  # and again: one more checkpoint covers both
        assert not checkpointer.wait(timeout=0.05)
        held.release.release()
        assert held.started.acquire(timeout=30)  # the second checkpoint
        held.release.release()
        assert checkpointer.wait(timeout=30)
        assert checkpointer.checkpoints == 2
        assert held.statements == ["PRAGMA synchronous = NORMAL", *["PRAGMA wal_checkpoint(PASSIVE)"] * 2]
    finally:
        checkpointer.close()
    checkpointer.wrote(1_000)  # after close: ignored, no new thread
    assert checkpointer.wait(timeout=0)
    assert checkpointer.checkpoints == 2


def test_close_finishes_what_was_asked_for(held: HeldConnection) -> None:
    checkpointer = WalCheckpointer("unused.db", synchronous="FULL", every_bytes=10)
    checkpointer.wrote(10)
    assert held.started.acquire(timeout=30)
    checkpointer.wrote(10)  # pending while the first runs
    closing = threading.Thread(target=checkpointer.close)
    closing.start()
    held.release.release()  # the first ends; close waits for the second too
    assert held.started.acquire(timeout=30)
    held.release.release()
    closing.join(timeout=30)
    assert not closing.is_alive()
    assert checkpointer.checkpoints == 2


def test_the_checkpoint_connection_takes_the_stores_durability(tmp_path: Path, held: HeldConnection) -> None:
    """A checkpoint's fsyncs follow its own connection's `synchronous`, so it must be the store's."""
    with EventStore(tmp_path / "apollo.db", synchronous="FULL", checkpoint_every=1) as store:
        store.append("run-1", big_events(1))
        assert held.started.acquire(timeout=30)
        held.release.release()
        assert store.wait_for_checkpoints(timeout=30)
    assert held.statements[0] == "PRAGMA synchronous = FULL"
