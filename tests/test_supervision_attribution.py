"""Supervision that masks the cause: session output blamed on its launcher, exit codes judged per
command, error shapes only where a process printed them, and apollo-es's own errors marked by
`origin` instead of recognized by their wording.

The trajectories are the research runs APOLLO is for: a training job started in a session,
watched through its output, fixed and started again.
"""

from __future__ import annotations

import sys

import pytest

from apollo_es import EventStore
from apollo_es.tools import TOOL_SPECS, Workspace
from events import CURRENT_SCHEMA, SandboxSpec, ToolObserved, ToolSpec, decode
from projections.evidence import evidence, last_command
from projections.policy import decide
from projections.rules import RuleSet
from test_agent import run_agent, start
from test_rules import Run, hit_ids, hits
from tests.scripted import ScriptedAnthropic, text_reply, tool_use

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/workspace/train.py", line 41, in <module>\n'
    "    main()\n"
    '  File "/workspace/train.py", line 33, in main\n'
    "    loss = model(batch).loss / n_valid\n"
    "           ~~~~~~~~~~~~~~~~~~^~~~~~~~~\n"
    "ZeroDivisionError: division by zero\n"
)


class Research(Run):
    """A run with apollo-es's own tools, one call per step, each answered at once."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store, tools=[ToolSpec(**spec) for spec in TOOL_SPECS])

    def step(self, tool: str, output: str, *, exit_code: int | None = None, **arguments) -> str:
        """One action calling `tool`; its observation's fields beyond exit_code are `origin=`, `is_error=`."""
        fields = {key: arguments.pop(key) for key in ("origin", "is_error") if key in arguments}
        action = self.act((tool, arguments), observe=None)
        self.observe(f"c{self.calls}", output, cause=action, tool_name=tool, exit_code=exit_code, **fields)
        return action


@pytest.fixture
def research(store) -> Research:
    return Research(store)


@pytest.fixture
def store():
    with EventStore(":memory:") as s:
        yield s


def observation_version(run: Run, action: str) -> int:
    return run.version(action) + 1


# -- sessions: blame the launch, keep the look ---------------------------------------------


def test_a_crashed_training_job_masks_its_launch_and_keeps_the_reads(research):
    research.step("write_file", "Wrote 812 characters to train.py.", path="train.py", content="...")
    launch = research.step("create_session", "Started session s1 (train).", command="cd /workspace && python train.py --epochs 3", name="train")
    idle = research.step("check_session_idle", "busy: session s1 (train) is running and printed output 0.4 s ago", session_id="s1")
    early = research.step("get_session_output", "epoch 1 step 10 loss 2.31\n[session s1 (train): running for 12 s]", session_id="s1")
    crash = research.step(
        "get_session_output", f"epoch 1 step 10 loss 2.31\n{TRACEBACK}[session s1 (train): exited with code 1]",
        exit_code=1, session_id="s1", tail_lines=20,
    )
    again = research.step("get_session_output", f"{TRACEBACK}[session s1 (train): exited with code 1]", exit_code=1, session_id="s1")
    fix = research.step("edit_file", "Edited train.py.", path="train.py", old="/ n_valid", new="/ max(n_valid, 1)")
    relaunch = research.step("create_session", "Started session s2 (train).", command="python train.py --epochs 3", name="train")
    done = research.step("get_session_output", "epoch 3 loss 0.91\nsaved model.pt\n[session s2 (train): exited with code 0]", exit_code=0, session_id="s2")

    [hit] = hits("error_observation", research.events)
    assert hit.action_event_id == launch
    assert hit.evidence_version == observation_version(research, crash)
    assert hit.reason == (
        f"session s1, read by get_session_output at v{hit.evidence_version}: exit code 1: ZeroDivisionError: division by zero"
    )
    decisions = decide(research.events, RuleSet.default())
    assert not decisions[launch].keep
    assert all(decisions[a].keep for a in (idle, early, crash, again, fix, relaunch, done))


def test_a_session_fed_bad_input_blames_the_input_not_the_launch(research):
    launch = research.step("create_session", "Started session s1 (repl).", command="python -i", name="repl")
    feed = research.step("send_session_input", "Sent 40 bytes to session s1 (repl).", session_id="s1", text="import json; json.loads(open('cfg').read())")
    read = research.step(
        "get_session_output",
        'Traceback (most recent call last):\n  File "<stdin>", line 1, in <module>\n'
        "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)\n>>> \n[session s1 (repl): running for 30 s]",
        session_id="s1",
    )
    [hit] = hits("error_observation", research.events)
    assert hit.action_event_id == feed and hit.evidence_version == observation_version(research, read)
    assert "JSONDecodeError" in hit.reason
    assert launch != feed


