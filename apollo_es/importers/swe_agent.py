"""SWE-agent `.traj` files: the `history` messages become a run whose context is what the
agent's model was sent.

Both kinds of trajectory are read:
- function calling: assistant messages carry OpenAI-style `tool_calls` (a list, or the list
  as JSON text) and tool messages name the calls they answer in `tool_call_ids`;
- free text (thought + fenced command, SWE-agent 0.x and 1.x "thought_action" parsing): the
  model wrote its command inside its text. The action is imported as the assistant *text* the
  model produced, with no tool call (SWE-agent's parsed `action` is not a call the model
  made; many are interface commands such as `edit` or `submit`, not shell), and the result as
  the user message the model was sent. The training projection thus trains the text the model
  actually wrote.

Mapping: the leading system messages are the system prompt; `is_demo` messages before the
task are `RunStarted.demonstrations` (shown before the task, never trained); the first other
user message is the task, verbatim (the instance template with the issue in it). Assistant
messages are `AgentActed` (reasoning from `reasoning_content`/`thinking_blocks`), tool
messages `ToolObserved`, other user messages environment feedback (a person's message only
when wrapped in a real-user tag). From `replay_config`: the model name, temperature and
top_p (`sampling`), the instance id (`task_id`), and the history processors: a
`last_n_observations` processor becomes `RunStarted.observation_window`, so the fold elides
old observations as SWE-agent did. `info.exit_status` and `info.submission` give
`RunFinished` (none when the file has no exit status: SWE-agent rewrites the file after every
step, so such a file is a run in progress, and importing it again once it grew appends the
rest); `info.model_stats` (cost, tokens,
calls: run totals, SWE-agent keeps no per-call figures) is recorded on the last action and
said so in `import_notes`. A file with `attempts` (the retry loop) becomes one stream per
attempt, `<stream>/attempt-<n>`.

The prompts SWE-agent recorded (`trajectory[i].query` since 1.1: the input of step i;
`trajectory[i].messages` before: the input of the step after i) are compared with the fold
(`importers.fidelity`). What cannot match is named in `import_notes`:
- a step SWE-agent re-asked after a rejected answer (format error, blocked command): that
  answer and the error message were in that one prompt only, and are not part of the run;
- history processors other than `last_n_observations` (`closed_window`, `remove_regex`, ...)
  are not applied; `cache_control` changes no text and is ignored;
- a file without `replay_config` (0.x) does not say which processors it used;
- in-history demonstrations with assistant turns are shown as user messages.
Tool messages whose `tool_call_ids` name no pending call (hand-edited demonstrations reuse
stale ids) answer the oldest pending call. SWE-agent records no per-message timestamps or
tool schemas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from apollo_es.importers.base import (
    DEFAULT_REAL_USER_TAGS,
    FilePlan,
    PlannedEvent,
    RecordedPrompt,
    RunBuilder,
    Source,
    StreamPlan,
    count,
    default_stream_id,
    money,
    openai_tool_calls,
    reasoning_of,
)
from events import AgentActed, RunFinished, ToolObserved, Usage
from events.kinds import ObservationWindow

FORMAT = "swe-agent"

_EXIT_STATUS = {
    "submitted": "finished",
    "exit_cost": "budget_exhausted",
    "exit_context": "budget_exhausted",
    "exit_total_execution_time": "budget_exhausted",
    "exit_api_calls": "budget_exhausted",
    "exit_forfeit": "stopped",
}
TEXT_NEUTRAL_PROCESSORS = frozenset({"default", "cache_control"})
"""History processors that change no message text."""


def parse(path: str | Path, *, stream_id: str | None = None, real_user_tags: tuple[str, ...] = DEFAULT_REAL_USER_TAGS) -> FilePlan:
    src = Source(path)
    data = src.want(src.load_json(), dict, "$", "a SWE-agent trajectory object")
    base = stream_id or default_stream_id(FORMAT, path)
    plan = FilePlan(FORMAT, str(path), [])
    attempts = data.get("attempts")
    if "history" not in data and isinstance(attempts, list) and attempts:
        for i, attempt in enumerate(attempts):
            attempt = src.want(attempt, dict, f"$.attempts[{i}]", "an attempt object")
            plan.streams.append(_Run(src, attempt, f"$.attempts[{i}]", f"{base}/attempt-{i + 1}", real_user_tags, data).build())
    else:
        plan.streams.append(_Run(src, data, "$", base, real_user_tags, data).build())
    return plan


class _Run:
    """One SWE-agent attempt: its history, trajectory steps and configuration."""

    def __init__(self, src: Source, data: dict, place: str, stream_id: str, tags: tuple[str, ...], outer: dict) -> None:
        self.src, self.data, self.place = src, data, place
        history = src.field(data, "history", list, place, required=True)
        self.messages = []
        for i, message in enumerate(history):
            message = src.want(message, dict, f"{place}.history[{i}]", "a message object")
            src.field(message, "role", str, f"{place}.history[{i}]", required=True)
            self.messages.append(message)
        self.trajectory = src.field(data, "trajectory", list, place, default=[])
        self.info = src.field(data, "info", dict, place, default={})
        self.config = _config(src, data.get("replay_config", outer.get("replay_config")), f"{place}.replay_config")
        self.agent = self.config.get("agent") if isinstance(self.config.get("agent"), dict) else {}
        self.outer = outer
        self.stream = StreamPlan(stream_id)
        self.run = RunBuilder(self.stream, model=_model_name(self.agent), real_user_tags=tags, annotator=f"{FORMAT}:user")
        self.function_calling = any(m["role"] == "assistant" and m.get("tool_calls") for m in self.messages)

    def build(self) -> StreamPlan:
        first = self._start()
        actions = []
        for i in range(first, len(self.messages)):
            action = self._message(i)
            if action is not None:
                actions.append(action)
        steps = _match_steps(self.src, self.trajectory, self.place, [a.event.text for a in actions])
        self._record_steps(actions, steps)
        self._record_model_stats(actions)
        status = self.info.get("exit_status")
        if isinstance(status, str) and status:
            mapped = "finished" if status.startswith("submitted") else _EXIT_STATUS.get(status, "failed")
            submission = self.info.get("submission") if isinstance(self.info.get("submission"), str) else ""
            self.run.finish(mapped, final_answer=submission, error="" if mapped == "finished" else status, place=f"{self.place}.info")
        return self.stream

    def _start(self) -> int:
        """Record `RunStarted` from the system messages, demonstrations and task; the index after them."""
        src, messages, place = self.src, self.messages, self.place
        i, system, demonstrations = 0, [], []
        while i < len(messages) and messages[i]["role"] == "system":
            system.append(src.text(messages[i].get("content"), f"{place}.history[{i}].content"))
            i += 1
        while i < len(messages) and messages[i].get("is_demo") is True:
            if messages[i]["role"] != "user":
                self.stream.notes.append(f"{place}.history[{i}]: a {messages[i]['role']} demonstration turn is shown as a user message")
            demonstrations.append(src.text(messages[i].get("content"), f"{place}.history[{i}].content"))
            i += 1
        task = ""
        if i < len(messages) and messages[i]["role"] == "user":
            task = src.text(messages[i].get("content"), f"{place}.history[{i}].content")
            i += 1
        problem = self.config.get("problem_statement") if isinstance(self.config.get("problem_statement"), dict) else {}
        task_id = next((v for v in (problem.get("id"), self.data.get("instance_id"), self.info.get("instance_id"))
                        if isinstance(v, str) and v), self.stream.stream_id.rsplit("/", 1)[-1])
        environment = self.data.get("environment") or self.outer.get("environment")
        self.run.start(
            task_id=task_id, task=task, system_prompt="\n\n".join(system), model=self.run.model,
            environment=environment if isinstance(environment, str) else "", tags=["imported", FORMAT],
            place=f"{place}.history", sampling=_sampling(self.agent), demonstrations=demonstrations,
            observation_window=self._observation_window(),
        )
        return i

    def _observation_window(self) -> ObservationWindow | None:
        """The `last_n_observations` processor of the recorded config; notes for the others."""
        where = f"{self.place}.replay_config.agent"
        if not self.config:
            self.stream.notes.append("the file has no replay_config, so its history processors are unknown and none is applied")
            return None
        raw = self.agent.get("history_processors", self.agent.get("history_processor"))
        processors = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
        window = None
        for n, processor in enumerate(processors):
            kind = processor.get("type") if isinstance(processor, dict) else None
            if kind == "last_n_observations":
                keep, polling = count(processor.get("n")), count(processor.get("polling", 1))
                if not keep or not polling:
                    self.src.fail(f"{where}.history_processors[{n}]", "last_n_observations needs positive whole numbers n and polling")
                window = ObservationWindow(keep_last=keep, polling=polling)
            elif kind not in TEXT_NEUTRAL_PROCESSORS:
                self.stream.notes.append(f"history processor {kind!r} is not applied: apollo-es does not implement it")
        return window

    def _message(self, i: int) -> PlannedEvent | None:
        """Record history message `i`; the planned action if it is one."""
        src, run = self.src, self.run
        message, where = self.messages[i], f"{self.place}.history[{i}]"
        role = message["role"]
        content = src.text(message.get("content"), f"{where}.content")
        if role == "assistant":
            reasoning, signature = reasoning_of(message)
            calls = []
            if self.function_calling and message.get("tool_calls"):
                calls = openai_tool_calls(src, message["tool_calls"], f"{where}.tool_calls", f"swe-agent-{i}")
            return run.act(text=content, reasoning=reasoning, reasoning_signature=signature, tool_calls=calls, place=where)
        if role == "tool":
            ids = _call_ids(src, message, where)
            run.observe(content, call_id=ids[0] if ids else None, place=where)
        elif role in ("user", "system"):
            run.user(content, place=where)
        else:
            src.fail(f"{where}.role", f"unknown role {role!r} (expected system, user, assistant or tool)")
        return None

    def _record_steps(self, actions: list[PlannedEvent], steps: list[_Step | None]) -> None:
        """Durations and recorded prompts of the trajectory steps that produced `actions`."""
        for action, step in zip(actions, steps):
            if step is None:
                continue
            if step.seconds is not None:
                self._set_duration(action, step.seconds * 1000)
            if step.query is not None:
                self.stream.prompts.append(RecordedPrompt(
                    version=self._version(action) - 1, messages=step.query, place=f"{step.place}.query",
                    known_difference=f"SWE-agent re-asked the model {step.requeries} time(s); the rejected answer and the error "
                    "were in this prompt only" if step.requeries else "",
                ))
            if step.messages is not None:  # before SWE-agent 1.1: the input of the next step
                self.stream.prompts.append(RecordedPrompt(version=self._turn_end(action), messages=step.messages,
                                                          place=f"{step.place}.messages"))

    def _record_model_stats(self, actions: list[PlannedEvent]) -> None:
        stats = self.info.get("model_stats") if isinstance(self.info.get("model_stats"), dict) else {}
        sent, received, calls = count(stats.get("tokens_sent")), count(stats.get("tokens_received")), count(stats.get("api_calls"))
        cost = money(stats.get("instance_cost"))
        if not actions or not (sent or received or cost):
            return
        last = actions[-1]
        last.event = msgspec.structs.replace(last.event, usage=Usage(input_tokens=sent or 0, output_tokens=received or 0),
                                             cost_usd=cost)
        self.stream.notes.append(
            f"usage and cost of the last action are the run's totals from info.model_stats ({calls or 0} model calls); "
            "SWE-agent records no per-call figures")

    def _version(self, planned: PlannedEvent) -> int:
        return self.stream.first_version + self.stream.events.index(planned)

    def _turn_end(self, action: PlannedEvent) -> int:
        """The version of the last event of `action`'s turn (before the next action or the end)."""
        events = self.stream.events
        index = events.index(action) + 1
        while index < len(events) and not isinstance(events[index].event, (AgentActed, RunFinished)):
            index += 1
        return self.stream.first_version + index - 1

    def _set_duration(self, action: PlannedEvent, ms: float) -> None:
        for planned in self.stream.events:
            if planned.causation is action and isinstance(planned.event, ToolObserved):
                planned.event = msgspec.structs.replace(planned.event, duration_ms=ms)
                return


