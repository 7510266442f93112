"""Integrity: verify() pinpoints edits made around the triggers, and crashes lose nothing committed.

The tamper tests run on a SQLite file (its triggers dropped) and on PostgreSQL, where a
superuser disables the append-only triggers (`ALTER TABLE ... DISABLE TRIGGER USER`) and
edits rows behind the store's back; either way verify() must name the first broken row.
PostgreSQL also keeps the log head in a row of its own (`log_head`), which verify() checks
against the last event, so there an attacker has one more thing to forge. Damage to the file
itself (bit rot in a payload, a flipped bit in an index page) is SQLite's alone: PostgreSQL
refuses text that is not UTF-8 and checks its own pages.

The crash tests SIGKILL a writer process mid-append, on a SQLite file (several
`synchronous` settings) and on PostgreSQL, and check that everything it reported as
committed is there, batches are whole, and the next writer carries on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apollo_es import EventStore
from apollo_es.store import chain_hash, open_store
from apollo_es.stores.base import Store
from events import ToolObserved

from conftest import REPO_ROOT, make_events, pg_schema_url

ROWS = 14  # events in the template store


@pytest.fixture(params=["sqlite-file", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backends whose rows can be edited around the store: a file, a PostgreSQL schema."""
    return request.param


def fill(store: Store) -> None:
    """ROWS events over two roots and two branches (ASCII payloads)."""
    store.append("run-1", make_events(4), actor="agent")
    store.append("run-2", make_events(3, start=4))
    child = store.branch("run-1", 2, "run-1-alt", reason="try again", actor="human:alice")
    store.append(child, make_events(2, start=7), actor="agent")
    store.branch(child, 4, "run-1-alt-2")
    store.append("run-1", make_events(2, start=9))
    store.append("run-1-alt-2", make_events(1, start=11))
    assert store.last_position() == ROWS
    assert store.verify().ok


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed SQLite store file holding `fill`'s rows."""
    path = tmp_path_factory.mktemp("template") / "apollo.db"
    with EventStore(path) as store:
        fill(store)
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


class Tampered:
    """A store holding `fill`'s rows, and raw SQL (`?` placeholders) at its tables with the
    append-only triggers out of the way, as an attacker with the database's owner rights has."""

    def __init__(self, store: Store, execute: Callable[[str, tuple], list[tuple]], dialect: str) -> None:
        self.store = store
        self._execute = execute
        self.dialect = dialect
        # the payload column as the bytes that were hashed
        self.payload_blob = "CAST(payload AS BLOB)" if dialect == "sqlite" else "convert_to(payload, 'UTF8')"

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        return self._execute(query, params)

    def payload_bytes(self, position: int) -> bytes:
        return bytes(self.sql(f"SELECT {self.payload_blob} FROM events WHERE position = ?", (position,))[0][0])

    def set_payload_bytes(self, position: int, data: bytes) -> None:
        value = "CAST(? AS TEXT)" if self.dialect == "sqlite" else "convert_from(?, 'UTF8')"
        self.sql(f"UPDATE events SET payload = {value} WHERE position = ?", (data, position))

    def without_foreign_keys(self) -> None:
        self.sql("PRAGMA foreign_keys = OFF" if self.dialect == "sqlite" else "SET session_replication_role = replica")

    def forge_head(self) -> None:
        """PostgreSQL: make `log_head` agree with the last row, as a careful attacker would
        (SQLite keeps no head of its own: nothing to do)."""
        if self.dialect == "postgres":
            self.sql("UPDATE log_head SET (position, hash) ="
                     " (SELECT position, hash FROM events ORDER BY position DESC LIMIT 1)")


