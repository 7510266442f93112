"""Long synthetic runs that summarize like the live agent, and the same runs as InnovatorBench node logs.

`threshold_run` builds a ReAct run whose context is summarized whenever it passes a token
threshold (the live agent's rule: `estimate_tokens` over the fold; `choose_cut`'s rule for
what goes). `write_node_log` writes a run as the directory of node files
InnovatorBench's agent keeps, in the layout `apollo_es.importers.node_log` reads:

- `root_<id>_<time>.json`: the task in its observation;
- `react_<id>_<time>.json`, one per step: `messages` is the full prompt of that step (the
  fold before the action, system prompt first), then `response`, `action`, `observation`;
- per summary: a `summarize` react node (no model, no usage) after the step that triggered
  it, a `summary_<id>_<time>.json` node with `summary_content` hung beside the summarized
  nodes (under the root: every summary replaces the older part from the task on), and a copy
  (`source: duplicate`) of every kept step under it, from which the next step continues;
  the prompt after a summary shows it as InnovatorBench does (an assistant message "After the
  last action, I have also made N actions ..." with the summary, then "OK, continue ...").

Tool results in the prompts are `json.dumps(observation)`, as InnovatorBench renders them, so
`threshold_run` writes each tool output as such a JSON observation: then the importer, which
takes a step's output from the later prompts that show it (or from `json.dumps` of the node's
observation for the last step), gives back exactly the recorded output.

Files are written one at a time; every prompt message is JSON-encoded once and spliced into
the files that show it, so writing costs what the bytes cost.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec

from apollo_es.tools import TOOL_SPECS
from bench._synthetic import _text
from events import (
    AgentActed,
    ContextSummarized,
    Event,
    HumanIntervened,
    RunStarted,
    ToolCall,
    ToolObserved,
    ToolSpec,
    Usage,
)
from projections.context import Context, Folder, Message, estimate_tokens, with_summary
from projections.summarization import PROMPT_ID, choose_cut

__all__ = ["NodeLogStats", "threshold_run", "write_node_log"]

MODEL = "synthetic-model"
_COMMANDS = (
    "python3 train.py --config configs/{n}.yaml",
    "python3 eval.py --checkpoint runs/ckpt-{n} --split dev",
    "tail -n 200 logs/train-{n}.log",
    "grep -n 'loss' logs/train-{n}.log | tail -n 80",
    "nvidia-smi && ls -la runs/ckpt-{n}",
)


# -- the run ----------------------------------------------------------------------------


def threshold_run(steps: int = 2_500, *, threshold: int = 100_000, seed: int = 0) -> list[Event]:
    """A ReAct run of `steps` actions with 1-4 KB observations, summarized like the live agent.

    Before each action, if the context's token estimate (`estimate_tokens` of the fold) is
    over `threshold`, a `ContextSummarized` replaces what the live summarizer's `choose_cut` picks (the
    older half, from the task's successor up to an assistant turn).
    Each action reports as input tokens the estimate of the prompt it was sent, so the
    estimate tracks the context the way it does in a live run. The fold is kept
    incrementally (`Folder`), never rebuilt. Tool outputs are InnovatorBench observations
    (`json.dumps` of a dict with the 1-4 KB `output`), see the module docstring.
    """
    rng = random.Random(seed)
    tools = [ToolSpec(**spec) for spec in TOOL_SPECS]
    events: list[Event] = []
    folder = Folder()

    def add(event: Event) -> None:
        events.append(event)
        version = len(events)
        folder.add(SimpleNamespace(stream_id="synthetic", version=version, event=event, event_id=f"e{version}"))

    add(RunStarted(task_id="synthetic", task=_text(rng, 200), system_prompt=_text(rng, 150), tools=tools,
                   model=MODEL, provider="openai", summary_threshold=threshold))
    started = datetime(2025, 9, 8, 14, 10, 0)
    for step in range(1, steps + 1):
        context = folder.context()
        tokens = estimate_tokens(context)
        cut = choose_cut(context) if context.last_usage is not None and tokens > threshold else None
        if cut is not None:
            summary = _text(rng, 400)
            event = ContextSummarized(
                summary=summary, replaces_from=cut[0], replaces_to=cut[1], tokens_before=tokens, model=MODEL,
                usage=Usage(input_tokens=tokens // 2, output_tokens=len(summary) // 4), prompt_id=PROMPT_ID,
            )
            event = msgspec.structs.replace(event, tokens_after=estimate_tokens(with_summary(context, event)))
            add(event)
            context = folder.context()
            tokens = estimate_tokens(context)
        command = rng.choice(_COMMANDS).format(n=step)
        call = ToolCall(id=f"call_{step:05d}", name="run_command", arguments={"command": command})
        text = _text(rng, rng.randint(10, 60))
        add(AgentActed(model=MODEL, text=text, tool_calls=[call], stop_reason="tool_calls",
                       usage=Usage(input_tokens=tokens, output_tokens=(len(text) + len(command)) // 4 + 10)))
        seconds = round(rng.uniform(0.2, 120.0), 1)
        observation = {
            "success": True,
            "message": f"Command `{command}` on 10.0.0.2 executed in {seconds} seconds. It is completed!",
            "observation_type": "command_run",
            "timestamp": (started + timedelta(seconds=30 * step)).isoformat(timespec="microseconds"),
            "exit_code": 0,
            "execution_time": seconds,
            "output": _text(rng, rng.randint(150, 600)),
        }
        add(ToolObserved(tool_call_id=call.id, tool_name=call.name, output=json.dumps(observation), exit_code=0,
                         duration_ms=seconds * 1000))
    return events


# -- the node log -----------------------------------------------------------------------

_SUMMARIZER_SYSTEM = (
    "You are summarizing the history of an AI research agent into a structured state snapshot. "
    "Call `internal_summarize`."
)
_SUMMARIZE_NOW = "</history>\n\n\n **You MUST use the `internal_summarize` action in this turn. No other actions are permitted.**\n\n"
_SUMMARY_INTRO = (
    "After the last action, I have also made {n} actions and get {n} observations.\n"
    "However, the context about the these actions and observations is too long. So I just summarize them. \n"
    "Here is the summary that maybe useful in the future about these actions and observations:\n\n{summary}\n"
)
_CONTINUE = (
    "OK, continue to finish your task based on the history.  You should using `list_sessions`, `check_session_idle` "
    "and `get_session_output`to list and check All session status first! If the session output is empty, do not check it twice"
)
_MARK = "@@messages@@"


@dataclass
class NodeLogStats:
    """What `write_node_log` wrote."""

    files: int = 0
    bytes: int = 0
    """Sum of the files' sizes (os.path.getsize)."""
    allocated_bytes: int = 0
    """Sum of the blocks the files occupy (st_blocks * 512), as `du` counts."""
    by_type: dict[str, int] = field(default_factory=dict)
    """Files per kind: root, react (steps), summarize, summary, duplicate."""
    bytes_by_type: dict[str, int] = field(default_factory=dict)
    root_id: str = ""