class _Step(msgspec.Struct, kw_only=True):
    """The trajectory step whose answer became an action."""

    place: str
    seconds: float | None = None
    query: list[tuple[str, str]] | None = None
    messages: list[tuple[str, str]] | None = None
    requeries: int = 0
    """Steps before it whose answers SWE-agent rejected and asked again."""


def _match_steps(src: Source, trajectory: list, place: str, responses: list[str]) -> list[_Step | None]:
    """For each action (by its text), the trajectory step that produced it.

    SWE-agent appends a step for every answer, also for answers it rejected and re-asked
    (those never reach the history); a step is an action's when its `response` is the
    action's text. A hand-written trajectory with other responses matches by position when
    the counts agree.
    """
    steps = [(f"{place}.trajectory[{i}]", src.want(raw, dict, f"{place}.trajectory[{i}]", "a trajectory step object"))
             for i, raw in enumerate(trajectory)]
    if len(steps) == len(responses) and not any(step.get("response") in responses for _, step in steps):
        return [_step(src, step, where, 0) for where, step in steps]
    out: list[_Step | None] = [None] * len(responses)
    n, requeries = 0, 0
    for where, step in steps:
        if n == len(responses):
            break
        if step.get("response") == responses[n]:
            out[n] = _step(src, step, where, requeries)
            n, requeries = n + 1, 0
        else:
            requeries += 1
    return out