@pytest.fixture(scope="module")
def pg_template(pg_database: str) -> Iterator[str]:
    """A PostgreSQL schema holding `fill`'s rows with its append-only triggers disabled (by
    this superuser connection), and a copy of its rows in a second schema to restore from.
    Restoring a few rows costs far less than setting up a fresh store for every test."""
    import psycopg

    schema = f"s_{uuid.uuid4().hex[:16]}"
    url = pg_schema_url(pg_database, schema)
    with open_store(url) as store:
        fill(store)
    with psycopg.connect(pg_database, autocommit=True) as admin:
        for table in ("events", "streams"):
            admin.execute(f'ALTER TABLE "{schema}".{table} DISABLE TRIGGER USER')
        admin.execute(f'CREATE SCHEMA "{schema}_saved"')
        for table in _PG_TABLES:
            admin.execute(f'CREATE TABLE "{schema}_saved".{table} AS TABLE "{schema}".{table}')
    yield url
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA "{schema}", "{schema}_saved" CASCADE')


_PG_TABLES = ("streams", "events", "log_head")  # what the tests edit, parents first


def _restore(url: str) -> None:
    """Put the template's rows back, whatever a test did to them."""
    import psycopg

    schema = psycopg.conninfo.conninfo_to_dict(url)["options"].split("=")[-1]
    with psycopg.connect(url, autocommit=True) as admin, admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")  # no foreign key checks while refilling
        for table in reversed(_PG_TABLES):
            admin.execute(f"DELETE FROM {table}")  # a few rows: cheaper than TRUNCATE's new files
        for table in _PG_TABLES:
            admin.execute(f'INSERT INTO {table} TABLE "{schema}_saved".{table}')


@pytest.fixture
def log(backend: str, template: Path, request: pytest.FixtureRequest) -> Iterator[Tampered]:
    """`Tampered` on a private copy of the template file, or on the PostgreSQL template schema
    (through a store object of its own), whose rows are restored afterwards."""
    if backend == "sqlite-file":
        tmp = tempfile.mkdtemp(prefix="apollo-tamper-")
        path = Path(tmp) / "apollo.db"
        shutil.copy(template, path)
        store = EventStore(path)
        names = [r[0] for r in store.connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        assert len(names) == 4
        for name in names:
            store.connection.execute(f"DROP TRIGGER {name}")
        try:
            yield Tampered(store, lambda q, p: store.connection.execute(q, p).fetchall(), "sqlite")
        finally:
            store.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return
    import psycopg

    url = request.getfixturevalue("pg_template")
    try:
        with open_store(url) as store, psycopg.connect(url, autocommit=True) as admin:
            triggers = admin.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%_append_only'"
                                     " AND tgenabled = 'D' AND tgrelid IN ('events'::regclass, 'streams'::regclass)")
            assert triggers.fetchone()[0] == 2  # both append-only triggers are there, disabled

            def execute(query: str, params: tuple) -> list[tuple]:
                cur = admin.execute(query.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []

            yield Tampered(store, execute, "postgres")
    finally:
        _restore(url)


# -- tamper ---------------------------------------------------------------------------------


def test_template_is_sound(log: Tampered) -> None:
    report = log.store.verify()
    assert report.ok and report.events_checked == ROWS and report.first_bad_position is None


def test_one_changed_payload_byte_is_found(log: Tampered) -> None:
    """Any one byte of any payload changed is found at its row; each example puts the byte
    back and checks that the log verifies again, so the examples share one store."""

    @settings(max_examples=60 if log.dialect == "sqlite" else 25, deadline=None)
    @given(position=st.integers(1, ROWS), index=st.integers(0, 10_000), replacement=st.integers(0x20, 0x7E))
    def check(position: int, index: int, replacement: int) -> None:
        original = log.payload_bytes(position)
        data = bytearray(original)
        assert data.isascii()
        index %= len(data)
        if data[index] == replacement:
            replacement = replacement + 1 if replacement < 0x7E else 0x20
        data[index] = replacement
        log.set_payload_bytes(position, bytes(data))
        try:
            report = log.store.verify()
            assert not report.ok
            assert report.first_bad_position == position
            assert report.events_checked == position
            assert "changed" in report.reason
        finally:
            log.set_payload_bytes(position, original)
        assert log.store.verify().ok

    check()


@pytest.mark.parametrize("position", [1, 5, ROWS])
def test_payload_bit_rot_is_a_finding_not_a_crash(template: Path, tmp_path: Path, position: int) -> None:
    # SQLite only. Flipping a high bit leaves bytes that are not UTF-8. verify() exists to
    # find exactly this kind of damage: it must report the row, not die decoding it.
    path = tmp_path / "apollo.db"
    shutil.copy(template, path)
    with EventStore(path) as store:
        for name in [r[0] for r in store.connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]:
            store.connection.execute(f"DROP TRIGGER {name}")
        log = Tampered(store, lambda q, p: store.connection.execute(q, p).fetchall(), "sqlite")
        data = bytearray(log.payload_bytes(position))
        data[len(data) // 2] ^= 0x80
        log.set_payload_bytes(position, bytes(data))
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == position


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("stream_id", "'run-1-alt-2'"),  # a stream with that version free
        ("version", "version + 1000"),
        ("event_id", "event_id || 'x'"),
        ("kind", "'RunFinished'"),
        ("schema", "schema + 1"),
        ("recorded_at", "'2000-01-01T00:00:00.000000Z'"),
        ("actor", "'human:mallory'"),
        ("causation_id", "'forged'"),
        ("prev_hash", "CASE substr(prev_hash, 1, 1) WHEN '0' THEN '1' ELSE '0' END || substr(prev_hash, 2)"),
        ("hash", "substr(hash, 1, 63) || 'g'"),
    ],
)
@pytest.mark.parametrize("position", [3, 9])
def test_changed_envelope_column_is_found(log: Tampered, column: str, value: str, position: int) -> None:
    before = log.sql(f"SELECT {column} FROM events WHERE position = ?", (position,))
    log.sql(f"UPDATE events SET {column} = {value} WHERE position = ?", (position,))
    after = log.sql(f"SELECT {column} FROM events WHERE position = ?", (position,))
    assert before != after
    report = log.store.verify()
    assert not report.ok
    assert report.first_bad_position == position


