"""The store's contract: what every backend must do (runs on a SQLite file, ':memory:' and PostgreSQL)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable

import anyio
import pytest

from apollo_es import (
    ANY,
    NO_STREAM,
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
    InvalidEventError,
    NewEvent,
    PayloadTooLarge,
    RecordedEvent,
    StoreError,
    StreamExistsError,
    StreamNotFound,
    VersionOutOfRange,
)
from apollo_es.store import GENESIS_HASH
import events
from events import AgentActed, BranchCreated, RunStarted, ToolObserved, Usage

from conftest import ALL_BACKENDS, make_events, one_of_each_kind, row_hash


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every contract test runs on each backend, PostgreSQL included."""
    return request.param


def sql(store: EventStore, query: str, params: tuple = ()) -> list[tuple]:
    """Raw SQL straight at the backend's tables (`?` placeholders), around the store's API."""
    if isinstance(store, EventStore):
        return store.connection.execute(query, params).fetchall()
    import psycopg

    with psycopg.connect(store.path, autocommit=True) as conn:
        return conn.execute(query.replace("?", "%s"), params).fetchall()


def snapshot(store: EventStore) -> tuple:
    """Everything a failed call must leave untouched."""
    return (
        store.last_position(),
        sql(store, "SELECT * FROM streams ORDER BY stream_id"),
        sql(store, "SELECT count(*) FROM events")[0][0],
    )


def ids(recorded: list[RecordedEvent]) -> list[str]:
    return [r.event_id for r in recorded]


# -- append / read / head -------------------------------------------------------------------


def test_empty_store(store: EventStore) -> None:
    assert store.last_position() == 0
    assert store.read_all() == []
    assert store.streams() == []
    assert not store.exists("run-1")
    with pytest.raises(StreamNotFound):
        store.head("run-1")
    with pytest.raises(StreamNotFound):
        store.read("run-1")
    report = store.verify()
    assert report.ok and report.events_checked == 0
    assert store.stats()["events"] == 0 and store.stats()["head_hash"] == GENESIS_HASH


def test_append_read_head(store: EventStore) -> None:
    batch = one_of_each_kind()
    batch = [e for e in batch if not isinstance(e, BranchCreated)]
    recorded = store.append("run-1", batch, expected_version=NO_STREAM, actor="agent")
    assert [r.event for r in recorded] == batch
    assert [r.version for r in recorded] == list(range(1, len(batch) + 1))
    assert [r.position for r in recorded] == list(range(1, len(batch) + 1))
    assert all(r.stream_id == "run-1" and r.actor == "agent" for r in recorded)
    assert [r.kind for r in recorded] == [type(e).__name__ for e in batch]
    assert len(set(ids(recorded))) == len(batch)
    # the hash chain links the returned envelopes
    assert recorded[0].prev_hash == GENESIS_HASH
    for before, after in zip(recorded, recorded[1:]):
        assert after.prev_hash == before.hash

    assert store.read("run-1") == recorded
    assert store.head("run-1") == len(batch)
    assert store.exists("run-1")
    assert store.event("run-1", 3) == recorded[2]
    assert store.read_all() == recorded
    assert store.last_position() == len(batch)

    more = store.append("run-1", make_events(3), expected_version=len(batch))
    assert [r.version for r in more] == [len(batch) + 1, len(batch) + 2, len(batch) + 3]
    assert store.read("run-1") == recorded + more
    assert store.verify().ok


def test_streams_interleave_positions_but_keep_own_versions(store: EventStore) -> None:
    a1 = store.append("a", make_events(2))
    b1 = store.append("b", make_events(3, start=10))
    a2 = store.append("a", make_events(1, start=20))
    assert [r.position for r in a1 + b1 + a2] == [1, 2, 3, 4, 5, 6]
    assert [r.version for r in store.read("a")] == [1, 2, 3]
    assert [r.version for r in store.read("b")] == [1, 2, 3]
    assert store.read("a") == a1 + a2
    assert {s.stream_id: s.head for s in store.streams()} == {"a": 3, "b": 3}


def test_append_empty_batch_is_a_no_op(store: EventStore) -> None:
    assert store.append("run-1", []) == []
    assert not store.exists("run-1")
    assert store.last_position() == 0


