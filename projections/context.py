"""The one fold from events to what the model sees.

The live agent builds every request with `fold`, replay uses it to show the state at any
version, and the training projection renders samples from it. So what a model is trained
on is exactly what an agent in that position saw.

Rules, in event order:
- `RunStarted` gives the system prompt, the tools and the first user message (the task),
  after the demonstrations an imported agent was shown, if any.
- `AgentActed` is an assistant turn (text, reasoning, tool calls); `ToolObserved` a tool
  result, or, without a tool call id, feedback from the environment as a user message (the
  agent answered without calling a tool). A tool result always follows its call: human messages that arrive while a call is
  still waiting for its result are held back and placed right after the results.
- `HumanIntervened` guidance (and stop) becomes a user message wrapped in
  `<real_user_message>` tags, so the agent can tell a person from the task text or a tool; the
  annotator's name stays out of the context. A `reject` is an annotation for training, not a
  message to the agent.
- `ContextSummarized` replaces the messages of versions `replaces_from..replaces_to` with one
  user message holding the summary, at the place of the first one.
- `ActionJudged`, `BranchCreated` and `RunFinished` do not change the messages. `RunFinished`
  sets `finished` until a later action (a resumed run); `BranchCreated` clears `finished` and
  `stopped`, because a branch is a new attempt from that point.
- An imported run whose `RunStarted.observation_window` is set shows old observations elided
  the way its source agent did (SWE-agent's `last_n_observations`); a person's message
  marked `verbatim` is shown without the tags, as the imported agent saw it.
- `RunReconfigured` changes the run's settings (sampling, caching, output limit, budgets) from
  there on: `context.run` is the `RunStarted` with those fields replaced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from apollo_es.store import RecordedEvent
from events import (
    AgentActed,
    BranchCreated,
    ContentBlock,
    ContextSummarized,
    HumanIntervened,
    RunFinished,
    RunReconfigured,
    RunStarted,
    ToolCall,
    ToolObserved,
    ToolSpec,
    Usage,
)
from events.kinds import ObservationWindow

__all__ = ["HUMAN_TAG", "Context", "Folder", "Message", "estimate_tokens", "fold", "human_text", "message_chars", "summary_text", "with_summary"]

HUMAN_TAG = "real_user_message"
RECONFIGURABLE = ("sampling", "prompt_caching", "max_output_tokens", "max_steps", "time_limit", "token_budget")
"""The `RunStarted` fields a `RunReconfigured` may change."""
SUMMARY_TAG = "context_summary"
CHARS_PER_TOKEN = 4


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One provider-neutral message, with the event it comes from."""

    role: Literal["user", "assistant", "tool"]
    source: Literal["task", "agent", "tool", "human", "summary"]
    version: int
    event_id: str
    content: str = ""
    reasoning: str = ""
    reasoning_signature: str = ""
    blocks: tuple[ContentBlock, ...] = ()
    """An Anthropic answer's content blocks as received, rendered back verbatim."""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str = ""
    is_error: bool = False


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What the model would see after the last folded event, and where the run stands."""

    stream_id: str
    version: int
    run: RunStarted | None
    messages: tuple[Message, ...]
    held_back: tuple[Message, ...] = ()
    """Human messages waiting for a tool result before they can be shown."""
    pending_calls: tuple[ToolCall, ...] = ()
    """Tool calls of the latest action that have no result yet."""
    pending_action_id: str | None = None
    """Event id of the action those calls belong to."""
    steps: int = 0
    last_usage: Usage | None = None
    """Usage reported by the latest model call, unless a summary came after it."""
    chars_since_usage: int = 0
    """Characters of the messages added since that call (its own output excluded)."""
    finished: RunFinished | None = None
    stopped: bool = False

    @property
    def system(self) -> str:
        return self.run.system_prompt if self.run else ""

    @property
    def tools(self) -> list[ToolSpec]:
        return self.run.tools if self.run else []


def human_text(event: HumanIntervened) -> str:
    """How a person's message reads in the agent's context."""
    body = f"STOP: {event.message}" if event.kind == "stop" else event.message
    return body if event.verbatim else f"<{HUMAN_TAG}>\n{body}\n</{HUMAN_TAG}>"


def summary_text(summary: str) -> str:
    return (
        f"<{SUMMARY_TAG}>\n{summary}\n</{SUMMARY_TAG}>\n"
        "The earlier part of this conversation was replaced by the summary above. Continue the task from here."
    )


def fold(recorded: Iterable[RecordedEvent]) -> Context:
    """Fold a stream's events (in version order) into the model's context."""
    folder = Folder()
    for item in recorded:
        folder.add(item)
    return folder.context()


class Folder:
    """The fold, one event at a time, for callers that need the context at every step.

    `fold` is this over a whole stream; replay's verification takes a `context()` before each
    action instead of folding every prefix again.
    """

    def __init__(self) -> None:
        self.stream_id, self.version = "", 0
        self.run: RunStarted | None = None
        self.messages: list[Message] = []
        self.held_back: list[Message] = []
        self.pending: dict[str, ToolCall] = {}
        self.pending_action_id: str | None = None
        self.steps, self.last_usage, self.chars_since = 0, None, 0
        self.finished: RunFinished | None = None
        self.stopped = False

    def add(self, item: RecordedEvent) -> None:
        self.stream_id, self.version, event = item.stream_id, item.version, item.event
        version, added = item.version, []
        if isinstance(event, RunStarted):
            self.run = event
            for text in (*event.demonstrations, event.task):
                added.append(Message(role="user", source="task", version=version, event_id=item.event_id, content=text))
        elif isinstance(event, AgentActed):
            self.messages.extend(self.held_back)  # defensive: an action never leaves messages held back
            self.held_back = []
            self.messages.append(
                Message(
                    role="assistant", source="agent", version=version, event_id=item.event_id, content=event.text,
                    reasoning=event.reasoning, reasoning_signature=event.reasoning_signature,
                    blocks=tuple(event.blocks), tool_calls=tuple(event.tool_calls),
                )
            )
            self.pending = {call.id: call for call in event.tool_calls}
            self.pending_action_id = item.event_id
            self.finished = None
            self.steps += 1
            self.last_usage, self.chars_since = event.usage, 0
        elif isinstance(event, ToolObserved):
            self.pending.pop(event.tool_call_id, None)
            added.append(
                Message(
                    role="tool" if event.tool_call_id else "user", source="tool", version=version,
                    event_id=item.event_id, content=event.output, tool_call_id=event.tool_call_id or None,
                    tool_name=event.tool_name, is_error=event.is_error,
                )
            )
            if not self.pending:
                added.extend(self.held_back)
                self.held_back = []
        elif isinstance(event, HumanIntervened) and event.kind in ("guidance", "stop"):
            self.stopped = self.stopped or event.kind == "stop"
            message = Message(role="user", source="human", version=version, event_id=item.event_id, content=human_text(event))
            (self.held_back if self.pending else added).append(message)
        elif isinstance(event, ContextSummarized):
            self.messages = _replace_with_summary(self.messages, event, version, item.event_id)
            self.last_usage, self.chars_since = None, 0
        elif isinstance(event, RunFinished):
            self.finished = event
        elif isinstance(event, BranchCreated):
            self.finished, self.stopped = None, False
        elif isinstance(event, RunReconfigured) and self.run is not None:
            changes = {field: getattr(event, field) for field in RECONFIGURABLE if getattr(event, field) is not None}
            self.run = msgspec.structs.replace(self.run, **changes)
        if added:
            self.messages.extend(added)
            for message in added:
                self.chars_since += message_chars(message)

    def context(self) -> Context:
        messages = self.messages
        if self.run is not None and self.run.observation_window is not None:
            messages = _elide(messages, self.run.observation_window, len(self.run.demonstrations))
        return Context(
            stream_id=self.stream_id,
            version=self.version,
            run=self.run,
            messages=tuple(messages),
            held_back=tuple(self.held_back),
            pending_calls=tuple(self.pending.values()),
            pending_action_id=self.pending_action_id if self.pending else None,
            steps=self.steps,
            last_usage=self.last_usage,
            chars_since_usage=self.chars_since,
            finished=self.finished,
            stopped=self.stopped,
        )


def estimate_tokens(context: Context) -> int:
    """Tokens the next request would take, without a tokenizer.

    The latest model call reported its exact prompt tokens (cached ones included: with prompt
    caching, `input_tokens` alone is only the uncached tail); what was added since (its own
    output, tool results, human messages) is estimated at 4 characters a token. With no
    call since the last summary, everything is estimated that way.
    """
    if context.last_usage is not None and context.last_usage.prompt_tokens > 0:
        return (
            context.last_usage.prompt_tokens
            + context.last_usage.output_tokens
            + context.chars_since_usage // CHARS_PER_TOKEN
        )
    tool_chars = len(msgspec.json.encode(context.tools)) if context.run else 0
    chars = len(context.system) + tool_chars + sum(message_chars(m) for m in context.messages)
    return chars // CHARS_PER_TOKEN


def with_summary(context: Context, event: ContextSummarized) -> Context:
    """The context as it will be once `event` is recorded (for the summary's token count)."""
    messages = _replace_with_summary(list(context.messages), event, context.version + 1, "")
    return msgspec.structs.replace(context, messages=tuple(messages), last_usage=None, chars_since_usage=0)


def _replace_with_summary(messages: list[Message], event: ContextSummarized, version: int, event_id: str) -> list[Message]:
    kept_before = [m for m in messages if m.version < event.replaces_from]
    kept_after = [m for m in messages if m.version > event.replaces_to]
    summary = Message(role="user", source="summary", version=version, event_id=event_id, content=summary_text(event.summary))
    return [*kept_before, summary, *kept_after]


def _elide(messages: list[Message], window: ObservationWindow, demonstrations: int) -> list[Message]:
    """`messages` with old observations replaced as `window` says (an imported agent's own
    history processing).

    Applied when the context is taken, not when events are added, because whether an
    observation is old depends on how many came after it. The observations are the task
    message (not the demonstrations before it) and every tool result or environment message.
    """
    observations, task_messages = [], 0
    for i, message in enumerate(messages):
        if message.source == "task":
            task_messages += 1
            if task_messages == demonstrations + 1:
                observations.append(i)
        elif message.source == "tool":
            observations.append(i)
    cut = max(0, len(observations) // window.polling * window.polling - window.keep_last)
    elided = list(messages)
    for i in observations[1:cut]:  # the first observation is the task: never elided
        text = window.placeholder.replace("{lines}", str(len(messages[i].content.splitlines())))
        elided[i] = msgspec.structs.replace(messages[i], content=text)
    return elided


def message_chars(message: Message) -> int:
    calls = sum(len(c.name) + len(c.raw_arguments or msgspec.json.encode(c.arguments)) for c in message.tool_calls)
    return len(message.content) + len(message.reasoning) + calls
