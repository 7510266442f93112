"""The rollout engine when things go wrong: a killed process, a person writing from another
process, a failing model API, a model that tries to leave its workspace or read secrets, and
a model that answers garbage.

The multi-process tests run the real `apollo-es` CLI in subprocesses. A step that must be in
progress when the test acts is a `run_command` that creates a flag file and then waits for a
file the test creates, so the timing never depends on sleeps.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from click.testing import CliRunner

from apollo_es import EventStore
from apollo_es.agent import NOT_RUN_AFTER_FINISH, Agent
from apollo_es.cli import cli
from apollo_es.models import ModelResponse, OpenAIClient, RecordedClient, RetryPolicy, save_recording
from apollo_es.store import RecordedEvent
from apollo_es.tasks import EvalSpec, Task, prepare_workspace, run_started
from apollo_es.tools import Workspace
from events import AgentActed, ContextSummarized, HumanIntervened, RunFinished, ToolCall, ToolObserved, Usage
from projections.context import HUMAN_TAG, fold
from projections.requests import digest, render_request
from tests.conftest import wait_until
from tests.scripted import API_KEY, HTTPError, ScriptedAnthropic, snapshot_reply, texts, tool_use

CLI = [sys.executable, "-c", "from apollo_es.cli import main; main()"]
TIMEOUT = 60  # seconds; generous for slow CI, never reached when things work

TASK_TOML = '''
id = "resilience"
description = "Keep notes in notes.txt, run a few commands, then finish."
max_steps = 30
'''


# -- helpers ------------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")}
    env["CI"] = "1"
    return env


def start_cli(*args: object, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *map(str, args)], cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def resume_cli(run_id: str, recording: Path, db: Path):
    """`apollo-es resume RUN --provider recorded`, in this process."""
    args = ["resume", run_id, "--provider", "recorded", "--recording", str(recording), "--db", str(db)]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def count_kind(db: Path, kind: str) -> int:
    """Events of `kind` in the store another process is writing (0 before it exists)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0


def blocking_command(name: str) -> str:
    """A command that creates `<name>.started` in the workspace (the only place a sandboxed
    command can write) and waits (at most 20 s) for the test to create `<name>.go` there."""
    return f"touch {name}.started; for i in $(seq 400); do [ -f {name}.go ] && break; sleep 0.05; done; echo released"


_call_ids = itertools.count(1)


def respond(*calls: tuple[str, dict]) -> ModelResponse:
    """A recorded model response calling these tools, in order."""
    tool_calls = [ToolCall(id=f"call-{next(_call_ids)}", name=name, arguments=args) for name, args in calls]
    return ModelResponse(tool_calls=tool_calls, model="recorded-model", stop_reason="tool_use")


def check_log(events: list[RecordedEvent]) -> None:
    """The invariants every run's log keeps, whatever happened to the process."""
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    for index, recorded in enumerate(events):
        if not isinstance(recorded.event, AgentActed):
            continue
        calls = recorded.event.tool_calls
        following = [e for e in events[index + 1:] if not isinstance(e.event, HumanIntervened)][: max(1, len(calls))]
        assert all(isinstance(e.event, ToolObserved) for e in following), [e.kind for e in following]
        assert [e.causation_id for e in following] == [recorded.event_id] * len(following)
        assert [e.event.tool_call_id for e in following] == ([c.id for c in calls] or [""])
        # what the model was sent is exactly what the fold of the log before the action renders
        assert recorded.event.context_digest == digest(render_request(fold(events[:index])))
    observations = [e for e in events if isinstance(e.event, ToolObserved)]
    assert len(observations) == sum(max(1, len(e.event.tool_calls)) for e in events if isinstance(e.event, AgentActed))


def start_run(store: EventStore, tmp_path: Path, run_id: str = "run-1", provider: str = "anthropic") -> Workspace:
    task = Task(id="t", description="Make hello.py print the sum of 2 and 3.")
    root = prepare_workspace(task, tmp_path / f"ws-{run_id}")
    store.append(run_id, [run_started(task, model="claude-test", provider=provider, workspace=root)], actor="system")
    return Workspace(root)


def drive(store: EventStore, client, workspace: Workspace, run_id: str = "run-1", *, resume: bool = False) -> RunFinished:
    async def go() -> RunFinished:
        try:
            return await Agent(store, run_id, client, workspace).run(resume=resume)
        finally:
            await client.aclose()

    return anyio.run(go)


