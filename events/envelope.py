"""The envelope types every store backend speaks: what is appended, what comes back.

They live here, beside the event kinds, so a projection that only folds recorded events
imports the vocabulary and never a storage backend.
"""

from __future__ import annotations

import enum

import msgspec

from events.kinds import Event

__all__ = [
    "ANY",
    "NO_STREAM",
    "ExpectedVersion",
    "Lease",
    "NewEvent",
    "RecordedEvent",
    "StreamInfo",
    "TimelineRow",
    "VerifyReport",
]


class ExpectedVersion(enum.Enum):
    ANY = "any"
    NO_STREAM = "no_stream"

    def __repr__(self) -> str:
        return self.name


ANY = ExpectedVersion.ANY
"""Append whatever the stream's version is."""
NO_STREAM = ExpectedVersion.NO_STREAM
"""Append only if the stream does not exist yet."""


class Lease(msgspec.Struct, frozen=True):
    """An agent's hold on a run (`acquire_lease`)."""

    stream_id: str
    holder: str
    expires_at: float
    """Unix time."""


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to append, with the envelope fields a writer may choose.

    `event_id` makes an append idempotent: appending an id that is already recorded in the
    same stream returns the stored envelope and writes nothing.
    """

    event: Event
    event_id: str | None = None
    actor: str | None = None
    causation_id: str | None = None
    recorded_at: str | None = None


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """One row of the log: the envelope and the decoded event (untracked by the cycle
    collector, like the events: see `events.kinds._Event`)."""

    position: int
    stream_id: str
    version: int
    event_id: str
    kind: str
    schema: int
    recorded_at: str
    actor: str
    causation_id: str | None
    event: Event
    prev_hash: str
    hash: str


class StreamInfo(msgspec.Struct, frozen=True):
    """A stream (run or branch) with its lineage and where it stands."""

    stream_id: str
    parent_id: str | None
    fork_version: int | None
    created_at: str
    head: int
    own_events: int
    last_kind: str | None
    last_recorded_at: str | None


class VerifyReport(msgspec.Struct, frozen=True):
    ok: bool
    events_checked: int
    first_bad_position: int | None = None
    reason: str = ""
    corruption: bool = False
    """The database itself found its storage damaged (SQLite's `integrity_check`, or an index
    that disagrees with its table): reads may return wrong data, whatever the chain says."""
    anchors_checked: int = 0


class TimelineRow(msgspec.Struct, frozen=True):
    """One line of a run's audit timeline (the `timeline` view's columns, payload left out)."""

    run_id: str
    version: int
    kind: str
    actor: str
    recorded_at: str
    summary: str
    stream_id: str
    position: int
    event_id: str
    causation_id: str | None