def test_envelope_fields(store: EventStore) -> None:
    event = ToolObserved(tool_call_id="c1", output="ok")
    [r] = store.append(
        "run-1",
        [NewEvent(event=event, event_id="evt-1", actor="human:bob", causation_id="cause-9", recorded_at="2024-01-02T03:04:05.000000Z")],
        actor="agent",
    )
    assert (r.event_id, r.actor, r.causation_id, r.recorded_at) == ("evt-1", "human:bob", "cause-9", "2024-01-02T03:04:05.000000Z")
    [d] = store.append("run-1", [NewEvent(event=event)], actor="judge:j1")
    assert d.actor == "judge:j1" and d.causation_id is None and d.recorded_at.endswith("Z")
    assert store.read("run-1") == [r, d]
    assert store.verify().ok


def test_recorded_hash_matches_row(store: EventStore) -> None:
    [r] = store.append("run-1", [RunStarted(task_id="t", task="x")])
    [row] = sql(store, "SELECT * FROM events WHERE position = 1")
    assert row_hash(GENESIS_HASH, row[:10]) == r.hash == row[11]
    assert row[10] == GENESIS_HASH


def test_generated_ids_are_uuid7s_in_time_order(store: EventStore) -> None:
    before_ms = time.time_ns() // 1_000_000
    first = store.append("run-1", make_events(300))
    time.sleep(0.002)
    second = store.append("run-1", make_events(5))
    after_ms = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(r.event_id) for r in first + second]
    assert all(str(u) == r.event_id for u, r in zip(parsed, first + second))
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert all(before_ms <= u.int >> 80 <= after_ms for u in parsed)
    assert len(set(parsed)) == len(parsed)
    assert max(u.int for u in parsed[:300]) < min(u.int for u in parsed[300:])  # later batches sort after


def test_big_batch_with_custom_envelopes_lands_as_returned(store: EventStore) -> None:
    """A batch is inserted many rows per statement: envelope fields set on any event (either side
    of a statement's boundary) land as given, every row chains to the one before it, and each
    payload is stored as the event's encoded text."""
    custom = {0, 63, 64, 95, 96, 99, 100, 149}
    batch = [
        NewEvent(event=e, event_id=f"evt-{i}", actor="human:ann", causation_id=f"cause-{i}",
                 recorded_at=f"2024-01-02T03:04:{i % 60:02d}.000000Z") if i in custom else e
        for i, e in enumerate(make_events(150))
    ]
    store.append("run-0", make_events(3))
    recorded = store.append("run-1", batch, actor="agent")

    assert store.read("run-1") == recorded
    assert [(r.position, r.version) for r in recorded] == [(4 + i, 1 + i) for i in range(150)]
    for i, r in enumerate(recorded):
        if i in custom:
            assert (r.event_id, r.actor, r.causation_id, r.recorded_at[:16]) == (f"evt-{i}", "human:ann", f"cause-{i}", "2024-01-02T03:04")
        else:
            assert (r.actor, r.causation_id) == ("agent", None)
    typed = ("typeof(payload), CAST(payload AS BLOB)" if isinstance(store, EventStore)
             else "pg_typeof(payload)::text, convert_to(payload, 'UTF8')")
    rows = sql(store, f"SELECT prev_hash, causation_id, {typed} FROM events WHERE stream_id = 'run-1' ORDER BY position")
    previous = store.read("run-0")[-1].hash
    for (prev_hash, causation_id, payload_type, payload), r, item in zip(rows, recorded, batch):
        event = item.event if isinstance(item, NewEvent) else item
        assert (prev_hash, causation_id, payload_type, payload) == (previous, r.causation_id, "text", events.encode(event))
        previous = r.hash
    assert store.verify().ok


# -- expected version -----------------------------------------------------------------------


def test_no_stream(store: EventStore) -> None:
    store.append("run-1", make_events(2), expected_version=NO_STREAM)
    before = snapshot(store)
    with pytest.raises(ConcurrencyError) as info:
        store.append("run-1", make_events(1, start=5), expected_version=NO_STREAM)
    assert info.value.actual == 2
    assert info.value.expected is NO_STREAM
    assert info.value.stream_id == "run-1"
    assert snapshot(store) == before


def test_any_appends_whatever_the_version(store: EventStore) -> None:
    store.append("run-1", make_events(1), expected_version=ANY)
    store.append("run-1", make_events(1, start=1), expected_version=ANY)
    store.append("run-1", make_events(1, start=2))  # ANY is the default
    assert store.head("run-1") == 3