@pytest.mark.parametrize("position", [1, 2, 7, ROWS - 1])
def test_deleted_row_is_found(log: Tampered, position: int) -> None:
    log.sql("DELETE FROM events WHERE position = ?", (position,))
    report = log.store.verify()
    assert not report.ok
    assert report.first_bad_position == position + 1  # the first row after the gap
    assert "missing" in report.reason


def test_truncated_tail_is_caught_by_an_anchor(log: Tampered) -> None:
    """Dropping the newest rows leaves a valid chain; the anchor, kept elsewhere, catches it.
    PostgreSQL's `log_head` still names the dropped row, so there verify() alone sees it
    until the attacker rewinds the head as well."""
    anchor = (log.store.stats()["head_hash"], ROWS)
    assert log.store.verify(anchors=[anchor]).anchors_checked == 1
    log.sql("DELETE FROM events WHERE position = ?", (ROWS,))
    if log.dialect == "postgres":
        report = log.store.verify()
        assert not report.ok and "log_head" in report.reason, report
        log.forge_head()
    assert log.store.verify().ok
    report = log.store.verify(anchors=[anchor])
    assert not report.ok and "no longer reaches position" in report.reason


def test_a_rehashed_chain_is_caught_by_an_anchor(log: Tampered) -> None:
    """An attacker who edits a row and recomputes every later hash (and the head) keeps the chain valid."""
    anchor = (log.store.stats()["head_hash"], ROWS)
    log.sql("UPDATE events SET payload = replace(payload, 'step 0', 'step X') WHERE position = 1")
    prev = "0" * 64
    for row in log.sql(f"SELECT position, stream_id, version, event_id, kind, schema, recorded_at, actor, "
                       f"causation_id, {log.payload_blob} FROM events ORDER BY position"):
        new = chain_hash(prev, row[:9], bytes(row[9]))
        log.sql("UPDATE events SET prev_hash = ?, hash = ? WHERE position = ?", (prev, new, row[0]))
        prev = new
    log.forge_head()
    assert log.store.verify().ok  # the chain alone cannot tell
    report = log.store.verify(anchors=[anchor])
    assert not report.ok and "another hash" in report.reason


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE log_head SET position = position - 1",
        "UPDATE log_head SET position = position + 1",
        "UPDATE log_head SET hash = (SELECT hash FROM events WHERE position = 1)",
    ],
)
def test_an_edited_log_head_is_found(log: Tampered, edit: str) -> None:
    """PostgreSQL: the head row is not hash-chained and the documented writer role may
    UPDATE it, so verify() must notice when it no longer names the last row."""
    log.sql(edit)
    report = log.store.verify()
    assert not report.ok
    assert "log_head" in report.reason


