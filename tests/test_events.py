"""The event vocabulary: encoding, the tagged union, validation and upcasting."""

from __future__ import annotations

import gc
import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import events
from apollo_es import EventStore, NewEvent, StoreError
from events import (
    CURRENT_SCHEMA,
    KINDS,
    AgentActed,
    BranchCreated,
    Event,
    EventError,
    RunStarted,
    ToolCall,
    ToolObserved,
    UnknownKindError,
    Usage,
)
from events import InvalidEventError as EventsInvalidEventError

from conftest import one_of_each_kind, raw_append

EXAMPLES = one_of_each_kind()


def test_the_examples_cover_every_kind() -> None:
    assert [events.kind_of(e) for e in EXAMPLES] == list(KINDS)
    assert set(CURRENT_SCHEMA) == set(KINDS)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_kind_round_trips(event: Event) -> None:
    kind = events.kind_of(event)
    data = events.encode(event)
    assert isinstance(data, bytes)
    assert json.loads(data)["type"] == kind  # the tag is in the payload, for json_extract
    decoded = events.decode(kind, CURRENT_SCHEMA[kind], data)
    assert type(decoded) is type(event)
    assert decoded == event
    # str payloads (as SQLite returns them) decode the same
    assert events.decode(kind, CURRENT_SCHEMA[kind], data.decode()) == event


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_tagged_union_dispatches_on_type(event: Event) -> None:
    data = events.encode(event)
    decoded = msgspec.json.decode(data, type=Event)
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_to_builtins_and_from_dict_round_trip(event: Event) -> None:
    kind = events.kind_of(event)
    data = events.to_builtins(event)
    assert data["type"] == kind
    assert events.from_dict(kind, data) == event
    without_tag = {k: v for k, v in data.items() if k != "type"}
    assert events.from_dict(kind, without_tag) == event


def test_defaults_are_filled_in() -> None:
    event = events.from_dict("AgentActed", {"model": "m"})
    assert event == AgentActed(model="m")
    assert event.usage == Usage() and event.tool_calls == []


def test_union_rejects_unknown_tag() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"type": "Nope", "model": "m"}', type=Event)


def test_from_dict_unknown_kind() -> None:
    with pytest.raises(UnknownKindError):
        events.from_dict("AgentThought", {"model": "m"})
    assert issubclass(UnknownKindError, EventError)


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("AgentActed", {"model": 3}),
        ("AgentActed", {}),  # missing required field
        ("AgentActed", {"model": "m", "usage": {"input_tokens": "many"}}),
        ("AgentActed", {"model": "m", "tool_calls": [{"name": "bash"}]}),  # call without id
        ("AgentActed", {"model": "m", "surprise": 1}),  # unknown field
        ("ToolObserved", {"tool_call_id": "c", "output": "o", "exit_code": "1"}),
        ("HumanIntervened", {"annotator": "a", "kind": "applause"}),  # not in the Literal
        ("ActionJudged", {"target_event_id": "e", "verdict": "keep", "judge_id": "j", "score": "high"}),
        ("RunFinished", {"status": "done"}),
        ("BranchCreated", {"parent_stream": "r", "fork_version": "2"}),
    ],
)
def test_from_dict_wrong_fields(kind: str, data: dict) -> None:
    with pytest.raises(EventsInvalidEventError):
        events.from_dict(kind, data)


def test_kind_of_refuses_non_events() -> None:
    class AgentActed(msgspec.Struct):  # same name, different class
        model: str

    with pytest.raises(UnknownKindError):
        events.kind_of(AgentActed(model="m"))
    with pytest.raises(UnknownKindError):
        events.kind_of({"type": "AgentActed", "model": "m"})  # type: ignore[arg-type]
    with pytest.raises(UnknownKindError):
        events.encode(ToolCall(id="c", name="n"))  # a nested Struct, not an event


