"""Importers: real SWE-agent and OpenHands files, an InnovatorBench node log, OpenAI JSONL.

For each source the context fold at the last step must reproduce the source conversation
(roles, contents, tool calls), modulo the normalizations each importer module documents;
importing twice must add nothing; a malformed file must import nothing and name the file,
the place and the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from apollo_es import EventStore
from apollo_es.cli import cli
from apollo_es.importers import TrajectoryImportError, detect_format, import_paths, read_trajectory
from projections.context import fold, summary_text
from events import AgentActed, BranchCreated, ContextSummarized, HumanIntervened, RunFinished, RunStarted, ToolObserved

HERE = Path(__file__).parent
DATA = HERE / "data" / "importers"
NODE_LOG = DATA / "innovatorbench-run"
OPENAI_FILE = DATA / "openai-conversations.jsonl"


def _trajectories() -> Path | None:
    for candidate in (HERE.parent.parent / "shared" / "data" / "trajectories", HERE.parent / "examples" / "trajectories"):
        if (candidate / "swe-agent").is_dir() and (candidate / "openhands").is_dir():
            return candidate
    return None


TRAJECTORIES = _trajectories()
needs_real_files = pytest.mark.skipif(TRAJECTORIES is None, reason="the real trajectory files are not available")
SWE_FILES = ["function_calling_simple.traj", "marshmallow-1867.function_calling.traj", "marshmallow-1867.default.traj"]
OPENHANDS_FILES = ["basic_interactions.json", "wrong_initial_state.json"]


@pytest.fixture()
def store(tmp_path):
    with EventStore(tmp_path / "apollo.db") as s:
        yield s


def count_events(store: EventStore) -> int:
    return store.stats()["events"]


def conversation(ctx) -> list[tuple]:
    """The fold's messages as (role, content, [(tool name, arguments)])."""
    return [(m.role, m.content, [(c.name, c.arguments) for c in m.tool_calls]) for m in ctx.messages]


def human(text: str) -> str:
    return f"<real_user_message>\n{text}\n</real_user_message>"


# -- SWE-agent ---------------------------------------------------------------------------


def swe_expected(data: dict) -> tuple[str, list[tuple]]:
    """What SWE-agent sent its model after the last step: the history, with old observations
    elided as the file's `last_n_observations` processor says (SWE-agent's own algorithm,
    over its own `message_type` marks), tool calls only where the model made them."""
    history = data["history"]
    system = "\n\n".join(m["content"] for m in history if m["role"] == "system")
    config = data.get("replay_config") or {}
    processor = (config.get("agent") or {}).get("history_processor") or {}
    observations = [i for i, m in enumerate(history) if m.get("message_type") == "observation" and not m.get("is_demo")]
    elided = set(observations[1:max(0, len(observations) - processor["n"])]) if processor.get("type") == "last_n_observations" else set()
    out = []
    for i, m in enumerate(history):
        if m["role"] == "system":
            continue
        content = f"Old environment output: ({len(m['content'].splitlines())} lines omitted)" if i in elided else m["content"]
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m.get("tool_calls") or []]
        out.append((m["role"], content, calls))
    return system, out


@needs_real_files
@pytest.mark.parametrize("name", SWE_FILES)
def test_swe_agent_fold_reproduces_the_history(store, name):
    path = TRAJECTORIES / "swe-agent" / name
    data = json.loads(path.read_text())
    [report] = import_paths(store, "swe-agent", [path])
    stream_id = f"swe-agent/{path.stem}"
    assert [s.stream_id for s in report.streams] == [stream_id]
    recorded = store.read(stream_id)
    assert report.added == len(recorded) and report.present == 0
    assert {r.actor for r in recorded} == {"import:swe-agent"}
    ctx = fold(recorded)
    system, expected = swe_expected(data)
    assert ctx.system == system
    assert conversation(ctx) == expected
    # every tool result answers a call of the action before it
    for before, message in zip(ctx.messages, ctx.messages[1:]):
        if message.role == "tool":
            assert message.tool_call_id in {c.id for c in before.tool_calls}
    # a tool result points at its action
    actions = {r.event_id for r in recorded if isinstance(r.event, AgentActed)}
    assert all(r.causation_id in actions for r in recorded if isinstance(r.event, ToolObserved) and r.event.tool_call_id)
    info = data.get("info", {})
    if info.get("exit_status"):
        assert isinstance(recorded[-1].event, RunFinished)
        assert recorded[-1].event.status == "finished" and recorded[-1].event.final_answer == info["submission"]
    else:  # a run in progress: importing it again once it grew appends the rest
        assert not isinstance(recorded[-1].event, RunFinished)
    assert store.verify().ok
    # importing again adds nothing
    [again] = import_paths(store, "swe-agent", [path])
    assert (again.added, again.present) == (0, len(recorded))
    assert len(store.read(stream_id)) == len(recorded)


