"""The runs page's rows, kept up to date one event at a time.

The console shows every run and branch with where it stands. Folding each stream from
scratch on every new event would make a busy store's page cost grow with its history, so
`RunsIndex` keeps one incremental `Folder` per stream and updates only the streams an event
touches. A branch's folder starts from its parent's events up to the fork, read once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import msgspec

from apollo_es.store import EventStore, RecordedEvent
from events import AgentActed, BranchCreated
from apollo_es.models.prices import spent_usd
from projections.context import Folder, estimate_tokens
from projections.status import run_status

__all__ = ["RunSummary", "RunsIndex", "describe_action"]


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the runs page."""

    stream_id: str
    root_id: str
    parent_id: str | None
    fork_version: int | None
    status: str
    """`projections.status.run_status`: running, idle, stopping, or how the run ended."""
    task_id: str
    task: str
    model: str
    head: int
    steps: int
    tokens: int
    """Estimated tokens of the agent's next request (see projections.context.estimate_tokens)."""
    summary_threshold: int
    last_action: str
    last_event_at: str
    open_interventions: int
    """Human messages recorded that the agent has not seen yet."""
    cost_usd: float | None = None
    """What this stream's own model calls cost (a branch's inherited calls are its parent's)."""
    score: float | None = None
    """`RunFinished.score` once the run ended with one."""
    agent: bool = False
    """An agent holds the run's lease right now (it is `running`, or `stopping`)."""


def describe_action(action: AgentActed, width: int = 120) -> str:
    """One line for an action: its tool calls, else the start of its text."""
    if action.tool_calls:
        parts = []
        for call in action.tool_calls:
            arguments = call.raw_arguments if call.raw_arguments is not None else msgspec.json.encode(call.arguments).decode()
            parts.append(f"{call.name}({arguments})")
        line = "; ".join(parts)
    else:
        line = action.text
    line = " ".join(line.split())
    return line if len(line) <= width else line[: width - 1] + "…"


class _Entry:
    def __init__(self, stream_id: str, root_id: str, parent_id: str | None, fork_version: int | None) -> None:
        self.stream_id, self.root_id, self.parent_id, self.fork_version = stream_id, root_id, parent_id, fork_version
        self.folder = Folder()
        self.last_action = ""
        self.last_event_at = ""
        self.cost_usd: float | None = None

    def add(self, recorded: RecordedEvent) -> None:
        self.folder.add(recorded)
        self.last_event_at = recorded.recorded_at
        spent = spent_usd(recorded.event) if recorded.stream_id == self.stream_id else None
        if spent is not None:
            self.cost_usd = (self.cost_usd or 0.0) + spent
        if isinstance(recorded.event, AgentActed):
            self.last_action = describe_action(recorded.event)

    def summary(self, held: bool) -> RunSummary:
        context = self.folder.context()
        run = context.run
        status = run_status(context, held)
        waiting = len(context.held_back)
        for message in reversed(context.messages):  # back to the agent's last turn: a few messages
            if message.role == "assistant":
                break
            waiting += message.source == "human"
        task = run.task if run else ""
        return RunSummary(
            stream_id=self.stream_id,
            root_id=self.root_id,
            parent_id=self.parent_id,
            fork_version=self.fork_version,
            status=status,
            task_id=run.task_id if run else "",
            task=task if len(task) <= 200 else task[:199] + "…",
            model=run.model if run else "",
            head=context.version,
            steps=context.steps,
            tokens=estimate_tokens(context),
            summary_threshold=run.summary_threshold if run else 0,
            last_action=self.last_action,
            last_event_at=self.last_event_at,
            open_interventions=waiting,
            cost_usd=self.cost_usd,
            score=context.finished.score if context.finished else None,
            agent=held,
        )


class RunsIndex:
    """Summaries of every stream, updated from the log's new events in position order.

    Safe to share between threads: the hub folds new events in a worker thread while
    requests read summaries.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.position = 0
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def apply(self, events: Iterable[RecordedEvent]) -> list[RunSummary]:
        """Fold new events (in position order) in; the summaries of the streams they changed."""
        touched: dict[str, _Entry] = {}
        with self._lock:
            for recorded in events:
                entry = self._entries.get(recorded.stream_id) or self._start(recorded)
                entry.add(recorded)
                touched[recorded.stream_id] = entry
                self.position = recorded.position
            held = self.store.leases() if touched else {}
            return [entry.summary(entry.stream_id in held) for entry in touched.values()]

    def summaries(self, root_id: str | None = None) -> list[RunSummary]:
        """Every stream's row, or those of the tree under `root_id`."""
        held = self.store.leases()
        with self._lock:
            return [e.summary(e.stream_id in held) for e in self._entries.values() if root_id is None or e.root_id == root_id]

    def _start(self, first: RecordedEvent) -> _Entry:
        """A stream seen for the first time; a branch begins with its parent's events up to the fork."""
        parent_id = fork_version = None
        if isinstance(first.event, BranchCreated):
            parent_id, fork_version = first.event.parent_stream, first.event.fork_version
        parent = self._entries.get(parent_id) if parent_id else None
        entry = _Entry(first.stream_id, parent.root_id if parent else (parent_id or first.stream_id), parent_id, fork_version)
        if first.version > 1:
            for inherited in self.store.read(first.stream_id, up_to=first.version - 1):
                entry.add(inherited)
        self._entries[first.stream_id] = entry
        return entry
