"""Replay: state at any version, branches with guidance, verification, re-runs, live continuation."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apollo_es.errors import ApolloError
from apollo_es import EventStore, NewEvent
from apollo_es.agent import Agent
from apollo_es.cli import cli
from apollo_es.errors import StreamNotFound, VersionOutOfRange
from apollo_es.tasks import Task, WorkspaceSpec, prepare_workspace, run_started
from apollo_es.tools import Workspace
from events import AgentActed, ContextSummarized, HumanIntervened, RunStarted, ToolCall, ToolObserved, Usage
from projections import context as context_module
from projections.context import HUMAN_TAG
from replay import branch, continue_branch, fork_point, rerun, state_at, verify_run
from tests.scripted import ScriptedAnthropic, texts, tool_use

# -- random runs, for the properties --------------------------------------------------------


@st.composite
def runs(draw) -> list:
    """A plausible run: actions with observations, human messages and summaries between them."""
    events: list = [RunStarted(task_id="t", task="the task", provider="anthropic", model="m")]
    version = 1
    for step in range(draw(st.integers(min_value=1, max_value=12))):
        call = ToolCall(id=f"c{step}", name="think", arguments={"thought": f"t{step}"})
        events.append(AgentActed(model="m", text=f"act {step}", tool_calls=[call], usage=Usage(input_tokens=10 * step)))
        events.append(ToolObserved(tool_call_id=call.id, output=f"obs {step}"))
        version += 2
        extra = draw(st.sampled_from(["none", "none", "human", "summary"]))
        if extra == "human":
            events.append(HumanIntervened(annotator="a", kind="guidance", message=f"hint {step}"))
            version += 1
        elif extra == "summary" and version > 4:
            events.append(ContextSummarized(summary=f"summary at {step}", replaces_from=2, replaces_to=version - 2))
            version += 1
    return events


def _store(tmp_path_factory) -> EventStore:
    return EventStore(tmp_path_factory.mktemp("replay") / "a.db")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=runs(), data=st.data())
def test_branch_state_equals_parent_state_up_to_the_fork(tmp_path_factory, run, data):
    store = _store(tmp_path_factory)
    store.append("root", run)
    head = store.head("root")
    fork = data.draw(st.integers(min_value=1, max_value=head), label="fork")
    child = branch(store, "root", fork, inject=data.draw(st.none() | st.just("new guidance")))
    store.append(child, [AgentActed(model="m", text="child acts")])
    grand_fork = data.draw(st.integers(min_value=1, max_value=store.head(child)), label="grand fork")
    grandchild = branch(store, child, grand_fork)

    for v in range(1, fork + 1):
        assert state_at(store, child, v).context == state_at(store, "root", v).context
    for v in range(1, grand_fork + 1):
        assert state_at(store, grandchild, v).context == state_at(store, child, v).context

    allowed = {r.event_id for r in store.read("root", up_to=fork)} | {r.event_id for r in store.read(child) if r.stream_id == child}
    after_fork = {r.event_id for r in store.read("root") if r.version > fork}
    for message in state_at(store, child).context.messages:
        assert message.event_id in allowed and message.event_id not in after_fork


def test_state_at_reports_lineage_tokens_and_pending_human_messages(tmp_path):
    store = EventStore(tmp_path / "a.db")
    call = ToolCall(id="c1", name="think", arguments={"thought": "x"})
    store.append("r", [RunStarted(task_id="t", task="task"), AgentActed(model="m", tool_calls=[call], usage=Usage(input_tokens=500, output_tokens=20)),
                       ToolObserved(tool_call_id="c1", output="ok"), HumanIntervened(annotator="a", kind="guidance", message="hurry")])
    child = branch(store, "r", 4, inject="slow down")
    state = state_at(store, child)
    assert state.lineage == [("r", 4), (child, None)]
    assert [m.content.split("\n")[1] for m in state.pending_human] == ["hurry", "slow down"]
    assert state.tokens >= 520
    assert state_at(store, "r", 2).pending_human == []
    with pytest.raises(VersionOutOfRange):
        state_at(store, "r", 9)
    with pytest.raises(StreamNotFound):
        state_at(store, "nope", 1)


def test_branch_with_an_empty_injection_writes_nothing(tmp_path):
    store = EventStore(tmp_path / "a.db")
    store.append("r", [RunStarted(task_id="t", task="task")])
    with pytest.raises(ApolloError, match="the injected guidance is empty"):
        branch(store, "r", 1, inject="  ")
    assert store.last_position() == 1


# -- recorded runs through the real engine ----------------------------------------------------


def _task(tmp_path: Path) -> Task:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "data.txt").write_text("3\n4\n")
    return Task(id="sum", description="Sum the numbers in data.txt.", source_dir=str(tmp_path / "src"),
                workspace=WorkspaceSpec(files=["data.txt"]))


def _record(tmp_path: Path) -> tuple[EventStore, Task]:
    store = EventStore(tmp_path / "a.db")
    task = _task(tmp_path)
    root = prepare_workspace(task, tmp_path / "ws")
    store.append("run-1", [run_started(task, model="claude-test", provider="anthropic", workspace=root)])
    server = ScriptedAnthropic([
        tool_use("read_file", {"path": "data.txt"}),
        tool_use("run_command", {"command": f"echo started at $(date -Iseconds) in {root}"}),
        tool_use("write_file", {"path": "sum.py", "content": "print(sum(int(l) for l in open('data.txt')))\n"}),
        tool_use("run_command", {"command": "python3 sum.py"}),
        tool_use("finish", {"answer": "7"}),
    ])

    async def go():
        client = server.client()
        await Agent(store, "run-1", client, Workspace(root)).run()
        await client.aclose()

    anyio.run(go)
    return store, task


def test_verify_passes_on_a_recorded_run_and_names_the_version_that_no_longer_matches(tmp_path, monkeypatch):
    store, _ = _record(tmp_path)
    report = verify_run(store, "run-1")
    assert report.ok and report.actions_checked == 5

    # a branch with guidance, continued by hand with a correct digest, still verifies
    child = branch(store, "run-1", 5, inject="check the data first")
    assert verify_run(store, child).ok

    # a change to the fold: human messages now render differently
    monkeypatch.setattr(context_module, "HUMAN_TAG", "user_note")
    store.append(child, [AgentActed(model="m", context_digest="0" * 64)])
    bad = verify_run(store, child)
    assert not bad.ok and bad.first_bad_version == store.head(child)

    # an event whose digest does not match what the fold rebuilds
    monkeypatch.undo()
    tampered = EventStore(tmp_path / "b.db")
    events = [r.event for r in store.read("run-1")]
    events[3] = AgentActed(**{**{f: getattr(events[3], f) for f in events[3].__struct_fields__}, "context_digest": "f" * 64})
    tampered.append("run-1", events)
    report = verify_run(tampered, "run-1")
    assert not report.ok and report.first_bad_version == 4 and "digest" in report.reason


def test_rerun_reproduces_every_observation(tmp_path):
    store, task = _record(tmp_path)
    fresh = prepare_workspace(task, tmp_path / "fresh")
    report = rerun(store, "run-1", fresh)
    assert report.ok and report.compared == 5 and report.divergence is None
    assert (fresh / "sum.py").exists()


def test_rerun_stops_at_the_first_divergence_with_a_readable_diff(tmp_path):
    store, task = _record(tmp_path)
    fresh = prepare_workspace(task, tmp_path / "fresh")
    (fresh / "data.txt").write_text("3\n5\n")
    report = rerun(store, "run-1", fresh)
    assert not report.ok and report.compared == 1
    divergence = report.divergence
    assert divergence.version == 3 and divergence.tool == "read_file"
    assert "-4" in divergence.diff and "+5" in divergence.diff


def test_rerun_cli_reports_ok_and_divergence(tmp_path):
    store, _ = _record(tmp_path)
    task_file = tmp_path / "task.toml"
    task_file.write_text('id = "sum"\ndescription = "Sum the numbers in data.txt."\n[workspace]\nfiles = ["src/data.txt"]\n')
    runner = CliRunner()
    ok = runner.invoke(cli, ["replay", "run-1", "--rerun", "--workspace", str(tmp_path / "w1"), "--db", str(tmp_path / "a.db")])
    assert ok.exit_code == 1 and "diverges at v3" in ok.output  # empty workspace: data.txt is missing
    fresh = prepare_workspace(_task(tmp_path), tmp_path / "w2")
    good = runner.invoke(cli, ["replay", "run-1", "--rerun", "--workspace", str(fresh), "--db", str(tmp_path / "a.db")])
    assert good.exit_code == 0 and "OK: 5 observations reproduced" in good.output


def test_branch_with_injected_guidance_continues_live_from_the_fork(tmp_path):
    store, _ = _record(tmp_path)
    child = branch(store, "run-1", 5, inject="Use awk instead of Python.", annotator="ana")
    server = ScriptedAnthropic([tool_use("run_command", {"command": "awk '{s+=$1} END {print s}' data.txt"}), tool_use("finish", {"answer": "7"})])
    workspace = Workspace(prepare_workspace(_task(tmp_path), tmp_path / "branch-ws"))

    async def go():
        client = server.client()
        finished = await continue_branch(store, child, client, workspace)
        await client.aclose()
        return finished

    assert anyio.run(go).status == "finished"
    first = server.requests[0]
    joined = "\n".join(texts(first))
    assert "Use awk instead of Python." in joined and HUMAN_TAG in joined
    parent_after_fork = [r for r in store.read("run-1") if r.version > 5]
    for recorded in parent_after_fork:
        if isinstance(recorded.event, ToolObserved):
            assert recorded.event.output not in joined or recorded.event.output.strip() == ""
    assert "sum.py" not in json.dumps(first)  # written at v6, after the fork
    assert verify_run(store, child).ok


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture()
def db(tmp_path) -> str:
    _record(tmp_path)
    return str(tmp_path / "a.db")


def _count(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from events").fetchone()[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["replay", "ghost", "--at", "1"], "no stream 'ghost'"),
        (["replay", "run-1", "--at", "99"], "versions 1..12"),
        (["replay", "run-1", "--at", "0", "--branch"], "versions 1..12"),
        (["replay", "run-1", "--at", "3", "--branch", "--continue"], "--continue needs --model"),
        (["replay", "run-1", "--at", "3", "--inject", "x"], "go with --branch"),
        (["replay", "run-1", "--verify", "--rerun"], "choose one of"),
        (["replay", "run-1", "--rerun"], "--rerun needs --workspace"),
        (["replay", "ghost", "--verify"], "no stream 'ghost'"),
        (["tree", "ghost"], "no stream 'ghost'"),
    ],
)
def test_bad_input_is_an_error_and_writes_nothing(db, args, message):
    before = _count(db)
    result = CliRunner().invoke(cli, [*args, "--db", db])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error:") and message in result.output
    assert _count(db) == before


def test_replay_cli_shows_branches_verifies_and_draws_the_tree(db):
    runner = CliRunner()
    shown = runner.invoke(cli, ["replay", "run-1", "--at", "3", "--db", db])
    assert shown.exit_code == 0 and "run-1 at v3" in shown.output and "[tool/tool v3]" in shown.output
    state = json.loads(runner.invoke(cli, ["replay", "run-1", "--at", "3", "--json", "--db", db]).output)
    assert state["version"] == 3 and len(state["context"]["messages"]) == 3
    events = runner.invoke(cli, ["replay", "run-1", "--at", "3", "--show", "events", "--db", db]).output.splitlines()
    assert len(events) == 3
    made = json.loads(runner.invoke(cli, ["replay", "run-1", "--at", "5", "--branch", "--inject", "go", "--annotator", "ana", "--json", "--db", db]).output)
    assert made == {"stream_id": "run-1~b1", "parent_id": "run-1", "fork_version": 5, "head": 7}
    verified = runner.invoke(cli, ["replay", "run-1", "--verify", "--db", db])
    assert verified.exit_code == 0 and "OK: 5 actions" in verified.output
    drawn = runner.invoke(cli, ["tree", "run-1~b1", "--db", db])
    assert drawn.exit_code == 0 and "run-1~b1" in drawn.output and "@v5" in drawn.output and "finished" in drawn.output
    nodes = json.loads(runner.invoke(cli, ["tree", "run-1", "--json", "--db", db]).output)
    assert [(n["stream_id"], n["status"]) for n in nodes] == [("run-1", "finished"), ("run-1~b1", "idle")]


def test_replay_cli_branches_and_continues_live_in_a_workspace_rebuilt_at_the_fork(tmp_path):
    from apollo_es.models import ModelResponse, save_recording

    _record(tmp_path)
    task_file = tmp_path / "task.toml"
    task_file.write_text('id = "sum"\ndescription = "Sum the numbers in data.txt."\n[workspace]\nfiles = ["src/data.txt"]\n')
    # the fork (v5) comes after read_file and the `echo`; sum.py is written later, on the parent only
    recording = tmp_path / "branch.jsonl"
    save_recording(recording, [
        ModelResponse(model="m", tool_calls=[ToolCall(id="b1", name="run_command", arguments={"command": "ls; awk '{s+=$1} END {print s}' src/data.txt"})]),
        ModelResponse(model="m", tool_calls=[ToolCall(id="b2", name="finish", arguments={"answer": "7"})]),
    ])
    workspace = tmp_path / "branch-ws"
    result = CliRunner().invoke(cli, [
        "replay", "run-1", "--at", "5", "--branch", "--inject", "Use awk.", "--annotator", "ana", "--continue",
        "--provider", "recorded", "--recording", str(recording), "--task", str(task_file), "--workspace", str(workspace),
        "--db", str(tmp_path / "a.db"), "--json",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "finished"
    store = EventStore(tmp_path / "a.db")
    observed = [r.event.output for r in store.read("run-1~b1") if isinstance(r.event, ToolObserved) and r.version > 5]
    assert "sum.py" not in observed[0] and "7" in observed[0]  # the workspace is the one at the fork
    assert [r.actor for r in store.read("run-1~b1") if r.kind == "HumanIntervened"] == ["human:ana"]


def _imported_run(db: Path) -> None:
    """A run as an importer writes it, whose recorded command would leave a mark where it runs."""
    call = ToolCall(id="c1", name="run_command", arguments={"command": "touch ran-here; pwd"})
    with EventStore(db) as store:
        store.append("imp", [
            RunStarted(task_id="t", task="imported", model="m"),
            AgentActed(model="m", tool_calls=[call]),
            NewEvent(event=ToolObserved(tool_call_id="c1", output="/testbed\n", exit_code=0)),
        ], actor="import:swe-agent")


def test_imported_runs_are_not_re_executed_unless_asked(tmp_path):
    db = tmp_path / "a.db"
    _imported_run(db)
    ws = tmp_path / "ws"
    for args in (["--rerun", "--workspace", ws], ["--branch", "--continue", "--provider", "recorded", "--recording", db,
                                                   "--task", tmp_path / "task.toml", "--workspace", ws]):
        (tmp_path / "task.toml").write_text('id = "t"\ndescription = "d"\n')
        result = CliRunner().invoke(cli, ["replay", "imp", *map(str, args), "--db", str(db)])
        assert result.exit_code == 1 and "was imported (import:swe-agent)" in result.output, result.output
        assert "--allow-imported-commands" in result.output
        assert not ws.exists()
    with EventStore(db) as store:
        assert [s.stream_id for s in store.streams()] == ["imp"]  # no branch was made either

    result = CliRunner().invoke(cli, ["replay", "imp", "--rerun", "--workspace", str(ws), "--allow-imported-commands", "--db", str(db)])
    assert (ws / "ran-here").exists()  # executed, in the sandbox: its pwd is /workspace
    assert result.exit_code == 1 and "diverges at v3" in result.output and "+<workspace>" in result.output


def test_a_branch_at_an_action_forks_after_its_results(tmp_path):
    """Cut between an action and its observation, a continued branch would report the result
    lost (and train on that invented observation): the fork moves past the results."""
    store, _ = _record(tmp_path)
    kinds = {r.version: r.kind for r in store.read("run-1")}
    assert (kinds[4], kinds[5]) == ("AgentActed", "ToolObserved")
    assert [fork_point(store, "run-1", v) for v in (1, 3, 4, 5)] == [1, 3, 5, 5]
    runner = CliRunner()
    db = str(tmp_path / "a.db")
    made = runner.invoke(cli, ["replay", "run-1", "--at", "4", "--branch", "--json", "--db", db])
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["fork_version"] == 5
    raw = runner.invoke(cli, ["branch", "run-1", "--at", "4", "--db", db])
    assert raw.exit_code == 0 and "branched after v5" in raw.output
    child = raw.output.strip().splitlines()[-1]
    assert state_at(store, child).context.pending_calls == ()


def test_rerun_passes_on_a_run_with_sessions_timings_and_a_lost_result(tmp_path):
    """What differs between two honest executions (pids, timings, a session still running when
    read, a result the crashed agent never saw) is normalized or skipped; session output
    recorded after the session ended is read after it ends."""
    store = EventStore(tmp_path / "a.db")
    task = _task(tmp_path)
    root = prepare_workspace(task, tmp_path / "ws")
    store.append("run-1", [run_started(task, model="claude-test", provider="anthropic", workspace=root)])
    finish_then_more = tool_use("finish", {"answer": "7"})  # a second call after finish is never run: a notice
    finish_then_more["content"].append({"type": "tool_use", "id": "toolu_late", "name": "run_command", "input": {"command": "date"}})
    server = ScriptedAnthropic([
        tool_use("create_session", {"command": "sleep 1; echo trained; echo pid $$", "name": "train"}),
        tool_use("get_session_output", {"session_id": "s1"}),  # still running: timing decides what it shows
        tool_use("run_command", {"command": "sleep 2; time -p true"}),
        tool_use("get_session_output", {"session_id": "s1"}),  # after the end: compared, once it ends
        finish_then_more,
    ])

    async def go():
        client = server.client()
        await Agent(store, "run-1", client, Workspace(root)).run()
        await client.aclose()

    anyio.run(go)
    assert [r.event.origin for r in store.read("run-1") if isinstance(r.event, ToolObserved)][-1] == "notice"
    outputs = [r.event.output for r in store.read("run-1") if isinstance(r.event, ToolObserved)]
    assert "running for" in outputs[1] and "exited with code 0" in outputs[3] and "real" in outputs[2]
    task_file = tmp_path / "task.toml"
    task_file.write_text('id = "sum"\ndescription = "Sum the numbers in data.txt."\n[workspace]\nfiles = ["src/data.txt"]\n')
    result = CliRunner().invoke(cli, ["replay", "run-1", "--rerun", "--workspace", str(tmp_path / "again"), "--task",
                                      str(task_file), "--db", str(tmp_path / "a.db")])
    assert result.exit_code == 0, result.output
    # compared: create_session, run_command, the ended session's output, finish; the running
    # session's output is executed only, the call after finish not even that
    assert "OK: 4 observations reproduced (5 tool calls executed)" in result.output


def test_rerun_on_an_empty_workspace_suggests_the_task(tmp_path):
    store, _ = _record(tmp_path)
    result = CliRunner().invoke(cli, ["replay", "run-1", "--rerun", "--workspace", str(tmp_path / "empty"), "--db", str(tmp_path / "a.db")])
    assert result.exit_code == 1 and "the workspace started empty: pass --task TASK.toml" in result.output
