"""Branching a run from any point, optionally with the guidance that motivates it."""

from __future__ import annotations

from apollo_es.errors import ApolloError
from apollo_es.store import EventStore
from events import AgentActed, HumanIntervened, ToolObserved

__all__ = ["branch", "fork_point"]


def fork_point(store: EventStore, stream_id: str, version: int) -> int:
    """Where a branch asked for after `version` really forks: after the results of an action.

    A branch cut between an action and its recorded results would make the continuing agent
    report those results as lost (and that invented observation would be trained on), so a
    fork at an action, or between its observations, moves to after its last recorded one.
    An action with no recorded result yet (a crash mid-step) forks where asked.
    """
    recorded = store.read(stream_id)
    at = next((i for i, r in enumerate(recorded) if r.version == version), None)
    if at is None:
        return version
    action = next((r.event for r in reversed(recorded[:at + 1]) if isinstance(r.event, AgentActed)), None)
    if action is None or not isinstance(recorded[at].event, AgentActed | ToolObserved):
        return version
    calls = {call.id for call in action.tool_calls} or {""}  # a turn without calls gets one feedback observation
    fork = version
    for later in recorded[at + 1:]:
        if isinstance(later.event, AgentActed):
            break
        if isinstance(later.event, ToolObserved) and later.event.tool_call_id in calls:
            fork = later.version
    return fork


def branch(
    store: EventStore,
    stream_id: str,
    at_version: int,
    inject: str | None = None,
    reason: str = "",
    *,
    annotator: str = "annotator",
    new_stream_id: str | None = None,
) -> str:
    """A zero-copy child of `stream_id` after `at_version`, with `inject` as a human guidance.

    This is how an annotator rewinds an agent that drifted and steers it: the guidance is
    the first thing after the fork, so the branch's next request ends with it. Branch and
    guidance land in one transaction. Callers settle `at_version` with `fork_point` first.
    """
    if inject is not None and not inject.strip():
        raise ApolloError("the injected guidance is empty: write what the branch should do differently")
    then = []
    if inject is not None:
        then.append(HumanIntervened(annotator=annotator, kind="guidance", message=inject, seen_version=at_version))
    return store.branch(
        stream_id, at_version, new_stream_id=new_stream_id, reason=reason, actor=f"human:{annotator}", then=then
    )