@pytest.mark.parametrize(
    "event",
    [
        AgentActed(model=3),  # type: ignore[arg-type]
        AgentActed(model="m", usage={"input_tokens": "x"}),  # type: ignore[arg-type]
        AgentActed(model="m", latency_ms=float("nan")),  # NaN encodes as null
        ToolObserved(tool_call_id="c", output=None),  # type: ignore[arg-type]
        RunStarted(task_id="t", task="x", sampling={"a": object()}),
    ],
    ids=["int-model", "bad-usage", "nan", "none-output", "unencodable"],
)
def test_encode_refuses_what_would_not_decode(event: Event) -> None:
    with pytest.raises(EventsInvalidEventError):
        events.encode(event)


def test_encode_refuses_lone_surrogates_with_an_event_error() -> None:
    # Model output can contain lone surrogates (e.g. text cut in the middle of a pair).
    # They cannot be encoded as UTF-8 JSON; encode must say so with its own error, not
    # let a bare UnicodeEncodeError escape (the store only translates EventError).
    with pytest.raises(EventError):
        events.encode(AgentActed(model="m", text="half a pair: \ud83d"))


def test_decode_unknown_kind_and_future_schema() -> None:
    payload = events.encode(AgentActed(model="m"))
    with pytest.raises(UnknownKindError):
        events.decode("AgentThought", 1, payload)
    with pytest.raises(EventError, match="newer"):
        events.decode("AgentActed", CURRENT_SCHEMA["AgentActed"] + 1, payload)
    with pytest.raises(EventError):
        events.decode("AgentActed", CURRENT_SCHEMA["AgentActed"], b"{not json")
    with pytest.raises(EventError):
        events.decode("ToolObserved", 0, payload)  # no upcaster from 0


def test_upcaster_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError):
        events.upcaster("AgentActed", 1)(lambda p: p)


# -- AgentActed schema 1 -> 2 ---------------------------------------------------------------

# What an early apollo-es wrote: token counts at the top level and latency in seconds.
OLD_AGENT_ACTED = {
    "type": "AgentActed",
    "model": "claude-3-5-sonnet-20241022",
    "text": "I'll run the test suite.",
    "reasoning": "",
    "tool_calls": [{"id": "toolu_01", "name": "bash", "arguments": {"cmd": "pytest -q"}, "raw_arguments": None}],
    "stop_reason": "tool_use",
    "input_tokens": 15234,
    "output_tokens": 87,
    "latency_s": 2.5,
    "context_digest": "sha256:0f0f",
}

UPCASTED = AgentActed(
    model="claude-3-5-sonnet-20241022",
    text="I'll run the test suite.",
    tool_calls=[ToolCall(id="toolu_01", name="bash", arguments={"cmd": "pytest -q"})],
    stop_reason="tool_use",
    usage=Usage(input_tokens=15234, output_tokens=87),
    latency_ms=2500.0,
    context_digest="sha256:0f0f",
)


def test_agent_acted_schema_1_upcasts() -> None:
    assert CURRENT_SCHEMA["AgentActed"] == 2
    raw = json.dumps(OLD_AGENT_ACTED)
    assert events.decode("AgentActed", 1, raw) == UPCASTED
    assert events.decode("AgentActed", 1, raw.encode()) == UPCASTED


def test_agent_acted_schema_1_minimal_payload() -> None:
    # Schema 1 rows without tokens or latency get zero usage and the default latency.
    decoded = events.decode("AgentActed", 1, b'{"type": "AgentActed", "model": "m"}')
    assert decoded == AgentActed(model="m", usage=Usage(input_tokens=0, output_tokens=0), latency_ms=0.0)


def test_agent_acted_schema_1_without_tag() -> None:
    decoded = events.decode("AgentActed", 1, b'{"model": "m", "input_tokens": 3}')
    assert decoded == AgentActed(model="m", usage=Usage(input_tokens=3))


def test_upcast_does_not_mutate_its_input() -> None:
    payload = dict(OLD_AGENT_ACTED)
    events.upcast("AgentActed", 1, payload)
    assert payload == OLD_AGENT_ACTED


