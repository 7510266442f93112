"""Integrity: verify() pinpoints edits made around the triggers, and crashes lose nothing committed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apollo_es import EventStore
from events import ToolObserved

from conftest import make_events

REPO_ROOT = Path(__file__).resolve().parent.parent
ROWS = 14  # events in the template store


def drop_triggers(store: EventStore) -> None:
    names = [r[0] for r in store.connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    assert len(names) == 4
    for name in names:
        store.connection.execute(f"DROP TRIGGER {name}")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed store file with ROWS events over two roots and two branches (ASCII payloads)."""
    path = tmp_path_factory.mktemp("template") / "apollo.db"
    with EventStore(path) as store:
        store.append("run-1", make_events(4), actor="agent")
        store.append("run-2", make_events(3, start=4))
        child = store.branch("run-1", 2, "run-1-alt", reason="try again", actor="human:alice")
        store.append(child, make_events(2, start=7), actor="agent")
        store.branch(child, 4, "run-1-alt-2")
        store.append("run-1", make_events(2, start=9))
        store.append("run-1-alt-2", make_events(1, start=11))
        assert store.last_position() == ROWS
        assert store.verify().ok
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


class Copy:
    """A private copy of the template, opened with the triggers dropped."""

    def __init__(self, template: Path) -> None:
        self.dir = tempfile.mkdtemp(prefix="apollo-tamper-")
        self.path = Path(self.dir) / "apollo.db"
        shutil.copy(template, self.path)
        self.store = EventStore(self.path)
        drop_triggers(self.store)

    def __enter__(self) -> EventStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def payload_bytes(store: EventStore, position: int) -> bytes:
    return store.connection.execute(
        "SELECT CAST(payload AS BLOB) FROM events WHERE position = ?", (position,)
    ).fetchone()[0]


def set_payload_bytes(store: EventStore, position: int, data: bytes) -> None:
    store.connection.execute("UPDATE events SET payload = CAST(? AS TEXT) WHERE position = ?", (data, position))


# -- tamper ---------------------------------------------------------------------------------


def test_template_is_sound(template: Path) -> None:
    with Copy(template) as store:
        report = store.verify()
        assert report.ok and report.events_checked == ROWS and report.first_bad_position is None


@settings(max_examples=60, deadline=None)
@given(position=st.integers(1, ROWS), index=st.integers(0, 10_000), replacement=st.integers(0x20, 0x7E))
def test_one_changed_payload_byte_is_found(template: Path, position: int, index: int, replacement: int) -> None:
    with Copy(template) as store:
        data = bytearray(payload_bytes(store, position))
        assert data.isascii()
        index %= len(data)
        if data[index] == replacement:
            replacement = replacement + 1 if replacement < 0x7E else 0x20
        data[index] = replacement
        set_payload_bytes(store, position, bytes(data))
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == position
        assert report.events_checked == position
        assert "changed" in report.reason


