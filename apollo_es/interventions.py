"""What an annotator writes into a run: guidance, a stop, a reject.

The CLI (`intervene`, `stop`) and the web console both call `intervene`, so a message sent
from either writes exactly the same event after exactly the same checks.
"""

from __future__ import annotations

from typing import Literal

from apollo_es.errors import ApolloError
from apollo_es.store import EventStore, NewEvent, RecordedEvent
from events import AgentActed, HumanIntervened
from projections.context import fold

__all__ = ["InterventionError", "intervene"]

Kind = Literal["guidance", "stop", "reject"]


class InterventionError(ApolloError):
    """An intervention that cannot be recorded as asked; nothing was written."""


def intervene(
    store: EventStore,
    run_id: str,
    *,
    kind: Kind,
    message: str,
    annotator: str,
    seen_version: int | None = None,
    target: int | None = None,
) -> RecordedEvent:
    """Record a person's guidance, stop or reject on `run_id` and return the recorded event.

    `seen_version` is the version the annotator was looking at (default: the head), so an
    auditor can tell what they knew. A reject names the action (`target` version) it rejects
    and is linked to it through `causation_id`, which finds it from any branch.
    """
    if kind not in ("guidance", "stop", "reject"):
        raise InterventionError(f"unknown intervention kind {kind!r}: use guidance, stop or reject")
    if not message.strip():
        raise InterventionError("the message is empty")
    if not annotator.strip():
        raise InterventionError("the annotator's name is empty")
    recorded = store.read(run_id)  # StreamNotFound for an unknown run
    head = recorded[-1].version
    finished = fold(recorded).finished
    if finished is not None and kind != "reject":
        raise InterventionError(f"run {run_id} already ended ({finished.status}); branch it to steer it: apollo-es branch {run_id} --at V")
    target_event_id = None
    if kind == "reject":
        if target is None:
            raise InterventionError("a reject needs the version of the action it rejects (--target VERSION)")
        action = store.event(run_id, target)
        if not isinstance(action.event, AgentActed):
            raise InterventionError(f"version {target} of {run_id} is a {action.kind}, not an AgentActed")
        target_event_id = action.event_id
    elif target is not None:
        raise InterventionError("a target version only goes with a reject")
    if seen_version is not None and not 1 <= seen_version <= head:
        raise InterventionError(f"the seen version {seen_version} is outside versions 1..{head}")
    event = HumanIntervened(annotator=annotator, kind=kind, message=message, seen_version=seen_version or head, target_event_id=target_event_id)
    [written] = store.append(run_id, [NewEvent(event=event, causation_id=target_event_id)], actor=f"human:{annotator}")
    return written
