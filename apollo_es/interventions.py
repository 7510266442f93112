"""What an annotator writes into a run: guidance, a stop, a reject or an approval.

The CLI (`intervene`, `stop`) and the web console both call `intervene`, so a message sent
from either writes exactly the same event after exactly the same checks.
"""

from __future__ import annotations

from typing import Literal

from apollo_es.errors import ApolloError, ConcurrencyError
from apollo_es.store import EventStore, NewEvent, RecordedEvent
from events import AgentActed, HumanIntervened
from projections.context import fold

__all__ = ["InterventionError", "intervene", "undelivered_warning"]

Kind = Literal["guidance", "stop", "reject", "approve"]
ON_ACTIONS = ("reject", "approve")
"""Kinds that judge one action for training; they may come after the run ended."""
ATTEMPTS = 5
"""Tries to write at the head of a busy run before giving up with ConcurrencyError."""


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
    """Record a person's guidance, stop, reject or approval on `run_id`; returns the event.

    `seen_version` is the version the annotator was looking at (default: the head), so an
    auditor can tell what they knew. A reject or an approval names the action (`target`
    version) it judges and is linked to it through `causation_id`, which finds it from any branch.
    """
    if kind not in ("guidance", "stop", *ON_ACTIONS):
        raise InterventionError(f"unknown intervention kind {kind!r}: use guidance, stop, reject or approve")
    if not message.strip():
        raise InterventionError("the message is empty")
    if not annotator.strip():
        raise InterventionError("the annotator's name is empty")
    # Checked and written at one version: a RunFinished landing in between makes the append
    # fail, and the checks run again on the run as it is now.
    for _ in range(ATTEMPTS - 1):
        try:
            return _intervene_once(store, run_id, kind, message, annotator, seen_version, target)
        except ConcurrencyError:
            continue
    return _intervene_once(store, run_id, kind, message, annotator, seen_version, target)


def _intervene_once(store: EventStore, run_id: str, kind: Kind, message: str, annotator: str,
                    seen_version: int | None, target: int | None) -> RecordedEvent:
    recorded = store.read(run_id)  # StreamNotFound for an unknown run
    head = recorded[-1].version
    finished = fold(recorded).finished
    if finished is not None and kind not in ON_ACTIONS:
        raise InterventionError(f"run {run_id} already ended ({finished.status}); branch it to steer it: apollo-es branch {run_id} --at V")
    target_event_id = None
    if kind in ON_ACTIONS:
        if target is None:
            raise InterventionError(f"a {kind} needs the version of the action it judges (--target VERSION)")
        action = store.event(run_id, target)
        if not isinstance(action.event, AgentActed):
            raise InterventionError(f"version {target} of {run_id} is a {action.kind}, not an AgentActed")
        target_event_id = action.event_id
    elif target is not None:
        raise InterventionError("a target version only goes with a reject or an approve")
    if seen_version is not None and not 1 <= seen_version <= head:
        raise InterventionError(f"the seen version {seen_version} is outside versions 1..{head}")
    event = HumanIntervened(annotator=annotator, kind=kind, message=message, seen_version=seen_version or head, target_event_id=target_event_id)
    [written] = store.append(run_id, [NewEvent(event=event, causation_id=target_event_id)], expected_version=head,
                             actor=f"human:{annotator}")
    return written


def undelivered_warning(store: EventStore, run_id: str, kind: Kind) -> str | None:
    """What to tell a person whose guidance or stop no agent will read until the run resumes."""
    if kind in ON_ACTIONS or run_id in store.leases():
        return None
    return f"no agent is working on {run_id}: the {kind} is delivered when the run resumes (apollo-es resume {run_id})"