def test_expected_int(store: EventStore) -> None:
    store.append("run-1", make_events(1), expected_version=0)  # 0 == "does not exist yet"
    store.append("run-1", make_events(2, start=1), expected_version=1)
    assert store.head("run-1") == 3
    for wrong in (0, 1, 2, 4, 100, -1):
        before = snapshot(store)
        with pytest.raises(ConcurrencyError) as info:
            store.append("run-1", make_events(2, start=10), expected_version=wrong)
        assert info.value.actual == 3
        assert info.value.expected == wrong
        assert snapshot(store) == before
    store.append("run-1", make_events(1, start=20), expected_version=3)
    assert store.head("run-1") == 4


def test_expected_int_on_a_missing_stream(store: EventStore) -> None:
    with pytest.raises(ConcurrencyError) as info:
        store.append("run-1", make_events(1), expected_version=1)
    assert info.value.actual == 0
    assert not store.exists("run-1") and store.last_position() == 0


def test_expected_version_on_a_branch_counts_inherited_events(store: EventStore) -> None:
    store.append("run-1", make_events(5))
    child = store.branch("run-1", 3)
    assert store.head(child) == 4
    with pytest.raises(ConcurrencyError) as info:
        store.append(child, make_events(1, start=9), expected_version=1)
    assert info.value.actual == 4
    with pytest.raises(ConcurrencyError):
        store.append(child, make_events(1, start=9), expected_version=NO_STREAM)
    [r] = store.append(child, make_events(1, start=9), expected_version=4)
    assert r.version == 5


@pytest.mark.parametrize("bad", ["1", 1.0, None, True, "ANY"])
def test_expected_version_of_the_wrong_type(store: EventStore, bad: object) -> None:
    store.append("run-1", make_events(1))
    before = snapshot(store)
    with pytest.raises((TypeError, StoreError)):
        store.append("run-1", make_events(1, start=1), expected_version=bad)  # type: ignore[arg-type]
    assert snapshot(store) == before


# -- idempotency ----------------------------------------------------------------------------


def test_same_event_id_twice_is_a_no_op(store: EventStore) -> None:
    [first] = store.append("run-1", [NewEvent(event=make_events(1)[0], event_id="evt-1")])
    store.append("run-1", make_events(2, start=1))
    before = snapshot(store)
    [again] = store.append("run-1", [NewEvent(event=make_events(1)[0], event_id="evt-1")])
    assert again == first
    assert again.position == 1
    assert snapshot(store) == before
    # a stale expected version does not matter when nothing needs writing (a retried call)
    [again] = store.append("run-1", [NewEvent(event=make_events(1)[0], event_id="evt-1")], expected_version=0)
    assert again == first
    assert snapshot(store) == before


def test_retried_batch_with_some_new_events(store: EventStore) -> None:
    events_ = make_events(3)
    first = store.append("run-1", [NewEvent(event=e, event_id=f"e{i}") for i, e in enumerate(events_[:2])])
    result = store.append("run-1", [NewEvent(event=e, event_id=f"e{i}") for i, e in enumerate(events_)])
    assert result[:2] == first
    assert result[2].version == 3 and result[2].event_id == "e2"
    assert store.read("run-1") == result
    assert store.verify().ok


def test_same_event_id_in_another_stream(store: EventStore) -> None:
    store.append("run-1", [NewEvent(event=make_events(1)[0], event_id="evt-1")])
    before = snapshot(store)
    with pytest.raises(DuplicateEventError):
        store.append("run-2", [NewEvent(event=make_events(1)[0], event_id="evt-1")])
    with pytest.raises(DuplicateEventError):  # even mixed into a batch of new events
        store.append(
            "run-1-other",
            [NewEvent(event=e) for e in make_events(2)] + [NewEvent(event=make_events(1)[0], event_id="evt-1")],
        )
    assert snapshot(store) == before
    assert not store.exists("run-2")


def test_same_event_id_twice_in_one_batch_writes_nothing(store: EventStore) -> None:
    before = snapshot(store)
    with pytest.raises(StoreError):
        store.append("run-1", [NewEvent(event=e, event_id="dup") for e in make_events(2)])
    assert snapshot(store) == before


# -- atomicity and bad input ----------------------------------------------------------------