def observations(store: EventStore, run_id: str = "run-1") -> list[ToolObserved]:
    return [e.event for e in store.read(run_id) if isinstance(e.event, ToolObserved)]


@pytest.fixture()
def log(tmp_path) -> Iterator[EventStore]:
    """The store of an in-process run."""
    with EventStore(tmp_path / "a.db") as store:
        yield store


@pytest.fixture()
def task_file(tmp_path) -> Path:
    path = tmp_path / "task.toml"
    path.write_text(TASK_TOML)
    return path


# -- 1. SIGKILL and resume ----------------------------------------------------------------


LOST = "The result of this run_command call was lost: the agent process stopped while it ran."


@pytest.mark.parametrize("kill_when", ["after-first-action", "mid-run", "in-tool"])
def test_a_killed_run_resumes_with_no_duplicated_or_lost_step(tmp_path, task_file, kill_when):
    flags = tmp_path / "ws"  # the run's workspace
    recording = [
        respond(("think", {"thought": "Plan: notes first, then commands."})),
        respond(("run_command", {"command": "sleep 0.3; echo k1"})),
        respond(("write_file", {"path": "notes.txt", "content": "a\n"})),
        respond(("run_command", {"command": "sleep 0.3; echo k2"})),
        respond(("think", {"thought": "two calls in one turn"}), ("run_command", {"command": "sleep 0.3; echo k3"})),
        respond(("read_file", {"path": "notes.txt"})),
        respond(("run_command", {"command": blocking_command("step7")})),
        respond(("list_files", {})),
        respond(("run_command", {"command": "sleep 0.3; echo k5"})),
        respond(("edit_file", {"path": "notes.txt", "old": "a", "new": "b"})),
        respond(("run_command", {"command": "cat notes.txt"})),
        respond(("finish", {"answer": "notes.txt says b"})),
    ]
    save_recording(tmp_path / "rec.jsonl", recording)
    db = tmp_path / "apollo.db"

    run = start_cli("run", task_file, "--model", "recorded-model", "--provider", "recorded", "--recording", "rec.jsonl",
                    "--run-id", "r", "--workspace", tmp_path / "ws", "--db", db, cwd=tmp_path)
    try:
        if kill_when != "in-tool":
            wait_until(lambda: count_kind(db, "RunStarted") == 1, "the run to start", run)  # its workspace is made
            (flags / "step7.go").touch()
        if kill_when == "after-first-action":
            wait_until(lambda: count_kind(db, "AgentActed") >= 1, "the first action", run)
        elif kill_when == "mid-run":
            wait_until(lambda: count_kind(db, "ToolObserved") >= 5, "five observations", run)
        else:
            wait_until((flags / "step7.started").exists, "step 7's command to start", run)
        assert run.poll() is None, "the run ended before it could be killed"
        run.send_signal(signal.SIGKILL)
        assert run.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()
        (flags / "step7.go").touch()  # let an orphaned step-7 command end
    with EventStore(db) as store:
        killed_at = store.read("r")
    assert not any(isinstance(e.event, RunFinished) for e in killed_at)
    if kill_when == "in-tool":
        assert isinstance(killed_at[-1].event, AgentActed) and killed_at[-1].event.tool_calls == recording[6].tool_calls

    # a new process would only add start-up time: nothing of the killed one survives but the log
    resumed = resume_cli("r", tmp_path / "rec.jsonl", db)
    assert resumed.exit_code == 0, resumed.output
    assert "r: finished after 12 steps" in resumed.output

    with EventStore(db) as store:
        events = store.read("r")
        assert store.verify().ok
    check_log(events)
    actions = [e.event for e in events if isinstance(e.event, AgentActed)]
    assert [a.tool_calls for a in actions] == [r.tool_calls for r in recording]
    finished = [e.event for e in events if isinstance(e.event, RunFinished)]
    assert finished == [RunFinished(status="finished", final_answer="notes.txt says b")]
    assert events[:len(killed_at)] == killed_at  # resuming appended, never rewrote
    step7 = next(e.event for e in events if isinstance(e.event, ToolObserved) and e.event.tool_call_id == recording[6].tool_calls[0].id)
    if kill_when == "in-tool":
        # a side-effecting tool is not run again: the agent is told its result was lost
        assert step7.is_error and step7.output.startswith(LOST)
        assert (tmp_path / "ws" / "notes.txt").read_text() == "b\n"  # the steps after it ran
    else:
        assert not step7.is_error and "released" in step7.output