@needs_real_files
def test_swe_agent_keeps_model_durations_and_the_free_text_answer(store):
    path = TRAJECTORIES / "swe-agent" / "marshmallow-1867.default.traj"
    import_paths(store, "swe-agent", [path])
    events = [r.event for r in store.read("swe-agent/marshmallow-1867.default")]
    first_action = next(e for e in events if isinstance(e, AgentActed))
    assert first_action.tool_calls == [] and first_action.text.endswith("```\nls -F\n```")
    path = TRAJECTORIES / "swe-agent" / "marshmallow-1867.function_calling.traj"
    import_paths(store, "swe-agent", [path])
    recorded = store.read("swe-agent/marshmallow-1867.function_calling")
    assert recorded[0].event.model == "gpt-4o" and recorded[0].event.task_id
    observed = [r.event for r in recorded if isinstance(r.event, ToolObserved)]
    assert observed[0].duration_ms == pytest.approx(238.73373, rel=1e-4)


@needs_real_files
def test_a_file_that_grew_adds_only_its_tail(store, tmp_path):
    source = TRAJECTORIES / "swe-agent" / "marshmallow-1867.function_calling.traj"
    data = json.loads(source.read_text())
    short = dict(data, history=data["history"][:8], trajectory=data["trajectory"][:3], info={})  # three steps so far
    partial = tmp_path / "partial.traj"
    partial.write_text(json.dumps(short))
    [first] = import_paths(store, "swe-agent", [partial], stream_id="swe/grow")
    [second] = import_paths(store, "swe-agent", [source], stream_id="swe/grow")
    assert first.added == 7 and second.present == 7 and second.added == second.streams[0].events - 7
    assert store.verify().ok


def test_swe_agent_variants_blocks_thinking_demos_and_attempts(store, tmp_path):
    """SWE-agent 1.x writes content as blocks, tool calls as lists and keeps thinking blocks;
    0.x puts a demonstration before the issue; the retry loop writes `attempts`."""
    attempt = {
        "history": [
            {"role": "system", "content": [{"type": "text", "text": "You are SWE-agent."}], "message_type": "system_prompt"},
            {"role": "user", "content": "Here is a demonstration ...", "is_demo": True, "agent": "primary"},
            {"role": "user", "content": [{"type": "text", "text": "Fix issue #1", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": "Look first.", "thought": "Look first.", "action": "ls",
             "thinking_blocks": [{"type": "thinking", "thinking": "The repo layout matters.", "signature": "sig-1"}],
             "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "bash", "arguments": {"command": "ls"}}}]},
            {"role": "tool", "content": [{"type": "text", "text": "src\ntests"}], "tool_call_ids": ["t1"]},
            {"role": "assistant", "content": "Oops, no call."},
            {"role": "user", "content": "Your output could not be parsed."},
        ],
        "trajectory": [{"execution_time": 0.5}],
        "info": {"exit_status": "exit_cost", "submission": None},
    }
    path = tmp_path / "retry.traj"
    path.write_text(json.dumps({"attempts": [attempt, attempt], "replay_config": json.dumps({"agent": {"model": {"name": "claude-x"}}})}))
    [report] = import_paths(store, "auto", [path])
    assert [s.stream_id for s in report.streams] == ["swe-agent/retry/attempt-1", "swe-agent/retry/attempt-2"]
    recorded = store.read("swe-agent/retry/attempt-1")
    ctx = fold(recorded)
    assert ctx.system == "You are SWE-agent." and ctx.run.model == "claude-x"
    assert conversation(ctx) == [
        ("user", "Here is a demonstration ...", []), ("user", "Fix issue #1", []),
        ("assistant", "Look first.", [("bash", {"command": "ls"})]), ("tool", "src\ntests", []),
        ("assistant", "Oops, no call.", []), ("user", "Your output could not be parsed.", [])]
    assert ctx.run.demonstrations == ["Here is a demonstration ..."] and ctx.run.task == "Fix issue #1"
    action = recorded[1].event
    assert action.reasoning == "The repo layout matters." and action.reasoning_signature == "sig-1"
    assert recorded[2].event.duration_ms == 0.0  # two actions, one unmatched trajectory step: durations unknown
    finished = recorded[-1].event
    assert finished.status == "budget_exhausted" and finished.error == "exit_cost"


# -- OpenHands ---------------------------------------------------------------------------


def openhands_expected(events: list[dict]) -> list[tuple]:
    """What OpenHands' conversation memory sent: people's messages as plain user turns, a
    command's result with `to_agent_observation`'s additions."""
    out, last_response = [], None
    for e in events:
        if e.get("action") == "message" and e.get("source") == "user":
            out.append(("user", e["args"]["content"], []))
        elif "action" in e and e["action"] not in ("system", "change_agent_state", "recall", "null"):
            response = (e.get("tool_call_metadata") or {}).get("model_response")
            if response is None:
                out.append(("assistant", e["args"]["content"], []))
            elif response["id"] != last_response:
                message = response["choices"][0]["message"]
                calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]
                out.append(("assistant", message["content"] or "", calls))
                last_response = response["id"]
        elif e.get("observation") == "run":
            meta = e["extras"]["metadata"]
            out.append(("tool", f"{meta['prefix']}{e['content']}{meta['suffix']}\n[Current working directory: {meta['working_dir']}]"
                        f"\n[Python interpreter: {meta['py_interpreter_path']}]\n[Command finished with exit code {meta['exit_code']}]", []))
        elif e.get("observation") not in (None, "agent_state_changed", "null", "recall"):
            out.append(("tool", e["content"], []))
    return out


@needs_real_files
@pytest.mark.parametrize("name", OPENHANDS_FILES)
def test_openhands_fold_reproduces_the_conversation(store, name):
    path = TRAJECTORIES / "openhands" / name
    events = json.loads(path.read_text())
    [report] = import_paths(store, "openhands", [path])
    stream_id = f"openhands/{path.stem}"
    recorded = store.read(stream_id)
    assert report.added == len(recorded)
    assert {r.actor for r in recorded} == {"import:openhands"}
    ctx = fold(recorded)
    assert conversation(ctx) == openhands_expected(events)
    # timestamps are the source's, in the store's format
    assert recorded[0].recorded_at == events[0]["timestamp"] + "Z"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r.recorded_at) for r in recorded)
    # model ids and usage from the raw responses
    responses = [e["tool_call_metadata"]["model_response"] for e in events if e.get("tool_call_metadata")]
    actions = [r.event for r in recorded if isinstance(r.event, AgentActed)]
    assert responses[0]["model"] in {a.model for a in actions}
    assert any(a.usage.input_tokens == responses[0]["usage"]["prompt_tokens"] for a in actions)
    assert isinstance(recorded[-1].event, RunFinished) and recorded[-1].event.status == "finished"
    assert store.verify().ok
    [again] = import_paths(store, "openhands", [path])
    assert again.added == 0 and again.present == len(recorded)