def test_batch_with_an_invalid_third_event_writes_nothing(store: EventStore) -> None:
    store.append("run-1", make_events(1))
    before = snapshot(store)
    batch = make_events(2, start=1) + [AgentActed(model=3)] + make_events(2, start=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError):
        store.append("run-1", batch)
    assert snapshot(store) == before
    with pytest.raises(InvalidEventError):
        store.append("run-new", batch)
    assert snapshot(store) == before
    assert not store.exists("run-new")


class NotAnEvent:
    pass


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(NotAnEvent(), id="unknown-object"),
        pytest.param({"type": "AgentActed", "model": "m"}, id="dict"),
        pytest.param(AgentActed(model=3), id="model-int"),  # type: ignore[arg-type]
        pytest.param(AgentActed(model="m", usage=Usage(input_tokens="3")), id="nested-wrong-type"),  # type: ignore[arg-type]
        pytest.param(ToolObserved(tool_call_id="c", output=None), id="none-for-str"),  # type: ignore[arg-type]
        pytest.param(AgentActed(model="m", latency_ms=float("nan")), id="nan"),
        pytest.param(AgentActed(model="m", text="lone surrogate \udc80"), id="lone-surrogate"),
        pytest.param(NewEvent(event=AgentActed(model="m"), event_id="x" * 201), id="long-event-id"),
        pytest.param(NewEvent(event=AgentActed(model="m"), actor="root"), id="bad-envelope-actor"),
    ],
)
def test_bad_event_is_refused_and_nothing_written(store: EventStore, bad: object) -> None:
    store.append("run-1", make_events(1))
    before = snapshot(store)
    with pytest.raises(InvalidEventError):
        store.append("run-1", [bad])  # type: ignore[list-item]
    with pytest.raises(InvalidEventError):
        store.append("run-1", make_events(2, start=1) + [bad])  # type: ignore[operator]
    assert snapshot(store) == before
    assert store.verify().ok


@pytest.mark.parametrize(
    "envelope",
    [
        pytest.param({"event_id": 12345}, id="int-event-id"),
        pytest.param({"causation_id": 42}, id="int-causation-id"),
        pytest.param({"recorded_at": 1700000000}, id="int-recorded-at"),
        pytest.param({"recorded_at": "datetime"}, id="datetime-recorded-at"),
    ],
)
def test_envelope_fields_of_the_wrong_type(store: EventStore, envelope: dict) -> None:
    # NewEvent is a msgspec Struct: its constructor does not check types. A non-str
    # envelope field must be refused at append time; if it were stored, SQLite's TEXT
    # affinity would turn it into a string and the row's hash (computed over the original
    # value) would no longer match: verify() would flag a row nobody tampered with.
    from datetime import datetime, timezone

    if envelope.get("recorded_at") == "datetime":
        envelope = {"recorded_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}
    store.append("run-1", make_events(1))
    before = snapshot(store)
    with pytest.raises(InvalidEventError):
        store.append("run-1", [NewEvent(event=AgentActed(model="m"), **envelope)])
    assert snapshot(store) == before
    assert store.verify().ok


def test_payload_over_the_limit(store_factory: Callable[..., EventStore]) -> None:
    store = store_factory(max_payload_bytes=1_000)
    store.append("run-1", [ToolObserved(tool_call_id="c", output="x" * 500)])
    before = snapshot(store)
    big = ToolObserved(tool_call_id="c", output="x" * 1_000)
    with pytest.raises(PayloadTooLarge) as info:
        store.append("run-1", [ToolObserved(tool_call_id="c", output="ok"), big])
    assert isinstance(info.value, InvalidEventError)
    assert snapshot(store) == before
    # a branch whose BranchCreated payload (the reason) is too big writes nothing either
    with pytest.raises(PayloadTooLarge):
        store.branch("run-1", 1, "run-1-big", reason="r" * 2_000)
    assert snapshot(store) == before
    assert not store.exists("run-1-big")


def test_payload_limit_counts_encoded_bytes(store_factory: Callable[..., EventStore]) -> None:
    store = store_factory(max_payload_bytes=200)
    small = ToolObserved(tool_call_id="c", output="")
    overhead = len(events.encode(small))
    store.append("run-1", [ToolObserved(tool_call_id="c", output="a" * (200 - overhead))])  # exactly at the limit
    with pytest.raises(PayloadTooLarge):
        store.append("run-1", [ToolObserved(tool_call_id="c", output="é" * (200 - overhead))])  # 2 bytes each
    assert store.last_position() == 1


@pytest.mark.parametrize(
    "stream_id",
    ["", " run", "run 1", "-run", "/run", "run\n", "r" * 201, "ran\x00", "rün", None, 42],
    ids=repr,
)
def test_bad_stream_id(store: EventStore, stream_id: object) -> None:
    store.append("run-1", make_events(1))
    before = snapshot(store)
    with pytest.raises(StoreError):
        store.append(stream_id, make_events(1, start=1))  # type: ignore[arg-type]
    if stream_id is not None:  # None asks branch() to pick a name
        with pytest.raises(StoreError):
            store.branch("run-1", 1, stream_id)  # type: ignore[arg-type]
    assert snapshot(store) == before


@pytest.mark.parametrize("stream_id", ["r", "run-1", "a.b_c:d~e@f/g+h=i", "R" * 200, "0"])
def test_good_stream_ids(store: EventStore, stream_id: str) -> None:
    store.append(stream_id, make_events(1))
    assert store.head(stream_id) == 1
    # the same id is also accepted as a branch name
    store.append("base-stream", make_events(1, start=1))
    name = "b" + stream_id[1:] if stream_id != "base-stream" else "other"
    assert store.branch("base-stream", 1, name) == name


def test_generated_branch_id_of_a_long_stream_id(store: EventStore) -> None:
    # Any valid stream id can be branched without naming the branch: the generated
    # name (`<id>~b<n>`) must itself be a valid id, even for ids near the 200-char limit.
    stream_id = "r" * 198
    store.append(stream_id, make_events(1))
    child = store.branch(stream_id, 1)
    assert store.lineage(child) == [(stream_id, 1), (child, None)]
    assert store.verify().ok


@pytest.mark.parametrize("actor", ["", "root", "human:", "human: bob", "Agent", "agent ", "judge", 7, None])
def test_bad_actor(store: EventStore, actor: object) -> None:
    store.append("run-1", make_events(1))
    before = snapshot(store)
    with pytest.raises(InvalidEventError):
        store.append("run-1", make_events(1, start=1), actor=actor)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError):
        store.branch("run-1", 1, actor=actor)  # type: ignore[arg-type]
    assert snapshot(store) == before


