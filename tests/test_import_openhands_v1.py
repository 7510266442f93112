"""OpenHands V1 (`openhands-sdk` event log) import: the replayed context is what the SDK sent.

The expected messages are written out by hand from the SDK's rendering rules
(`LLMConvertibleEvent.events_to_messages`, `Observation.to_llm_content`,
`TerminalObservation.to_llm_content`, `UserRejectObservation.to_llm_message`,
`AgentErrorEvent.to_llm_message`, `Message`'s string serializer joining text blocks with
newlines), for the hand-made conversation in tests/data/importers/openhands-v1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from apollo_es import EventStore
from apollo_es.cli import cli
from apollo_es.importers import TrajectoryImportError, detect_format, import_paths
from events import AgentActed, ContextSummarized, HumanIntervened, RunFinished, RunStarted, ToolObserved
from projections.context import fold, summary_text

CONVERSATION = Path(__file__).parent / "data" / "importers" / "openhands-v1" / "5f3c2a1b9d8e4f60a7b1c2d3e4f5a6b7"
STREAM = "openhands-v1/5f3c2a1b9d8e4f60a7b1c2d3e4f5a6b7"
MODEL = "anthropic/claude-sonnet-4-5-20250929"

SYSTEM = ("You are OpenHands agent, a helpful AI assistant that can interact with a computer to solve tasks.\n"
          "<RUNTIME_INFORMATION>\nWorking directory: /workspace\n</RUNTIME_INFORMATION>")
"""The system message: the static prompt, then the dynamic context (two text blocks)."""
TERMINAL_SUFFIX = "\n[Current working directory: /workspace]\n[Python interpreter: /usr/bin/python]\n[Command finished with exit code {}]"
EXPECTED = [
    ("user", "The test in test_calc.py fails. Fix calc.py.", []),
    # one response, two parallel calls: the first ActionEvent's thought, every tool_call
    ("assistant", "I'll run the tests and read calc.py at the same time.", [
        ("toolu_01", "terminal", {"security_risk": "LOW", "summary": "run the tests", "command": "python -m pytest -q"}),
        ("toolu_02", "file_editor", {"security_risk": "LOW", "summary": "read calc.py", "command": "view", "path": "/workspace/calc.py"})]),
    ("tool", "F\n=== FAILURES ===\nassert add(2, 2) == 4\nE   assert 0 == 4\n1 failed in 0.02s" + TERMINAL_SUFFIX.format(1), []),
    ("tool", "Here's the result of running `cat -n` on /workspace/calc.py:\n     1\tdef add(a, b):\n     2\t    return a - b\n", []),
    ("user", "Leave the tests alone; only change calc.py.", []),
    ("assistant", "The test file may be stale; I'll remove it.", [
        ("toolu_03", "terminal", {"security_risk": "HIGH", "summary": "delete the test", "command": "rm -f test_calc.py"})]),
    ("tool", "Action rejected: Do not delete the tests.", []),
    ("assistant", "Then I'll fix the code.", [
        ("toolu_04", "file_edit", {"command": "str_replace", "path": "/workspace/calc.py", "old_str": "a - b", "new_str": "a + b"})]),
    ("tool", "Tool 'file_edit' not found. Available: ['terminal', 'file_editor', 'finish']", []),
    ("assistant", "Replacing the subtraction.", [
        ("toolu_05", "file_editor", {"security_risk": "LOW", "summary": "fix add()", "command": "str_replace", "path": "/workspace/calc.py",
                                     "old_str": "a - b", "new_str": "a + b"})]),
    ("tool", "The file /workspace/calc.py has been edited. Here's the result of running `cat -n` on a snippet of /workspace/calc.py:\n"
             "     1\tdef add(a, b):\n     2\t    return a + b\nReview the changes and make sure they are as expected. "
             "Edit the file again if necessary.", []),
    ("assistant", "", [("toolu_06", "terminal", {"security_risk": "LOW", "summary": "rerun the tests", "command": "python -m pytest -q"})]),
    ("tool", ".\n1 passed in 0.01s" + TERMINAL_SUFFIX.format(0), []),
    ("assistant", "The test passes.", [
        ("toolu_07", "finish", {"summary": "done", "message": "Fixed add() in calc.py (it subtracted); the test passes."})]),
    ("tool", "Fixed add() in calc.py (it subtracted); the test passes.", []),
]


@pytest.fixture()
def store(tmp_path):
    with EventStore(tmp_path / "apollo.db") as s:
        yield s


def messages(recorded) -> list[tuple]:
    return [(m.role, m.content, [(c.id, c.name, c.arguments) for c in m.tool_calls]) for m in fold(recorded).messages]


def event_files() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((CONVERSATION / "events").glob("event-*.json"))]


def test_the_replayed_context_is_what_the_sdk_sent(store):
    [report] = import_paths(store, "openhands-v1", [CONVERSATION])
    recorded = store.read(STREAM)
    assert report.format == "openhands-v1" and report.added == len(recorded)
    assert {r.actor for r in recorded} == {"import:openhands-v1"}
    ctx = fold(recorded)
    assert ctx.system == SYSTEM
    assert [t.name for t in ctx.tools] == ["terminal", "file_editor", "finish"]
    assert messages(recorded) == EXPECTED
    started = recorded[0].event
    assert (started.task_id, started.model, started.sampling) == ("5f3c2a1b9d8e4f60a7b1c2d3e4f5a6b7", MODEL, {"temperature": 0.0, "top_p": 1.0})
    assert recorded[0].recorded_at == "2026-03-02T14:10:00.123456Z"
    assert any("parameter schemas" in note for note in started.import_notes)
    # the finish: after its result, with the FinishAction's message
    assert isinstance(recorded[-1].event, RunFinished) and recorded[-2].event.tool_call_id == "toolu_07"
    assert recorded[-1].event.status == "finished"
    assert recorded[-1].event.final_answer == "Fixed add() in calc.py (it subtracted); the test passes."
    assert store.verify().ok
    [again] = import_paths(store, "openhands-v1", [CONVERSATION])
    assert (again.added, again.present) == (0, len(recorded))


def test_reasoning_usage_cost_and_exit_codes(store):
    import_paths(store, "openhands-v1", [CONVERSATION])
    recorded = store.read(STREAM)
    actions = [r.event for r in recorded if isinstance(r.event, AgentActed)]
    first = actions[0]
    assert first.reasoning == "Run the tests to see the failure, and view calc.py in parallel." and not first.blocks
    assert (first.usage.input_tokens, first.usage.output_tokens, first.usage.cache_write_tokens) == (300, 95, 1800)
    assert first.cost_usd == 0.0123 and first.latency_ms == 1250 and first.model == MODEL
    thinking = actions[3]  # the Anthropic turn: its thinking block goes back as received
    assert thinking.reasoning == "add() subtracts; it must add." and thinking.reasoning_signature == "EqQBCkYIBxgCKkD3sig"
    assert [(b.type, b.text or b.id) for b in thinking.blocks] == [
        ("thinking", "add() subtracts; it must add."), ("text", "Replacing the subtraction."), ("tool_use", "toolu_05")]
    assert thinking.usage.cache_read_tokens == 2700 and thinking.cost_usd == 0.0049
    observed = [r.event for r in recorded if isinstance(r.event, ToolObserved)]
    assert [(o.exit_code, o.is_error) for o in observed if o.tool_name == "terminal"] == [(1, False), (None, True), (0, False)]
    error = next(o for o in observed if o.tool_call_id == "toolu_04")
    assert error.is_error and error.origin == "harness"


def test_a_rejection_is_a_reject_of_that_action(store):
    import_paths(store, "openhands-v1", [CONVERSATION])
    recorded = store.read(STREAM)
    [reject] = [r for r in recorded if isinstance(r.event, HumanIntervened) and r.event.kind == "reject"]
    action = next(r for r in recorded if isinstance(r.event, AgentActed) and r.event.tool_calls[0].id == "toolu_03")
    assert reject.event.target_event_id == reject.causation_id == action.event_id
    assert reject.event.message == "Do not delete the tests."
    [guidance] = [r.event for r in recorded if isinstance(r.event, HumanIntervened) and r.event.kind == "guidance"]
    assert guidance.verbatim and guidance.message == "Leave the tests alone; only change calc.py."


def test_events_the_model_never_saw_stay_out(store):
    import_paths(store, "openhands-v1", [CONVERSATION])
    recorded = store.read(STREAM)
    seen = {"SystemPromptEvent", "MessageEvent", "ActionEvent", "ObservationEvent", "UserRejectObservation", "AgentErrorEvent"}
    hidden = [e for e in event_files() if e["kind"] not in seen]
    assert {e["kind"] for e in hidden} == {"ConversationStateUpdateEvent", "PauseEvent"}
    # of 21 events 4 are hidden, the system prompt and the task make RunStarted, two actions one
    # turn; the reject and the finish are added
    assert len(recorded) == 21 - 4 - 2 + 1 - 1 + 2
    assert all(r.event.tool_call_id for r in recorded if isinstance(r.event, ToolObserved))  # no stray user message


@pytest.mark.parametrize("layout", ["events-folder", "json", "jsonl"])
def test_a_single_file_export_and_the_events_folder_read_alike(store, tmp_path, layout):
    events = event_files()
    if layout == "events-folder":
        path = CONVERSATION / "events"
    elif layout == "json":
        path = tmp_path / "conversation.json"
        path.write_text(json.dumps(events))
    else:
        path = tmp_path / "conversation.jsonl"
        path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    assert detect_format(path) == "openhands-v1"
    [report] = import_paths(store, "openhands", [path])  # `openhands` reads V1 too
    assert report.format == "openhands-v1"
    recorded = store.read(report.streams[0].stream_id)
    assert messages(recorded) == EXPECTED and fold(recorded).system == SYSTEM


def test_cli_auto_recognises_a_v1_folder(tmp_path):
    db = str(tmp_path / "cli.db")
    result = CliRunner().invoke(cli, ["import", "auto", str(CONVERSATION), "--db", db])
    assert result.exit_code == 0, result.output
    assert f"{STREAM}: added 17 event(s)" in result.output


def sdk_event(kind: str, n: int, **fields) -> dict:
    return {"id": f"e{n}", "timestamp": f"2026-03-02T10:00:{n:02d}", "source": "agent", **fields, "kind": kind}


def text(t: str) -> list[dict]:
    return [{"type": "text", "text": t}]


def action(n: int, call_id: str, response: str, command: str, thought: str = "") -> dict:
    return sdk_event("ActionEvent", n, thought=text(thought) if thought else [], tool_name="terminal", tool_call_id=call_id,
                     llm_response_id=response, action={"command": command, "kind": "TerminalAction"},
                     tool_call={"id": call_id, "name": "terminal", "arguments": json.dumps({"command": command}), "origin": "completion"})


def result(n: int, call_id: str, output: str, *, is_error: bool = False) -> dict:
    return sdk_event("ObservationEvent", n, source="environment", tool_name="terminal", tool_call_id=call_id, action_id="x",
                     observation={"content": text(output), "is_error": is_error, "metadata": {"exit_code": -1}, "kind": "TerminalObservation"},
                     extended_content=text("Rule: keep it short."))


def test_condensations_agent_messages_hooks_and_unknown_kinds(store, tmp_path):
    terminal = {"type": "function", "function": {"name": "terminal", "description": "Run a command.",
                                                 "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}
    events = [
        sdk_event("SystemPromptEvent", 13, system_prompt={"type": "text", "text": "Be brief."}, tools=[terminal]),  # SDK < 1.7
        sdk_event("MessageEvent", 0, source="user", llm_message={"role": "user", "content": text("List the files.")},
                  extended_content=text("<skill>ls is fine</skill>")),
        action(1, "c1", "r1", "ls", "Listing."), result(2, "c1", "a.txt"),
        action(3, "c2", "r2", "cat a.txt"), result(4, "c2", "boom", is_error=True),
        sdk_event("Condensation", 5, source="environment", forgotten_event_ids=["e1", "e2"], llm_response_id="r9"),
        sdk_event("Condensation", 6, source="environment", forgotten_event_ids=["e3", "e4"], summary="Read a.txt: boom.",
                  summary_offset=1, llm_response_id="r10"),
        action(7, "c3", "r3", "rm a.txt"),
        sdk_event("UserRejectObservation", 8, source="environment", tool_name="terminal", tool_call_id="c3", action_id="e7",
                  rejection_reason="blocked by policy", rejection_source="hook"),
        sdk_event("ObservationEvent", 9, source="environment", tool_name="terminal", tool_call_id="nobody", action_id="x",
                  observation={"content": text("stray"), "kind": "TerminalObservation"}),
        sdk_event("FutureEvent", 10),
        sdk_event("MessageEvent", 11, source="environment", llm_message={"role": "user", "content": text("Reminder: finish up.")}),
        sdk_event("MessageEvent", 12, llm_message={"role": "assistant", "content": text("Only a.txt."), "reasoning_content": "Done."},
                  llm_response_id="r4"),
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(events))
    import_paths(store, "openhands-v1", [path])
    recorded = store.read("openhands-v1/export")
    assert recorded[0].event.task == "List the files.\n<skill>ls is fine</skill>"
    [tool] = recorded[0].event.tools
    assert (tool.name, tool.input_schema["properties"]) == ("terminal", {"command": {"type": "string"}})
    [summary] = [r.event for r in recorded if isinstance(r.event, ContextSummarized)]
    assert summary.summary == "Read a.txt: boom."
    assert messages(recorded) == [
        ("user", "List the files.\n<skill>ls is fine</skill>", []),
        ("assistant", "Listing.", [("c1", "terminal", {"command": "ls"})]),
        ("tool", "a.txt\nRule: keep it short.", []),  # the condensation without a summary changes nothing here
        ("user", summary_text("Read a.txt: boom."), []),
        ("assistant", "", [("c3", "terminal", {"command": "rm a.txt"})]),
        ("tool", "Action rejected: blocked by policy", []),  # a hook, not a person: no reject
        ("user", "Reminder: finish up.", []),
        ("assistant", "Only a.txt.", []),
    ]
    assert not any(isinstance(r.event, HumanIntervened) for r in recorded)
    assert recorded[-2].event.reasoning == "Done." and recorded[-1].event.status == "imported"
    notes = recorded[0].event.import_notes
    assert any("dropped 2 events" in n for n in notes) and any("FutureEvent" in n for n in notes)
    assert any("'nobody'" in n for n in notes)
    error_text = "[An error occurred during execution.]\n\nboom\nRule: keep it short."
    assert any(isinstance(r.event, ToolObserved) and r.event.output == error_text for r in recorded)


def test_a_finish_that_was_rejected_does_not_finish(store, tmp_path):
    finish = sdk_event("ActionEvent", 1, thought=[], tool_name="finish", tool_call_id="f1", llm_response_id="r1",
                       action={"message": "done", "kind": "FinishAction"},
                       tool_call={"id": "f1", "name": "finish", "arguments": "{\"message\": \"done\"}", "origin": "completion"})
    events = [sdk_event("MessageEvent", 0, source="user", llm_message={"role": "user", "content": text("Go.")}), finish,
              sdk_event("UserRejectObservation", 2, source="environment", tool_name="finish", tool_call_id="f1", action_id="e1")]
    path = tmp_path / "rejected.json"
    path.write_text(json.dumps(events))
    import_paths(store, "openhands-v1", [path])
    recorded = store.read("openhands-v1/rejected")
    assert recorded[-1].event.status == "imported"
    assert messages(recorded)[-1] == ("tool", "Action rejected: User rejected the action", [])
    assert isinstance(recorded[0].event, RunStarted)


def broken_copies(tmp_path: Path) -> list[tuple[Path, str]]:
    """(input, the error after `Error: `) for each kind of malformed V1 input."""
    cases = []
    for name, edit, where in [
        ("bad-json", lambda text: text[:-5], "line 1, column"),
        ("no-kind", lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "kind"}), "$: missing required field 'kind'"),
        ("list-id", lambda text: json.dumps({**json.loads(text), "id": ["a", "b"]}), "$.id: expected a string, found an array of 2"),
        ("deep", lambda text: json.dumps({**json.loads(text), "extended_content": "X"}).replace('"X"', "[" * 5000 + "]" * 5000),
         "nested 5001 levels deep, more than the 200 allowed"),
    ]:
        folder = tmp_path / name
        shutil.copytree(CONVERSATION, folder)
        victim = sorted((folder / "events").glob("event-00009-*.json"))[0]
        victim.write_text(edit(victim.read_text()))
        cases.append((folder, f"{victim}: {where}"))
    return cases


def test_malformed_v1_input_is_named_and_writes_nothing(tmp_path):
    db = tmp_path / "apollo.db"
    for folder, error in broken_copies(tmp_path):
        result = CliRunner().invoke(cli, ["import", "auto", str(CONVERSATION), str(folder), "--db", str(db)])
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: {error}"), (result.output, error)
        with EventStore(db) as s:
            assert s.stats()["events"] == 0
    export = tmp_path / "export.json"
    export.write_text(json.dumps([*event_files()[:3], {"id": 7, "kind": "MessageEvent"}]))
    with pytest.raises(TrajectoryImportError) as caught:
        with EventStore(db) as s:
            import_paths(s, "openhands", [export])
    assert str(caught.value) == f"{export}: $[3].id: expected a string, found the number 7"
