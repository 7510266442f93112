"""OpenHands V1 conversations (the `openhands-sdk` event log) as runs.

Accepted inputs: a conversation folder as the SDK persists it (`base_state.json` and
`events/event-<index>-<event id>.json`, one JSON event per file, read in index order; the
`events` folder itself also works), a JSON array of those events (a single-file export), or
JSON lines with one event per line (the agent server's event stream). Each event names its
class in `kind`. `apollo-es import openhands` reads V1 input too (it is recognised by its
`kind`s and its folder) and hands it to this module; the run is recorded as `openhands-v1`.

Written against OpenHands/software-agent-sdk at 611629e6999ad398dc49c761721eefe18d5e6bd9
(v1.43.1+2): `openhands-sdk/openhands/sdk/event/` (`base.py`: `events_to_messages`;
`llm_convertible/{action,message,observation,system}.py`; `condenser.py`;
`conversation_state.py`; `user_action.py`), `llm/message.py` (`Message`, its string
serializer joining text blocks with newlines), `tool/schema.py` (`Observation.to_llm_content`),
`tool/tool.py` (how a `ToolDefinition` is dumped), `tool/builtins/finish.py`,
`context/view/` (`View.append_event`, `ToolCallMatchingProperty`),
`conversation/event_store.py` and `persistence_const.py` (the events folder),
`conversation/state.py` and `llm/utils/{metrics,telemetry}.py` (`base_state.json` stats), and
`openhands-tools/openhands/tools/terminal/definition.py` (`TerminalObservation`).

Mapping (what the SDK's `View` and `events_to_messages` send to the model):
- `SystemPromptEvent`: the system prompt (`system_prompt.text`, then `dynamic_context.text`)
  and its tools (a dumped `ToolDefinition` records name and description, not the parameter
  schema; SDKs before 1.7 stored OpenAI tool specs, which are kept whole);
- the first user `MessageEvent`: the task; later ones: `HumanIntervened(verbatim=True)` (a
  person talking to the agent, annotator `openhands:user`); a user-role message from another
  source (a hook, the environment): environment feedback. A message's text is its content
  and `extended_content`; an agent `MessageEvent` is an `AgentActed` with that text;
- `ActionEvent`s that follow one another with one `llm_response_id` are one `AgentActed`
  (one assistant turn): the first one's `thought` as text, its `reasoning_content` (else its
  thinking blocks, else the Responses reasoning item) as reasoning, Anthropic thinking blocks
  kept in `blocks`, and every event's `tool_call` (id `tool_call_id`, arguments as sent);
- `ObservationEvent`: a `ToolObserved` with `observation.to_llm_content` (a terminal's output
  with prefix, suffix, working directory, interpreter and exit code as the V0 importer renders
  them; other tools their content, after "[An error occurred during execution.]" when
  `is_error`), then its `extended_content`;
- `UserRejectObservation`: "Action rejected: <reason>" as the model saw it and, when a person
  rejected (`rejection_source` "user", not a hook), `HumanIntervened(kind="reject")` of that
  action; `AgentErrorEvent`: a `ToolObserved` with `is_error`, `origin="harness"`;
- a result whose tool call is not pending is left out, as the SDK's view drops it;
- `Condensation` with `summary` and `summary_offset`: a `ContextSummarized` over the
  forgotten events (when they are consecutive in the run); without them the model saw no
  summary, and the run's `import_notes` say which events the SDK dropped;
  a stored `CondensationSummaryEvent` is a user message;
- a `finish` call (`FinishAction`): `RunFinished(finished)` with its `message`, after its
  result; a conversation without one ends `RunFinished(imported)`.
- Events the model never sees (`ConversationStateUpdateEvent`, `PauseEvent`,
  `CondensationRequest`, `ConversationErrorEvent`, token, log and hook events, and kinds
  this module does not know) are skipped; unknown kinds are named in `import_notes`.
From `base_state.json`: the conversation id (task id), the agent's model, temperature and
top_p, and per response (`stats.usage_to_metrics.*`): token usage and latency by response id,
and cost where every call of that LLM has a cost entry (the SDK records no response id with a
cost). Prompt tokens are counted without the cached ones, as `Usage` wants.

Not reproduced (said in `import_notes`): the SDK's output limits (terminal output over 30,000
characters, tool text over 50,000, are clipped in the middle by the SDK and kept whole here);
consecutive user messages, which the SDK sends as one; a summary reads with apollo-es's
summary framing; branches of a conversation tree (`parent_id`), read in file order; results
stored by SDKs before 1.0 (an `output` field) are rendered by today's rules. V1 records no
prompts, so no step is compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from apollo_es.importers.base import (
    DEFAULT_REAL_USER_TAGS,
    FilePlan,
    PlannedEvent,
    RunBuilder,
    Source,
    StreamPlan,
    count,
    default_stream_id,
    money,
    parse_arguments,
    reasoning_of,
    sanitize_stream_id,
    to_timestamp,
    tool_specs,
)
from apollo_es.importers.openhands import COMMAND_METADATA_TEXT, command_output
from events import ContentBlock, ToolCall, ToolSpec, Usage

FORMAT = "openhands-v1"

EVENT_FILE = re.compile(r"event-(\d{5,})-[0-9A-Za-z-]+\.json")
"""The SDK's event file name (`persistence_const.EVENT_NAME_RE`, id characters loosened)."""
HANDLED = frozenset({"SystemPromptEvent", "MessageEvent", "ActionEvent", "ObservationEvent", "UserRejectObservation",
                     "AgentErrorEvent", "Condensation", "CondensationSummaryEvent"})