def _message(role: str, content: str = "", *, tool_call: dict | None = None, tool_result: dict | None = None) -> dict:
    return {"role": role, "content": content, "reasoning": None, "tool_call": tool_call, "tool_result": tool_result}


def _encode(message: dict) -> str:
    """A message as it appears inside the `messages` list of a node file (indent=2, nested once)."""
    return json.dumps(message, indent=2).replace("\n", "\n    ")


class _Writer:
    def __init__(self, directory: Path, run: RunStarted) -> None:
        self.directory, self.run = directory, run
        self.stats = NodeLogStats()
        self.clock = datetime(2025, 9, 8, 14, 10, 0)
        self.serial = 0

    def next_id(self) -> tuple[str, str]:
        self.serial += 1
        self.clock += timedelta(seconds=30, microseconds=1_000 + self.serial % 997)
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"apollo-es-bench/node/{self.serial}")), self.clock.isoformat(timespec="microseconds")

    def write(self, kind: str, node: dict, prompt: list[str]) -> None:
        """One node file; `prompt` holds already-encoded messages, spliced in at `messages`."""
        text = json.dumps({**node, "messages": _MARK} if "messages" in node else node, indent=2)
        messages = "[\n    " + ",\n    ".join(prompt) + "\n  ]" if prompt else "[]"
        text = text.replace(json.dumps(_MARK), messages, 1)
        stamp = node["timestamp"].replace(":", "-")
        path = self.directory / f"{node['node_type']}_{node['id']}_{stamp}.json"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        info = path.stat()
        self.stats.files += 1
        self.stats.bytes += info.st_size
        self.stats.allocated_bytes += info.st_blocks * 512
        self.stats.by_type[kind] = self.stats.by_type.get(kind, 0) + 1
        self.stats.bytes_by_type[kind] = self.stats.bytes_by_type.get(kind, 0) + info.st_size


