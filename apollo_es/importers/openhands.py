"""OpenHands event lists: `action` and `observation` events become a run.

Accepted inputs: a JSON array of events (OpenHands' trajectory export and test trajectories),
a JSON object holding them under `history` (evaluation output; `instruction`, `instance_id`
and `metadata.llm_config.model` are used when present), older histories of
`[action, observation]` pairs, and an evaluation `output.jsonl` with one such object per line
(one stream per line, `<stream>/<instance_id or line>`).

Mapping:
- `system` action: the system prompt (`args.content`) and tool specs (`args.tools`);
- the first user `message`: the task; later user messages: `HumanIntervened` (a person
  talking to the agent, annotator `openhands:user`);
- an action with `tool_call_metadata.model_response`: one `AgentActed` per model response
  (the response's content, reasoning, every tool call, model, usage and finish reason);
  OpenHands makes one action per tool call of a response, so actions sharing a response id
  fold into that one `AgentActed`;
- an action without the raw response: an `AgentActed` whose text is `args.thought` and whose
  tool call is named by `tool_call_metadata.function_name` (or the action type) with the
  action's `args`, less OpenHands' bookkeeping fields, as arguments;
- an agent `message` without metadata: an `AgentActed` with that text and no tool call;
- an observation: a `ToolObserved` for the call in its `tool_call_metadata` (or of the action
  its `cause` names); `exit_code` from `extras.metadata.exit_code`; an `error` observation or a
  positive exit code sets `is_error`; one that answers no call is feedback from the environment;
- `finish`: `RunFinished(finished)` after its action, with `final_thought`/`message` as the
  answer; `reject`: `RunFinished(failed)`;
- `condensation` with a `summary`: a `ContextSummarized` replacing the forgotten events.
Event timestamps become `recorded_at`.

- `user_rejected`: the rejection message as the model saw it, then a `HumanIntervened`
  `reject` of the action it answers (a person said no: the action is masked for training);
- a source without `finish`/`reject`: `RunFinished(imported)`.

What the model was sent (OpenHands' conversation memory), reproduced by the fold:
- later user messages are plain user turns (`HumanIntervened(verbatim=True)`);
- a command's result reads as `CmdOutputObservation.to_agent_observation` renders it (prefix,
  output, suffix, working directory, interpreter, exit code; a command the user ran says so);
  an `error` ends with "[Error occurred in processing last action]", a `user_rejected` is
  framed as OpenHands frames it; other observations go as stored (`content`);
- agent-state changes, `recall` actions and observations (microagent knowledge),
  `loop_detection` (handled inside OpenHands, never shown to the model) and `null` events are
  skipped; a condensation without a summary is skipped (the fold keeps the forgotten events).
Not reproduced: OpenHands' `max_message_chars` truncation (the limit is not in the file),
recalled microagent knowledge, and renderings that changed between OpenHands versions (the
files do not record theirs; file edits read as stored). OpenHands files record no prompts, so
no step is compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apollo_es.importers.base import (
    DEFAULT_REAL_USER_TAGS,
    FilePlan,
    RunBuilder,
    Source,
    StreamPlan,
    default_stream_id,
    openai_tool_calls,
    openai_usage,
    reasoning_of,
    sanitize_stream_id,
    to_timestamp,
    tool_specs,
)
from events import ToolCall

FORMAT = "openhands"

SKIP_ACTIONS = frozenset({"change_agent_state", "null", "recall"})
SKIP_OBSERVATIONS = frozenset({"agent_state_changed", "null", "recall", "loop_detection"})
"""Observations OpenHands never sends to the model."""
COMMAND_METADATA_TEXT = ("prefix", "suffix", "working_dir", "py_interpreter_path")
BOOKKEEPING_ARGS = frozenset({"thought", "impl_source", "translated_ipython_code", "confirmation_state", "security_risk", "hidden"})


def parse(path: str | Path, *, stream_id: str | None = None, real_user_tags: tuple[str, ...] = DEFAULT_REAL_USER_TAGS) -> FilePlan:
    src = Source(path)
    base = stream_id or default_stream_id(FORMAT, path)
    plan = FilePlan(FORMAT, str(path), [])
    if Path(path).suffix == ".jsonl":
        for number, line in src.load_jsonl():
            line = src.want(line, dict, f"line {number}", "an object with a history")
            key = line.get("instance_id") or line.get("id") or number
            plan.streams.append(_parse_document(src, line, f"line {number}", sanitize_stream_id(f"{base}/{key}"), real_user_tags))
        if not plan.streams:
            src.fail("", "has no lines")
    else:
        plan.streams.append(_parse_document(src, src.load_json(), "$", base, real_user_tags))
    return plan


def _parse_document(src: Source, data: Any, place: str, stream_id: str, tags: tuple[str, ...]) -> StreamPlan:
    meta: dict = {}
    if isinstance(data, dict):
        meta = data
        for key in ("history", "trajectory", "events"):
            if key in data:
                place, data = f"{place}.{key}", data[key]
                break
        else:
            src.fail(place, "expected a list of events, or an object with `history`")
    items = src.want(data, list, place, "a list of OpenHands events")
    flat: list[tuple[str, dict]] = []
    for i, item in enumerate(items):
        if isinstance(item, list):  # older histories: [action, observation] pairs
            for j, part in enumerate(item):
                flat.append((f"{place}[{i}][{j}]", src.want(part, dict, f"{place}[{i}][{j}]", "an event object")))
        else:
            flat.append((f"{place}[{i}]", src.want(item, dict, f"{place}[{i}]", "an event object")))
    return _Run(src, flat, meta, stream_id, tags).build()


class _Run:
    def __init__(self, src: Source, items: list[tuple[str, dict]], meta: dict, stream_id: str, tags: tuple[str, ...]) -> None:
        self.src, self.items, self.meta = src, items, meta
        self.stream = StreamPlan(stream_id)
        self.run = RunBuilder(self.stream, real_user_tags=tags, annotator="openhands:user")
        self.call_of_event: dict[Any, str] = {}
        self.versions_of_event: dict[Any, list[int]] = {}
        self.last_response_id: Any = None

    def build(self) -> StreamPlan:
        src, run = self.src, self.run
        for where, item in self.items:
            if "action" not in item and "observation" not in item:
                src.fail(where, "an OpenHands event has `action` or `observation`; this has neither")
        system, tools, task_index, task = self._preamble()
        llm = self.meta.get("metadata", {}).get("llm_config", {}) if isinstance(self.meta.get("metadata"), dict) else {}
        model = self._first_model() or (llm.get("model") if isinstance(llm, dict) and isinstance(llm.get("model"), str) else "")
        first_time = next((to_timestamp(item.get("timestamp")) for _, item in self.items if to_timestamp(item.get("timestamp"))), None)
        run.start(
            task_id=str(self.meta.get("instance_id") or self.stream.stream_id.rsplit("/", 1)[-1]), task=task,
            system_prompt=system, tools=tools, model=model, tags=["imported", FORMAT], at=first_time,
            place=self.items[task_index][0] if task_index is not None else "",
        )
        for n, (where, item) in enumerate(self.items):
            if n == task_index:
                continue
            first_version = run.next_version
            if "action" in item:
                self._action(where, item)
            else:
                self._observation(where, item)
            if run.next_version > first_version:
                self.versions_of_event[_key(item.get("id"))] = list(range(first_version, run.next_version))
        run.finish_unless_finished()
        self.stream.notes.append(
            "OpenHands records no prompts, so none is compared; observations are rendered by OpenHands' current "
            "conversation-memory rules, without its max_message_chars truncation or recalled microagent knowledge")
        return self.stream

    def _preamble(self) -> tuple[str, list, int | None, str]:
        src, system, tools, task_index, task = self.src, "", [], None, ""
        for n, (where, item) in enumerate(self.items):
            if item.get("action") == "system" and not system:
                args = src.field(item, "args", dict, where, default={})
                system = src.text(args.get("content"), f"{where}.args.content")
                if args.get("tools"):
                    tools = tool_specs(src, args["tools"], f"{where}.args.tools")
            if item.get("action") == "message" and item.get("source") == "user" and task_index is None:
                task_index, task = n, self._message_text(where, item)
        if task_index is None and isinstance(self.meta.get("instruction"), str):
            task = self.meta["instruction"]
        return system, tools, task_index, task

    def _first_model(self) -> str:
        for _, item in self.items:
            response = _response(item)
            if response is not None and isinstance(response.get("model"), str):
                return response["model"]
        return ""

    def _message_text(self, where: str, item: dict) -> str:
        args = self.src.field(item, "args", dict, where, default={})
        if "content" in args:
            return self.src.text(args["content"], f"{where}.args.content")
        return self.src.field(item, "message", str, where, default="")

    def _action(self, where: str, item: dict) -> None:
        src, run = self.src, self.run
        kind = src.want(item["action"], str, f"{where}.action")
        args = src.field(item, "args", dict, where, default={})
        at = to_timestamp(item.get("timestamp"))
        if kind in SKIP_ACTIONS or kind == "system":
            return
        if kind == "message" and item.get("source") == "user":
            run.human(self._message_text(where, item), at=at, place=where, verbatim=True)
            return
        if kind == "condensation":
            self._condensation(where, item, args, at)
            return
        metadata = item.get("tool_call_metadata")
        metadata = src.want(metadata, dict, f"{where}.tool_call_metadata") if metadata is not None else None
        response = _response(item)
        if response is not None:
            response_id = response.get("id")
            if response_id is None or response_id != self.last_response_id or run.last_action is None:
                self._act_from_response(f"{where}.tool_call_metadata.model_response", response, item, at)
                self.last_response_id = response_id
            if isinstance(metadata.get("tool_call_id"), str):
                self._remember_call(item, metadata["tool_call_id"])
        elif kind == "message":
            run.act(text=self._message_text(where, item), at=at, place=where)
            self.last_response_id = None
        else:
            thought = src.text(args.get("thought"), f"{where}.args.thought")
            arguments = {k: v for k, v in args.items() if k not in BOOKKEEPING_ARGS}
            call_id = (metadata or {}).get("tool_call_id")
            call_id = call_id if isinstance(call_id, str) and call_id else f"openhands-{item.get('id', where)}"
            name = (metadata or {}).get("function_name")
            name = name if isinstance(name, str) and name else kind
            run.act(text=thought, tool_calls=[ToolCall(id=call_id, name=name, arguments=arguments)], at=at, place=where)
            self._remember_call(item, call_id)
            self.last_response_id = None
        if kind == "finish":
            answer = args.get("final_thought") or args.get("message") or args.get("thought") or ""
            run.finish("finished", final_answer=answer if isinstance(answer, str) else str(answer), at=at, place=where)
        elif kind == "reject":
            outputs = args.get("outputs") if isinstance(args.get("outputs"), dict) else {}
            reason = outputs.get("reason") or args.get("reason") or args.get("thought") or ""
            run.finish("failed", final_answer=str(reason), error="the agent rejected the task", at=at, place=where)

    def _remember_call(self, item: dict, call_id: str) -> None:
        """So an observation whose `cause` names this action answers its call."""
        if _key(item.get("id")) is not None:
            self.call_of_event[_key(item["id"])] = call_id

    def _act_from_response(self, where: str, response: dict, item: dict, at: str | None) -> None:
        src = self.src
        choices = src.field(response, "choices", list, where, required=True)
        if not choices:
            src.fail(f"{where}.choices", "is empty: the model response has no message")
        choice = src.want(choices[0], dict, f"{where}.choices[0]")
        message = src.field(choice, "message", dict, f"{where}.choices[0]", required=True)
        text = src.text(message.get("content"), f"{where}.choices[0].message.content")
        calls = []
        if message.get("tool_calls"):
            calls = openai_tool_calls(src, message["tool_calls"], f"{where}.choices[0].message.tool_calls", f"openhands-{item.get('id')}")
        reasoning, signature = reasoning_of(message)
        usage = openai_usage(response.get("usage"))
        latency = 0.0
        metrics = item.get("llm_metrics") if isinstance(item.get("llm_metrics"), dict) else {}
        for entry in metrics.get("response_latencies") or []:
            if isinstance(entry, dict) and entry.get("response_id") == response.get("id") and isinstance(entry.get("latency"), (int, float)):
                latency = float(entry["latency"]) * 1000
        model = response.get("model") if isinstance(response.get("model"), str) else None
        finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else ""
        self.run.act(text=text, reasoning=reasoning, reasoning_signature=signature, tool_calls=calls, model=model,
                     stop_reason=finish, usage=usage, latency_ms=latency, at=at, place=where)

    def _observation(self, where: str, item: dict) -> None:
        src, run = self.src, self.run
        kind = src.want(item["observation"], str, f"{where}.observation")
        if kind in SKIP_OBSERVATIONS:
            return
        at = to_timestamp(item.get("timestamp"))
        if "content" in item:
            output = src.text(item["content"], f"{where}.content")
        else:
            output = src.field(item, "message", str, where, default="")
        extras = src.field(item, "extras", dict, where, default={})
        exit_code = extras.get("exit_code")
        if isinstance(extras.get("metadata"), dict) and "exit_code" in extras["metadata"]:
            exit_code = extras["metadata"]["exit_code"]
        if kind == "run" and isinstance(extras.get("metadata"), dict):
            _check_strings(src, extras["metadata"], COMMAND_METADATA_TEXT, f"{where}.extras.metadata")
        exit_code = exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None
        is_error = kind in ("error", "user_rejected") or (exit_code is not None and exit_code > 0) or extras.get("error") is True
        metadata = item.get("tool_call_metadata")
        call_id, tool_name = None, ""
        if isinstance(metadata, dict) and isinstance(metadata.get("tool_call_id"), str):
            call_id = metadata["tool_call_id"]
            tool_name = metadata.get("function_name") if isinstance(metadata.get("function_name"), str) else ""
        elif _key(item.get("cause")) is not None:
            call_id = self.call_of_event.get(_key(item["cause"]))
        output = agent_observation(kind, output, extras, by_user=not isinstance(metadata, dict))
        pending = run.pending.get(call_id) if call_id is not None else None
        if call_id is not None:
            run.observe(output, call_id=call_id, tool_name=tool_name, is_error=is_error, exit_code=exit_code, at=at,
                        place=where, rebind=False)
        elif output:
            run.environment(output, at=at, place=where, is_error=is_error, exit_code=exit_code)
        rejected = pending[0] if pending is not None else run.last_action
        if kind == "user_rejected" and rejected is not None:
            run.reject(rejected, src.field(item, "content", str, where, default=""), at=at, place=where)

    def _condensation(self, where: str, item: dict, args: dict, at: str | None) -> None:
        summary = args.get("summary")
        if not isinstance(summary, str) or not summary:
            return
        forgotten = args.get("forgotten_event_ids")
        if isinstance(forgotten, list):
            forgotten = [_key(event_id) for event_id in forgotten]
        else:
            start, end = args.get("forgotten_events_start_id"), args.get("forgotten_events_end_id")
            inside = isinstance(start, int) and isinstance(end, int)
            forgotten = [k for k in self.versions_of_event if inside and isinstance(k, int) and start <= k <= end]
        versions = [v for event_id in forgotten for v in self.versions_of_event.get(event_id, [])]
        if versions:
            self.run.summarize(summary, replaces_from=min(versions), replaces_to=max(versions), at=at, place=where)


def agent_observation(kind: str, content: str, extras: dict, *, by_user: bool) -> str:
    """An observation's text as OpenHands' conversation memory sends it to the model.

    A command's result gets `CmdOutputObservation.to_agent_observation`'s additions (prefix,
    suffix, working directory, interpreter, exit code; from a command the user ran, a line
    saying so); an error and a user's rejection their markers; other kinds go as stored.
    """
    if kind == "run":
        metadata = extras.get("metadata") if isinstance(extras.get("metadata"), dict) else {}
        text = command_output(content, metadata, metadata.get("exit_code", extras.get("exit_code", -1)))
        return f"\nObserved result of command executed by user:\n{text}" if by_user else text
    if kind == "error":
        return f"{content}\n[Error occurred in processing last action]"
    if kind == "user_rejected":
        return f"OBSERVATION:\n{content}\n[Last action has been rejected by the user]"
    return content


def command_output(output: str, metadata: dict, exit_code: Any) -> str:
    """A shell command's result as OpenHands shows it to the model: the output between the
    PS1 metadata's prefix and suffix, then working directory, interpreter and exit code (-1,
    a command still running, is not shown). V0's `CmdOutputObservation.to_agent_observation`
    and V1's `TerminalObservation.to_llm_content` render it alike."""
    text = f"{metadata.get('prefix') or ''}{output}{metadata.get('suffix') or ''}"
    if metadata.get("working_dir"):
        text += f"\n[Current working directory: {metadata['working_dir']}]"
    if metadata.get("py_interpreter_path"):
        text += f"\n[Python interpreter: {metadata['py_interpreter_path']}]"
    if isinstance(exit_code, int) and not isinstance(exit_code, bool) and exit_code != -1:
        text += f"\n[Command finished with exit code {exit_code}]"
    return text


def _check_strings(src: Source, obj: dict, keys: tuple[str, ...], place: str) -> None:
    for key in keys:
        src.field(obj, key, str, place)


def _key(value: Any) -> Any:
    """An event id usable as a key: a number or text; anything else names no event."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _response(item: dict) -> dict | None:
    metadata = item.get("tool_call_metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("model_response"), dict):
        return metadata["model_response"]
    return None
