"""The CLI: exit codes, `Error: ...` messages, --json output, and nothing written on bad input."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from apollo_es import EventStore
from apollo_es.cli import cli
from events import AgentActed, RunStarted, ToolCall, ToolObserved


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "apollo.db"
    with EventStore(path) as store:
        store.append("run-1", [RunStarted(task_id="t1", task="Train a tiny model")], actor="system")
        for i in range(3):
            call = ToolCall(id=f"c{i}", name="run_command", arguments={"command": f"echo {i}"})
            store.append("run-1", [AgentActed(model="m", text=f"step {i}", tool_calls=[call])], actor="agent")
            store.append("run-1", [ToolObserved(tool_call_id=f"c{i}", output=f"{i}\n", exit_code=0)], actor="agent")
    return str(path)


def invoke(*args: str, input: str | None = None, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def count_events(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from events").fetchone()[0]


def test_every_command_has_an_example_in_its_help():
    for name, command in cli.commands.items():
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert "Example:" in result.output, f"{name} --help has no example"


def test_init_creates_then_reopens(tmp_path):
    path = str(tmp_path / "sub" / "new.db")
    first = invoke("init", "--db", path, "--json")
    assert first.exit_code == 0
    assert json.loads(first.output) == {"path": path, "created": True, "events": 0}
    again = invoke("init", "--db", path)
    assert again.exit_code == 0 and "Opened existing" in again.output


def test_db_from_environment_variable(db):
    result = invoke("stats", "--json", env={"APOLLO_ES_DB": db})
    assert result.exit_code == 0
    assert json.loads(result.output)["events"] == 7


def test_missing_store_is_an_error_and_creates_nothing(tmp_path):
    path = tmp_path / "typo.db"
    result = invoke("runs", "--db", str(path))
    assert result.exit_code == 1
    assert "Error: no store at" in result.output
    assert not path.exists()


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    result = invoke("runs", "--db", str(path))
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and "not a database" in result.output


def test_runs_shows_branch_lineage(db):
    assert invoke("branch", "run-1", "--at", "3", "--db", db).output.strip() == "run-1~b1"
    table = invoke("runs", "--db", db)
    assert table.exit_code == 0
    assert "run-1~b1" in table.output and "run-1@v3" in table.output
    rows = json.loads(invoke("runs", "--db", db, "--json").output)
    assert [(r["stream_id"], r["parent_id"], r["fork_version"], r["head"]) for r in rows] == [
        ("run-1", None, None, 7),
        ("run-1~b1", "run-1", 3, 4),
    ]


def test_log_filters_and_json(db):
    lines = invoke("log", "run-1", "--db", db).output.splitlines()
    assert len(lines) == 7 and "run_command" in lines[1] and "RunStarted" in lines[0]
    acted = json.loads(invoke("log", "run-1", "--db", db, "--kind", "AgentActed", "--json").output)
    assert [r["version"] for r in acted] == [2, 4, 6]
    assert acted[0]["summary"].startswith("run_command(")
    assert json.loads(invoke("log", "run-1", "--db", db, "--actor", "sys*", "--json").output)[0]["version"] == 1
    assert [r["version"] for r in json.loads(invoke("log", "run-1", "--db", db, "--tail", "2", "--json").output)] == [6, 7]
    assert len(json.loads(invoke("log", "run-1", "--db", db, "--since", "1h", "--json").output)) == 7
    assert json.loads(invoke("log", "run-1", "--db", db, "--since", "2999-01-01", "--json").output) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["log", "nope"], "no stream 'nope'"),
        (["log", "run-1", "--kind", "Bogus"], "unknown kind 'Bogus'"),
        (["log", "run-1", "--since", "yesterday-ish"], "--since"),
        (["show", "run-1", "99"], "versions 1..7"),
        (["show", "ghost", "1"], "no stream 'ghost'"),
    ],
)
def test_read_errors(db, args, message):
    result = invoke(*args, "--db", db)
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and message in result.output


def test_show_prints_envelope_and_payload(db):
    data = json.loads(invoke("show", "run-1", "2", "--db", db, "--json").output)
    assert data["kind"] == "AgentActed" and data["version"] == 2
    assert data["payload"]["tool_calls"][0]["arguments"] == {"command": "echo 0"}
    assert "tool_calls" in invoke("show", "run-1", "2", "--db", db).output


@pytest.mark.parametrize(
    "args, message",
    [
        (["branch", "ghost", "--at", "1"], "no stream 'ghost'"),
        (["branch", "run-1", "--at", "8"], "versions 1..7"),
        (["branch", "run-1", "--at", "0"], "versions 1..7"),
        (["branch", "run-1", "--at", "2", "--name", "run-1"], "already exists"),
        (["branch", "run-1", "--at", "2", "--actor", "nobody"], "invalid actor"),
        (["append", "run-1", "Bogus", "{}"], "unknown event kind 'Bogus'"),
        (["append", "run-1", "AgentActed", '{"model": 3}'], "Expected `str`, got `int`"),
        (["append", "run-1", "AgentActed", "{not json"], "payload is not JSON"),
        (["append", "run-1", "AgentActed", '{"model": "m"}', "--expected-version", "3"], "at version 7, expected 3"),
        (["append", "run-1", "AgentActed", '{"model": "m"}', "--expected-version", "no-stream"], "at version 7"),
        (["append", "run-1", "AgentActed", '{"model": "m"}', "--expected-version", "seven"], "--expected-version"),
        (["append", "bad id!", "AgentActed", '{"model": "m"}'], "invalid stream id"),
        (["append", "run-1", "AgentActed", "@/nonexistent/payload.json"], "cannot read"),
    ],
)
def test_write_errors_exit_1_and_write_nothing(db, args, message):
    before = count_events(db)
    result = invoke(*args, "--db", db)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error:") and message in result.output
    assert count_events(db) == before


def test_payload_over_the_configured_limit_is_refused(db):
    before = count_events(db)
    payload = json.dumps({"tool_call_id": "c9", "output": "x" * 5000})
    result = invoke("append", "run-1", "ToolObserved", payload, "--db", db, env={"APOLLO_ES_MAX_PAYLOAD_BYTES": "4096"})
    assert result.exit_code == 1 and "over the limit of 4,096" in result.output
    assert count_events(db) == before


def test_append_from_stdin_is_idempotent_with_an_event_id(db):
    payload = json.dumps({"annotator": "ana", "kind": "guidance", "message": "check the baseline"})
    args = ("append", "run-1", "HumanIntervened", "-", "--actor", "human:ana", "--event-id", "g-1", "--db", db, "--json")
    first = json.loads(invoke(*args, input=payload).output)
    second = json.loads(invoke(*args, input=payload).output)
    assert first == second and first["version"] == 8
    assert count_events(db) == 8


def test_verify_ok_then_tampered(db):
    ok = invoke("verify", "--db", db)
    assert ok.exit_code == 0 and "OK: 7 events" in ok.output
    with sqlite3.connect(db) as conn:
        conn.execute("drop trigger events_no_update")
        conn.execute("update events set payload = replace(payload, 'echo 1', 'echo 2') where position = 4")
    bad = invoke("verify", "--db", db)
    assert bad.exit_code == 1
    assert "Error: log is corrupt at position 4" in bad.output
    report = invoke("verify", "--db", db, "--json")
    assert report.exit_code == 1 and '"first_bad_position": 4' in report.output


def test_stats(db):
    data = json.loads(invoke("stats", "--db", db, "--json").output)
    assert data["events"] == 7 and data["runs"] == 1 and data["branches"] == 0
    assert data["events_by_kind"] == {"AgentActed": 3, "RunStarted": 1, "ToolObserved": 3}
    assert len(data["head_hash"]) == 64
    assert "head_hash" in invoke("stats", "--db", db).output


def test_demo_runs_the_whole_pipeline_offline(tmp_path):
    """The README's main job: a recorded run with an intervention, a summary, a kill and a resume;
    imports; rules; a continued branch; a dataset; a few training steps."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--json"], catch_exceptions=False, env={"ANTHROPIC_API_KEY": ""})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["runs"] == 6 and report["branches"] == 1
    assert report["score"] == 0.9867 and report["branch_score"] == 0.9933
    assert report["masked_by_rule"] == {"error_observation": 2, "demo-scripted-judge@judge-v1": 12}
    assert report["verdicts"] == {"keep": 57, "mask": 12}  # the scripted judge, so verdicts show offline
    assert report["samples_by_type"]["summary"] == 1 and report["samples_by_type"]["react"] >= 6
    assert len(report["losses"]) == 6 and report["losses"][-1] < report["losses"][0]
    with EventStore(out / "apollo.db") as store:
        assert store.verify().ok
        run = store.read("demo-tune-classifier")
        kinds = [r.kind for r in run]
        assert kinds.count("AgentActed") == 32 and kinds.count("ContextSummarized") == 1
        assert [r.actor for r in run if r.kind == "HumanIntervened"] == ["human:ana"]
        observed = {r.causation_id for r in run if r.kind == "ToolObserved"}
        assert all(r.event_id in observed for r in run if r.kind == "AgentActed")  # every action answered
        lost = [r.event.output for r in run if r.kind == "ToolObserved" and "was lost" in r.event.output]
        assert len(lost) == 1 and "run_command" in lost[0]  # the `sleep 3` the kill interrupted
    again = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_store_urls_are_not_file_paths(tmp_path, monkeypatch, pg_database):
    """`sqlite:///FILE` names FILE and a postgresql:// URL names no file: no command makes a
    `sqlite:` or `postgresql:` directory, and workspaces of a PostgreSQL store go under the
    current directory."""
    from conftest import pg_schema_url

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["init", "--db", "sqlite:///sub/x.db"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sub" / "x.db").is_file() and not (tmp_path / "sqlite:").exists()
    result = runner.invoke(cli, ["stats", "--db", "sqlite:///sub/x.db"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["stats", "--db", "sqlite:///sub/missing.db"])
    assert result.exit_code == 1 and "no store at" in result.output

    url = pg_schema_url(pg_database, "cli_urls")
    result = runner.invoke(cli, ["init", "--db", url])
    assert result.exit_code == 0 and f"Ready: store {url} (0 events)" in result.output, result.output
    task = tmp_path / "task.toml"
    task.write_text('id = "hi"\ndescription = "Say hi."\n[sandbox]\nkind = "none"\n')
    recording = tmp_path / "rec.jsonl"
    recording.write_text(json.dumps({"model": "m", "text": "", "tool_calls": [
        {"id": "c1", "name": "finish", "arguments": {"answer": "hi"}}], "stop_reason": "tool_use"}) + "\n")
    result = runner.invoke(cli, ["run", str(task), "--run-id", "r1", "--model", "m", "--provider", "recorded", "--recording",
                                 str(recording), "--db", url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "workspaces" / "r1").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.jsonl", "sub", "task.toml", "workspaces"]