def test_a_damaged_index_page_is_a_corruption_finding(template: Path, tmp_path: Path) -> None:
    """SQLite only. Reads go through the (stream_id, version) index: a flipped bit there can
    hide rows while every row of the table is intact. SQLite's integrity_check sees it."""
    path = tmp_path / "apollo.db"
    shutil.copy(template, path)
    with EventStore(path) as store:
        [(root,)] = store.query("SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
                                "AND sql IS NULL AND name LIKE 'sqlite_autoindex_events_%' ORDER BY name DESC LIMIT 1")
        page_size = store.query("PRAGMA page_size")[0][0]
    data = bytearray(path.read_bytes())
    start = (root - 1) * page_size
    cells = data[start + 8 : start + page_size]  # past the leaf page header: the cell content
    offset = start + 8 + max(i for i, byte in enumerate(cells) if byte)  # a byte of the last cell
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))
    with EventStore(path, read_only=True) as store:
        for fast in (False, True):
            report = store.verify(fast=fast)
            assert not report.ok and report.corruption, (fast, report)


def test_branch_row_edited_to_another_fork_is_found(log: Tampered) -> None:
    marker = next(r for r in log.store.read_all() if r.stream_id == "run-1-alt")
    log.sql("UPDATE streams SET fork_version = 1 WHERE stream_id = 'run-1-alt'")
    report = log.store.verify()
    assert not report.ok
    assert report.first_bad_position == marker.position


def test_branch_row_edited_to_another_parent_is_found(log: Tampered) -> None:
    marker = next(r for r in log.store.read_all() if r.stream_id == "run-1-alt")
    log.sql("UPDATE streams SET parent_id = 'run-2' WHERE stream_id = 'run-1-alt'")
    report = log.store.verify()
    assert not report.ok
    assert report.first_bad_position == marker.position


def test_deleted_stream_row_is_found(log: Tampered) -> None:
    first = next(r for r in log.store.read_all() if r.stream_id == "run-2")
    log.without_foreign_keys()
    log.sql("DELETE FROM streams WHERE stream_id = 'run-2'")
    report = log.store.verify()
    assert not report.ok
    assert report.first_bad_position == first.position