@pytest.mark.parametrize("actor", ["agent", "system", "human:alice", "judge:gpt-judge/v2", "import:swe-agent"])
def test_good_actors(store: EventStore, actor: str) -> None:
    [r] = store.append("run-1", make_events(1), actor=actor)
    assert r.actor == actor
    child = store.branch("run-1", 1, actor=actor)
    assert store.read(child)[-1].actor == actor
    assert store.read(child)[-1].event.created_by == actor


# -- reading --------------------------------------------------------------------------------


def test_read_up_to(store: EventStore) -> None:
    recorded = store.append("run-1", make_events(5))
    assert store.read("run-1", up_to=0) == []
    for k in range(1, 6):
        assert store.read("run-1", up_to=k) == recorded[:k]
    assert store.read("run-1", up_to=99) == recorded
    with pytest.raises(VersionOutOfRange):
        store.read("run-1", up_to=-1)


def test_event_by_version(store: EventStore) -> None:
    recorded = store.append("run-1", make_events(3))
    for r in recorded:
        assert store.event("run-1", r.version) == r
    for bad in (0, 4, -1):
        with pytest.raises(VersionOutOfRange):
            store.event("run-1", bad)
    with pytest.raises(StreamNotFound):
        store.event("nope", 1)


def test_read_all_after_and_limit(store: EventStore) -> None:
    store.append("a", make_events(3))
    store.append("b", make_events(3, start=3))
    everything = store.read_all()
    assert [r.position for r in everything] == [1, 2, 3, 4, 5, 6]
    for after in range(0, 7):
        assert store.read_all(after=after) == everything[after:]
    assert store.read_all(after=2, limit=2) == everything[2:4]
    assert store.read_all(limit=0) == []
    assert store.read_all(after=100) == []


# -- branches -------------------------------------------------------------------------------


