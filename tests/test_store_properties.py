"""Property tests: random interleavings of appends and branches keep the store's invariants.

A hypothesis state machine appends to roots and branches, branches at random versions
(branches of branches too) and, after every step, checks every stream against a plain
Python model: a branch reads as its parent's events up to the fork followed by its own,
versions are gapless, positions strictly increase, and verify() passes. Each example gets
a fresh, empty store from `store_factory`: a file of its own, ':memory:', or a schema of its
own on the local PostgreSQL server. PostgreSQL runs fewer examples (every step is a few
round trips): the rules are the same code on both backends, what differs is the SQL.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from apollo_es import NO_STREAM, NewEvent
from apollo_es.stores.base import Store
from events import BranchCreated

from conftest import ALL_BACKENDS, make_event

SETTINGS = settings(max_examples=40, stateful_step_count=25, deadline=None)
SETTINGS_BY_BACKEND = {
    "sqlite-file": SETTINGS,
    # The file machine shrinks failures to a minimal example; this one only searches, so a
    # bug found by both does not pay for shrinking twice.
    "sqlite-memory": settings(SETTINGS, max_examples=20, phases=[Phase.explicit, Phase.reuse, Phase.generate]),
    # A bug only PostgreSQL shows is worth a minimal example, so this one shrinks.
    "postgres": settings(SETTINGS, max_examples=12, stateful_step_count=20),
}


class StoreMachine(RuleBasedStateMachine):
    """Model: stream id -> expected event ids in read order, and parent / fork of each branch."""

    open_store: Callable[[], Store]  # set by the test: a fresh, empty store per example
    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        self.store = type(self).open_store()
        self.model: dict[str, list[str]] = {}
        self.forks: dict[str, tuple[str, int]] = {}
        self.counter = itertools.count()

    def teardown(self) -> None:
        self.store.close()  # the fixture drops the file or schema after the test

    def _new_events(self, n: int) -> list[NewEvent]:
        items = []
        for _ in range(n):
            i = next(self.counter)
            items.append(NewEvent(event=make_event(i), event_id=f"evt-{i}"))
        return items

    # -- rules ----------------------------------------------------------------------------

    @initialize(target=streams, n=st.integers(1, 4))
    def first_run(self, n: int) -> str:
        return self.new_run(n)

    @rule(target=streams, n=st.integers(1, 4))
    def new_run(self, n: int) -> str:
        stream_id = f"run-{len(self.model)}"
        items = self._new_events(n)
        recorded = self.store.append(stream_id, items, expected_version=NO_STREAM)
        assert [r.version for r in recorded] == list(range(1, n + 1))
        self.model[stream_id] = [item.event_id for item in items]
        return stream_id

    @rule(stream_id=streams, n=st.integers(1, 4), use_expected=st.booleans())
    def append(self, stream_id: str, n: int, use_expected: bool) -> None:
        head = len(self.model[stream_id])
        items = self._new_events(n)
        expected = head if use_expected else None
        kwargs = {} if expected is None else {"expected_version": expected}
        recorded = self.store.append(stream_id, items, **kwargs)
        assert [r.version for r in recorded] == list(range(head + 1, head + n + 1))
        assert all(r.stream_id == stream_id for r in recorded)
        self.model[stream_id].extend(item.event_id for item in items)

    @rule(target=streams, stream_id=streams, pick=st.integers(0, 10_000), named=st.booleans())
    def branch(self, stream_id: str, pick: int, named: bool) -> str:
        head = len(self.model[stream_id])
        at = 1 + pick % head
        name = f"br-{len(self.model)}" if named else None
        new_id = self.store.branch(stream_id, at, name, reason=f"fork of {stream_id} at {at}")
        assert new_id not in self.model
        if named:
            assert new_id == name
        marker = self.store.read(new_id)[-1]
        assert marker.stream_id == new_id and marker.version == at + 1
        assert isinstance(marker.event, BranchCreated)
        assert (marker.event.parent_stream, marker.event.fork_version) == (stream_id, at)
        self.model[new_id] = self.model[stream_id][:at] + [marker.event_id]
        self.forks[new_id] = (stream_id, at)
        return new_id

    @rule(stream_id=streams, data=st.data())
    def retry_is_idempotent(self, stream_id: str, data: st.DataObject) -> None:
        """Re-appending an already recorded event of the stream's own writes nothing."""
        own = [r for r in self.store.read(stream_id) if r.stream_id == stream_id]
        chosen = data.draw(st.sampled_from(own))
        before = self.store.last_position()
        [again] = self.store.append(stream_id, [NewEvent(event=chosen.event, event_id=chosen.event_id)])
        assert again == chosen
        assert self.store.last_position() == before

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def streams_match_the_model(self) -> None:
        for stream_id, expected_ids in self.model.items():
            events_ = self.store.read(stream_id)
            assert [r.event_id for r in events_] == expected_ids, stream_id
            assert [r.version for r in events_] == list(range(1, len(events_) + 1)), stream_id
            assert self.store.head(stream_id) == len(events_)

    @invariant()
    def branches_read_as_parent_prefix_then_own(self) -> None:
        for stream_id, (parent, fork) in self.forks.items():
            events_ = self.store.read(stream_id)
            assert events_[:fork] == self.store.read(parent)[:fork]
            assert events_[:fork] == self.store.read(parent, up_to=fork)
            assert all(r.stream_id == stream_id for r in events_[fork:])
            assert events_[fork].event == BranchCreated(
                parent_stream=parent, fork_version=fork, reason=f"fork of {parent} at {fork}", created_by="system"
            )

    @invariant()
    def global_log_is_gapless_and_verifies(self) -> None:
        log = self.store.read_all()
        positions = [r.position for r in log]
        assert positions == list(range(1, len(log) + 1))
        # every stream's own rows are in version order in the global log
        last: dict[str, int] = {}
        for r in log:
            assert r.version > last.get(r.stream_id, 0)
            last[r.stream_id] = r.version
        total_own = sum(len(ids) for ids in self.model.values()) - sum(fork for _, fork in self.forks.values())
        assert len(log) == total_own
        assert self.store.last_position() == len(log)
        report = self.store.verify()
        assert report.ok, report
        assert report.events_checked == len(log)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_random_appends_and_branches_keep_the_invariants(
    backend: str, store_factory: Callable[..., Store]
) -> None:
    """The machine on each backend; a subclass per test carries that test's store factory."""
    name = f"StoreMachine_{backend.replace('-', '_')}"
    machine = type(name, (StoreMachine,), {"open_store": staticmethod(store_factory)})
    run_state_machine_as_test(machine, settings=SETTINGS_BY_BACKEND[backend])