# -- crash ----------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, sys
    from apollo_es import NewEvent
    from apollo_es.store import open_store
    from events import ToolObserved

    path, options, start, batch = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = open_store(path, **options)
    i = start
    while True:
        items = []
        for _ in range(batch):
            items.append(NewEvent(
                event=ToolObserved(tool_call_id=f"call-{i}", output=f"output {i} " + "x" * (i % 97) * 50),
                event_id=f"evt-{i}",
                actor="agent",
            ))
            i += 1
        stream = f"run-{(i // batch) % 3}"
        for r in store.append(stream, items):
            print(r.position, r.event_id, r.stream_id, r.version, flush=True)
    """
)


def expected_event(event_id: str) -> ToolObserved:
    i = int(event_id.split("-")[1])
    return ToolObserved(tool_call_id=f"call-{i}", output=f"output {i} " + "x" * (i % 97) * 50)


def tagged(location: str, tag: str) -> str:
    """`location` with the PostgreSQL sessions it opens named `tag` (a file path as is)."""
    return f"{location}&application_name={tag}" if location.startswith("postgresql://") else location


def wait_for_sessions_to_end(location: str, tag: str, timeout: float = 30) -> None:
    """PostgreSQL: wait until the server has ended every session named `tag`. A backend whose
    client was killed finishes the statement it was running (and may commit it) before it
    notices; a check made earlier could miss that commit."""
    if not location.startswith("postgresql://"):
        return
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(location, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"the killed writer's session {tag} is still open after {timeout} s"
            time.sleep(0.01)


def run_and_kill(script: Path, location: str, options: dict[str, Any], start: int, batch: int,
                 kill_after: int) -> list[tuple[int, str, str, int]]:
    """Start a writer, read what it reports as committed, SIGKILL it once `kill_after` lines
    came, and wait until its database sessions are gone."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    tag = f"apollo-writer-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [sys.executable, str(script), tagged(location, tag), json.dumps(options), str(start), str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    reported: list[tuple[int, str, str, int]] = []
    deadline = time.monotonic() + 30
    try:
        assert proc.stdout is not None
        while len(reported) < kill_after:
            line = proc.stdout.readline()
            if not line:
                break
            position, event_id, stream_id, version = line.split()
            reported.append((int(position), event_id, stream_id, int(version)))
            assert time.monotonic() < deadline, "the writer is too slow"
    finally:
        proc.send_signal(signal.SIGKILL)  # the process we started, by its handle
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"writer died by itself ({proc.returncode}):\n{err}"
    assert len(reported) >= kill_after, f"writer stopped early:\n{err}"
    wait_for_sessions_to_end(location, tag)
    return reported


@pytest.mark.parametrize(
    ("backend", "options"),
    [
        ("sqlite-file", {"synchronous": "NORMAL"}),
        ("sqlite-file", {"synchronous": "FULL"}),
        # a background WAL checkpoint after every 16 KiB: the kill lands while one runs
        ("sqlite-file", {"synchronous": "NORMAL", "checkpoint_every": 16384}),
        # the server rolls back what the dead client left open; the log head must follow
        ("postgres", {}),
    ],
)
def test_sigkill_mid_append_loses_nothing_committed(tmp_path: Path, location: str, options: dict[str, Any]) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    reported: list[tuple[int, str, str, int]] = []
    for round_, (batch, kill_after) in enumerate([(1, 40), (5, 150), (3, 90)]):
        # each round continues the same log after the previous writer was killed,
        # with event ids of its own
        got = run_and_kill(script, location, options, round_ * 10_000_000, batch, kill_after)
        reported += got
        with open_store(location) as store:
            report = store.verify()
            assert report.ok, (round_, report)
            by_position = {r.position: r for r in store.read_all()}
            for position, event_id, stream_id, version in reported:
                recorded = by_position[position]
                assert (recorded.event_id, recorded.stream_id, recorded.version) == (event_id, stream_id, version)
                assert recorded.event == expected_event(event_id)
            # batches are atomic: every stream is whole batches only
            for stream_id in {r.stream_id for r in by_position.values()}:
                versions = [r.version for r in store.read(stream_id)]
                assert versions == list(range(1, len(versions) + 1))
            assert store.last_position() >= max(p for p, *_ in reported)

    # the locks are free again and the log continues
    short_wait = {"busy_timeout": 5} if location.endswith(".db") else {"lock_timeout": 5}
    with open_store(location, **short_wait) as store:
        [r] = store.append("run-after", [ToolObserved(tool_call_id="c", output="after the crash")])
        assert r.position == len(by_position) + 1
        assert store.verify().ok


def test_reopen_after_kill_keeps_writing_from_another_process(tmp_path: Path, location: str) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    first = run_and_kill(script, location, {}, 0, 2, 20)
    second = run_and_kill(script, location, {}, 10_000, 2, 20)
    assert second[0][0] > first[-1][0]
    with open_store(location) as store:
        assert store.verify().ok
        ids = {r.event_id for r in store.read_all()}
        assert {e for _, e, _, _ in first + second} <= ids