def test_branch_semantics(store: EventStore) -> None:
    parent = store.append("run-1", make_events(5))
    before_positions = store.last_position()
    child = store.branch("run-1", 3, reason="try again", actor="human:alice")
    assert child != "run-1" and store.exists(child)
    # zero-copy: exactly one new row, the BranchCreated marker
    assert store.last_position() == before_positions + 1
    assert store.head(child) == 4
    read = store.read(child)
    assert read[:3] == parent[:3]  # inherited events are the parent's rows themselves
    marker = read[3]
    assert marker.stream_id == child and marker.version == 4 and marker.actor == "human:alice"
    assert marker.event == BranchCreated(parent_stream="run-1", fork_version=3, reason="try again", created_by="human:alice")
    assert store.lineage(child) == [("run-1", 3), (child, None)]
    assert store.lineage("run-1") == [("run-1", None)]

    # both sides grow independently
    own = store.append(child, make_events(2, start=100), expected_version=4)
    more = store.append("run-1", make_events(1, start=200), expected_version=5)
    assert store.read(child) == parent[:3] + [marker] + own
    assert store.read("run-1") == parent + more
    assert [r.version for r in store.read(child)] == [1, 2, 3, 4, 5, 6]
    assert store.read(child, up_to=2) == parent[:2]
    assert store.read(child, up_to=4) == parent[:3] + [marker]
    assert store.event(child, 2) == parent[1]
    assert store.event(child, 5) == own[0]

    info = {s.stream_id: s for s in store.streams()}
    assert info[child].parent_id == "run-1" and info[child].fork_version == 3
    assert info[child].head == 6 and info[child].own_events == 3
    assert info["run-1"].parent_id is None and info["run-1"].head == 6
    stats = store.stats()
    assert (stats["streams"], stats["runs"], stats["branches"]) == (2, 1, 1)
    assert store.verify().ok


def test_branch_at_head_and_at_one(store: EventStore) -> None:
    parent = store.append("run-1", make_events(3))
    at_head = store.branch("run-1", 3)
    at_one = store.branch("run-1", 1)
    assert at_head != at_one
    assert store.read(at_head)[:3] == parent and store.head(at_head) == 4
    assert store.read(at_one)[:1] == parent[:1] and store.head(at_one) == 2


def test_named_branch_and_name_taken(store: EventStore) -> None:
    store.append("run-1", make_events(3))
    store.append("other", make_events(1))
    assert store.branch("run-1", 2, "run-1-alt") == "run-1-alt"
    before = snapshot(store)
    for taken in ("run-1-alt", "other", "run-1"):
        with pytest.raises(StreamExistsError):
            store.branch("run-1", 2, taken)
    assert snapshot(store) == before


def test_generated_branch_ids_do_not_collide(store: EventStore) -> None:
    store.append("run-1", make_events(3))
    store.branch("run-1", 1, "run-1~b2")  # takes the id the generator would pick second
    made = {store.branch("run-1", 2) for _ in range(4)}
    assert len(made) == 4 and "run-1~b2" not in made
    assert all(store.lineage(b)[0] == ("run-1", 2) for b in made)


def test_branches_of_branches(store: EventStore) -> None:
    root = store.append("run", make_events(4))
    b1 = store.branch("run", 2, "b1")
    b1_own = store.append("b1", make_events(3, start=10))  # b1: 1,2 from run, 3 marker, 4..6 own
    b2 = store.branch(b1, 5, "b2")  # b2: run 1..2, b1 3..5, marker 6
    b2_own = store.append(b2, make_events(1, start=20))
    b3 = store.branch(b2, 2, "b3")  # forks b2 inside what b2 inherits from run
    store.append("run", make_events(2, start=30))  # the root moves on after the forks

    b1_events = store.read(b1)
    b2_events = store.read(b2)
    assert b2_events[:5] == b1_events[:5]
    assert b2_events[:2] == root[:2]
    assert b2_events[2].event.parent_stream == "run"  # b1's marker, inherited
    assert b2_events[2:5] == [b1_events[2]] + b1_own[:2]
    assert b2_events[5].event == BranchCreated(parent_stream="b1", fork_version=5, created_by="system")
    assert b2_events[6:] == b2_own
    assert [r.version for r in b2_events] == list(range(1, 8))
    assert store.lineage(b2) == [("run", 2), ("b1", 5), ("b2", None)]

    assert store.head(b3) == 3
    assert [sid for sid, _ in store.lineage(b3)] == ["run", "b1", "b2", "b3"]
    assert store.verify().ok