def _step(src: Source, step: dict, where: str, requeries: int) -> _Step:
    seconds = step.get("execution_time")
    if isinstance(seconds, str):
        try:
            seconds = float(seconds)
        except ValueError:
            seconds = None
    seconds = money(seconds)
    return _Step(place=where, seconds=seconds, query=_prompt(src, step.get("query"), f"{where}.query"),
                 messages=_prompt(src, step.get("messages"), f"{where}.messages"), requeries=requeries)


def _prompt(src: Source, raw: Any, place: str) -> list[tuple[str, str]] | None:
    """A recorded prompt as (role, text) pairs; None when absent (`[{}]` is SWE-agent's empty default)."""
    if raw is None or raw == [{}]:
        return None
    raw = src.want(raw, list, place)
    out = []
    for i, message in enumerate(raw):
        message = src.want(message, dict, f"{place}[{i}]", "a message object")
        role = src.field(message, "role", str, f"{place}[{i}]", required=True)
        out.append((role, src.text(message.get("content"), f"{place}[{i}].content")))
    return out


def _config(src: Source, raw: Any, place: str) -> dict:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            src.fail(place, "is text that is not JSON")
    return raw if isinstance(raw, dict) else {}


def _model_config(agent: dict) -> dict:
    return agent.get("model") if isinstance(agent.get("model"), dict) else {}


def _model_name(agent: dict) -> str:
    model = _model_config(agent)
    return next((model[key] for key in ("name", "model_name") if isinstance(model.get(key), str)), "")


def _sampling(agent: dict) -> dict[str, float]:
    model = _model_config(agent)
    return {key: float(model[key]) for key in ("temperature", "top_p") if money(model.get(key)) is not None}


def _call_ids(src: Source, message: dict, where: str) -> list[str]:
    raw = message.get("tool_call_ids")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raw = [raw]
    if raw is None:
        raw = [message["tool_call_id"]] if message.get("tool_call_id") is not None else []
    raw = src.want(raw, list, f"{where}.tool_call_ids")
    return [src.want(x, str, f"{where}.tool_call_ids[{n}]") for n, x in enumerate(raw)]