@needs_real_files
def test_openhands_keeps_exit_codes_and_people(store):
    import_paths(store, "openhands", [TRAJECTORIES / "openhands" / "wrong_initial_state.json"])
    observed = [r.event for r in store.read("openhands/wrong_initial_state") if isinstance(r.event, ToolObserved)]
    assert [o.tool_name for o in observed] == ["str_replace_editor", "execute_bash", "str_replace_editor"]
    assert observed[1].exit_code == 0 and not observed[1].is_error
    import_paths(store, "openhands", [TRAJECTORIES / "openhands" / "basic_interactions.json"])
    people = [r.event for r in store.read("openhands/basic_interactions") if isinstance(r.event, HumanIntervened)]
    assert [p.message for p in people] == ["No, I mean by Goldbach's conjecture!", "Finish please"]
    assert all(p.kind == "guidance" for p in people)


def test_openhands_variants_pairs_history_object_and_missing_raw_response(store, tmp_path):
    events = [
        {"id": 0, "timestamp": "2024-06-01T10:00:00", "source": "user", "action": "message", "args": {"content": "list files"}},
        {"id": 1, "timestamp": "2024-06-01T10:00:02", "source": "agent", "action": "run",
         "args": {"command": "ls", "thought": "Listing.", "is_input": False, "hidden": False}},
        {"id": 2, "timestamp": "2024-06-01T10:00:03", "source": "agent", "observation": "run", "cause": 1, "content": "a.txt",
         "extras": {"command": "ls", "exit_code": 2}},
        {"id": 3, "source": "agent", "action": "finish", "args": {"final_thought": "Done: a.txt", "outputs": {}}},
    ]
    pairs = {"instance_id": "demo-1", "instruction": "list files", "history": [[events[0], {"id": 9, "observation": "null", "content": ""}],
                                                                              [events[1], events[2]], [events[3], {"observation": "null"}]]}
    path = tmp_path / "output.json"
    path.write_text(json.dumps(pairs))
    [report] = import_paths(store, "openhands", [path])
    recorded = store.read("openhands/output")
    assert recorded[0].event.task == "list files" and recorded[0].event.task_id == "demo-1"
    action = recorded[1].event
    assert action.text == "Listing." and action.tool_calls[0].name == "run"
    assert action.tool_calls[0].arguments == {"command": "ls", "is_input": False}
    assert recorded[2].event.tool_call_id == action.tool_calls[0].id and recorded[2].event.exit_code == 2 and recorded[2].event.is_error
    assert isinstance(recorded[-1].event, RunFinished) and recorded[-1].event.final_answer == "Done: a.txt"