def test_branch_forked_below_its_parents_fork_point(store: EventStore) -> None:
    # b2 forks b1 at 5 (past b1's own fork from run at 2); b3 forks b2 at 2, inside what
    # b2 inherits from run. b3 must read run v1..2 and then its own marker: none of b1's
    # events (v3..5) are below b3's fork point.
    root = store.append("run", make_events(4))
    store.branch("run", 2, "b1")
    store.append("b1", make_events(3, start=10))
    store.branch("b1", 5, "b2")
    store.branch("b2", 2, "b3")

    b3_events = store.read("b3")
    assert [(r.stream_id, r.version) for r in b3_events] == [("run", 1), ("run", 2), ("b3", 3)]
    assert b3_events[:2] == root[:2]
    assert b3_events[2].event == BranchCreated(parent_stream="b2", fork_version=2, created_by="system")
    assert store.head("b3") == 3
    assert store.event("b3", 3) == b3_events[2]
    assert store.read("b3", up_to=3) == b3_events
    # the SQL audit view agrees
    timeline = sql(store, "SELECT stream_id, version FROM timeline WHERE run_id = 'b3' ORDER BY version")
    assert timeline == [("run", 1), ("run", 2), ("b3", 3)]


def test_branch_errors_write_nothing(store: EventStore) -> None:
    store.append("run-1", make_events(3))
    child = store.branch("run-1", 2)
    before = snapshot(store)
    with pytest.raises(StreamNotFound):
        store.branch("nope", 1)
    for bad in (0, -1, 4, 100):
        with pytest.raises(VersionOutOfRange):
            store.branch("run-1", bad)
    with pytest.raises(VersionOutOfRange):
        store.branch(child, 4)  # child's head is 3
    with pytest.raises(VersionOutOfRange):
        store.branch("run-1", "2")  # type: ignore[arg-type]
    assert snapshot(store) == before
    assert store.verify().ok


# -- subscriptions --------------------------------------------------------------------------


def _append_in_background(store: EventStore, batches: list[tuple[str, int]], delay: float) -> threading.Thread:
    def write() -> None:
        start = 100
        for stream_id, n in batches:
            time.sleep(delay)
            store.append(stream_id, make_events(n, start=start))
            start += n

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_subscribe_sees_events_appended_while_tailing(store: EventStore) -> None:
    store.append("run-1", make_events(3))
    batches = [("run-1", 2), ("run-2", 1), ("run-1", 3), ("run-3", 1)]
    thread = _append_in_background(store, batches, delay=0.02)
    expected_total = 3 + sum(n for _, n in batches)
    seen: list[RecordedEvent] = []
    for recorded in store.subscribe(after=1, poll_interval=0.005, idle_timeout=5.0):
        seen.append(recorded)
        if len(seen) == expected_total - 1:
            break
    thread.join(5)
    assert [r.position for r in seen] == list(range(2, expected_total + 1))
    assert seen == store.read_all(after=1)


def test_subscribe_idle_timeout_ends_iteration(store: EventStore) -> None:
    store.append("run-1", make_events(2))
    started = time.monotonic()
    seen = list(store.subscribe(poll_interval=0.01, idle_timeout=0.1))
    assert [r.position for r in seen] == [1, 2]
    assert time.monotonic() - started < 5


def test_subscribe_pages_past_1000(store: EventStore) -> None:
    store.append("run-1", make_events(1_234))
    seen = list(store.subscribe(after=5, poll_interval=0.01, idle_timeout=0.05))
    assert [r.position for r in seen] == list(range(6, 1_235))


def test_asubscribe_sees_events_appended_while_tailing(store: EventStore) -> None:
    store.append("run-1", make_events(2))
    batches = [("run-1", 1), ("run-2", 2), ("run-1", 2)]
    expected_total = 2 + sum(n for _, n in batches)

    async def main() -> list[RecordedEvent]:
        seen: list[RecordedEvent] = []
        thread = _append_in_background(store, batches, delay=0.02)
        with anyio.fail_after(10):
            async for recorded in store.asubscribe(poll_interval=0.005, idle_timeout=5.0):
                seen.append(recorded)
                if len(seen) == expected_total:
                    break
        await anyio.to_thread.run_sync(thread.join, 5)
        return seen

    seen = anyio.run(main)
    assert [r.position for r in seen] == list(range(1, expected_total + 1))
    assert seen == store.read_all()