def _observation(event: ToolObserved) -> dict:
    """The node's observation: the output itself when it is one (as `threshold_run` writes
    them), else the output wrapped in one (the importer then gives back `json.dumps` of it for
    a step no later prompt shows)."""
    try:
        parsed = json.loads(event.output)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    return {"success": not event.is_error, "message": event.output, "observation_type": "base",
            "exit_code": event.exit_code, "execution_time": event.duration_ms / 1000}


def _head(node_id: str, parent_id: str | None, timestamp: str, node_type: str, **rest: Any) -> dict:
    """A node's fields in InnovatorBench's order (messages is filled in by `_Writer.write`)."""
    return {"id": node_id, "parent_id": parent_id, "timestamp": timestamp, "node_type": node_type, "system_prompt": "",
            "messages": None, **rest}


def write_node_log(events: list[Event], directory: str | Path) -> NodeLogStats:
    """Write `events` (one stream, version = index + 1) as an InnovatorBench node-log directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run = events[0]
    assert isinstance(run, RunStarted)
    out = _Writer(directory, run)
    system = _encode(_message("system", run.system_prompt))
    rendered: dict[int, list[str]] = {}  # message version -> its encoded prompt message(s)
    replaced_count: dict[int, int] = {}  # summary version -> steps it replaced
    steps: dict[int, dict] = {}  # action version -> its node (for the copies under a summary)
    folder = Folder()

    root_id, root_time = out.next_id()
    out.stats.root_id = root_id
    out.write("root", {"id": root_id, "parent_id": None, "timestamp": root_time, "node_type": "root", "system_prompt": "",
                       "response": None, "source": "generate", "depth": 0,
                       "observation": {"success": True, "message": run.task, "observation_type": "base",
                                       "timestamp": root_time, "source": "user"},
                       "action": None}, [])
    tip_id, tip_depth = root_id, 0
    pending: dict | None = None  # the step whose observation is still to come

    def render(message: Message, event: Event) -> list[str]:
        if message.source == "summary":
            assert isinstance(event, ContextSummarized)
            n = replaced_count[message.version]
            return [_encode(_message("assistant", _SUMMARY_INTRO.format(n=n, summary=event.summary))),
                    _encode(_message("user", _CONTINUE))]
        if message.role == "assistant":
            call = message.tool_calls[0] if message.tool_calls else None
            tool_call = {"call_id": call.id, "name": call.name, "arguments": call.arguments} if call else None
            return [_encode(_message("assistant", message.content, tool_call=tool_call))]
        if message.role == "tool":
            return [_encode(_message("tool", tool_result={"call_id": message.tool_call_id, "name": message.tool_name,
                                                          "content": message.content}))]
        if message.source == "human":
            assert isinstance(event, HumanIntervened)
            return [_encode(_message("user", f"<real_user>{event.message}</real_user>"))]
        return [_encode(_message("user", message.content))]

    def encoded(message: Message) -> list[str]:
        if message.version not in rendered:
            rendered[message.version] = render(message, events[message.version - 1])
        return rendered[message.version]

    def prompt_of(context: Context) -> list[str]:
        return [system] + [text for m in context.messages for text in encoded(m)]

    for version, event in enumerate(events, start=1):
        if isinstance(event, AgentActed):
            context = folder.context()
            call = event.tool_calls[0]
            node_id, stamp = out.next_id()
            tip_depth += 1
            usage = {"input_tokens": event.usage.input_tokens, "output_tokens": event.usage.output_tokens,
                     "total_tokens": event.usage.input_tokens + event.usage.output_tokens,
                     "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "reasoning_tokens": 0}
            pending = {
                "node": _head(node_id, tip_id, stamp, "react",
                              response={"role": "assistant", "content": event.text, "reasoning": event.reasoning or None,
                                        "usage": usage, "model": event.model, "finish_reason": event.stop_reason,
                                        "tool_calls": [{"call_id": c.id, "name": c.name, "arguments": c.arguments}
                                                       for c in event.tool_calls]},
                              source="generate", depth=tip_depth, observation=None,
                              action={"call_id": call.id, "action_type": call.name, "thought": "",
                                      "description": f"The `{call.name}` tool.", **call.arguments,
                                      "security_risk": 0, "confirmation_state": "confirmed"}),
                "prompt": prompt_of(context),
            }
            tip_id = node_id
            steps[version] = pending
        elif isinstance(event, ToolObserved) and pending is not None:
            pending["node"]["observation"] = _observation(event)
            out.write("react", pending["node"], pending["prompt"])
            pending = None
        elif isinstance(event, ContextSummarized):
            context = folder.context()
            replaced = [m for m in context.messages if event.replaces_from <= m.version <= event.replaces_to]
            kept_steps = [m.version for m in context.messages if m.role == "assistant" and m.version > event.replaces_to]
            replaced_count[version] = sum(1 for m in replaced if m.role == "assistant")
            # the agent's summarize action, after the step that triggered it
            node_id, stamp = out.next_id()
            end_depth = tip_depth - len(kept_steps)
            out.write("summarize", _head(
                node_id, tip_id, stamp, "react",
                response={"role": "assistant", "content": "", "reasoning": None, "model": None, "finish_reason": None,
                          "tool_calls": [{"call_id": f"summarize_{version}", "name": "summarize",
                                          "arguments": {"start_summary_depth": 1, "end_summary_depth": end_depth}}]},
                source="generate", depth=tip_depth + 1, observation=None,
                action={"call_id": f"summarize_{version}", "action_type": "summarize", "thought": "",
                        "description": "The `summarize` tool.", "start_summary_depth": 1, "end_summary_depth": end_depth,
                        "security_risk": 0, "confirmation_state": "confirmed"}), [])
            # the summary, beside the summarized nodes: its request shows the replaced turns
            node_id, stamp = out.next_id()
            request = [_encode(_message("system", _SUMMARIZER_SYSTEM)), *encoded(context.messages[0])]
            request += [text for m in replaced for text in encoded(m)]
            request.append(_encode(_message("user", _SUMMARIZE_NOW)))
            usage = {"input_tokens": event.usage.input_tokens, "output_tokens": event.usage.output_tokens,
                     "total_tokens": event.usage.input_tokens + event.usage.output_tokens,
                     "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "reasoning_tokens": 0}
            out.write("summary", _head(
                node_id, root_id, stamp, "summary",
                response={"role": "assistant", "content": "", "reasoning": None, "usage": usage, "model": event.model,
                          "finish_reason": "tool_calls",
                          "tool_calls": [{"call_id": f"summary_{version}", "name": "internal_summarize",
                                          "arguments": {"summary_content": event.summary}}]},
                source="generate", depth=1, summary_content=event.summary), request)
            tip_id, tip_depth = node_id, 1
            # the kept steps, copied under the summary; the run continues from the last copy
            for kept in kept_steps:
                original = steps[kept]
                node_id, stamp = out.next_id()
                tip_depth += 1
                copy = {**original["node"], "id": node_id, "parent_id": tip_id, "timestamp": stamp,
                        "source": "duplicate", "depth": tip_depth}
                out.write("duplicate", copy, original["prompt"])
                tip_id = node_id
            for old in [v for v in steps if v < (kept_steps[0] if kept_steps else version)]:
                del steps[old]  # replaced steps are never copied again
        folder.add(SimpleNamespace(stream_id="synthetic", version=version, event=event, event_id=f"e{version}"))
    if pending is not None:  # an action without its observation
        out.write("react", pending["node"], pending["prompt"])
    return out.stats