@pytest.mark.parametrize(
    "payload",
    [
        '{"type": "AgentActed", "model": "m", "latency_s": "slow"}',  # upcaster multiplies a str
        '{"type": "AgentActed", "model": "m", "input_tokens": "lots"}',
        "[1, 2]",  # not an object at all
        '{"type": "AgentActed"}',  # model missing
    ],
    ids=["latency-str", "tokens-str", "array", "no-model"],
)
def test_malformed_old_payload_raises_event_error(payload: str) -> None:
    # A damaged or hand-written old row must fail with the vocabulary's error, which the
    # store turns into StoreError / a verify() finding, never a bare TypeError.
    with pytest.raises(EventError):
        events.decode("AgentActed", 1, payload)


def test_old_row_in_the_store_reads_upcasted_and_verifies(db_path) -> None:
    with EventStore(db_path) as store:
        store.append("run-1", [RunStarted(task_id="t", task="x")])
        position = raw_append(store, "run-1", "AgentActed", 1, OLD_AGENT_ACTED, event_id="old-1", actor="agent")
        store.append("run-1", [ToolObserved(tool_call_id="toolu_01", output="ok")])
        assert position == 2

        recorded = store.read("run-1")
        assert [r.version for r in recorded] == [1, 2, 3]
        old = recorded[1]
        assert old.schema == 1 and old.kind == "AgentActed" and old.event_id == "old-1"
        assert old.event == UPCASTED
        assert store.event("run-1", 2).event == UPCASTED
        assert store.read_all(after=1, limit=1)[0].event == UPCASTED
        # the stored row is untouched: still schema 1 on disk
        stored = store.connection.execute("SELECT schema, payload FROM events WHERE position = 2").fetchone()
        assert stored[0] == 1 and json.loads(stored[1]) == OLD_AGENT_ACTED

        report = store.verify()
        assert report.ok, report
        assert report.events_checked == 3
        # a branch past the old row inherits the upcasted event
        child = store.branch("run-1", 2)
        assert store.read(child)[1].event == UPCASTED
        assert store.verify().ok


def test_old_row_idempotent_reappend_returns_upcasted(db_path) -> None:
    with EventStore(db_path) as store:
        raw_append(store, "run-1", "AgentActed", 1, OLD_AGENT_ACTED, event_id="old-1")
        again = store.append("run-1", [NewEvent(event=UPCASTED, event_id="old-1")])
        assert again[0].position == 1 and again[0].schema == 1 and again[0].event == UPCASTED
        assert store.last_position() == 1


def test_undecodable_old_row_is_a_verify_finding_not_a_crash(db_path) -> None:
    with EventStore(db_path) as store:
        store.append("run-1", [RunStarted(task_id="t", task="x")])
        bad = raw_append(store, "run-1", "AgentActed", 1, {"type": "AgentActed", "model": "m", "latency_s": "slow"})
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == bad
        with pytest.raises(StoreError):
            store.read("run-1")


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(alphabet=st.characters(exclude_categories=("Cs",))),
    tokens=st.integers(min_value=0, max_value=2**53),
    latency=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    args=st.dictionaries(st.text(max_size=5), st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5)), max_size=4),
)
def test_agent_acted_round_trips_any_text(text: str, tokens: int, latency: float, args: dict) -> None:
    event = AgentActed(
        model="m",
        text=text,
        reasoning=text[::-1],
        tool_calls=[ToolCall(id="c", name=text or "n", arguments=args)],
        usage=Usage(input_tokens=tokens),
        latency_ms=latency,
    )
    assert events.decode("AgentActed", 2, events.encode(event)) == event


def test_events_and_envelopes_are_not_tracked_by_the_cycle_collector() -> None:
    """Reads make thousands of them; tracked, they made a fifth of a long read's time GC."""
    with EventStore(":memory:") as store:
        recorded = store.append("run-1", [e for e in one_of_each_kind() if not isinstance(e, BranchCreated)])
        read = store.read(store.branch("run-1", 2))  # the store writes the BranchCreated
    for r in [*recorded, *read]:
        assert not gc.is_tracked(r), r.kind
        assert not gc.is_tracked(r.event), r.kind
        for call in getattr(r.event, "tool_calls", []):
            assert not gc.is_tracked(call)