def test_asubscribe_idle_timeout(store: EventStore) -> None:
    store.append("run-1", make_events(3))

    async def main() -> list[int]:
        with anyio.fail_after(10):
            return [r.position async for r in store.asubscribe(after=1, poll_interval=0.01, idle_timeout=0.1)]

    assert anyio.run(main) == [2, 3]


# -- immutability ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET payload = '{}' WHERE position = 1",
        "UPDATE events SET actor = 'system'",
        "DELETE FROM events WHERE position = 2",
        "DELETE FROM events",
        "UPDATE streams SET parent_id = NULL",
        "DELETE FROM streams",
        "TRUNCATE events",
    ],
)
def test_triggers_refuse_update_and_delete(store: EventStore, statement: str) -> None:
    store.append("run-1", make_events(2), actor="agent")
    store.branch("run-1", 1)
    before = snapshot(store)
    rows = sql(store, "SELECT * FROM events ORDER BY position")
    if statement.startswith("TRUNCATE") and isinstance(store, EventStore):
        pytest.skip("SQLite has no TRUNCATE (it is a DELETE there)")
    with pytest.raises(Exception, match="append-only") as raised:
        sql(store, statement)
    assert isinstance(raised.value, sqlite3.DatabaseError if isinstance(store, EventStore) else psycopg_error())
    assert snapshot(store) == before
    assert sql(store, "SELECT * FROM events ORDER BY position") == rows
    assert store.verify().ok


def test_audit_views_work(store: EventStore) -> None:
    store.append("run-1", [e for e in one_of_each_kind() if not isinstance(e, BranchCreated)])
    child = store.branch("run-1", 2, reason="why not")
    timeline = sql(store, "SELECT version, kind, summary FROM timeline WHERE run_id = ? ORDER BY version", (child,))
    assert [(v, k) for v, k, _ in timeline] == [(1, "RunStarted"), (2, "AgentActed"), (3, "BranchCreated")]
    assert timeline[2][2] == "branch of run-1 at v2: why not"
    rows = store.timeline(child)
    assert [(r.version, r.kind, r.summary) for r in rows] == timeline
    assert store.timeline(child, kinds=["AgentActed"], limit=1)[0].version == 2
    assert [r.version for r in store.timeline(child, actors=["sys*"], after_version=1)] == [2, 3]
    # the flattened views: the same names, columns and values on both backends (README's queries)
    calls = sql(store, "SELECT version, call_id, tool, model, input_tokens, output_tokens FROM tool_calls"
                       " ORDER BY position, call_id")
    assert [row[2] for row in calls] == ["bash", "bash"] and all(isinstance(row[4], int) for row in calls)
    said = sql(store, "SELECT version, actor, annotator, kind, message, seen_version FROM interventions ORDER BY position")
    verdicts = sql(store, "SELECT action_version, judge_id, verdict, score, reason FROM verdicts ORDER BY position")
    assert said and verdicts
    assert (calls, said, verdicts) == EXPECTED_VIEW_ROWS.setdefault("rows", (calls, said, verdicts))


EXPECTED_VIEW_ROWS: dict[str, tuple] = {}  # what the first backend's views gave; the others must agree


def psycopg_error() -> type:
    import psycopg

    return psycopg.Error


def test_events_by_ids_and_caused_by(store: EventStore) -> None:
    [action] = store.append("run-1", make_events(1, kind="AgentActed"))
    later = store.append("run-1", [NewEvent(event=e, causation_id=action.event_id) for e in make_events(2)])
    assert store.events_by_ids([action.event_id, "missing"]) == {action.event_id: action}
    assert store.caused_by([action.event_id]) == later
    assert store.caused_by([action.event_id], kinds=["NoSuchKind"]) == []


def test_leases_and_checkpoints(store: EventStore) -> None:
    assert store.acquire_lease("run-1", "a", 30) is not None
    assert store.acquire_lease("run-1", "b", 30) is None
    assert store.acquire_lease("run-1", "b", 30, take_over="a").holder == "b"
    assert set(store.leases()) == {"run-1"}
    store.release_lease("run-1", "b")
    assert store.leases() == {}
    assert store.checkpoint("p") is None
    store.save_checkpoint("p", 3, "f1")
    store.save_checkpoint("p", 5, "f2")
    assert store.checkpoint("p") == (5, "f2")
