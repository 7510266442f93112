"""Output for people and for pipes: per-step progress lines, tables that never cut, NDJSON."""

from __future__ import annotations

import json

from click.testing import CliRunner

from apollo_es import EventStore
from apollo_es.cli import cli
from apollo_es.cli.progress import StepLines
from events import AgentActed, RunStarted, ToolCall, ToolObserved, Usage

LONG_ID = "demo-tune-classifier-20261205-101112-with-a-long-suffix"


def _store(tmp_path) -> EventStore:
    store = EventStore(tmp_path / "a.db")
    store.append(LONG_ID, [RunStarted(task_id="t", task="do it", model="m")])
    return store


def test_step_lines_print_each_step_once_with_tools_exits_tokens_and_cost(tmp_path):
    store = _store(tmp_path)
    lines: list[str] = []
    steps = StepLines(store, LONG_ID, lines.append)
    calls = [ToolCall(id="a", name="run_command", arguments={"command": "python train.py --lr 1e-4\n"}),
             ToolCall(id="b", name="read_file", arguments={"path": "log.txt"})]
    store.append(LONG_ID, [AgentActed(model="m", tool_calls=calls, usage=Usage(input_tokens=1200, output_tokens=80), cost_usd=0.0123)])
    steps()
    store.append(LONG_ID, [ToolObserved(tool_call_id="a", output="ok", exit_code=0)])
    steps()
    assert lines == []  # the step is not over until both calls have results
    store.append(LONG_ID, [ToolObserved(tool_call_id="b", output="", is_error=True)])
    steps()
    store.append(LONG_ID, [AgentActed(model="m", text="done")])
    steps()
    steps.flush()
    assert lines[0] == "v2     run_command(python train.py --lr 1e-4), read_file(log.txt)  exit 0 error  1,200→80 tokens  $0.0123"
    assert lines[1].startswith("v5     (answer without a tool call)")
    assert len(lines) == 2


def test_piped_tables_are_tab_separated_and_never_cut(tmp_path):
    _store(tmp_path).close()
    result = CliRunner().invoke(cli, ["runs", "--db", str(tmp_path / "a.db")])
    assert result.exit_code == 0
    header, row = result.output.splitlines()
    assert header.split("\t")[:3] == ["stream", "fork", "status"]
    assert row.split("\t")[0] == LONG_ID  # whole, for grep and cut


def test_streams_as_ndjson(tmp_path):
    store = _store(tmp_path)
    store.append(LONG_ID, [AgentActed(model="m", text="thinking"), ToolObserved(tool_call_id="", output="x")])
    store.close()
    db = str(tmp_path / "a.db")
    runner = CliRunner()
    for args, count in ((["runs", "--nl"], 1), (["log", LONG_ID, "--nl"], 3), (["watch", LONG_ID, "--nl", "--no-follow"], 3)):
        result = runner.invoke(cli, [*args, "--db", db])
        assert result.exit_code == 0, result.output
        objects = [json.loads(line) for line in result.output.splitlines()]
        assert len(objects) == count, args
    assert objects[-1]["kind"] == "ToolObserved"
