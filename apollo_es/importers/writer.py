"""Writing validated plans to the store, idempotently.

`write_plans` first checks every stream of every plan against the store (each planned event
must encode, fit the payload limit, and an existing stream must hold a prefix of what is
planned) and only then writes. Each stream is one atomic `append` (a branch one atomic
`branch(..., then=...)`), so a file that becomes several streams (a node-log tree) could be
cut between two streams only by a crash or a concurrent writer; re-running the import
completes it, because every event id is derived from the content and already recorded
events are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

import events
from apollo_es.importers.base import FilePlan, StreamPlan, TrajectoryImportError, valid_stream_id
from apollo_es.store import NO_STREAM, EventStore, NewEvent

__all__ = ["FileReport", "StreamReport", "check_plans", "write_plans"]


class StreamReport(msgspec.Struct, kw_only=True):
    stream_id: str
    parent_id: str | None = None
    fork_version: int | None = None
    events: int
    added: int = 0
    present: int = 0
    prompts_compared: int = 0
    """Steps whose prompt the source recorded; `prompts_identical` of them the fold reproduces."""
    prompts_identical: int = 0
    notes: list[str] = msgspec.field(default_factory=list)
    """The run's `import_notes`: what its context does not reproduce of the source, and why."""


class FileReport(msgspec.Struct, kw_only=True):
    path: str
    format: str
    streams: list[StreamReport]
    added: int = 0
    present: int = 0
    warnings: list[str] = msgspec.field(default_factory=list)
    dry_run: bool = False


class _State(msgspec.Struct):
    exists: bool
    present: int
    head: int


def check_plans(store: EventStore, plans: Sequence[FilePlan]) -> dict[str, _State]:
    """Validate every plan against the store without writing; the state of each stream."""
    states: dict[str, _State] = {}
    owners: dict[str, str] = {}
    for plan in plans:
        for stream in plan.streams:
            if stream.stream_id in owners:
                raise TrajectoryImportError(
                    plan.path, "", f"stream {stream.stream_id!r} would also be written from {owners[stream.stream_id]}; "
                    "import the files one at a time with --stream",
                )
            owners[stream.stream_id] = plan.path
            if not valid_stream_id(stream.stream_id):
                raise TrajectoryImportError(plan.path, "", f"{stream.stream_id!r} is not a valid stream id")
            for planned in stream.events:
                try:
                    payload, _ = events.encode_checked(planned.event)
                except events.EventError as exc:
                    raise TrajectoryImportError(plan.path, planned.place, f"does not make a valid event: {exc}") from None
                if len(payload) > store.max_payload_bytes:
                    raise TrajectoryImportError(
                        plan.path, planned.place,
                        f"{len(payload):,} bytes as an event, over the store's limit of {store.max_payload_bytes:,} "
                        "(raise it with APOLLO_ES_MAX_PAYLOAD_BYTES)",
                    )
            states[stream.stream_id] = _existing_state(store, plan, stream)
    return states


def _existing_state(store: EventStore, plan: FilePlan, stream: StreamPlan) -> _State:
    if not store.exists(stream.stream_id):
        return _State(False, 0, 0)
    lineage = store.lineage(stream.stream_id)
    parent = (lineage[-2][0], lineage[-2][1]) if len(lineage) > 1 else (None, None)
    if parent != (stream.parent_id, stream.fork_version):
        where = f"a branch of {parent[0]} at version {parent[1]}" if parent[0] else "a run of its own"
        wanted = f"a branch of {stream.parent_id} at version {stream.fork_version}" if stream.parent_id else "a run of its own"
        raise TrajectoryImportError(
            plan.path, "", f"stream {stream.stream_id!r} already exists as {where}, but this file makes it {wanted}; "
            "import under another id (--stream)",
        )
    own = [r for r in store.read(stream.stream_id) if r.stream_id == stream.stream_id]
    if stream.parent_id is not None and own and own[0].kind == "BranchCreated":
        own = own[1:]
    planned_ids = [p.event_id for p in stream.events]
    for i, recorded in enumerate(own):
        if i >= len(planned_ids) or recorded.event_id != planned_ids[i]:
            raise TrajectoryImportError(
                plan.path, "",
                f"stream {stream.stream_id!r} already holds other events (version {recorded.version} is not the "
                f"{'end of this file' if i >= len(planned_ids) else f'event {i + 1} of this file'}); it was written "
                "from another file or another version of this one; import under another id (--stream)",
            )
    return _State(True, len(own), store.head(stream.stream_id))


def write_plans(
    store: EventStore,
    plans: Sequence[FilePlan],
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[FileReport]:
    """Check every plan, then write the events that are not recorded yet; one report per plan."""
    states = check_plans(store, plans)
    total = sum(len(p.streams) for p in plans)
    done = 0
    reports = []
    for plan in plans:
        actor = f"import:{plan.format}"
        report = FileReport(path=plan.path, format=plan.format, streams=[], warnings=list(plan.warnings), dry_run=dry_run)
        for stream in plan.streams:
            state = states[stream.stream_id]
            fresh = stream.events[state.present:]
            if (fresh or (not state.exists and stream.parent_id is not None)) and not dry_run:
                _write_stream(store, stream, state, fresh, actor)
            report.streams.append(StreamReport(
                stream_id=stream.stream_id, parent_id=stream.parent_id, fork_version=stream.fork_version,
                events=len(stream.events), added=len(fresh), present=state.present,
                prompts_compared=stream.fidelity.compared if stream.fidelity else 0,
                prompts_identical=stream.fidelity.identical if stream.fidelity else 0,
                notes=_notes(stream),
            ))
            report.added += len(fresh)
            report.present += state.present
            done += 1
            if progress is not None:
                progress(done, total)
        reports.append(report)
    return reports


def _notes(stream: StreamPlan) -> list[str]:
    first = stream.events[0].event if stream.events else None
    return list(first.import_notes) if isinstance(first, events.RunStarted) else []


def _write_stream(store: EventStore, stream: StreamPlan, state: _State, fresh: list, actor: str) -> None:
    new = [
        NewEvent(event=p.event, event_id=p.event_id, actor=actor, recorded_at=p.recorded_at,
                 causation_id=p.causation.event_id if p.causation is not None else None)
        for p in fresh
    ]
    if state.exists:
        store.append(stream.stream_id, new, expected_version=state.head)
    elif stream.parent_id is None:
        store.append(stream.stream_id, new, expected_version=NO_STREAM)
    else:
        store.branch(stream.parent_id, stream.fork_version, new_stream_id=stream.stream_id, reason=stream.reason,
                     actor=actor, then=new)