class Crash(BaseException):
    """The process dying: a BaseException, so no handler in the agent catches it."""


def crash_after(store: EventStore, appends: int) -> None:
    """Make `store` die right after its `appends`-th append has committed."""
    real, done = store.append, []

    def append(*args, **kwargs):
        recorded = real(*args, **kwargs)
        done.append(recorded)
        if len(done) == appends:
            raise Crash(f"after append {appends}")
        return recorded

    store.append = append


def test_a_crash_after_any_append_resumes_to_the_same_run(tmp_path):
    """Every point between two events is a place the process can die, including during a
    summary and during the eval command; each resumes (through `apollo-es resume`) to a run
    with the recorded actions in order, every call observed, and the score."""
    recording = [
        respond(("think", {"thought": "plan"})),
        respond(("run_command", {"command": "echo one"})),
        msgspec.structs.replace(respond(("write_file", {"path": "notes.txt", "content": "a\n"})), usage=Usage(input_tokens=5_000)),
        ModelResponse(text=snapshot_reply("notes.txt written.")["content"][0]["text"], model="recorded-model"),  # the summary
        respond(("read_file", {"path": "notes.txt"}), ("run_command", {"command": "echo two"})),
        respond(("edit_file", {"path": "notes.txt", "old": "a", "new": "b"})),
        respond(("finish", {"answer": "done"}), ("think", {"thought": "too late"})),
    ]
    actions = [r.tool_calls for r in recording if r.tool_calls]
    save_recording(tmp_path / "rec.jsonl", recording)
    task = Task(id="t", description="Keep notes.", summary_threshold=4_000, eval=EvalSpec(command="echo score 0.75"))
    agent_appends = 16  # 6 actions, 8 observations, 1 summary, RunFinished

    for appends in range(1, agent_appends):
        db = tmp_path / f"crash-{appends}.db"
        with EventStore(db) as store:
            root = prepare_workspace(task, tmp_path / f"ws-{appends}")
            store.append("r", [run_started(task, model="recorded-model", provider="anthropic", workspace=root)], actor="system")
            crash_after(store, appends)
            with pytest.raises(Crash):
                drive(store, RecordedClient(recording), Workspace(root), "r")

        resumed = resume_cli("r", tmp_path / "rec.jsonl", db)
        assert resumed.exit_code == 0, f"crash after append {appends}: {resumed.output}"
        assert "r: finished after 6 steps, score 0.75" in resumed.output

        with EventStore(db) as store:
            events = store.read("r")
            assert store.verify().ok
        check_log(events)
        assert [e.event.tool_calls for e in events if isinstance(e.event, AgentActed)] == actions
        assert [e.event.summary for e in events if isinstance(e.event, ContextSummarized)] == [recording[3].text]
        assert [e.event for e in events if isinstance(e.event, RunFinished)] == [RunFinished(status="finished", final_answer="done", score=0.75)]
        assert events[-2].event.output == NOT_RUN_AFTER_FINISH


# -- 2. a person writes from another process while the run goes on ---------------------------


