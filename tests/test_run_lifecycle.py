"""Budgets that survive crashes: time limits count active time; an exhausted run resumes only
with a higher budget, and never records the same end twice."""

from __future__ import annotations

import anyio
import pytest

from apollo_es import EventStore
from apollo_es.agent import Agent, active_seconds
from apollo_es.errors import ApolloError
from apollo_es.models import ModelResponse, RecordedClient
from apollo_es.tasks import Task, prepare_workspace, reconfiguration, run_started
from apollo_es.tools import Workspace
from events import AgentActed, DiscardedAnswer, RunFinished, RunStarted, ToolCall, ToolObserved, Usage


def _respond(*calls: tuple[str, dict]) -> ModelResponse:
    return ModelResponse(model="m", tool_calls=[ToolCall(id=f"c{i}", name=n, arguments=a) for i, (n, a) in enumerate(calls)],
                         stop_reason="tool_use", usage=Usage(input_tokens=10, output_tokens=5), latency_ms=1_500.0)


def _drive(store: EventStore, responses, root, *, resume: bool = False) -> RunFinished:
    async def go():
        client = RecordedClient(responses)
        try:
            return await Agent(store, "run-1", client, Workspace(root)).run(resume=resume)
        finally:
            await client.aclose()

    return anyio.run(go)


def test_active_time_is_answers_and_tool_calls_not_the_wall_clock():
    recorded = [
        RunStarted(task_id="t", task="x"),
        AgentActed(model="m", latency_ms=2_000.0, discarded=[DiscardedAnswer(model="m", latency_ms=500.0)]),
        ToolObserved(tool_call_id="a", output="", duration_ms=1_250.0),
    ]
    store_like = [type("R", (), {"event": e})() for e in recorded]
    assert active_seconds(store_like) == pytest.approx(3.75)


def test_the_time_limit_counts_active_time_and_resume_needs_a_higher_budget(tmp_path):
    store = EventStore(tmp_path / "a.db")
    task = Task(id="t", description="Say hi.", time_limit=4.0)
    root = prepare_workspace(task, tmp_path / "ws")
    store.append("run-1", [run_started(task, model="m", provider="anthropic", workspace=root)], actor="system")
    ended = _drive(store, [_respond(("run_command", {"command": "echo one"})), _respond(("run_command", {"command": "echo two"})),
                           _respond(("run_command", {"command": "echo three"}))], root)
    assert ended.status == "budget_exhausted" and "active time" in ended.error  # 3 answers x 1.5 s > 4 s
    before = len(store.read("run-1"))
    with pytest.raises(ApolloError, match="still over its budget .*--time-limit"):
        _drive(store, [], root, resume=True)
    assert len(store.read("run-1")) == before  # no second RunFinished
    context_run = store.read("run-1", up_to=1)[0].event
    store.append("run-1", [reconfiguration(context_run, time_limit=60.0, reason="resume")], actor="system")
    finished = _drive(store, [_respond(("finish", {"answer": "hi"}))], root, resume=True)
    assert finished.status == "finished"
    assert [r.event.status for r in store.read("run-1") if isinstance(r.event, RunFinished)] == ["budget_exhausted", "finished"]