"""The events that shape what the model sees: the `LLMConvertibleEvent`s and `Condensation`."""
INVISIBLE = frozenset({"ConversationStateUpdateEvent", "PauseEvent", "InterruptEvent", "CondensationRequest",
                       "ConversationErrorEvent", "LLMCompletionLogEvent", "TokenEvent", "HookExecutionEvent",
                       "StreamingDeltaEvent", "ACPToolCallEvent"})
"""Events the SDK's `View` never hands to the model."""
_V1_KIND = re.compile(r'"kind"\s*:\s*"(?:%s)"' % "|".join(sorted(HANDLED | INVISIBLE)))
TERMINAL_OBSERVATIONS = frozenset({"TerminalObservation", "ExecuteBashObservation"})
"""`TerminalObservation`, named `ExecuteBashObservation` before SDK 1.3."""
ERROR_HEADER = "[An error occurred during execution.]\n"
"""`Observation.ERROR_MESSAGE_HEADER`, the first content block of a failed tool's result."""
FINISH_TOOL = "finish"


def is_v1(path: str | Path) -> bool:
    """Whether `path` is an OpenHands V1 conversation folder or a file of V1 events."""
    path = Path(path)
    if path.is_dir():
        return bool(_event_files(path))
    try:
        with path.open("rb") as f:
            head = f.read(65536).decode("utf-8", errors="replace")
    except OSError:
        return False
    return _V1_KIND.search(head) is not None


def parse(path: str | Path, *, stream_id: str | None = None, real_user_tags: tuple[str, ...] = DEFAULT_REAL_USER_TAGS) -> FilePlan:
    """One run from a conversation folder or export. `real_user_tags` is unused: a V1 event
    says who wrote a message (`source`), so no tag has to."""
    path = Path(path)
    folder = path.parent if path.is_dir() and path.name == "events" else path
    items, state = _read(path, folder)
    if stream_id is None:
        stream_id = sanitize_stream_id(f"{FORMAT}/{folder.name}") if path.is_dir() else default_stream_id(FORMAT, path)
    return FilePlan(FORMAT, str(path), [_Conversation(items, state, stream_id).build()])


# -- reading -------------------------------------------------------------------------------


class _Item(NamedTuple):
    """One event, the file it came from and its place there (for errors)."""

    src: Source
    where: str
    data: dict
    kind: str


