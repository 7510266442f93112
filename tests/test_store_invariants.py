"""What the log's events must satisfy beyond decoding (apollo_es.invariants): `append` refuses a
violating event, naming the field, and writes nothing; `verify` reports a violating row written
around it."""

from __future__ import annotations

import re

import pytest

from apollo_es import EventStore, NewEvent
from apollo_es.errors import InvalidEventError
from conftest import raw_append
from events import BranchCreated, HumanIntervened, RunStarted


@pytest.fixture()
def store(tmp_path):
    with EventStore(tmp_path / "a.db") as s:
        s.append("run-1", [RunStarted(task_id="t", task="x")])
        yield s


@pytest.mark.parametrize(("stream", "events_", "message"), [
    ("run-1", [BranchCreated(parent_stream="run-0", fork_version=1)], "BranchCreated can only be a branch's first own event"),
    ("run-1", [RunStarted(task_id="t2", task="again")], "RunStarted can only be the first event of a run"),
    ("run-2", [HumanIntervened(annotator="ana", kind="guidance", message="hi"), RunStarted(task_id="t", task="x")],
     "RunStarted can only be the first event"),
    ("run-1", [HumanIntervened(annotator="ana", kind="guidance", message="hi", seen_version=2**70)], "does not fit in 64 bits"),
    ("run-1", [HumanIntervened(annotator="ana", kind="guidance", message="hi", seen_version=-3)], "seen_version must be a positive"),
    ("run-1", [HumanIntervened(annotator="a\x00na", kind="guidance", message="hi")], "annotator 'a\\x00na' contains a control character"),
    ("run-1", [NewEvent(event=HumanIntervened(annotator="ana", kind="guidance", message="hi"), actor="human:a\x00")], "invalid actor"),
    ("run-1", [NewEvent(event=HumanIntervened(annotator="ana", kind="guidance", message="hi"), event_id="e\n1")],
     "event id 'e\\n1' contains a control character"),
])
def test_append_refuses_what_breaks_the_log_and_writes_nothing(store, stream, events_, message):
    before = store.last_position()
    with pytest.raises(InvalidEventError, match=re.escape(message)):
        store.append(stream, events_, actor="human:ana")
    assert store.last_position() == before


def test_a_run_started_in_a_branch_is_refused(store):
    child = store.branch("run-1", 1)
    with pytest.raises(InvalidEventError, match="RunStarted can only be the first event of a run"):
        store.append(child, [RunStarted(task_id="t", task="x")])


def test_verify_reports_rows_written_around_the_checks(store):
    assert store.verify().ok
    position = raw_append(store, "run-1", "RunStarted", 1, {"type": "RunStarted", "task_id": "t", "task": "second"})
    report = store.verify()
    assert not report.ok and report.first_bad_position == position and "RunStarted" in report.reason


def test_verify_reports_a_control_character_in_an_annotator(store):
    position = raw_append(store, "run-1", "HumanIntervened", 1,
                          {"type": "HumanIntervened", "annotator": "a\u0000b", "kind": "guidance", "message": "m"})
    report = store.verify()
    assert not report.ok and report.first_bad_position == position and "control character" in report.reason