def test_a_failed_feed_does_not_take_the_blame_and_unknown_sessions_stay_with_the_reader(research):
    launch = research.step("create_session", "Started session s1.", command="python serve.py")
    refused = research.step(
        "send_session_input", "Session s1 is not running (exited with code 2)", session_id="s1", text="q", origin="harness", is_error=True,
    )
    research.step("get_session_output", "usage: serve.py --port PORT\n[session s1: exited with code 2]", exit_code=2, session_id="s1")
    stranger = research.step("get_session_output", f"{TRACEBACK}[session s7: exited with code 1]", exit_code=1, session_id="s7")
    bad_read = research.step(
        "get_session_output", "get_session_output: tail_lines must be >= 0, got -5", session_id="s1", tail_lines=-5, origin="harness", is_error=True,
    )
    found = {h.action_event_id: h.reason for h in hits("error_observation", research.events)}
    assert list(found) == [launch, refused, stranger, bad_read]
    assert found[refused] == "send_session_input: apollo-es refused or ended the call: Session s1 is not running (exited with code 2)"
    assert found[stranger].startswith("get_session_output: exit code 1")  # its start is not in the log


def test_a_session_timeout_is_blamed_on_the_launch(research):
    launch = research.step("create_session", "Started session s1 (eval).", command="python eval.py")
    research.step(
        "get_session_output",
        'Traceback (most recent call last):\n  File "eval.py", line 9, in <module>\n'
        "subprocess.TimeoutExpired: Command '['./judge']' timed out after 600 seconds\n[session s1 (eval): exited with code 1]",
        exit_code=1, session_id="s1",
    )
    assert hit_ids("timeout", research.events) == [launch]
    assert hit_ids("error_observation", research.events) == [launch]


# -- exit codes, by command --------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("grep -rn 'lr=' configs/", "grep"),
        ("cd src && grep -c TODO *.py", "grep"),
        ("LC_ALL=C /usr/bin/rg -n foo", "rg"),
        ("python train.py 2>&1 | tail -n 5", "tail"),
        ("test -f ckpt.pt || echo missing", "echo"),
        ("diff -u a.txt b.txt; ", "diff"),
        ("grep x f  # look for x; then y\n", "grep"),
        ("ls\n# all done", "ls"),
        ("[ -d runs ]", "["),
        ("for f in *.log; do grep -q NaN $f; done", "done"),
        ("echo 'unclosed", ""),
        ("", ""),
    ],
)
def test_last_command_names_the_command_whose_status_the_line_returns(command, name):
    assert last_command(command) == name


def test_exit_codes_are_judged_by_the_command_that_returned_them(research):
    no_match = research.step("run_command", "[exit code 1]", exit_code=1, is_error=True, command="grep -rn 'warmup' configs/")
    in_dir = research.step("run_command", "[exit code 1]", exit_code=1, is_error=True, command="cd src && grep -c 'TODO' model.py")
    broken = research.step(
        "run_command", "grep: configs/: No such file or directory\n[exit code 2]", exit_code=2, is_error=True, command="grep -rn 'warmup' configs/",
    )
    differs = research.step("run_command", "1c1\n< 0.91\n---\n> 0.88\n[exit code 1]", exit_code=1, is_error=True, command="diff old.txt new.txt")
    check = research.step("run_command", "[exit code 1]", exit_code=1, is_error=True, command="[ -f ckpt/last.pt ]")
    failed = research.step("run_command", "FAILED tests/test_data.py::test_split\n[exit code 1]", exit_code=1, is_error=True, command="pytest -q")
    hidden = research.step("run_command", TRACEBACK, exit_code=0, command="python train.py 2>&1 | tail -n 20")

    flagged = hit_ids("error_observation", research.events)
    assert flagged == [broken, failed, hidden]
    assert {no_match, in_dir, differs, check}.isdisjoint(flagged)
    # The table is a parameter; a rule set that lists it replaces the defaults.
    assert hit_ids("error_observation", research.events, ok_exit_codes={"pytest": frozenset({1})}) == [no_match, in_dir, broken, differs, check, hidden]
    lenient = RuleSet.loads("[rules.error_observation.ok_exit_codes]\ngrep = [1, 2]\ndiff = [1]\n'[' = [1]\npytest = [1]\n")
    assert [h.action_event_id for h in lenient.evaluate(research.events)] == [hidden]


# -- error shapes, only where a process printed them ---------------------------------------