def run_blocked(tmp_path: Path, task_file, after: list[tuple[str, dict]], meanwhile: Callable[[Path], None]):
    """`apollo-es run` in a subprocess, held in its second step while `meanwhile(db)` runs.

    Returns the run's exit code, stdout, stderr and the store's path.
    """
    flags = tmp_path / "ws"  # the run's workspace
    save_recording(tmp_path / "rec.jsonl", [
        respond(("think", {"thought": "start"})),
        respond(("run_command", {"command": blocking_command("wait")})),
        *(respond(step) for step in after),
    ])
    db = tmp_path / "apollo.db"
    run = start_cli("run", task_file, "--model", "m", "--provider", "recorded", "--recording", "rec.jsonl",
                    "--run-id", "r", "--workspace", tmp_path / "ws", "--db", db, cwd=tmp_path)
    try:
        wait_until((flags / "wait.started").exists, "the slow step", run)
        meanwhile(db)
        (flags / "wait.go").touch()
        out, err = run.communicate(timeout=TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
    return run.returncode, out, err, db


def test_guidance_from_another_process_reaches_the_next_request(tmp_path, task_file):
    message = "Use the validation split, not the test split."

    def intervene(db: Path) -> None:
        sent = run_cli("intervene", "r", "-m", message, "--annotator", "ana", "--db", db, cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() == "guidance recorded as r v5"

    returncode, out, err, db = run_blocked(tmp_path, task_file, [
        ("think", {"thought": "following the guidance"}), ("finish", {"answer": "done"}),
    ], intervene)
    assert returncode == 0, err
    assert "r: finished after 4 steps" in out

    with EventStore(db) as store:
        events = store.read("r")
    check_log(events)
    assert [e.kind for e in events] == [
        "RunStarted", "AgentActed", "ToolObserved", "AgentActed", "HumanIntervened", "ToolObserved",
        "AgentActed", "ToolObserved", "AgentActed", "ToolObserved", "RunFinished",
    ]
    assert events[4].actor == "human:ana" and events[4].event.seen_version == 4
    # The very next request: the tool result, then the person's message, tagged; the action
    # recorded the digest of exactly that request (check_log checked the digests).
    seen = fold(events[:6])
    assert [m.source for m in seen.messages[-2:]] == ["tool", "human"]
    assert seen.messages[-1].content == f"<{HUMAN_TAG}>\n{message}\n</{HUMAN_TAG}>"
    assert events[6].event.context_digest == digest(render_request(seen))
    assert message in json.dumps(render_request(seen)["messages"][-1])
    assert message not in json.dumps(render_request(fold(events[:3])))


def test_stop_from_another_process_ends_the_run_cleanly(tmp_path, task_file):

    def stop(db: Path) -> None:
        stopped = run_cli("stop", "r", "-m", "drifting", "--annotator", "ana", "--db", db, cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        # the held step is released only once the stop has ended it (else it would race the stop)
        wait_until(lambda: count_kind(db, "ToolObserved") == 2, "the stop to interrupt the running step")

    returncode, out, err, db = run_blocked(tmp_path, task_file, [
        ("think", {"thought": "never asked for"}), ("finish", {"answer": "never asked for"}),
    ], stop)
    assert returncode == 0, err
    assert "r: stopped after 2 steps" in out

    with EventStore(db) as store:
        events = store.read("r")
    check_log(events)
    assert [e.kind for e in events][-3:] == ["HumanIntervened", "ToolObserved", "RunFinished"]
    assert events[-1].event == RunFinished(status="stopped")
    # the running step was interrupted by the stop, and its observation says so
    assert events[-2].event.is_error and "interrupted: a person stopped the run" in events[-2].event.output


# -- 3. a failing model API -----------------------------------------------------------------


def test_rate_limits_overload_and_server_errors_are_retried(tmp_path, log):
    store = log
    workspace = start_run(store, tmp_path)
    server = ScriptedAnthropic([
        HTTPError(429, "rate_limit_error", headers={"retry-after": "1"}),
        tool_use("think", {"thought": "plan"}),
        HTTPError(529, "overloaded_error"),
        tool_use("run_command", {"command": "echo ok"}),
        HTTPError(500, "api_error"),
        tool_use("finish", {"answer": "done"}),
    ])
    finished = drive(store, server.client(max_delay=60), workspace)

    assert finished.status == "finished"
    assert len(server.requests) == 6
    assert server.requests[0] == server.requests[1]  # a retry sends the same body
    assert server.sleeps[0] == 1.0  # the server's retry-after, not the 0.01 s backoff
    assert len(server.sleeps) == 3 and all(0 <= s <= 0.01 for s in server.sleeps[1:])
    events = store.read("run-1")
    check_log(events)
    assert sum(isinstance(e.event, AgentActed) for e in events) == 3
    assert store.verify().ok


def test_a_persistent_outage_fails_the_run_and_resume_continues_it(tmp_path, log):
    store = log
    workspace = start_run(store, tmp_path)
    down = ScriptedAnthropic([
        tool_use("write_file", {"path": "hello.py", "content": "print(2 + 3)\n"}),
        tool_use("run_command", {"command": "python3 hello.py"}),
        *[HTTPError(529, "overloaded_error")] * 4,
    ])
    failed = drive(store, down.client(attempts=4), workspace)
    assert failed.status == "failed"
    assert "529" in failed.error and "overloaded_error" in failed.error and "gave up after 4 attempts" in failed.error
    assert API_KEY not in failed.error
    before = store.read("run-1")

    healthy = ScriptedAnthropic([tool_use("think", {"thought": "the API is back"}), tool_use("finish", {"answer": "prints 5"})])
    finished = drive(store, healthy.client(), workspace, resume=True)

    assert finished.status == "finished" and finished.final_answer == "prints 5"
    events = store.read("run-1")
    assert events[:len(before)] == before
    assert [e.kind for e in events] == [
        "RunStarted", "AgentActed", "ToolObserved", "AgentActed", "ToolObserved", "RunFinished",
        "AgentActed", "ToolObserved", "AgentActed", "ToolObserved", "RunFinished",
    ]
    assert [e.event.status for e in events if isinstance(e.event, RunFinished)] == ["failed", "finished"]
    check_log(events)
    # the first request after the outage carries the whole history, the last result included
    assert healthy.requests[0] == render_request(fold(before))
    assert any(t.startswith("5") for t in texts(healthy.requests[0]))
    assert store.verify().ok


# -- 4. safety ----------------------------------------------------------------------------


def test_the_workspace_holds_and_secrets_stay_out_of_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    outside = tmp_path / "outside.txt"
    outside.write_text("TOP SECRET\n")
    db = tmp_path / "a.db"
    store = EventStore(db)
    workspace = start_run(store, tmp_path)
    server = ScriptedAnthropic([
        tool_use("read_file", {"path": "../outside.txt"}),
        tool_use("run_command", {"command": f"ln -s {shlex.quote(str(outside))} escape.txt"}),
        tool_use("read_file", {"path": "escape.txt"}),
        tool_use("run_command", {"command": "sleep 30", "timeout": 1}),
        tool_use("run_command", {"command": "env"}),
        tool_use("finish", {"answer": "done"}),
    ])
    started = time.monotonic()
    finished = drive(store, server.client(), workspace)

    assert finished.status == "finished"
    assert time.monotonic() - started < 15
    relative, _, escape, slow, env, _ = observations(store)
    assert relative.is_error and "outside the workspace" in relative.output
    assert escape.is_error and "outside the workspace" in escape.output
    assert slow.is_error and "timed out after 1 s" in slow.output
    assert not env.is_error and "PATH=" in env.output
    assert not any("TOP SECRET" in o.output for o in observations(store))
    check_log(store.read("run-1"))

    key = API_KEY.encode()
    wal = Path(f"{db}-wal")
    assert wal.exists() and wal.stat().st_size > 0  # the events are (at least partly) still in the WAL
    assert key not in db.read_bytes() and key not in wal.read_bytes()
    store.close()
    assert key not in db.read_bytes()


# -- 5. garbage from the model --------------------------------------------------------------


class ScriptedOpenAI:
    """A chat-completions server: each request gets the next reply (a dict, or raw bytes)."""

    def __init__(self, replies: list[dict | bytes]) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        reply = self.replies.pop(0)
        if isinstance(reply, bytes):
            return httpx.Response(200, content=reply, headers={"content-type": "text/html"})
        return httpx.Response(200, json=reply)

    def client(self) -> OpenAIClient:
        async def no_sleep(seconds: float) -> None:
            pass

        return OpenAIClient(
            "glm-test", base_url="http://vllm.test/v1", http_client=httpx.AsyncClient(transport=httpx.MockTransport(self)),
            policy=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05), sleep=no_sleep,
        )


def completion(call_id: str, name: str, arguments: str) -> dict:
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return {
        "model": "glm-test",
        "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10},
    }


def test_malformed_and_unknown_tool_calls_become_errors_the_agent_sees(tmp_path, log):
    store = log
    workspace = start_run(store, tmp_path, provider="openai")
    server = ScriptedOpenAI([
        b"<html><body>502 Bad Gateway</body></html>",  # a proxy's page: retried, not recorded
        completion("call_1", "run_command", "{not json"),
        completion("call_2", "browse_web", '{"url": "http://example.com"}'),
        completion("call_3", "finish", '{"answer": "done"}'),
    ])
    finished = drive(store, server.client(), workspace)

    assert finished.status == "finished"
    malformed, unknown, _ = observations(store)
    assert malformed.is_error and "not a JSON object" in malformed.output and "{not json" in malformed.output
    assert unknown.is_error and "Unknown tool 'browse_web'" in unknown.output
    # each error is the last message of the next request, as the tool result of its call
    assert server.requests[2]["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": malformed.output}
    assert server.requests[3]["messages"][-1] == {"role": "tool", "tool_call_id": "call_2", "content": unknown.output}
    # the malformed call is sent back as valid JSON (vLLM parses it) that still shows what the model wrote
    assert server.requests[2]["messages"][-2]["tool_calls"][0]["function"]["arguments"] == '{"_raw":"{not json"}'
    events = store.read("run-1")
    check_log(events)
    assert sum(isinstance(e.event, AgentActed) for e in events) == 3
