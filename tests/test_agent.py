"""The rollout engine end to end: the real anthropic SDK against a scripted server."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from apollo_es import EventStore, NewEvent
from apollo_es.agent import Agent
from apollo_es.tasks import Task, prepare_workspace, run_started
from apollo_es.tools import Workspace
from events import SandboxSpec, ActionJudged, AgentActed, ContextSummarized, HumanIntervened, RunFinished, ToolObserved
from projections.context import HUMAN_TAG, fold
from projections.requests import digest, render_request
from tests.scripted import ScriptedAnthropic, snapshot_reply, text_reply, texts, tool_use


def start(store: EventStore, tmp_path: Path, run_id: str = "run-1", **task_fields) -> Workspace:
    fields = {"id": "t", "description": "Make hello.py print the sum of 2 and 3.", **task_fields}
    task = Task(**fields)
    root = prepare_workspace(task, tmp_path / f"ws-{run_id}")
    store.append(run_id, [run_started(task, model="claude-test", provider="anthropic", workspace=root)], actor="system")
    return Workspace(root, sandbox=task.sandbox)


def run_agent(store: EventStore, server: ScriptedAnthropic, workspace: Workspace, run_id: str = "run-1", **kwargs) -> RunFinished:
    async def go() -> RunFinished:
        client = server.client()
        try:
            return await Agent(store, run_id, client, workspace, **kwargs).run()
        finally:
            await client.aclose()

    return anyio.run(go)


def test_multi_step_run_records_every_action_and_observation(tmp_path):
    store = EventStore(tmp_path / "a.db")
    workspace = start(store, tmp_path, eval=None)
    server = ScriptedAnthropic([
        tool_use("write_file", {"path": "hello.py", "content": "print(2 + 2)\n"}, "Write a first version."),
        tool_use("run_command", {"command": "python3 hello.py"}),
        tool_use("edit_file", {"path": "hello.py", "old": "2 + 2", "new": "2 + 3"}, "Fix the sum."),
        tool_use("run_command", {"command": "python3 hello.py"}),
        tool_use("finish", {"answer": "hello.py prints 5"}),
    ])
    finished = run_agent(store, server, workspace)

    assert finished.status == "finished" and finished.final_answer == "hello.py prints 5"
    assert (workspace.root / "hello.py").read_text() == "print(2 + 3)\n"
    events = store.read("run-1")
    kinds = [e.kind for e in events]
    assert kinds == ["RunStarted"] + ["AgentActed", "ToolObserved"] * 5 + ["RunFinished"]
    outputs = [e.event.output for e in events if isinstance(e.event, ToolObserved)]
    assert outputs[1].startswith("4") and outputs[3].startswith("5")
    # each observation answers its action, and each action's digest is the request the model got
    for index, recorded in enumerate(events):
        if isinstance(recorded.event, AgentActed):
            assert events[index + 1].causation_id == recorded.event_id
            request = render_request(fold(events[:index]))
            assert recorded.event.context_digest == digest(request)
    assert len(server.requests) == 5
    assert server.requests[-1] == render_request(fold(events[:-3]))  # up to the 4th observation
    assert store.verify().ok


def test_guidance_written_during_a_model_call_reaches_the_very_next_request(tmp_path):
    store = EventStore(tmp_path / "a.db")
    workspace = start(store, tmp_path)

    def intervene() -> None:  # another writer, while the model is answering request 2
        other = EventStore(tmp_path / "a.db")
        other.append("run-1", [HumanIntervened(annotator="ana", kind="guidance", message="Use python3, not python.")], actor="human:ana")
        other.close()

    server = ScriptedAnthropic(
        [
            tool_use("list_files", {}),
            tool_use("run_command", {"command": "python hello.py"}),  # dropped: the log moved meanwhile
            tool_use("run_command", {"command": "python3 -c 'print(5)'"}),
            tool_use("finish", {"answer": "done"}),
        ],
        hooks={2: intervene},
    )
    run_agent(store, server, workspace)

    tagged = [t for t in texts(server.requests[2]) if HUMAN_TAG in t]
    assert tagged and "Use python3, not python." in tagged[0]
    assert not any(HUMAN_TAG in t for t in texts(server.requests[1]))
    actions = [e.event for e in store.read("run-1") if isinstance(e.event, AgentActed)]
    assert [a.tool_calls[0].name for a in actions] == ["list_files", "run_command", "finish"]
    assert "python3" in actions[1].tool_calls[0].arguments["command"]


def test_guidance_written_while_a_tool_runs_follows_the_tool_result(tmp_path):
    store = EventStore(tmp_path / "a.db")
    workspace = start(store, tmp_path, sandbox=SandboxSpec(kind="none"))  # the command writes to the host's store
    command = (
        f"{sys.executable} -c \"from apollo_es import EventStore; from events import HumanIntervened; "
        f"EventStore('{tmp_path / 'a.db'}').append('run-1', [HumanIntervened(annotator='ben', kind='guidance', "
        f"message='Check the edge cases.')], actor='human:ben')\""
    )
    server = ScriptedAnthropic([tool_use("run_command", {"command": command}), tool_use("finish", {"answer": "ok"})])
    run_agent(store, server, workspace)

    last = server.requests[1]["messages"][-1]["content"]
    assert [block["type"] for block in last] == ["tool_result", "text"]
    assert "Check the edge cases." in last[1]["text"]


def test_a_verdict_or_reject_written_during_a_model_call_does_not_cost_the_answer(tmp_path):
    store = EventStore(tmp_path / "a.db")
    workspace = start(store, tmp_path)

    def annotate() -> None:
        [first] = [e for e in store.read("run-1") if isinstance(e.event, AgentActed)]
        verdict = ActionJudged(target_event_id=first.event_id, verdict="keep", judge_id="j@v1", score=0.9)
        store.append("run-1", [NewEvent(event=verdict, causation_id=first.event_id)], actor="judge:j@v1")
        store.append("run-1", [HumanIntervened(annotator="ana", kind="approve", target_event_id=first.event_id)], actor="human:ana")

    server = ScriptedAnthropic([tool_use("think", {"thought": "a"}), tool_use("finish", {"answer": "done"})], hooks={2: annotate})
    assert run_agent(store, server, workspace).status == "finished"
    assert len(server.requests) == 2  # the second answer was kept, not asked for again
    kinds = [e.kind for e in store.read("run-1")]
    assert kinds == ["RunStarted", "AgentActed", "ToolObserved", "ActionJudged", "HumanIntervened", "AgentActed", "ToolObserved", "RunFinished"]
    second = store.read("run-1")[5]
    assert second.event.context_digest == digest(render_request(fold(store.read("run-1", up_to=5))))


def test_stop_ends_the_run_as_stopped(tmp_path):
    store = EventStore(tmp_path / "a.db")
    workspace = start(store, tmp_path)

    def stop() -> None:
        store.append("run-1", [HumanIntervened(annotator="ana", kind="stop", message="enough")], actor="human:ana")

    server = ScriptedAnthropic([tool_use("think", {"thought": "a"}), tool_use("think", {"thought": "b"})], hooks={2: stop})
    finished = run_agent(store, server, workspace)
    assert finished.status == "stopped"
    assert store.read("run-1")[-1].event == finished
    assert sum(isinstance(e.event, AgentActed) for e in store.read("run-1")) == 1


def test_summarization_replaces_the_older_turns(tmp_path):
    store = EventStore(tmp_path / "a.db")
    workspace = start(store, tmp_path, summary_threshold=3_000)
    big = "x" * 4_000
    replies = [tool_use("think", {"thought": f"step {i} {big}"}, input_tokens=1_000 + 1_200 * i) for i in range(3)]
    replies.append(snapshot_reply("Three thoughts recorded."))  # the summarizer's answer
    replies.append(tool_use("finish", {"answer": "done"}, input_tokens=1_200))
    server = ScriptedAnthropic(replies)
    run_agent(store, server, workspace)

    events = store.read("run-1")
    [summary] = [e for e in events if isinstance(e.event, ContextSummarized)]
    assert summary.event.summary.startswith("## Progress so far")
    summarization_request = server.requests[3]
    assert "<history>" in summarization_request["messages"][0]["content"][0]["text"]
    after = server.requests[4]
    joined = "\n".join(texts(after))
    assert "Three thoughts recorded." in joined
    replaced = [e for e in events if summary.event.replaces_from <= e.version <= summary.event.replaces_to]
    assert replaced and all(
        call.arguments["thought"] not in str(after)
        for e in replaced if isinstance(e.event, AgentActed) for call in e.event.tool_calls
    )
    assert "Make hello.py print" in joined  # the task stays


def test_a_text_only_answer_gets_feedback_and_the_run_goes_on(tmp_path):
    store = EventStore(tmp_path / "a.db")
    workspace = start(store, tmp_path)
    server = ScriptedAnthropic([text_reply("I think I am done?"), tool_use("finish", {"answer": "done"})])
    assert run_agent(store, server, workspace).status == "finished"
    second = server.requests[1]["messages"]
    assert second[-1]["role"] == "user" and "No tool was called" in second[-1]["content"][0]["text"]
