"""Training samples of a run, as chat messages with a train flag per assistant turn.

A stream (run or branch, over its own lineage) yields:
- one ReAct sample per context segment between summaries: the context as the agent last saw
  it in that segment, with its actions;
- one summarization sample per `ContextSummarized`: the summarization request rebuilt from
  the log (projections.summarization) and the summary as the assistant's answer.

A run whose fold rewrites earlier observations as it goes on (an imported SWE-agent run
with `last_n_observations`: `RunStarted.observation_window`) instead gets one ReAct sample
per action, the context it was given followed by the action.

Which assistant turns are trained: an action is trained once, in the first segment of the
stream that recorded it (a branch does not train again what it inherits; a turn kept
verbatim across a summary is not trained twice), and only if the decision policy keeps it.
Masked turns stay in the context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from apollo_es.store import RecordedEvent
from events import AgentActed, ContextSummarized
from projections.context import Context, Folder, Message
from projections.summarization import summarization_context, summary_problem

__all__ = ["SampleSpec", "stream_samples", "to_chat"]


class SampleSpec(msgspec.Struct, frozen=True, kw_only=True):
    sample_id: str
    stream_id: str
    type: Literal["react", "summary"]
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    train: list[bool]
    """One flag per assistant message, in order."""
    versions: list[int]
    """The version of the event each message comes from (the summarization request's are the summary's)."""


def stream_samples(stream_id: str, recorded: Sequence[RecordedEvent], keep: Callable[[str], bool]) -> list[SampleSpec]:
    """Every sample of one stream; `keep(action_event_id)` is the decision policy."""
    folder = Folder()
    owners = {r.event_id: r.stream_id for r in recorded}
    trained: set[str] = set()
    samples: list[SampleSpec] = []
    segment = 0
    for item in recorded:
        if isinstance(item.event, ContextSummarized):
            context = folder.context()
            react = _react(stream_id, f"{segment}", context, owners, keep, trained)
            if react is not None:
                samples.append(react)
            segment += 1
            if item.stream_id == stream_id and summary_problem(item.event.summary, prompt_id=item.event.prompt_id) is None:
                samples.append(_summary(stream_id, item, context))
        if isinstance(item.event, AgentActed) and folder.run is not None and folder.run.observation_window is not None:
            # The fold rewrites earlier observations as the run goes on (an imported agent's
            # history processing), so each action is trained after the context it was given.
            before = folder.context()
            folder.add(item)
            own = msgspec.structs.replace(before, messages=(*before.messages, folder.context().messages[-1]))
            react = _react(stream_id, f"{segment}.v{item.version}", own, owners, keep, trained)
            if react is not None:
                samples.append(react)
            continue
        folder.add(item)
    react = _react(stream_id, f"{segment}", folder.context(), owners, keep, trained)
    if react is not None:
        samples.append(react)
    return samples


def _react(stream_id, segment: str, context: Context, owners: dict[str, str], keep, trained: set[str]) -> SampleSpec | None:
    flags = []
    for message in context.messages:
        if message.role != "assistant":
            continue
        trainable = owners.get(message.event_id) == stream_id and message.event_id not in trained and keep(message.event_id)
        flags.append(trainable)
        if owners.get(message.event_id) == stream_id:
            trained.add(message.event_id)
    if not any(flags):
        return None
    messages, tools = to_chat(context)
    message_versions = [1] * (len(messages) - len(context.messages)) + [m.version for m in context.messages]
    return SampleSpec(sample_id=f"{stream_id}#react-{segment}", stream_id=stream_id, type="react",
                      messages=messages, tools=tools, train=flags, versions=message_versions)


def _summary(stream_id: str, item: RecordedEvent, context: Context) -> SampleSpec:
    event: ContextSummarized = item.event
    request = summarization_context(context, event.replaces_from, event.replaces_to, event.prompt_id or "state-snapshot-v1")
    messages, _ = to_chat(request)
    messages.append({"role": "assistant", "content": event.summary})
    return SampleSpec(sample_id=f"{stream_id}#summary-v{item.version}", stream_id=stream_id, type="summary",
                      messages=messages, tools=[], train=[True], versions=[item.version] * len(messages))


def to_chat(context: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A context as Hugging Face chat messages and tools (what chat templates take)."""
    messages: list[dict[str, Any]] = []
    if context.system:
        messages.append({"role": "system", "content": context.system})
    messages.extend(_chat_message(m) for m in context.messages)
    tools = [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
        for t in context.tools
    ]
    return messages, tools


def _chat_message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id}
    if message.role == "user":
        return {"role": "user", "content": message.content}
    out: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.reasoning:
        out["reasoning_content"] = message.reasoning
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out