@pytest.mark.parametrize("position", [1, 5, ROWS])
def test_payload_bit_rot_is_a_finding_not_a_crash(template: Path, position: int) -> None:
    # Flipping a high bit leaves bytes that are not UTF-8. verify() exists to find exactly
    # this kind of damage: it must report the row, not die decoding it.
    with Copy(template) as store:
        data = bytearray(payload_bytes(store, position))
        data[len(data) // 2] ^= 0x80
        set_payload_bytes(store, position, bytes(data))
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
def test_changed_envelope_column_is_found(template: Path, column: str, value: str, position: int) -> None:
    with Copy(template) as store:
        before = store.connection.execute(f"SELECT {column} FROM events WHERE position = ?", (position,)).fetchone()
        store.connection.execute(f"UPDATE events SET {column} = {value} WHERE position = ?", (position,))
        after = store.connection.execute(f"SELECT {column} FROM events WHERE position = ?", (position,)).fetchone()
        assert before != after
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == position


@pytest.mark.parametrize("position", [1, 2, 7, ROWS - 1])
def test_deleted_row_is_found(template: Path, position: int) -> None:
    with Copy(template) as store:
        store.connection.execute("DELETE FROM events WHERE position = ?", (position,))
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == position + 1  # the first row after the gap
        assert "missing" in report.reason


def test_truncated_tail_is_caught_by_an_anchor(template: Path) -> None:
    # Dropping the newest rows leaves a valid chain; the anchor, kept elsewhere, catches it.
    with Copy(template) as store:
        anchor = (store.stats()["head_hash"], ROWS)
        assert store.verify(anchors=[anchor]).anchors_checked == 1
        store.connection.execute("DELETE FROM events WHERE position = ?", (ROWS,))
        assert store.verify().ok
        report = store.verify(anchors=[anchor])
        assert not report.ok and "no longer reaches position" in report.reason


def test_a_rehashed_chain_is_caught_by_an_anchor(template: Path) -> None:
    """An attacker who edits a row and recomputes every later hash keeps the chain valid."""
    from apollo_es.store import chain_hash

    with Copy(template) as store:
        anchor = (store.stats()["head_hash"], ROWS)
        conn = store.connection
        conn.execute("UPDATE events SET payload = replace(payload, 'step 0', 'step X') WHERE position = 1")
        prev = "0" * 64
        for row in conn.execute("SELECT position, stream_id, version, event_id, kind, schema, recorded_at, actor, "
                                "causation_id, CAST(payload AS BLOB) FROM events ORDER BY position").fetchall():
            new = chain_hash(prev, row[:9], row[9])
            conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE position = ?", (prev, new, row[0]))
            prev = new
        assert store.verify().ok  # the chain alone cannot tell
        report = store.verify(anchors=[anchor])
        assert not report.ok and "another hash" in report.reason


def test_a_damaged_index_page_is_a_corruption_finding(template: Path, tmp_path: Path) -> None:
    """Reads go through the (stream_id, version) index: a flipped bit there can hide rows
    while every row of the table is intact. SQLite's integrity_check sees it."""
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


def test_branch_row_edited_to_another_fork_is_found(template: Path) -> None:
    with Copy(template) as store:
        marker = next(r for r in store.read_all() if r.stream_id == "run-1-alt")
        store.connection.execute("UPDATE streams SET fork_version = 1 WHERE stream_id = 'run-1-alt'")
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == marker.position


def test_branch_row_edited_to_another_parent_is_found(template: Path) -> None:
    with Copy(template) as store:
        marker = next(r for r in store.read_all() if r.stream_id == "run-1-alt")
        store.connection.execute("UPDATE streams SET parent_id = 'run-2' WHERE stream_id = 'run-1-alt'")
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == marker.position


def test_deleted_stream_row_is_found(template: Path) -> None:
    with Copy(template) as store:
        first = next(r for r in store.read_all() if r.stream_id == "run-2")
        store.connection.execute("PRAGMA foreign_keys = OFF")
        store.connection.execute("DELETE FROM streams WHERE stream_id = 'run-2'")
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == first.position


# -- crash ----------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from apollo_es import EventStore, NewEvent
    from events import ToolObserved

    path, start, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = EventStore(path)
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


def run_and_kill(script: Path, db: Path, start: int, batch: int, kill_after: int) -> list[tuple[int, str, str, int]]:
    """Start a writer, read what it reports as committed, SIGKILL it once `kill_after` lines came."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(start), str(batch)],
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
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"writer died by itself ({proc.returncode}):\n{err}"
    assert len(reported) >= kill_after, f"writer stopped early:\n{err}"
    return reported


@pytest.mark.parametrize(
    "options",
    [
        "synchronous='NORMAL'",
        "synchronous='FULL'",
        # a background WAL checkpoint after every 16 KiB: the kill lands while one runs
        "synchronous='NORMAL', checkpoint_every=16384",
    ],
)
def test_sigkill_mid_append_loses_nothing_committed(tmp_path: Path, options: str) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.replace("EventStore(path)", f"EventStore(path, {options})"))
    db = tmp_path / "apollo.db"
    reported: list[tuple[int, str, str, int]] = []
    for round_, (batch, kill_after) in enumerate([(1, 40), (5, 150), (3, 90)]):
        # each round continues the same file after the previous writer was killed,
        # with event ids of its own
        got = run_and_kill(script, db, round_ * 10_000_000, batch, kill_after)
        reported += got
        with EventStore(db) as store:
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

    # the lock is free again and the log continues
    with EventStore(db, busy_timeout=5) as store:
        [r] = store.append("run-after", [ToolObserved(tool_call_id="c", output="after the crash")])
        assert r.position == len(by_position) + 1
        assert store.verify().ok


def test_reopen_after_kill_keeps_writing_from_another_process(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db = tmp_path / "apollo.db"
    first = run_and_kill(script, db, 0, 2, 20)
    second = run_and_kill(script, db, 10_000, 2, 20)
    assert second[0][0] > first[-1][0]
    with EventStore(db) as store:
        assert store.verify().ok
        ids = {r.event_id for r in store.read_all()}
        assert {e for _, e, _, _ in first + second} <= ids