def _event_files(directory: Path) -> list[Path]:
    events = directory / "events" if (directory / "events").is_dir() else directory
    found = [(int(m.group(1)), p) for p in events.iterdir() if (m := EVENT_FILE.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def _read(path: Path, folder: Path) -> tuple[list[_Item], dict]:
    """The events in order, and `base_state.json` (empty without a folder or the file)."""
    if path.is_dir():
        files = _event_files(path)
        if not files:
            Source(path).fail("", "has no event files (events/event-<index>-<id>.json)")
        items = [_item(Source(p), "$", Source(p).load_json()) for p in files]
        state_file = folder / "base_state.json"
        state = Source(state_file).load_json() if state_file.is_file() else {}
        return items, Source(state_file).want(state, dict, "$", "the conversation state object")
    src = Source(path)
    if path.suffix == ".jsonl":
        items = [_item(src, f"line {n}", value) for n, value in src.load_jsonl()]
    else:
        events = src.want(src.load_json(), list, "$", "a list of OpenHands V1 events")
        items = [_item(src, f"$[{i}]", value) for i, value in enumerate(events)]
    if not items:
        src.fail("", "has no events")
    return items, {}


def _item(src: Source, where: str, value: Any) -> _Item:
    data = src.want(value, dict, where, "an event object")
    kind = src.field(data, "kind", str, where, required=True)
    src.field(data, "id", str, where)
    return _Item(src, where, data, kind)


# -- the model's calls, from base_state.json -----------------------------------------------


@dataclass
class _Call:
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    cost_usd: float | None = None


def _calls(state: dict) -> dict[str, _Call]:
    """Per LLM response id: model, tokens, latency and (where attributable) cost.

    Entries of the wrong shape are ignored: these are statistics, not the conversation.
    """
    stats = state.get("stats") if isinstance(state.get("stats"), dict) else {}
    metrics = stats.get("usage_to_metrics") if isinstance(stats.get("usage_to_metrics"), dict) else {}
    calls: dict[str, _Call] = {}
    for llm in metrics.values():
        if not isinstance(llm, dict):
            continue
        for usage in _dicts(llm.get("token_usages")):
            if isinstance(usage.get("response_id"), str) and usage["response_id"]:
                prompt = count(usage.get("prompt_tokens")) or 0
                cached, written = count(usage.get("cache_read_tokens")) or 0, count(usage.get("cache_write_tokens")) or 0
                call = calls.setdefault(usage["response_id"], _Call())
                call.model = usage["model"] if isinstance(usage.get("model"), str) else ""
                call.usage = Usage(input_tokens=max(0, prompt - cached - written), output_tokens=count(usage.get("completion_tokens")) or 0,
                                   cache_read_tokens=cached, cache_write_tokens=written)
        latencies = _dicts(llm.get("response_latencies"))
        costs = _dicts(llm.get("costs"))
        for n, latency in enumerate(latencies):
            if isinstance(latency.get("response_id"), str) and latency["response_id"]:
                call = calls.setdefault(latency["response_id"], _Call())
                call.latency_ms = (money(latency.get("latency")) or 0.0) * 1000
                if len(costs) == len(latencies):  # one cost per call, in call order (telemetry.py)
                    call.cost_usd = money(costs[n].get("cost"))
    return calls


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# -- building the run ----------------------------------------------------------------------


class _Conversation:
    """The events of one conversation mapped onto a run, in the order the SDK's view has them."""

    def __init__(self, items: list[_Item], state: dict, stream_id: str) -> None:
        self.items, self.state = items, state
        self.stream = StreamPlan(stream_id)
        self.run = RunBuilder(self.stream, annotator="openhands:user")
        self.calls = _calls(state)
        self.versions_of_event: dict[str, list[int]] = {}
        self.finish: tuple[str, str, _Item] | None = None
        """(call id, answer, event) of a finish call waiting for its result."""
        self.unknown: set[str] = set()

    def build(self) -> StreamPlan:
        visible = [item for item in self.items if self._visible(item)]
        system, tools, task_at = self._preamble(visible)
        llm = self.state.get("agent", {}).get("llm") if isinstance(self.state.get("agent"), dict) else None
        llm = llm if isinstance(llm, dict) else {}
        sampling = {k: llm[k] for k in ("temperature", "top_p") if isinstance(llm.get(k), (int, float)) and not isinstance(llm.get(k), bool)}
        task = visible[task_at] if task_at is not None else None
        conversation_id = self.state.get("id") if isinstance(self.state.get("id"), str) else ""
        self.run.start(
            task_id=conversation_id or self.stream.stream_id.rsplit("/", 1)[-1], task=self._text_of_message(task) if task else "",
            system_prompt=system, tools=tools, model=llm.get("model") if isinstance(llm.get("model"), str) else "",
            sampling=sampling, tags=["imported", FORMAT], at=next(filter(None, (self._at(i) for i in self.items)), None),
            place=task.where if task else "",
        )
        n = 0
        while n < len(visible):
            item, first_version = visible[n], self.run.next_version
            if n == task_at or item.kind == "SystemPromptEvent":
                n += 1
                continue
            batch = self._batch(visible, n) if item.kind == "ActionEvent" else [item]
            self._event(batch)
            for event in batch:
                if isinstance(event.data.get("id"), str):
                    self.versions_of_event[event.data["id"]] = list(range(first_version, self.run.next_version))
            n += len(batch)
        self._settle_finish(None)
        self.run.finish_unless_finished()
        self._notes()
        return self.stream

    def _visible(self, item: _Item) -> bool:
        if item.kind in INVISIBLE:
            return False
        if item.kind not in HANDLED:
            self.unknown.add(item.kind)
            return False
        return True

    def _preamble(self, visible: list[_Item]) -> tuple[str, list[ToolSpec], int | None]:
        system, tools, task_at = "", [], None
        for n, item in enumerate(visible):
            if item.kind == "SystemPromptEvent" and not system:
                system, tools = self._system(item)
            if task_at is None and item.kind == "MessageEvent" and self._role(item) == "user" and item.data.get("source") == "user":
                task_at = n
        return system, tools, task_at

    def _system(self, item: _Item) -> tuple[str, list[ToolSpec]]:
        src, where, data, _ = item
        parts = [src.field(data, "system_prompt", dict, where, required=True)]
        if data.get("dynamic_context") is not None:
            parts.append(src.field(data, "dynamic_context", dict, where))
        system = src.text(parts, f"{where}.system_prompt")
        return system, self._tools(src, src.field(data, "tools", list, where, default=[]), f"{where}.tools")

    def _tools(self, src: Source, raw: list, where: str) -> list[ToolSpec]:
        """OpenAI tool specs (SDKs before 1.7) or dumped `ToolDefinition`s (name from
        `title`, which is the tool's name unless its annotations retitle it)."""
        if all(isinstance(tool, dict) and "function" in tool for tool in raw):
            return tool_specs(src, raw, where)
        specs = []
        for i, tool in enumerate(raw):
            tool = src.want(tool, dict, f"{where}[{i}]", "a tool definition object")
            name = src.field(tool, "title", str, f"{where}[{i}]") or _snake(src.field(tool, "kind", str, f"{where}[{i}]", required=True))
            specs.append(ToolSpec(name=name, description=src.field(tool, "description", str, f"{where}[{i}]", default="")))
        if specs:
            self.stream.notes.append("the SDK's event log records tool names and descriptions, not their parameter schemas")
        return specs

    def _event(self, batch: list[_Item]) -> None:
        item = batch[0]
        src, where, data, kind = item
        self._settle_finish(item)
        if kind == "ActionEvent":
            self._actions(batch)
        elif kind == "MessageEvent":
            self._message(item)
        elif kind == "ObservationEvent":
            self._result(item, self._observation_text(item), is_error=self._observation_error(item), exit_code=self._exit_code(item))
        elif kind == "UserRejectObservation":
            self._rejection(item)
        elif kind == "AgentErrorEvent":
            self._result(item, src.field(data, "error", str, where, required=True), is_error=True, origin="harness")
        elif kind == "Condensation":
            self._condensation(item)
        else:  # a stored CondensationSummaryEvent: a user message
            self.run.environment(src.field(data, "summary", str, where, required=True), at=self._at(item), place=where)

    # -- the agent's turns

    @staticmethod
    def _batch(visible: list[_Item], n: int) -> list[_Item]:
        """The actions of one LLM response: consecutive `ActionEvent`s with its id (`events_to_messages`)."""
        response = visible[n].data.get("llm_response_id")
        end = n + 1
        while end < len(visible) and visible[end].kind == "ActionEvent" and visible[end].data.get("llm_response_id") == response:
            end += 1
        return visible[n:end]

    def _actions(self, batch: list[_Item]) -> None:
        first = batch[0]
        src, where, data, _ = first
        calls = [self._tool_call(item) for item in batch]
        reasoning, signature, blocks = self._reasoning(first, data, where)
        text = src.text(src.field(data, "thought", list, where, default=[]), f"{where}.thought")
        if blocks:
            blocks += [ContentBlock(type="text", text=text)] if text.strip() else []
            blocks += [ContentBlock(type="tool_use", id=call.id) for call in calls]
        call = self._call_of(first)
        self.run.act(text=text, reasoning=reasoning, reasoning_signature=signature, tool_calls=calls, model=call.model or None,
                     usage=call.usage, latency_ms=call.latency_ms, cost_usd=call.cost_usd, blocks=blocks,
                     at=self._at(first), place=where)
        for item, tool_call in zip(batch, calls):
            if tool_call.name == FINISH_TOOL:
                self.finish = (tool_call.id, self._finish_answer(item, tool_call), item)

    def _tool_call(self, item: _Item) -> ToolCall:
        src, where, data, _ = item
        call_id = src.field(data, "tool_call_id", str, where, required=True)
        tool_call = src.field(data, "tool_call", dict, where, required=True)
        name = src.field(tool_call, "name", str, f"{where}.tool_call", required=True)
        arguments, raw = parse_arguments(src.field(tool_call, "arguments", (str, dict), f"{where}.tool_call", default=""))
        return ToolCall(id=call_id, name=name, arguments=arguments, raw_arguments=raw)

    def _finish_answer(self, item: _Item, call: ToolCall) -> str:
        action = item.src.field(item.data, "action", dict, item.where, default={})
        message = action.get("message", call.arguments.get("message", ""))
        return item.src.want(message, str, f"{item.where}.action.message")

    def _reasoning(self, item: _Item, message: dict, where: str) -> tuple[str, str, list[ContentBlock]]:
        """(reasoning, signature, thinking blocks) of an assistant turn as the model produced it."""
        src = item.src
        thinking = src.field(message, "thinking_blocks", list, where, default=[])
        blocks = []
        for i, block in enumerate(thinking):
            block = src.want(block, dict, f"{where}.thinking_blocks[{i}]", "a thinking block object")
            if block.get("type") == "redacted_thinking":
                blocks.append(ContentBlock(type="redacted_thinking", data=src.field(block, "data", str, f"{where}.thinking_blocks[{i}]", default="")))
            else:
                blocks.append(ContentBlock(type="thinking", text=src.field(block, "thinking", str, f"{where}.thinking_blocks[{i}]", default=""),
                                           signature=src.field(block, "signature", str, f"{where}.thinking_blocks[{i}]", default="")))
        src.field(message, "reasoning_content", str, where)
        reasoning, signature = reasoning_of(message)
        signature = signature or next((block.signature for block in reversed(blocks) if block.signature), "")
        responses = src.field(message, "responses_reasoning_item", dict, where, default={})
        if not reasoning and responses:
            place = f"{where}.responses_reasoning_item"
            lines = src.want(responses.get("content") or responses.get("summary") or [], list, place)
            reasoning = "\n".join(src.want(line, str, place) for line in lines)
        return reasoning, signature, blocks

    def _message(self, item: _Item) -> None:
        src, where, data, _ = item
        role, text, at = self._role(item), self._text_of_message(item), self._at(item)
        if role == "assistant":
            message = data["llm_message"]
            reasoning, signature, blocks = self._reasoning(item, message, f"{where}.llm_message")
            blocks += [ContentBlock(type="text", text=text)] if blocks else []
            call = self._call_of(item)
            self.run.act(text=text, reasoning=reasoning, reasoning_signature=signature, model=call.model or None, usage=call.usage,
                         latency_ms=call.latency_ms, cost_usd=call.cost_usd, blocks=blocks, at=at, place=where)
        elif role == "user" and data.get("source") == "user":
            self.run.human(text, at=at, place=where, verbatim=True)
        elif role == "user":
            self.run.environment(text, at=at, place=where)
        else:
            src.fail(f"{where}.llm_message.role", f"a message event from the {role} is not part of a conversation")

    def _role(self, item: _Item) -> str:
        message = item.src.field(item.data, "llm_message", dict, item.where, required=True)
        return item.src.field(message, "role", str, f"{item.where}.llm_message", required=True)

    def _text_of_message(self, item: _Item) -> str:
        """`MessageEvent.to_llm_message`'s text: the message's content, then `extended_content`."""
        src, where, data, _ = item
        message = src.field(data, "llm_message", dict, where, required=True)
        content = src.field(message, "content", (list, str), f"{where}.llm_message", default=[])
        content = [content] if isinstance(content, str) else content
        extended = src.field(data, "extended_content", list, where, default=[])
        return src.text([*content, *extended], f"{where}.llm_message.content")

    def _call_of(self, item: _Item) -> _Call:
        response = item.data.get("llm_response_id")
        return self.calls.get(response, _Call()) if isinstance(response, str) else _Call()

    # -- results

    def _result(self, item: _Item, text: str, *, is_error: bool, exit_code: int | None = None, origin: str = "tool") -> PlannedEvent | None:
        """A tool result, if its call is pending; the SDK's view drops one that answers no call."""
        src, where, data, _ = item
        call_id = src.field(data, "tool_call_id", str, where, required=True)
        tool_name = src.field(data, "tool_name", str, where, default="")
        if call_id not in self.run.pending:
            self.stream.notes.append(f"{src.path.name} {where}: a result for tool call {call_id!r}, which is not waiting for one; "
                                     "left out, as the SDK leaves it out of the model's view")
            return None
        return self.run.observe(text, call_id=call_id, tool_name=tool_name, is_error=is_error, exit_code=exit_code,
                                at=self._at(item), place=where, rebind=False, origin=origin)

    def _observation(self, item: _Item) -> dict:
        return item.src.field(item.data, "observation", dict, item.where, required=True)

    def _observation_error(self, item: _Item) -> bool:
        return item.src.field(self._observation(item), "is_error", bool, f"{item.where}.observation", default=False)

    def _observation_text(self, item: _Item) -> str:
        """`ObservationEvent.to_llm_message`'s text: `observation.to_llm_content`, then `extended_content`."""
        src, where, data, _ = item
        observation, place = self._observation(item), f"{where}.observation"
        kind = src.field(observation, "kind", str, place, default="")
        content = src.field(observation, "content", list, place, default=[])
        if not content and isinstance(observation.get("output"), str):  # SDKs before 1.0 (2025-11)
            content = [observation["output"]]
        blocks = [ERROR_HEADER] if self._observation_error(item) else []
        if kind in TERMINAL_OBSERVATIONS:
            metadata = src.field(observation, "metadata", dict, place, default={})
            for key in COMMAND_METADATA_TEXT:
                src.field(metadata, key, str, f"{place}.metadata")
            output = "".join(src.text([block], f"{place}.content[{i}]") for i, block in enumerate(content))  # Observation.text
            blocks.append(command_output(output, metadata, metadata.get("exit_code", -1)))
        else:
            blocks.append(src.text(content, f"{place}.content"))
        extended = src.field(data, "extended_content", list, where, default=[])
        return "\n".join([*blocks, src.text(extended, f"{where}.extended_content")] if extended else blocks)

    def _exit_code(self, item: _Item) -> int | None:
        observation = self._observation(item)
        metadata = observation.get("metadata") if isinstance(observation.get("metadata"), dict) else {}
        for value in (observation.get("exit_code"), metadata.get("exit_code")):
            if isinstance(value, int) and not isinstance(value, bool) and value != -1:
                return value
        return None

    def _rejection(self, item: _Item) -> None:
        src, where, data, _ = item
        reason = src.field(data, "rejection_reason", str, where, default="User rejected the action")
        pending = self.run.pending.get(data.get("tool_call_id")) if isinstance(data.get("tool_call_id"), str) else None
        if self._result(item, f"Action rejected: {reason}", is_error=True) is None or pending is None:
            return
        if src.field(data, "rejection_source", str, where, default="user") == "user":
            self.run.reject(pending[0], reason, at=self._at(item), place=where)

    def _settle_finish(self, item: _Item | None) -> None:
        """`RunFinished` for a finish call once it has its result and the turn's other calls
        theirs (called before each event, and with None at the end); none if it was rejected
        or failed."""
        if self.finish is None:
            return
        call_id, answer, action = self.finish
        answers = item is not None and item.data.get("tool_call_id") == call_id
        if answers and item.kind != "ObservationEvent":
            self.finish = None
        elif answers or (item is not None and item.kind != "ActionEvent" and call_id in self.run.pending):
            return
        else:
            self.finish = None
            self.run.finish("finished", final_answer=answer, at=self._at(action), place=action.where)

    # -- condensation

    def _condensation(self, item: _Item) -> None:
        src, where, data, _ = item
        summary = src.field(data, "summary", str, where)
        offset = src.field(data, "summary_offset", int, where)
        forgotten = src.field(data, "forgotten_event_ids", list, where, default=[])
        ids = [src.want(event_id, str, f"{where}.forgotten_event_ids[{i}]") for i, event_id in enumerate(forgotten)]
        versions = sorted(v for event_id in ids for v in self.versions_of_event.get(event_id, []))
        if summary is None or offset is None:
            self.stream.notes.append(f"{src.path.name} {where}: the SDK dropped {len(ids)} events from the model's view without a "
                                     "summary; the replayed context keeps them")
        elif versions and versions == list(range(versions[0], versions[-1] + 1)):
            call = self._call_of(item)
            self.run.summarize(summary, replaces_from=versions[0], replaces_to=versions[-1], model=call.model, usage=call.usage,
                               at=self._at(item), place=where)
        else:
            self.stream.notes.append(f"{src.path.name} {where}: a summary replacing events that are not consecutive in the run "
                                     "is not reproduced; the replayed context keeps them")

    # -- helpers

    @staticmethod
    def _at(item: _Item) -> str | None:
        return to_timestamp(item.data.get("timestamp"))

    def _notes(self) -> None:
        notes = self.stream.notes
        notes.append("OpenHands V1 records no prompts, so none is compared; results are rendered by the SDK's to_llm_content "
                     "rules without its output limits, and consecutive user messages (which the SDK sends as one) stay apart")
        if self.unknown:
            notes.append(f"skipped events of kinds this importer does not know: {', '.join(sorted(self.unknown))}")
        ids = [item.data.get("id") for item in self.items]
        if any(item.data.get("parent_id") not in (None, ids[n - 1] if n else None) for n, item in enumerate(self.items)):
            notes.append("the conversation has branches (parent_id); its events are read in file order")
        self.stream.notes = list(dict.fromkeys(notes))


def _snake(kind: str) -> str:
    """A tool's name from its class, as the SDK derives it (`TerminalTool` -> `terminal`)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower().removesuffix("_tool")
