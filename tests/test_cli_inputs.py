"""Every bad CLI input is `Error: ...` with exit 1 (or click's usage error, exit 2): no traceback,
nothing written. The cases the hardening audit found, then a fuzz over commands and arguments."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apollo_es import EventStore
from apollo_es.cli import cli
from apollo_es.tasks import TaskError, load_task
from conftest import make_events


@pytest.fixture()
def db(tmp_path) -> str:
    path = tmp_path / "apollo.db"
    with EventStore(path) as store:
        from events import RunStarted

        store.append("run-1", [RunStarted(task_id="t", task="x"), *make_events(4)])
    return str(path)


def count(db: str) -> int:
    with EventStore(db, read_only=True) as store:
        return store.last_position()


def check(result, before: int, db: str) -> None:
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.output and "Error: unexpected " not in result.output, result.output
    assert result.output.startswith("Error:") or "Usage:" in result.output, result.output
    assert count(db) == before


def test_the_audits_cases_are_errors(tmp_path, db):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00binary")
    bad_toml = tmp_path / "task.toml"
    bad_toml.write_bytes('id = "t"\ndescription = "caf\xe9"\n'.encode("latin-1"))
    runner = CliRunner()
    before = count(db)
    for args in (
        ["append", "run-1", "HumanIntervened", f"@{deep}"],
        ["append", "run-1", "HumanIntervened", f"@{binary}"],
        ["log", "run-1", "--since", "99999999999d"],
        ["watch", "run-1", "--tail", "999999999999999999999", "--no-follow"],
        ["show", "run-1", "99999999999999999999999"],
        ["replay", "run-1", "--branch", "--inject", " "],
        ["run", str(bad_toml), "--model", "m", "--provider", "recorded", "--recording", str(binary)],
        ["rules", "check", str(bad_toml), "run-1"],
    ):
        check(runner.invoke(cli, [*args, "--db", db]), before, db)


@pytest.mark.parametrize(("body", "message"), [
    ('files = ["../outside.txt"]', "must be a path inside the task's directory"),
    ('files = ["/etc/passwd"]', "must be a path inside the task's directory"),
    ('files = ["."]', "must be a path inside the task's directory"),
])
def test_task_files_are_confined_to_the_task_directory(tmp_path, body, message):
    (tmp_path / "outside.txt").write_text("x")
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "task.toml").write_text(f'id = "t"\ndescription = "d"\n[workspace]\n{body}\n')
    with pytest.raises(TaskError, match=message):
        load_task(task_dir / "task.toml")


@pytest.mark.parametrize("field", ["max_steps = -1", "summary_threshold = 0", "context_limit = -5", "time_limit = -1.0",
                                   "token_budget = 0", "max_output_tokens = 0", "summary_threshold = 200000"])
def test_task_values_are_range_checked(tmp_path, field):
    (tmp_path / "task.toml").write_text(f'id = "t"\ndescription = "d"\n{field}\n')
    with pytest.raises(TaskError):
        load_task(tmp_path / "task.toml")


COMMANDS = ["runs", "log", "show", "branch", "append", "verify", "stats", "tree", "replay", "audit", "watch", "intervene",
            "stop", "resume", "rules", "judge", "project", "dataset", "import", "init"]
_arg = st.one_of(
    st.sampled_from(["run-1", "run-1~b1", "-1", "0", "99999999999999999999999", "--at", "--since", "--tail", "--kind", "--json",
                     "--nl", "--target", "--format", "AgentActed", "HumanIntervened", "{}", "[]", '{"kind": 1}', "@/nonexistent",
                     "-", "inf", "nan", "\x00", "é", " ", "check", "inspect", "--branch", "--inject", "--verify", "--anchor"]),
    st.text(alphabet=string.printable, max_size=12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS), args=st.lists(_arg, max_size=5))
def test_fuzzed_command_lines_never_crash(db, command, args):
    before = count(db)
    result = CliRunner().invoke(cli, [command, *args, "--db", db], input="")
    assert result.exit_code in (0, 1, 2), (command, args, result.output)
    assert "Traceback" not in result.output and "Error: unexpected " not in result.output, (command, args, result.output)
    if result.exit_code != 0:
        assert count(db) == before, (command, args)
