"""What the run page receives: events, and the context a model saw, as plain JSON.

The context is not recomputed here: `replay.state_at` folds the stream through the one
context fold (`projections.context`), so the page shows exactly the messages the agent's
request was built from, summaries and elided observations included.
"""

from __future__ import annotations

from typing import Any

import msgspec

from apollo_es.store import RecordedEvent
from projections.context import Message
from replay import State

__all__ = ["context_view", "event_view"]


def event_view(recorded: RecordedEvent) -> dict[str, Any]:
    """An event as the run page gets it: the envelope plus the payload as plain JSON."""
    return {
        "stream_id": recorded.stream_id, "version": recorded.version, "position": recorded.position,
        "kind": recorded.kind, "actor": recorded.actor, "recorded_at": recorded.recorded_at,
        "event_id": recorded.event_id, "causation_id": recorded.causation_id, "event": msgspec.to_builtins(recorded.event),
    }


def context_view(state: State) -> dict[str, Any]:
    """The context after `state.version`: what the model's next request held at that point.

    Content blocks and thinking signatures are left out: they repeat `content` and `reasoning`
    for the provider, and an annotator has no use for them.
    """
    context = state.context
    return {
        "run": state.stream_id,
        "version": state.version,
        "tokens": state.tokens,
        "steps": context.steps,
        "system": context.system,
        "tools": [tool.name for tool in context.tools],
        "messages": [_message(m) for m in context.messages],
    }


def _message(message: Message) -> dict[str, Any]:
    return {
        "role": message.role, "source": message.source, "version": message.version, "content": message.content,
        "reasoning": message.reasoning, "tool_calls": msgspec.to_builtins(message.tool_calls),
        "tool_call_id": message.tool_call_id, "tool_name": message.tool_name, "is_error": message.is_error,
    }