def test_openhands_system_prompt_skipped_events_and_condensation(store, tmp_path):
    response = {"id": "r1", "model": "claude-y", "choices": [{"finish_reason": "tool_calls", "message": {
        "content": [{"type": "text", "text": "Two reads."}], "reasoning_content": "Read both.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "str_replace_editor", "arguments": json.dumps({"command": "view", "path": "/a"})}},
                       {"id": "c2", "type": "function", "function": {"name": "str_replace_editor", "arguments": json.dumps({"command": "view", "path": "/b"})}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 64}}}
    meta = {"function_name": "str_replace_editor", "model_response": response, "total_calls_in_response": 2}
    events = [
        {"id": 0, "timestamp": "2025-01-20T20:29:13.5", "source": "environment", "observation": "agent_state_changed", "content": "", "extras": {}},
        {"id": 1, "source": "agent", "action": "system", "args": {"content": "You are OpenHands.", "tools": [
            {"type": "function", "function": {"name": "str_replace_editor", "description": "View and edit files.",
                                              "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]}},
        {"id": 2, "source": "user", "action": "message", "args": {"content": "Compare /a and /b"}},
        {"id": 3, "source": "user", "observation": "null", "cause": 2, "content": ""},
        {"id": 4, "source": "agent", "action": "recall", "args": {"query": "Compare"}},
        {"id": 5, "source": "agent", "action": "read", "args": {"path": "/a", "thought": "Two reads."}, "tool_call_metadata": {**meta, "tool_call_id": "c1"},
         "llm_metrics": {"response_latencies": [{"response_id": "r1", "latency": 1.5}]}},
        {"id": 6, "source": "agent", "action": "read", "args": {"path": "/b", "thought": ""}, "tool_call_metadata": {**meta, "tool_call_id": "c2"}},
        {"id": 7, "source": "agent", "observation": "read", "cause": 5, "content": "A", "tool_call_metadata": {**meta, "tool_call_id": "c1"}},
        {"id": 8, "source": "agent", "observation": "read", "cause": 6, "content": "B", "tool_call_metadata": {**meta, "tool_call_id": "c2"}},
        {"id": 9, "source": "agent", "action": "condensation", "args": {"forgotten_event_ids": [5, 6, 7], "summary": "Read /a (A)."}},
        {"id": 10, "source": "agent", "action": "message", "args": {"content": "They differ."}},
    ]
    path = tmp_path / "gui.json"
    path.write_text(json.dumps(events))
    import_paths(store, "openhands", [path])
    recorded = store.read("openhands/gui")
    started = recorded[0].event
    assert started.system_prompt == "You are OpenHands." and [t.name for t in started.tools] == ["str_replace_editor"]
    assert started.task == "Compare /a and /b" and started.model == "claude-y"
    assert [r.kind for r in recorded] == ["RunStarted", "AgentActed", "ToolObserved", "ToolObserved", "ContextSummarized", "AgentActed", "RunFinished"]
    assert recorded[-1].event.status == "imported"  # the file does not say how the run ended
    action = recorded[1].event
    assert [c.id for c in action.tool_calls] == ["c1", "c2"] and action.reasoning == "Read both." and action.latency_ms == 1500
    assert action.usage.input_tokens == 100 and action.usage.cache_read_tokens == 64 and action.text == "Two reads."
    summarized = recorded[4].event
    assert (summarized.replaces_from, summarized.replaces_to) == (2, 3)
    assert conversation(fold(recorded)) == [("user", "Compare /a and /b", []), ("user", summary_text("Read /a (A)."), []),
                                            ("tool", "B", []), ("assistant", "They differ.", [])]


# -- InnovatorBench node logs -----------------------------------------------------------


def load_nodes() -> dict[str, dict]:
    nodes = [json.loads(p.read_text()) for p in sorted(NODE_LOG.glob("*.json"))]
    return {n["id"]: n for n in nodes}


def node_by_call(nodes: dict, call_id: str) -> dict:
    return next(n for n in nodes.values() if n.get("source") == "generate" and n["response"]
                and n["response"]["tool_calls"] and n["response"]["tool_calls"][0]["call_id"] == call_id)


def prompt_expected(prompt: list[dict], summary: str | None) -> list[tuple]:
    """A node's prompt under the node-log normalizations: task aside, summary block as one
    summary message, real-user messages in apollo-es's tags, tool results by content."""
    out, i = [], 2
    while i < len(prompt):
        m = prompt[i]
        if summary is not None and summary in (m["content"] or ""):
            out.append(("user", summary_text(summary), []))
            i += 2  # the assistant summary message and the user "OK, continue" message
            continue
        if m["role"] == "assistant":
            call = m["tool_call"]
            out.append(("assistant", m["content"] or "", [(call["name"], call["arguments"])] if call else []))
        elif m["role"] == "tool":
            out.append(("tool", m["tool_result"]["content"], []))
        else:
            tagged = re.fullmatch(r"<real_user>(.*)</real_user>", m["content"], re.S)
            out.append(("user", human(tagged.group(1)) if tagged else m["content"], []))
        i += 1
    return out


def without_task(ctx) -> list[tuple]:
    messages = conversation(ctx)
    assert messages[0][0] == "user"
    return [(role, content, calls[:1]) for role, content, calls in messages[1:]]


def test_node_log_tree_becomes_a_run_a_branch_a_summary_and_people(store):
    [report] = import_paths(store, "innovatorbench", [NODE_LOG])
    assert report.warnings == []
    main, branch = "innovatorbench/innovatorbench-run", report.streams[1].stream_id
    assert [(s.stream_id, s.parent_id, s.fork_version, s.events) for s in report.streams] == [
        (main, None, None, 16), (branch, main, 5, 4)]
    kinds = [r.kind for r in store.read(main)]
    assert kinds == ["RunStarted", "AgentActed", "ToolObserved", "AgentActed", "ToolObserved", "HumanIntervened", "AgentActed",
                     "ToolObserved", "AgentActed", "ToolObserved", "ContextSummarized", "AgentActed", "ToolObserved", "AgentActed",
                     "ToolObserved", "RunFinished"]
    nodes = load_nodes()
    summary_node = next(n for n in nodes.values() if n["node_type"] == "summary")
    summarized = store.event(main, 11).event
    assert isinstance(summarized, ContextSummarized)
    assert (summarized.summary, summarized.replaces_from, summarized.replaces_to) == (summary_node["summary_content"], 2, 6)
    assert summarized.model == summary_node["response"]["model"] and summarized.usage.output_tokens == 240
    people = [store.event(main, 6).event, store.event(branch, 7).event]
    assert [p.message for p in people] == [
        "Check the baseline score on the dev split before you fine-tune anything.",
        "Skip the baseline: fine-tune right away with a smaller learning rate (5e-6)."]
    assert all(isinstance(p, HumanIntervened) and p.kind == "guidance" for p in people)
    assert isinstance(store.event(branch, 6).event, BranchCreated)
    assert {r.actor for r in store.read(branch)} == {"import:innovatorbench"}
    failed = store.event(main, 10).event
    assert failed.is_error and failed.exit_code == 1 and failed.duration_ms == 3500
    root = next(n for n in nodes.values() if n["node_type"] == "root")
    assert store.event(main, 1).recorded_at == root["timestamp"] + "Z"
    assert store.verify().ok
    [again] = import_paths(store, "innovatorbench", [NODE_LOG])
    assert again.added == 0 and again.present == 20


def test_node_log_fold_before_each_step_reproduces_its_prompt(store):
    import_paths(store, "innovatorbench", [NODE_LOG])
    nodes = load_nodes()
    summary = next(n for n in nodes.values() if n["node_type"] == "summary")["summary_content"]
    checked = 0
    for info in store.streams():
        for recorded in store.read(info.stream_id):
            if recorded.stream_id != info.stream_id or not isinstance(recorded.event, AgentActed):
                continue
            node = node_by_call(nodes, recorded.event.tool_calls[0].id)
            ctx = fold(store.read(info.stream_id, up_to=recorded.version - 1))
            assert ctx.system == node["messages"][0]["content"]
            assert without_task(ctx) == prompt_expected(node["messages"], summary), node["id"]
            checked += 1
    assert checked == 8
    # the last step: its prompt, its response and its observation
    last = node_by_call(nodes, "tooluse_r7finish")
    ctx = fold(store.read("innovatorbench/innovatorbench-run"))
    tool_text = json.dumps(last["observation"])
    response = last["response"]
    assert without_task(ctx) == [*prompt_expected(last["messages"], summary),
                                 ("assistant", response["content"], [(c["name"], c["arguments"]) for c in response["tool_calls"]]),
                                 ("tool", tool_text, [])]
    first = node_by_call(nodes, "tooluse_r1think")
    assert ctx.run.task == first["messages"][1]["content"] and ctx.messages[0].content == ctx.run.task
    assert ctx.finished is not None and ctx.finished.status == "finished"


def test_node_log_as_one_file_nested_or_listed_gives_the_same_events(store, tmp_path):
    import_paths(store, "innovatorbench", [NODE_LOG], stream_id="ib/run")
    nodes = load_nodes()
    listed = tmp_path / "nodes.json"
    listed.write_text(json.dumps(list(nodes.values())))
    [report] = import_paths(store, "innovatorbench", [listed], stream_id="ib/run")
    assert report.added == 0 and report.present == 20
    children: dict = {}
    for n in nodes.values():
        children.setdefault(n["parent_id"], []).append(n)

    def nest(n):
        return {**{k: v for k, v in n.items() if k != "parent_id"}, "children": [nest(c) for c in children.get(n["id"], [])]}

    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps(nest(children[None][0])))
    [report] = import_paths(store, "innovatorbench", [tree], stream_id="ib/run")
    assert report.added == 0 and report.present == 20


def test_node_log_summary_directly_under_a_step(store, tmp_path):
    """The simpler layout: root -> steps -> summary -> steps, no copied nodes."""
    nodes = load_nodes()
    by_call = {n["response"]["tool_calls"][0]["call_id"]: n for n in nodes.values()
               if n.get("response") and n["node_type"] == "react" and n["source"] == "generate"}
    keep = [n for n in nodes.values() if n["node_type"] == "root"]
    r4, r6 = by_call["tooluse_r4eval"], by_call["tooluse_r6pip"]
    summary = next(n for n in nodes.values() if n["node_type"] == "summary")
    keep += [by_call[call] for call in ("tooluse_r1think", "tooluse_r2ls", "tooluse_r3open", "tooluse_r4eval")]
    keep += [{**summary, "parent_id": r4["id"]}, {**r6, "parent_id": summary["id"]}]
    folder = tmp_path / "inline"
    folder.mkdir()
    for n in keep:
        (folder / f"{n['id']}.json").write_text(json.dumps(n))
    [report] = import_paths(store, "innovatorbench", [folder])
    assert report.warnings == [] and len(report.streams) == 1
    recorded = store.read(report.streams[0].stream_id)
    summarized = next(r.event for r in recorded if isinstance(r.event, ContextSummarized))
    assert (summarized.replaces_from, summarized.replaces_to) == (2, 6)
    action = next(r for r in recorded if isinstance(r.event, AgentActed) and r.event.tool_calls[0].id == "tooluse_r6pip")
    ctx = fold(recorded[: action.version - 1])
    assert without_task(ctx) == prompt_expected(r6["messages"], summary["summary_content"])


def test_node_log_real_user_tags_are_configurable(store):
    [report] = import_paths(store, "innovatorbench", [NODE_LOG], real_user_tags=("annotator",))
    kinds = {r.kind for s in report.streams for r in store.read(s.stream_id)}
    assert "HumanIntervened" not in kinds
    environment = store.event("innovatorbench/innovatorbench-run", 6).event
    assert isinstance(environment, ToolObserved) and environment.tool_call_id == ""
    assert environment.output.startswith("<real_user>Check the baseline")


def test_node_log_warns_when_a_prompt_does_not_continue_the_context(store, tmp_path):
    folder = tmp_path / "nodes"
    shutil.copytree(NODE_LOG, folder)
    victim = next(p for p in folder.glob("*.json") if "tooluse_r2ls" in p.read_text() and '"depth": 2' in p.read_text())
    node = json.loads(victim.read_text())
    node["messages"][2]["content"] = "an assistant turn that never happened"
    victim.write_text(json.dumps(node))
    [report] = import_paths(store, "innovatorbench", [folder])
    assert any(node["id"] in w and "does not continue" in w for w in report.warnings)
    assert report.streams[0].events == 16


# -- OpenAI messages ---------------------------------------------------------------------


def openai_expected(messages: list[dict]) -> tuple[str, list[tuple]]:
    def text(content):
        return content if isinstance(content, str) else "\n".join(p["text"] for p in content or [])

    system, out, i = [], [], 0
    while messages[i]["role"] == "system":
        system.append(text(messages[i]["content"]))
        i += 1
    out.append(("user", text(messages[i]["content"]), []))
    for m in messages[i + 1:]:
        if m["role"] == "assistant":
            raw = m.get("tool_calls") or ([{"function": m["function_call"]}] if m.get("function_call") else [])
            out.append(("assistant", text(m.get("content")), [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in raw]))
        elif m["role"] in ("tool", "function"):
            out.append(("tool", m["content"], []))
        else:
            tagged = re.fullmatch(r"<real_user>(.*)</real_user>", m["content"], re.S)
            out.append(("user", human(tagged.group(1)) if tagged else m["content"], []))
    return "\n\n".join(system), out


def test_openai_jsonl_with_tools(store):
    lines = [json.loads(line) for line in OPENAI_FILE.read_text().splitlines() if line.strip()]
    [report] = import_paths(store, "openai", [OPENAI_FILE])
    assert [s.stream_id for s in report.streams] == ["openai/openai-conversations/conv-rouge-baseline", "openai/openai-conversations/3"]
    for stream, line in zip(report.streams, lines):
        messages = line["messages"] if isinstance(line, dict) else line
        recorded = store.read(stream.stream_id)
        ctx = fold(recorded)
        system, expected = openai_expected(messages)
        assert ctx.system == system
        assert conversation(ctx) == expected
        assert {r.actor for r in recorded} == {"import:openai"}
    first = store.read(report.streams[0].stream_id)
    started = first[0].event
    assert isinstance(started, RunStarted) and [t.name for t in started.tools] == ["run_command", "read_file", "finish"]
    assert started.tools[0].input_schema["required"] == ["command"] and started.model == "glm-4.5"
    assert first[0].recorded_at == "2025-09-08T14:00:00.000000Z"
    parallel = first[1].event
    assert parallel.reasoning.startswith("I need the evaluation script") and len(parallel.tool_calls) == 2
    assert [r.event.tool_call_id for r in first[2:4]] == ["call_read_1", "call_read_2"]
    assert isinstance(first[6].event, HumanIntervened)
    assert store.verify().ok
    [again] = import_paths(store, "openai", [OPENAI_FILE])
    assert again.added == 0 and again.present == report.added


# -- malformed files import nothing -----------------------------------------------------


def malformed_cases(tmp_path: Path) -> list[tuple[str, Path, str, str]]:
    """(format, path, expected place, expected reason) for broken copies of each format."""
    cases = []
    swe = {"history": [{"role": "system", "content": "s"}, {"role": "user", "content": "task"},
                       {"role": "assistant", "content": "x", "tool_calls": 5}]}
    (tmp_path / "types.traj").write_text(json.dumps(swe))
    cases.append(("swe-agent", tmp_path / "types.traj", "$.history[2].tool_calls", "expected an array"))
    (tmp_path / "role.traj").write_text(json.dumps({"history": [{"role": "user", "content": "t"}, {"role": "robot", "content": "x"}]}))
    cases.append(("swe-agent", tmp_path / "role.traj", "$.history[1].role", "unknown role 'robot'"))
    (tmp_path / "truncated.traj").write_text(json.dumps(swe)[:50])
    cases.append(("swe-agent", tmp_path / "truncated.traj", "line 1, column", "not valid JSON"))
    events = [{"id": 0, "source": "user", "action": "message", "args": {"content": "hi"}},
              {"id": 1, "source": "agent", "action": "run", "args": "ls"}]
    (tmp_path / "oh.json").write_text(json.dumps(events))
    cases.append(("openhands", tmp_path / "oh.json", "$[1].args", "expected an object, found the string 'ls'"))
    (tmp_path / "oh2.json").write_text(json.dumps([{"id": 0, "source": "user", "message": "?"}]))
    cases.append(("openhands", tmp_path / "oh2.json", "$[0]", "neither"))
    (tmp_path / "oh3.json").write_text(json.dumps(events)[:-7])
    cases.append(("openhands", tmp_path / "oh3.json", "line 1, column", "not valid JSON"))
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n" + json.dumps({"messages": "oops"}) + "\n")
    cases.append(("openai", tmp_path / "chat.jsonl", "line 2.messages", "expected an array"))
    (tmp_path / "cut.jsonl").write_text(OPENAI_FILE.read_text()[:300])
    cases.append(("openai", tmp_path / "cut.jsonl", "line 1, column", "not valid JSON"))
    orphan = tmp_path / "orphan"
    shutil.copytree(NODE_LOG, orphan)
    parent = next(p for p in orphan.glob("*.json") if "tooluse_r2ls" in p.read_text() and '"depth": 2' in p.read_text())
    parent_id = json.loads(parent.read_text())["id"]
    parent.unlink()
    cases.append(("innovatorbench", orphan, "$.parent_id", f"names parent {parent_id}, which is not among the nodes"))
    bad_type = tmp_path / "badtype"
    shutil.copytree(NODE_LOG, bad_type)
    victim = sorted(bad_type.glob("react_*.json"))[0]
    node = json.loads(victim.read_text())
    node["messages"] = {"role": "user"}
    victim.write_text(json.dumps(node))
    cases.append(("innovatorbench", bad_type, "$.messages", "expected an array"))
    listed = [n for n in load_nodes().values() if n["id"] != parent_id]
    (tmp_path / "listed.json").write_text(json.dumps(listed))
    orphan_at = next(i for i, n in enumerate(listed) if n["parent_id"] == parent_id)
    cases.append(("innovatorbench", tmp_path / "listed.json", f"$[{orphan_at}].parent_id", "which is not among the nodes"))
    cut = tmp_path / "cutnode"
    shutil.copytree(NODE_LOG, cut)
    victim = sorted(cut.glob("react_*.json"))[1]
    victim.write_text(victim.read_text()[:200])
    cases.append(("innovatorbench", cut, "line ", "not valid JSON"))
    return cases


def test_malformed_files_import_nothing_and_say_where(store, tmp_path):
    for fmt, path, place, reason in malformed_cases(tmp_path):
        with pytest.raises(TrajectoryImportError) as caught:
            import_paths(store, fmt, [path])
        error = caught.value
        assert place in error.place and reason in error.reason, (fmt, path, str(error))
        assert Path(error.file).name in str(error) and (path.name in error.file or path in Path(error.file).parents)
        assert count_events(store) == 0, str(error)


def test_an_event_over_the_payload_limit_imports_nothing(tmp_path):
    path = tmp_path / "big.jsonl"
    messages = [{"role": "user", "content": "run it"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"name": "run", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "x" * 5000}]
    path.write_text(json.dumps({"messages": messages}) + "\n")
    with EventStore(tmp_path / "small.db", max_payload_bytes=4096) as small:
        with pytest.raises(TrajectoryImportError) as caught:
            import_paths(small, "openai", [path])
        assert caught.value.place == "line 1.messages[2]" and "over the store's limit of 4,096" in caught.value.reason
        assert small.stats()["events"] == 0


def test_one_bad_file_among_good_ones_imports_nothing(store, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n')
    with pytest.raises(TrajectoryImportError, match="bad.jsonl: line 1, column"):
        import_paths(store, "openai", [OPENAI_FILE, bad])
    assert count_events(store) == 0


def test_a_stream_holding_other_events_is_refused(store, tmp_path):
    import_paths(store, "openai", [OPENAI_FILE])
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "conv-rouge-baseline", "messages": [{"role": "user", "content": "something else"}]}) + "\n")
    before = count_events(store)
    with pytest.raises(TrajectoryImportError, match="already holds other events"):
        import_paths(store, "openai", [other], stream_id="openai/openai-conversations/conv-rouge-baseline")
    assert count_events(store) == before


def test_event_ids_come_from_the_content(tmp_path):
    ids = []
    for name in ("a.db", "b.db"):
        with EventStore(tmp_path / name) as s:
            import_paths(s, "innovatorbench", [NODE_LOG])
            ids.append([r.event_id for r in s.read_all() if r.kind != "BranchCreated"])
    assert ids[0] == ids[1] and len(set(ids[0])) == len(ids[0])


def test_format_detection():
    assert detect_format(NODE_LOG) == "innovatorbench"
    assert detect_format(OPENAI_FILE) == "openai"
    if TRAJECTORIES is not None:
        assert detect_format(TRAJECTORIES / "swe-agent" / SWE_FILES[0]) == "swe-agent"
        assert detect_format(TRAJECTORIES / "openhands" / OPENHANDS_FILES[0]) == "openhands"
    plan = read_trajectory("auto", OPENAI_FILE)
    assert plan.format == "openai" and plan.event_count == 17


# -- CLI ---------------------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_import_reports_and_is_idempotent(tmp_path):
    db = str(tmp_path / "cli.db")
    first = invoke("import", "innovatorbench", str(NODE_LOG), "--db", db)
    assert first.exit_code == 0, first.output
    assert "innovatorbench/innovatorbench-run: added 16 event(s), 0 already present" in first.output
    assert "(branch of innovatorbench/innovatorbench-run at v5): added 4 event(s)" in first.output
    again = invoke("import", "innovatorbench", str(NODE_LOG), "--db", db, "--json")
    assert again.exit_code == 0
    data = json.loads(again.output)
    assert data["added"] == 0 and data["present"] == 20 and data["files"][0]["streams"][1]["fork_version"] == 5
    dry = invoke("import", "openai", str(OPENAI_FILE), "--db", db, "--dry-run", "--json")
    assert dry.exit_code == 0 and json.loads(dry.output)["added"] == 17
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from events").fetchone()[0] == 21
    named = invoke("import", "auto", str(OPENAI_FILE), "--db", db)
    assert named.exit_code == 0 and "2 file(s)" not in named.output and "added 17 new event(s)" in named.output


def test_cli_errors(tmp_path):
    db = str(tmp_path / "cli.db")
    bad = tmp_path / "broken.traj"
    bad.write_text('{"history": [')
    result = invoke("import", "swe-agent", str(bad), "--db", db)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bad}: line 1, column") and "not valid JSON" in result.output
    assert invoke("import", "nonsense", str(bad), "--db", db).exit_code == 2
    two = invoke("import", "openai", str(OPENAI_FILE), str(OPENAI_FILE), "--stream", "x", "--db", db)
    assert two.exit_code == 1 and "only be given for one file" in two.output
    same = invoke("import", "openai", str(OPENAI_FILE), str(OPENAI_FILE), "--db", db)
    assert same.exit_code == 1 and "would also be written from" in same.output
    with EventStore(db) as s:
        assert s.stats()["events"] == 0