def test_error_words_in_files_are_not_errors_but_tracebacks_are(research):
    notes = "# Notes\nThe last run died with a SyntaxError in model.py (fixed).\nRuntimeError: CUDA out of memory at bs=64.\n"
    cat = research.step("run_command", notes, exit_code=0, command="cat notes.md")
    read_log = research.step("read_file", f"epoch 1\n{TRACEBACK}", path="logs/run1.log")
    found = research.step("search", 'train.log:12: Traceback (most recent call last):', pattern="Traceback")
    crash = research.step("run_command", f"step 1 loss 2.3\n{TRACEBACK}", exit_code=0, command="python train.py; echo done")
    syntax = research.step(
        "run_command",
        "  File \"/workspace/model.py\", line 12\n    def forward(self, x)\n                        ^\nSyntaxError: expected ':'\n",
        exit_code=0, command="python model.py || true",
    )
    flagged = {h.action_event_id: h.reason for h in hits("error_observation", research.events)}
    assert list(flagged) == [crash, syntax]
    assert flagged[crash] == "run_command: error in output: ZeroDivisionError: division by zero"
    assert flagged[syntax] == "run_command: error in output: SyntaxError: expected ':'"
    assert {cat, read_log, found}.isdisjoint(flagged)


# -- origin: apollo-es's own word, not its wording -------------------------------------------


def test_harness_errors_are_flagged_by_origin_and_quoted_messages_are_not(research):
    missing = research.step(
        "read_file", "read_file failed: [Errno 2] No such file or directory: 'data/val.csv'", path="data/val.csv", origin="harness", is_error=True,
    )
    log = (
        "Unknown tool 'browse'. Available tools: run_command, create_session\n"
        "The result of this run_command call was lost: the agent process stopped while it ran.\n"
        "[command timed out after 60 s; it and every process it started were killed]\n"
    )
    quoted = research.step("run_command", log, exit_code=0, command="cat ../agent-notes.txt")
    assert hits("error_observation", research.events)[0].reason == (
        "read_file: apollo-es refused or ended the call: read_file failed: [Errno 2] No such file or directory: 'data/val.csv'"
    )
    assert hit_ids("error_observation", research.events) == [missing]
    assert quoted not in hit_ids("timeout", research.events)


def test_the_workspace_marks_who_decided_each_outcome(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    ws = Workspace(root, sandbox=SandboxSpec(kind="none"))
    try:
        assert ws.execute("run_command", {"command": "grep -q nothing /dev/null"}).origin == "tool"
        assert ws.execute("read_file", {"path": "missing.txt"}).origin == "harness"
        assert ws.execute("browse", {"url": "x"}).origin == "harness"
        assert ws.execute("get_session_output", {"session_id": "s9"}).origin == "harness"
        timed_out = ws.execute("run_command", {"command": "sleep 5", "timeout": 0.3})
        assert (timed_out.origin, timed_out.is_error) == ("timeout", True)
        started = ws.execute("create_session", {"command": f"{sys.executable} -c 'print(1 / 0)'", "name": "job"})
        assert started.origin == "tool"
    finally:
        ws.kill_all_sessions()
    # The rules read the session id from create_session's real answer.
    with EventStore(":memory:") as store:
        run = Research(store)
        launch = run.step("create_session", started.output, command="python -c 'print(1 / 0)'", name="job")
        run.step("get_session_output", f"{TRACEBACK}[session s1 (job): exited with code 1]", exit_code=1, session_id="s1")
        assert [item.cause.event_id for item in evidence(run.events)][-1] == launch


def test_the_agent_records_the_origin_of_each_observation(tmp_path):
    store = EventStore(tmp_path / "a.db")
    workspace = start(store, tmp_path, eval=None)
    server = ScriptedAnthropic([
        tool_use("read_file", {"path": "missing.txt"}),
        tool_use("write_file", {"path": "notes.txt", "content": "lr=3e-4\n"}),
        tool_use("run_command", {"command": "grep -c warmup notes.txt"}),
        text_reply("Is that all?"),
        tool_use("finish", {"answer": "done"}, "Done."),
    ])
    run_agent(store, server, workspace)
    events = store.read("run-1")
    observed = [(r.event.tool_name, r.event.origin, r.event.exit_code) for r in events if isinstance(r.event, ToolObserved)]
    assert observed == [
        ("read_file", "harness", None), ("write_file", "tool", None), ("run_command", "tool", 1), ("", "harness", None), ("finish", "tool", None),
    ]
    flagged = {h.action_event_id: h.rule for h in RuleSet.default().evaluate(events)}
    acted = [r.event_id for r in events if r.kind == "AgentActed"]
    assert flagged == {acted[0]: "error_observation", acted[3]: "error_observation"}  # grep found no line: kept


def test_observations_recorded_before_origin_existed_decode_as_the_tools_own():
    old = b'{"type":"ToolObserved","tool_call_id":"c1","output":"x","tool_name":"run_command","is_error":true,"exit_code":2}'
    event = decode("ToolObserved", CURRENT_SCHEMA["ToolObserved"], old)
    assert isinstance(event, ToolObserved) and event.origin == "tool"
