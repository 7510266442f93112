"""The run commands' CLI: `Error: ...` and exit code 1 on user errors with nothing written,
--json of run, and watch printing a timeline and returning once the run has ended."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from apollo_es import EventStore
from apollo_es.cli import cli, run_commands
from apollo_es.models import ModelResponse, save_recording
from events import ActionJudged, AgentActed, RunFinished, RunStarted, ToolCall

TASK = '''
id = "hello"
description = "Write hello.txt, then finish."
max_steps = 5
'''


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def count_events(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from events").fetchone()[0]


def assert_user_error(result, message: str, db: Path, events_before: int = 0) -> None:
    assert result.exit_code == 1, result.output
    assert "Error: " in result.output and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not db.exists() or count_events(db) == events_before


_call_ids = itertools.count(1)


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(id=f"call-{next(_call_ids)}", name=name, arguments=arguments)


@pytest.fixture()
def task(tmp_path) -> Path:
    path = tmp_path / "task" / "task.toml"
    path.parent.mkdir()
    path.write_text(TASK)
    return path


@pytest.fixture()
def recording(tmp_path) -> Path:
    path = tmp_path / "recording.jsonl"
    save_recording(path, [
        ModelResponse(tool_calls=[call("write_file", path="hello.txt", content="hi\n")], model="m"),
        ModelResponse(tool_calls=[call("finish", answer="wrote hello.txt")], model="m"),
    ])
    return path


@pytest.fixture()
def finished(tmp_path, task, recording) -> Path:
    """A store with run `r1`, finished by `apollo-es run` with the recorded provider."""
    db = tmp_path / "apollo.db"
    result = invoke("run", task, "--model", "m", "--provider", "recorded", "--recording", recording,
                    "--run-id", "r1", "--workspace", tmp_path / "ws", "--db", db)
    assert result.exit_code == 0, result.output
    return db


def test_run_json_prints_status_and_steps(tmp_path, task, recording):
    db = tmp_path / "apollo.db"
    result = invoke("run", task, "--model", "m", "--provider", "recorded", "--recording", recording,
                    "--run-id", "r1", "--workspace", tmp_path / "ws", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "run_id": "r1", "status": "finished", "steps": 2, "final_answer": "wrote hello.txt", "score": None, "error": "",
    }
    assert (tmp_path / "ws" / "hello.txt").read_text() == "hi\n"


def test_run_prints_the_outcome(tmp_path, task, recording, monkeypatch):
    monkeypatch.setattr(run_commands, "stderr_is_tty", lambda: True)  # with the live status line
    result = invoke("run", task, "--model", "m", "--provider", "recorded", "--recording", recording,
                    "--run-id", "r1", "--workspace", tmp_path / "ws", "--db", tmp_path / "apollo.db")
    assert result.exit_code == 0, result.output
    assert "r1: finished after 2 steps" in result.output and "wrote hello.txt" in result.output


@pytest.mark.parametrize(
    ("task_text", "extra", "message"),
    [
        (None, [], "cannot read task file"),
        ('id = "t"\ndescription = "unclosed\n', [], "is not valid TOML"),
        (TASK + 'colour = "blue"\n', [], "unknown field `colour`"),
        (TASK + '[workspace]\nfiles = ["data.csv"]\n', [], "workspace file 'data.csv' does not exist"),
        (TASK, ["--provider", "recorded"], "--provider recorded needs --recording FILE"),
        (TASK, [], "no Anthropic API key: set ANTHROPIC_API_KEY"),
        (TASK, ["--provider", "openai"], "the openai provider needs a server: pass --base-url"),
        (TASK + '[env]\nHF_TOKEN = "hf_x"\n', [], "[env] HF_TOKEN: secrets do not go in task files"),
        (TASK + 'env = "x"\n', [], "[env] and [sandbox] must be tables"),
        (TASK + '[sandbox]\nmemory_mb = -1\n', [], "Expected `int` >= 1 - at `$.sandbox.memory_mb`"),
        (TASK + '[sandbox]\nkind = "docker"\n', [], "Invalid enum value 'docker' - at `$.sandbox.kind`"),
        (TASK + '[sandbox]\nnetwork = true\nnet = 1\n', [], "unknown field `net`"),
        (TASK + '[sandbox]\ndevices = ["/dev/nvidia*"]\n', ["--provider", "recorded", "--recording", "/dev/null"],
         "nothing on this machine matches '/dev/nvidia*'"),
    ],
    ids=["missing-task-file", "malformed-toml", "unknown-key", "missing-workspace-file", "recorded-without-recording",
         "anthropic-without-key", "openai-without-server", "secret-in-env", "env-not-a-table", "negative-memory",
         "unknown-sandbox-kind", "unknown-sandbox-key", "missing-device"],
)
def test_run_refuses_a_bad_task_or_options_and_creates_no_store(tmp_path, task_text, extra, message):
    path = tmp_path / "task.toml"
    if task_text is not None:
        path.write_text(task_text)
    db = tmp_path / "apollo.db"
    result = invoke("run", path, "--model", "m", *extra, "--workspace", tmp_path / "ws", "--db", db,
                    env={"ANTHROPIC_API_KEY": None, "OPENAI_BASE_URL": None})
    assert_user_error(result, message, db)
    assert not db.exists()
    assert not (tmp_path / "ws").exists()


def test_run_refuses_a_non_empty_workspace(tmp_path, task, recording):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "old.txt").write_text("someone's work\n")
    db = tmp_path / "apollo.db"
    result = invoke("run", task, "--model", "m", "--provider", "recorded", "--recording", recording,
                    "--workspace", workspace, "--db", db)
    assert_user_error(result, "is not empty", db)
    assert [p.name for p in workspace.iterdir()] == ["old.txt"]


def test_run_refuses_an_existing_run_id(tmp_path, task, recording, finished):
    before = count_events(finished)
    result = invoke("run", task, "--model", "m", "--provider", "recorded", "--recording", recording,
                    "--run-id", "r1", "--workspace", tmp_path / "ws2", "--db", finished)
    assert_user_error(result, "run 'r1' already exists; use apollo-es resume r1", finished, before)
    assert not (tmp_path / "ws2").exists()


def test_resume_errors(tmp_path, recording, finished):
    before = count_events(finished)
    assert_user_error(invoke("resume", "nope", "--db", finished), "no stream 'nope'", finished, before)
    # a finished run has nothing to resume, which is said before any client is built (no API
    # key needed to learn it) and is not an error; nothing is appended
    for extra in ([], ["--provider", "recorded", "--recording", recording]):
        result = invoke("resume", "r1", *extra, "--db", finished, env={"ANTHROPIC_API_KEY": None})
        assert result.exit_code == 0 and "run r1 already finished; nothing to resume" in result.output
        assert count_events(finished) == before
    assert_user_error(invoke("resume", "r1", "--db", tmp_path / "typo.db"), "no store at", tmp_path / "typo.db")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["intervene", "r1", "-m", "try again"], "run r1 already ended (finished)"),
        (["stop", "r1"], "run r1 already ended (finished)"),
        (["intervene", "nope", "-m", "hi"], "no stream 'nope'"),
        (["intervene", "r1", "-m", "   "], "the message is empty"),
        (["intervene", "r1", "-m", "bad", "--kind", "reject"], "a reject needs the version of the action it judges (--target VERSION)"),
        (["intervene", "r1", "-m", "bad", "--kind", "reject", "--target", "1"], "version 1 of r1 is a RunStarted, not an AgentActed"),
        (["intervene", "r1", "-m", "bad", "--kind", "reject", "--target", "99"], "versions 1..6, not 99"),
    ],
    ids=["guidance-after-finish", "stop-after-finish", "unknown-run", "empty-message", "reject-without-target",
         "reject-a-non-action", "reject-out-of-range"],
)
def test_intervene_errors_write_nothing(finished, args, message):
    before = count_events(finished)
    assert_user_error(invoke(*args, "--db", finished), message, finished, before)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "1"], "a target version only goes with a reject or an approve"),
        (["--seen", "7"], "the seen version 7 is outside versions 1..1"),
    ],
    ids=["target-without-reject", "seen-out-of-range"],
)
def test_intervene_errors_on_a_live_run(tmp_path, args, message):
    db = tmp_path / "apollo.db"
    with EventStore(db) as store:
        store.append("live", [RunStarted(task_id="t", task="work")], actor="system")
    assert_user_error(invoke("intervene", "live", "-m", "hint", *args, "--db", db), message, db, 1)


def test_reject_of_a_finished_runs_action_is_recorded(finished):
    with EventStore(finished) as store:
        [action] = [e for e in store.read("r1") if isinstance(e.event, AgentActed)][:1]
    result = invoke("intervene", "r1", "-m", "wrong file", "--kind", "reject", "--target", action.version,
                    "--annotator", "ana", "--db", finished, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["kind"] == "reject"
    with EventStore(finished) as store:
        last = store.read("r1")[-1]
    assert last.actor == "human:ana" and last.event.target_event_id == action.event_id


def test_watch_no_follow_prints_the_tail(finished):
    result = invoke("watch", "r1", "--no-follow", "--tail", "2", "--db", finished)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("v5") and "ToolObserved" in lines[0]
    assert lines[1].startswith("v6") and "RunFinished" in lines[1] and "finished: wrote hello.txt" in lines[1]


@pytest.fixture()
def no_waiting(monkeypatch):
    """watch must not poll a run that has ended: fail instead of hanging if it does."""

    class Clock:
        @staticmethod
        def sleep(seconds: float) -> None:
            raise AssertionError("watch kept following a run that has ended")

    monkeypatch.setattr(run_commands, "time", Clock)


@pytest.mark.parametrize("tail", ["10", "0"])
def test_watch_of_a_finished_run_prints_its_timeline_and_returns(finished, no_waiting, tail):
    result = invoke("watch", "r1", "--tail", tail, "--db", finished)
    assert result.exit_code == 0, result.output
    kinds = [line.split()[2] for line in result.output.splitlines()]
    expected = ["RunStarted", "AgentActed", "ToolObserved", "AgentActed", "ToolObserved", "RunFinished"]
    assert kinds == (expected if tail == "10" else [])


def test_watch_returns_when_events_follow_the_end(finished, no_waiting):
    """A judge's verdict after RunFinished does not make the run live again."""
    with EventStore(finished) as store:
        action = next(e for e in store.read("r1") if isinstance(e.event, AgentActed))
        store.append("r1", [ActionJudged(target_event_id=action.event_id, verdict="keep", judge_id="j")], actor="judge:j")
        assert isinstance(store.read("r1")[-2].event, RunFinished)
    result = invoke("watch", "r1", "--tail", "1", "--db", finished)
    assert result.exit_code == 0, result.output
    assert "ActionJudged" in result.output


def test_watch_of_an_unknown_run(finished):
    assert_user_error(invoke("watch", "nope", "--no-follow", "--db", finished), "no stream 'nope'", finished, count_events(finished))


@pytest.mark.parametrize("command", ["run", "resume", "intervene", "stop", "watch"])
def test_help_has_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.output and f"apollo-es {command}" in result.output
