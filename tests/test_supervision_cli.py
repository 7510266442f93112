"""`apollo-es judge`, `apollo-es rules list|check` and `apollo-es audit`."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import apollo_es.cli.supervision_commands as supervision
from apollo_es import EventStore, NewEvent
from apollo_es.cli import cli
from apollo_es.models import OpenAIClient, RetryPolicy
from events import ActionJudged, AgentActed, HumanIntervened, RunFinished, RunStarted, ToolCall, ToolObserved, ToolSpec
from projections.judging import PROMPT_VERSION
from projections.rules import RuleSet

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "rules.toml")


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def count_events(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from events").fetchone()[0]


@pytest.fixture()
def db(tmp_path) -> str:
    """run-1: v2 ok, v4 error exit, v6 rejected by a person, v8 judged mask, v9 cut off (no observation), finished."""
    path = tmp_path / "apollo.db"
    tools = [ToolSpec(name="run_command", input_schema={"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]})]
    with EventStore(path) as store:
        store.append("run-1", [RunStarted(task_id="t1", task="Train a tiny model", tools=tools)])
        ids = []
        for i, (output, code) in enumerate([("ok", 0), ("boom", 2), ("fine", 0), ("fine", 0)]):
            call = ToolCall(id=f"c{i}", name="run_command", arguments={"command": f"step {i}"})
            [acted] = store.append("run-1", [AgentActed(model="m", text=f"step {i}", tool_calls=[call])], actor="agent")
            observed = ToolObserved(tool_call_id=f"c{i}", tool_name="run_command", output=output, exit_code=code)
            store.append("run-1", [NewEvent(event=observed, causation_id=acted.event_id)], actor="agent")
            ids.append(acted.event_id)
        store.append("run-1", [AgentActed(model="m", text="half a thou", stop_reason="max_tokens")], actor="agent")
        store.append("run-1", [HumanIntervened(annotator="ana", kind="reject", message="wrong dataset", target_event_id=ids[2])], actor="human:ana")
        judged = ActionJudged(target_event_id=ids[3], verdict="mask", judge_id="old@judge-v0", score=0.1, reason="pointless")
        store.append("run-1", [NewEvent(event=judged, causation_id=ids[3])], actor="judge:old@judge-v0")
        store.append("run-1", [RunFinished(status="finished")], actor="agent")
    return str(path)


class Model:
    def __init__(self, reply=None) -> None:
        self.reply = reply or (lambda n: httpx.Response(200, json=_completion('{"verdict": "keep", "score": 0.8, "reason": "fine"}')))
        self.requests = 0
        self.made_with: tuple | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return self.reply(self.requests)

    def make_client(self, provider, model, *, base_url=None, **kwargs):
        self.made_with = (provider, model, base_url)
        transport = httpx.MockTransport(self)
        return OpenAIClient(model, base_url="http://judge.test/v1", http_client=httpx.AsyncClient(transport=transport), policy=RetryPolicy(max_attempts=1))


def _completion(text: str) -> dict:
    return {"choices": [{"message": {"content": text}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 90, "completion_tokens": 10}}


@pytest.fixture()
def model(monkeypatch) -> Model:
    fake = Model()
    monkeypatch.setattr(supervision, "make_client", fake.make_client)
    return fake


def test_every_supervision_command_has_an_example():
    for args in (["judge"], ["rules"], ["rules", "list"], ["rules", "check"], ["audit"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0, args
        assert "Example:" in result.output, args


# -- judge --------------------------------------------------------------------------------


def test_judge_records_verdicts_and_reports(db, model):
    result = invoke("judge", "run-1", "--model", "jm", "--provider", "openai", "--base-url", "http://x/v1", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["judge_id"] == f"jm@{PROMPT_VERSION}"
    assert (report["actions"], report["judged"], report["tokens"]) == (5, 5, 500)
    assert model.made_with == ("openai", "jm", "http://x/v1")
    again = invoke("judge", "--all", "--model", "jm", "--provider", "openai", "--db", db)
    assert again.exit_code == 0
    assert "0 judged" in again.output and "5 already judged" in again.output


def test_judge_budget_message(db, model):
    result = invoke("judge", "run-1", "--model", "jm", "--concurrency", "1", "--budget-tokens", "150", "--db", db)
    assert result.exit_code == 0
    assert "0 judged" in result.output and "does not cover one request" in result.output


def test_judge_argument_errors(db, model):
    before = count_events(db)
    for args, message in [
        ([], "name the runs to judge, or pass --all"),
        (["run-1", "--all"], "name the runs to judge, or pass --all"),
        (["nope"], "no stream 'nope'"),
    ]:
        result = invoke("judge", *args, "--model", "jm", "--db", db)
        assert result.exit_code == 1 and f"Error: {message}" in result.output, result.output
    assert count_events(db) == before and model.requests == 0


def test_judge_without_a_server_for_openai_is_an_error(db, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    result = invoke("judge", "--all", "--model", "jm", "--provider", "openai", "--db", db)
    assert result.exit_code == 1 and "Error: the openai provider needs a server" in result.output


def test_judge_stops_with_an_error_when_the_model_refuses(db, monkeypatch):
    fake = Model(lambda n: httpx.Response(404, json={"error": {"message": "model jm does not exist"}}))
    monkeypatch.setattr(supervision, "make_client", fake.make_client)
    before = count_events(db)
    result = invoke("judge", "--all", "--model", "jm", "--db", db)
    assert result.exit_code == 1
    assert "Error: the judge stopped: the model refused the request" in result.output and "does not exist" in result.output
    assert count_events(db) == before


# -- rules --------------------------------------------------------------------------------


def test_rules_list_prints_a_rule_set_that_loads_back(tmp_path):
    result = invoke("rules", "list")
    assert result.exit_code == 0
    path = tmp_path / "listed.toml"
    path.write_text(result.output)
    tomllib.loads(result.output)
    assert RuleSet.load(path).fingerprint == RuleSet.default().fingerprint
    custom = tmp_path / "custom.toml"
    custom.write_text("[rules.repeated_action]\nn = 5\n")
    listed = invoke("rules", "list", str(custom), "--json")
    data = json.loads(listed.output)
    assert data["rules"]["repeated_action"]["n"] == 5 and data["fingerprint"] == RuleSet.load(custom).fingerprint


def test_rules_check_shows_what_each_rule_would_mask(db):
    before = count_events(db)
    result = invoke("rules", "check", EXAMPLE, "run-1", "--db", db)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "error_observation" in out and "exit code 2: boom" in out
    assert "truncated_response" in out and "human_rejected" in out and "rejected by ana: wrong dataset" in out
    assert "5 actions: 3 hit by rules; the policy masks 4 and keeps 1" in out
    assert f"fingerprint: {RuleSet.load(EXAMPLE).fingerprint}" in out
    assert count_events(db) == before


def test_rules_check_json(db, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text("[rules.error_observation]\nenabled = false\n[policy]\njudge_ids = []\n")
    result = invoke("rules", "check", str(rules), "--db", db, "--json")
    data = json.loads(result.output)
    assert data["fingerprint"] == RuleSet.load(rules).fingerprint
    assert data["rules"]["error_observation"] == {"enabled": False, "hits": []}
    [hit] = data["rules"]["truncated_response"]["hits"]
    assert (hit["run"], hit["version"]) == ("run-1", 10)
    assert data["rules"]["human_rejected"]["hits"][0]["version"] == 6
    assert data["summary"] == {"actions": 5, "hit_by_rules": 2, "masked": 2, "kept": 3}


def test_rules_check_explains_a_bad_rule_set(db, tmp_path):
    rules = tmp_path / "bad.toml"
    rules.write_text("[rules.repeated_action]\nn = 'three'\n")
    result = invoke("rules", "check", str(rules), "--db", db)
    assert result.exit_code == 1
    assert f"Error: {rules}: [rules.repeated_action]: n: Expected `int`, got `str`" in result.output
    missing = invoke("rules", "check", str(tmp_path / "none.toml"), "--db", db)
    assert missing.exit_code == 1 and "cannot read rule set" in missing.output


# -- audit --------------------------------------------------------------------------------


def test_audit_shows_hits_and_verdicts_beside_each_action(db):
    result = invoke("audit", "run-1", "--db", db)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    v2 = next(i for i, line in enumerate(lines) if line.startswith("v2 "))
    assert "KEEP" in lines[v2]
    v4 = next(i for i, line in enumerate(lines) if line.startswith("v4 "))
    assert "MASK" in lines[v4] and "✗ rule error_observation: run_command: exit code 2: boom" in lines[v4 + 1]
    v8 = next(i for i, line in enumerate(lines) if line.startswith("v8 "))
    assert "MASK" in lines[v8] and "✗ judge old@judge-v0: mask (0.10): pointless" in lines[v8 + 1]
    v6 = next(i for i, line in enumerate(lines) if line.startswith("v6 "))
    assert "✗ human human_rejected: rejected by ana: wrong dataset" in lines[v6 + 1]
    assert any(line.startswith("v3 ") and "ToolObserved" in line for line in lines)
    assert lines[-1].startswith("5 actions: 1 kept, 4 masked (<defaults>")


def test_audit_json_and_masked_only(db, tmp_path):
    data = json.loads(invoke("audit", "run-1", "--db", db, "--json").output)
    assert data["summary"] == {"actions": 5, "kept": 1, "masked": 4}
    assert len(data["events"]) == 13
    action = next(e for e in data["events"] if e["version"] == 4)
    assert action["keep"] is False and action["reasons"][0]["name"] == "error_observation"
    assert "keep" not in next(e for e in data["events"] if e["version"] == 3)
    masked = json.loads(invoke("audit", "run-1", "--db", db, "--json", "--masked").output)
    assert [e["version"] for e in masked["events"]] == [4, 6, 8, 10]
    lenient = tmp_path / "lenient.toml"
    lenient.write_text("[policy]\nrules = 'ignore'\nmask_on_judge = 'never'\n")
    text = invoke("audit", "run-1", "--db", db, "--rules", str(lenient), "--masked").output
    assert text.splitlines()[0].startswith("v6 ") and "4 kept, 1 masked" in text


def test_audit_unknown_run(db):
    result = invoke("audit", "nope", "--db", db)
    assert result.exit_code == 1 and "no stream 'nope'" in result.output
