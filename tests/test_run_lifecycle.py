"""Budgets that survive crashes: time limits count active time; an exhausted run resumes only
with a higher budget, and never records the same end twice."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import anyio
import pytest
from click.testing import CliRunner

from apollo_es import EventStore
from apollo_es.agent import Agent, active_seconds
from apollo_es.cli import cli
from apollo_es.errors import ApolloError
from apollo_es.lease import RunHeld
from apollo_es.models import ModelResponse, RecordedClient
from apollo_es.tasks import Task, prepare_workspace, reconfiguration, run_started
from apollo_es.tools import Workspace
from events import AgentActed, DiscardedAnswer, HumanIntervened, RunFinished, RunStarted, ToolCall, ToolObserved, Usage


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


def test_one_status_from_the_fold_and_the_lease(tmp_path):
    from projections.context import fold
    from projections.status import run_status

    store = EventStore(tmp_path / "a.db")
    store.append("r", [RunStarted(task_id="t", task="x")])
    context = fold(store.read("r"))
    assert (run_status(context, held=True), run_status(context, held=False)) == ("running", "idle")
    store.append("r", [HumanIntervened(annotator="ana", kind="stop", message="enough")], actor="human:ana")
    context = fold(store.read("r"))
    assert (run_status(context, held=True), run_status(context, held=False)) == ("stopping", "stopped")
    store.append("r", [RunFinished(status="stopped")])
    assert run_status(fold(store.read("r")), held=False) == "stopped"


def test_one_agent_per_run_and_a_dead_holder_is_taken_over(tmp_path):
    store = EventStore(tmp_path / "a.db")
    task = Task(id="t", description="Say hi.")
    root = prepare_workspace(task, tmp_path / "ws")
    store.append("run-1", [run_started(task, model="m", provider="anthropic", workspace=root)], actor="system")
    assert store.acquire_lease("run-1", "elsewhere:1:live", 60) is not None
    with pytest.raises(RunHeld, match="held by another agent \\(elsewhere:1:live"):
        _drive(store, [_respond(("finish", {"answer": "hi"}))], root)
    store.release_lease("run-1", "elsewhere:1:live")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = f"{socket.gethostname()}:{child.stdout.strip()}:gone"  # a process of ours that has exited
    assert store.acquire_lease("run-1", dead, 60) is not None
    assert _drive(store, [_respond(("finish", {"answer": "hi"}))], root).status == "finished"
    assert store.leases() == {}  # released at the end


def test_status_in_runs_and_a_warning_for_guidance_no_agent_will_read(tmp_path):
    store = EventStore(tmp_path / "a.db")
    store.append("r", [RunStarted(task_id="t", task="x")])
    db = str(tmp_path / "a.db")
    runner = CliRunner()
    rows = [json.loads(line) for line in runner.invoke(cli, ["runs", "--nl", "--db", db]).output.splitlines()]
    assert rows[0]["status"] == "idle"
    sent = runner.invoke(cli, ["intervene", "r", "-m", "try again", "--annotator", "ana", "--db", db])
    assert sent.exit_code == 0 and "Warning: no agent is working on r: the guidance is delivered when the run resumes" in sent.output
    store.acquire_lease("r", "host:1:x", 60)
    assert json.loads(runner.invoke(cli, ["runs", "--nl", "--db", db]).output)["status"] == "running"
    sent = runner.invoke(cli, ["intervene", "r", "-m", "go on", "--annotator", "ana", "--db", db])
    assert sent.exit_code == 0 and "Warning" not in sent.output


def test_an_agent_that_lost_its_lease_stops_writing(tmp_path):
    """Paused past its lease (here: the lease is taken over while a command runs), the agent
    must not record the command's result next to the agent that took the run over."""
    store = EventStore(tmp_path / "a.db")
    task = Task(id="t", description="Wait.")
    root = prepare_workspace(task, tmp_path / "ws")
    store.append("run-1", [run_started(task, model="m", provider="anthropic", workspace=root)], actor="system")
    (root / "go").unlink(missing_ok=True)

    def take_over() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            held = store.leases().get("run-1")
            if held is not None and store.head("run-1") >= 2:  # the command is running
                assert store.acquire_lease("run-1", "thief:1:x", 60, take_over=held.holder) is not None
                (root / "go").write_text("")
                return
            time.sleep(0.02)

    async def go():
        client = RecordedClient([_respond(("run_command", {"command": "while [ ! -e go ]; do sleep 0.05; done; sleep 1"}))])
        try:
            return await Agent(store, "run-1", client, Workspace(root), lease_seconds=1).run()
        finally:
            await client.aclose()

    thief = threading.Thread(target=take_over)
    thief.start()
    with pytest.raises(RunHeld, match="lease ran out and another agent took the run"):
        anyio.run(go)
    thief.join()
    assert [r.kind for r in store.read("run-1")] == ["RunStarted", "AgentActed"]  # no result, no end
    assert store.leases()["run-1"].holder == "thief:1:x"  # and it did not release the thief's lease


def test_a_refused_resume_writes_no_new_settings(tmp_path):
    store = EventStore(tmp_path / "a.db")
    task = Task(id="t", description="Say hi.")
    root = prepare_workspace(task, tmp_path / "ws")
    store.append("run-1", [run_started(task, model="m", provider="anthropic", workspace=root)], actor="system")
    store.acquire_lease("run-1", "elsewhere:1:live", 60)
    recording = tmp_path / "rec.jsonl"
    recording.write_text("")
    result = CliRunner().invoke(cli, ["resume", "run-1", "--provider", "recorded", "--recording", str(recording),
                                      "--max-steps", "9", "--db", str(tmp_path / "a.db")])
    assert result.exit_code == 1 and "held by another agent" in result.output
    assert [r.kind for r in store.read("run-1")] == ["RunStarted"]
