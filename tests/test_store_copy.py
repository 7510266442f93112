"""`apollo-es copy` / `stores.copy.copy_store`: a log moved between backends byte for byte."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from apollo_es.cli import cli
from apollo_es.errors import StoreError
from apollo_es.store import EventStore, Store, open_store
from apollo_es.stores.copy import copy_store
from conftest import make_events, one_of_each_kind, pg_schema_url
from events import BranchCreated, HumanIntervened

PAIRS = [("sqlite-file", "postgres"), ("postgres", "sqlite-file"), ("sqlite-file", "sqlite-file")]


@pytest.fixture
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Store]]:
    """`open(backend)` → a fresh, empty store: a SQLite file, or a schema of its own in the
    session's PostgreSQL database (dropped afterwards)."""
    opened: list[Store] = []
    schemas: list[str] = []

    def open_on(backend: str) -> Store:
        if backend == "postgres":
            schemas.append(f"copy_{uuid.uuid4().hex[:12]}")
            store = open_store(pg_schema_url(request.getfixturevalue("pg_database"), schemas[-1]))
        else:
            store = open_store(tmp_path / f"store-{len(opened)}.db")
        opened.append(store)
        return store

    yield open_on
    for store in opened:
        store.close()
    if schemas:
        with psycopg.connect(request.getfixturevalue("pg_database"), autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _fill(store: Store) -> None:
    """Runs, a branch of a branch, every kind of event, non-ASCII text."""
    store.append("run-a", [e for e in one_of_each_kind() if not isinstance(e, BranchCreated)])
    store.append("run-b", make_events(30))
    child = store.branch("run-a", 3, reason="try again")
    store.append(child, [HumanIntervened(kind="guidance", message="héllo 💥 \\ \"", annotator="zoë")])
    grandchild = store.branch(child, 4, "run-a-grand")
    store.append(grandchild, make_events(3, start=100)[1:])
    store.append("run-b", make_events(5, start=30)[1:])


def _snapshot(store: Store) -> tuple:
    streams = [(s.stream_id, s.parent_id, s.fork_version, s.created_at, s.head) for s in store.streams()]
    return streams, store.stored_rows(after=0, limit=10_000), {s[0]: store.read(s[0]) for s in streams}


@pytest.mark.parametrize(("source_kind", "destination_kind"), PAIRS)
def test_copy_keeps_every_row_byte_for_byte(stores, source_kind: str, destination_kind: str) -> None:
    source, destination = stores(source_kind), stores(destination_kind)
    _fill(source)
    seen: list[tuple[str, int, int]] = []
    report = copy_store(source, destination, batch_size=7, progress=lambda *args: seen.append(args))
    assert report.copied == source.last_position() == destination.last_position()
    assert report.already_there == 0 and report.streams == len(source.streams())
    assert report.destination.ok and report.destination.events_checked == report.copied
    assert _snapshot(destination) == _snapshot(source)
    assert destination.stats()["anchor"] == source.stats()["anchor"]
    copying = [done for phase, done, total in seen if phase == "copying"]
    assert copying == [*range(7, report.copied, 7), report.copied]  # one call per batch
    assert {phase for phase, _done, _total in seen} <= {"copying", "verifying"}
    # the copy is a log like any other: it takes new appends and branches
    destination.append("run-b", make_events(2, start=40)[1:])
    assert destination.verify().ok


@pytest.mark.parametrize(("source_kind", "destination_kind"), PAIRS[:2])
def test_an_interrupted_copy_continues_where_it_stopped(stores, monkeypatch, source_kind, destination_kind) -> None:
    source, destination = stores(source_kind), stores(destination_kind)
    _fill(source)
    real = type(destination).append_stored
    calls = 0

    def fail_third(self, streams, rows):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise StoreError("connection lost")
        real(self, streams, rows)

    monkeypatch.setattr(type(destination), "append_stored", fail_third)
    with pytest.raises(StoreError, match="connection lost"):
        copy_store(source, destination, batch_size=10)
    assert destination.last_position() == 20 and destination.verify().ok  # two whole batches, nothing else
    monkeypatch.setattr(type(destination), "append_stored", real)
    report = copy_store(source, destination, batch_size=10)
    assert (report.already_there, report.copied) == (20, source.last_position() - 20)
    assert _snapshot(destination) == _snapshot(source)


@pytest.mark.parametrize("destination_kind", ["sqlite-file", "postgres"])
def test_a_destination_that_is_not_a_prefix_is_refused_untouched(stores, destination_kind: str) -> None:
    source, destination = stores("sqlite-file"), stores(destination_kind)
    _fill(source)
    destination.append("run-b", make_events(3))  # same stream, other events: other hashes
    before = _snapshot(destination)
    with pytest.raises(StoreError, match="event 3 differs from the source's: it is not a copy"):
        copy_store(source, destination)
    assert _snapshot(destination) == before

    bigger = stores("sqlite-file")
    _fill(bigger)
    bigger.append("run-c", make_events(2))
    with pytest.raises(StoreError, match="it is not a copy of the source"):
        copy_store(source, bigger)


@pytest.mark.parametrize("destination_kind", ["sqlite-file", "postgres"])
def test_a_damaged_source_stops_the_copy_at_the_bad_row(stores, destination_kind: str) -> None:
    source, destination = stores("sqlite-file"), stores(destination_kind)
    _fill(source)
    bad = next(row[0] for row in source.stored_rows(limit=1000) if "zoë".encode() in row[9])
    conn = sqlite3.connect(source.path)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET payload = replace(payload, 'zoë', 'eve') WHERE position = ?", (bad,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"the source is damaged at position {bad}: hash does not match"):
        copy_store(source, destination, batch_size=5)
    assert destination.last_position() == (bad - 1) // 5 * 5  # the sound batches before it
    assert destination.verify().ok


@pytest.mark.parametrize("backend", ["sqlite-file", "postgres"])
def test_append_stored_refuses_rows_that_do_not_continue_the_log(stores, backend: str) -> None:
    source, destination = stores("sqlite-file"), stores(backend)
    _fill(source)
    rows = source.stored_rows(after=0, limit=5)
    streams = [s for s in source.streams() if s.stream_id == "run-a"]
    with pytest.raises(StoreError, match="position 2 does not continue this log"):
        destination.append_stored(streams, rows[1:])
    tampered = [*rows[:3], (*rows[3][:10], "f" * 64, rows[3][11])]
    with pytest.raises(StoreError, match="position 4 does not continue this log"):
        destination.append_stored(streams, tampered)
    assert destination.last_position() == 0 and destination.streams() == []


def test_cli_copy_round_trip_and_errors(tmp_path: Path, pg_database: str) -> None:
    source = EventStore(tmp_path / "source.db")
    _fill(source)
    anchor = source.stats()["anchor"]
    source.close()
    runner = CliRunner()
    url = pg_schema_url(pg_database, f"copy_{uuid.uuid4().hex[:12]}")
    result = runner.invoke(cli, ["copy", str(tmp_path / "source.db"), url])
    assert result.exit_code == 0, result.output
    assert f"anchor {anchor}" in result.output
    back = tmp_path / "back.db"
    result = runner.invoke(cli, ["copy", url, str(back), "--json"])
    assert result.exit_code == 0, result.output
    assert f'"copied": {anchor.rpartition("@")[2]}' in result.output
    result = runner.invoke(cli, ["verify", "--db", str(back), "--anchor", anchor])
    assert result.exit_code == 0, result.output

    result = runner.invoke(cli, ["copy", str(tmp_path / "missing.db"), str(tmp_path / "out.db")])
    assert result.exit_code == 1 and "no store at" in result.output
    assert not (tmp_path / "out.db").exists()
    other = EventStore(tmp_path / "other.db")
    other.append("run-z", make_events(2))
    other.close()
    result = runner.invoke(cli, ["copy", str(tmp_path / "source.db"), str(tmp_path / "other.db")])
    assert result.exit_code == 1 and "not a copy of the source" in result.output
    result = runner.invoke(cli, ["copy", str(tmp_path / "source.db"), str(tmp_path / "x.db"), "--batch-size", "0"])
    assert result.exit_code == 2 and not (tmp_path / "x.db").exists()
