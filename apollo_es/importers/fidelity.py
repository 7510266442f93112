"""Does an imported run show its model what the source agent showed it?

Some sources record the prompt they sent at each step (SWE-agent's `trajectory[i].query`, or
`messages` before 1.1). The importer turns those into `RecordedPrompt`s; this module folds the
planned stream with the one context fold (`projections.context.Folder`, the same code
`apollo-es replay RUN --at V --show context` uses) and compares, message by message, the
roles and texts with what the source recorded. The verdict is written into the run's
`RunStarted.import_notes`, so a reader of the log knows which steps are exact.
"""

from __future__ import annotations

import msgspec

from apollo_es.importers.base import RecordedPrompt, StreamPlan
from apollo_es.store import RecordedEvent
from events import RunStarted
from projections.context import Context, Folder

__all__ = ["Fidelity", "StepMismatch", "check_stream", "context_messages", "record_notes"]


class StepMismatch(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    place: str
    differing: int
    """How many positions hold a different (role, text), counting missing and extra ones."""
    recorded: int
    replayed: int
    first: int
    """Index of the first differing message (0 is the system prompt)."""
    reason: str = ""


class Fidelity(msgspec.Struct, kw_only=True):
    """Steps with a recorded prompt, how many the fold reproduces exactly, and the others."""

    compared: int = 0
    identical: int = 0
    mismatches: list[StepMismatch] = msgspec.field(default_factory=list)

    def note(self) -> str:
        """One line for `RunStarted.import_notes`."""
        head = f"prompt fidelity: {self.identical} of {self.compared} recorded prompts reproduced exactly"
        if not self.mismatches:
            return head
        parts = [f"v{m.version}: {m.differing} of {m.recorded} messages differ{f' ({m.reason})' if m.reason else ''}"
                 for m in self.mismatches]
        return f"{head}; {'; '.join(parts)}"


def record_notes(stream: StreamPlan) -> None:
    """Check `stream` against its recorded prompts; put the verdict and the importer's notes
    into its `RunStarted.import_notes` (the stream's first event)."""
    stream.fidelity = check_stream(stream)
    notes = [*stream.notes, stream.fidelity.note()] if stream.fidelity.compared else list(stream.notes)
    first = stream.events[0] if stream.events else None
    if notes and first is not None and isinstance(first.event, RunStarted):
        first.event = msgspec.structs.replace(first.event, import_notes=notes)


def context_messages(context: Context) -> list[tuple[str, str]]:
    """A context as the (role, text) list a chat API receives, the system prompt first."""
    head = [("system", context.system)] if context.system else []
    return head + [(m.role, m.content) for m in context.messages]


def check_stream(stream: StreamPlan) -> Fidelity:
    """Fold `stream` and compare the context at each recorded prompt's version with it."""
    result = Fidelity()
    if not stream.prompts:
        return result
    wanted = sorted(stream.prompts, key=lambda p: p.version)
    folder, index = Folder(), 0
    for offset, planned in enumerate(stream.events):
        version = stream.first_version + offset
        folder.add(RecordedEvent(
            position=version, stream_id=stream.stream_id, version=version, event_id=planned.event_id or f"planned-{version}",
            kind=type(planned.event).__name__, schema=0, recorded_at="", actor="", causation_id=None, event=planned.event,
            prev_hash="", hash="",
        ))
        while index < len(wanted) and wanted[index].version == version:
            _compare(result, wanted[index], context_messages(folder.context()))
            index += 1
    return result


def _compare(result: Fidelity, prompt: RecordedPrompt, replayed: list[tuple[str, str]]) -> None:
    result.compared += 1
    recorded = prompt.messages
    if replayed == recorded:
        result.identical += 1
        return
    length = max(len(recorded), len(replayed))
    differing = [i for i in range(length) if i >= len(recorded) or i >= len(replayed) or recorded[i] != replayed[i]]
    result.mismatches.append(StepMismatch(
        version=prompt.version, place=prompt.place, differing=len(differing), recorded=len(recorded), replayed=len(replayed),
        first=differing[0], reason=prompt.known_difference,
    ))
