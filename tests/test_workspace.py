"""The research tool workspace: every tool, path confinement, timeouts, secrets, sessions, resume.

Every command here runs in the default sandbox (bubblewrap); tests/test_sandbox.py attacks it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apollo_es.tools import TOOL_SPECS, Observation, Workspace
from conftest import wait_until
from events import SandboxSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# A session that says it is ready, then echoes each stdin line back.
ECHO_SCRIPT = textwrap.dedent(
    """\
    import sys
    print("ready")
    for line in sys.stdin:
        print("echo:" + line.strip())
    """
)
ECHO_COMMAND = f"python3 -c {shlex.quote(ECHO_SCRIPT)}"


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    root = tmp_path / "root"
    root.mkdir()
    workspace = Workspace(root, idle_after=0.3)
    yield workspace
    workspace.kill_all_sessions()
    workspace.close()


def call(ws: Workspace, name: str, /, **arguments: object) -> Observation:
    return ws.execute(name, arguments)


def ok(ws: Workspace, name: str, /, **arguments: object) -> Observation:
    obs = call(ws, name, **arguments)
    assert not obs.is_error, obs.output
    return obs


def never_appears(path: Path, seconds: float) -> bool:
    """Whether `path` stays absent for `seconds` (a killed background job would have written it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return False
        time.sleep(0.05)
    return True


# -- the tool list ----------------------------------------------------------------------------


def test_tool_specs_are_the_portable_set() -> None:
    assert [spec["name"] for spec in TOOL_SPECS] == [
        "run_command",
        "create_session",
        "get_session_output",
        "check_session_idle",
        "send_session_input",
        "kill_session",
        "read_file",
        "write_file",
        "edit_file",
        "list_files",
        "search",
        "think",
        "finish",
    ]
    for spec in TOOL_SPECS:
        schema = spec["input_schema"]
        assert spec["description"]
        assert schema["type"] == "object"
        assert set(schema["required"]) <= set(schema["properties"])


# -- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("rm_rf", {}, "Unknown tool"),
        ("read_file", {}, "missing required argument(s) path"),
        ("read_file", {"path": "a", "mode": "r"}, "unexpected argument(s) mode"),
        ("read_file", {"path": 3}, "'path' must be string, got int"),
        ("read_file", {"path": "a", "start_line": "1"}, "'start_line' must be integer or null, got str"),
        ("run_command", {"command": "true", "timeout": True}, "'timeout' must be number, got bool"),
        ("run_command", {"command": "true", "timeout": 0}, "timeout must be positive"),
        ("think", ["not", "a", "dict"], "arguments must be an object"),
    ],
)
def test_bad_calls_are_error_observations(ws: Workspace, name: str, arguments: object, message: str) -> None:
    obs = ws.execute(name, arguments)  # type: ignore[arg-type]
    assert obs.is_error
    assert message in obs.output


# -- files ------------------------------------------------------------------------------------


def test_write_edit_read_round_trip(ws: Workspace) -> None:
    ok(ws, "write_file", path="src/train.py", content="lr = 0.1\nepochs = 3\nbatch = 32\n")
    ok(ws, "edit_file", path="src/train.py", old="lr = 0.1", new="lr = 0.01")
    assert ok(ws, "read_file", path="src/train.py").output == "lr = 0.01\nepochs = 3\nbatch = 32\n"
    assert ok(ws, "read_file", path="src/train.py", start_line=2, end_line=3).output == "epochs = 3\nbatch = 32\n"
    assert ok(ws, "read_file", path="src/train.py", start_line=3).output == "batch = 32\n"
    assert ok(ws, "read_file", path="src/train.py", end_line=1).output == "lr = 0.01\n"
    assert "past the end" in call(ws, "read_file", path="src/train.py", start_line=9).output
    assert call(ws, "read_file", path="src/train.py", start_line=3, end_line=2).is_error


def test_edit_must_match_exactly_once(ws: Workspace) -> None:
    ok(ws, "write_file", path="a.txt", content="x = 1\nx = 1\n")
    many = call(ws, "edit_file", path="a.txt", old="x = 1", new="x = 2")
    assert many.is_error and "matches 2 times" in many.output
    absent = call(ws, "edit_file", path="a.txt", old="y = 1", new="y = 2")
    assert absent.is_error and "not found" in absent.output
    assert (ws.root / "a.txt").read_text() == "x = 1\nx = 1\n"


def test_missing_file_and_directory_errors(ws: Workspace) -> None:
    assert "No such file" in call(ws, "read_file", path="nope.txt").output
    (ws.root / "d").mkdir()
    assert "is a directory" in call(ws, "read_file", path="d").output


def test_list_files_is_recursive_and_hides_internals(ws: Workspace) -> None:
    ok(ws, "write_file", path="data/train.csv", content="a,b\n")
    ok(ws, "write_file", path="README.md", content="hi")
    (ws.root / ".git").mkdir()
    (ws.root / ".git" / "HEAD").write_text("ref")
    ok(ws, "create_session", command="true")  # its state is kept outside the workspace
    assert ok(ws, "list_files").output == "README.md  (2 bytes)\ndata/\ndata/train.csv  (4 bytes)"
    assert ok(ws, "list_files", path="data").output == "data/train.csv  (4 bytes)"


def test_search_reports_path_line_and_text(ws: Workspace) -> None:
    ok(ws, "write_file", path="a.py", content="import torch\nx = 1\n")
    ok(ws, "write_file", path="pkg/b.py", content="# nothing\nfrom torch import nn\n")
    (ws.root / "blob.bin").write_bytes(b"torch\0\x01")
    assert ok(ws, "search", pattern=r"\btorch\b").output == "a.py:1: import torch\npkg/b.py:2: from torch import nn"
    assert ok(ws, "search", pattern="torch", path="pkg").output == "pkg/b.py:2: from torch import nn"
    assert "No matches" in ok(ws, "search", pattern="tensorflow").output
    assert "invalid regular expression" in call(ws, "search", pattern="(").output


def test_search_is_capped(ws: Workspace) -> None:
    ok(ws, "write_file", path="many.txt", content="hit\n" * 500)
    obs = ok(ws, "search", pattern="hit")
    assert obs.output.count("many.txt:") == 200
    assert "stopped after 200 matches" in obs.output


# -- path confinement -------------------------------------------------------------------------


def test_paths_cannot_escape_the_root(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (ws.root / "link").symlink_to(outside)

    for path in ["../outside/secret.txt", str(outside / "secret.txt"), "link/secret.txt", "/etc/passwd"]:
        obs = call(ws, "read_file", path=path)
        assert obs.is_error and "outside the workspace" in obs.output, path
    assert call(ws, "write_file", path="../evil.txt", content="x").is_error
    assert call(ws, "write_file", path="link/evil.txt", content="x").is_error
    assert call(ws, "edit_file", path="link/secret.txt", old="secret", new="x").is_error
    assert call(ws, "list_files", path="..").is_error
    assert not (tmp_path / "evil.txt").exists() and not (outside / "evil.txt").exists()
    assert ok(ws, "search", pattern="secret").output.startswith("No matches")  # the symlink is not followed out


def test_absolute_paths_inside_the_root_work(ws: Workspace) -> None:
    """Both the host path and the path commands see (/workspace) name the root."""
    ok(ws, "write_file", path=str(ws.root / "abs.txt"), content="ok")
    ok(ws, "write_file", path="/workspace/sub/abs.txt", content="sandboxed")
    assert ok(ws, "read_file", path="abs.txt").output == "ok"
    assert ok(ws, "run_command", command="cat /workspace/sub/abs.txt").output == "sandboxed"


def test_session_state_is_outside_the_workspace(ws: Workspace) -> None:
    ok(ws, "create_session", command="true")
    assert list(ws.root.iterdir()) == []
    assert (ws.state_dir / "sessions" / "s1" / "meta.json").is_file()
    assert not ws.state_dir.is_relative_to(ws.root)
    obs = ok(ws, "run_command", command=f"ls {ws.state_dir} 2>&1; ls ../ 2>&1")
    assert "meta.json" not in obs.output and "sessions" not in obs.output


# -- commands ---------------------------------------------------------------------------------


def test_run_command_happy_path(ws: Workspace) -> None:
    obs = ok(ws, "run_command", command="echo out; echo err >&2; pwd")
    assert obs.output == "out\nerr\n/workspace\n"
    assert obs.exit_code == 0 and obs.duration_ms > 0


def test_non_zero_exit_is_an_error(ws: Workspace) -> None:
    obs = call(ws, "run_command", command="echo failing; exit 3")
    assert obs.is_error and obs.exit_code == 3
    assert obs.output == "failing\n[exit code 3]"


@pytest.mark.parametrize("escape", ["", "setsid ", "nohup "])
def test_timeout_kills_every_process_the_command_started(ws: Workspace, escape: str) -> None:
    started = time.monotonic()
    command = f"echo started; {escape}sh -c 'sleep 1.5; echo late > late.txt' > /dev/null 2>&1 & sleep 30"
    obs = call(ws, "run_command", command=command, timeout=1)
    assert time.monotonic() - started < 5
    assert obs.is_error
    assert obs.output.startswith("started\n")
    assert "timed out after 1 s" in obs.output
    assert never_appears(ws.root / "late.txt", 1.5)


def test_background_jobs_end_with_their_command(ws: Workspace) -> None:
    ok(ws, "run_command", command="setsid sh -c 'sleep 0.5; echo late > late.txt' > /dev/null 2>&1 & echo left it")
    assert never_appears(ws.root / "late.txt", 1.0)


def test_long_output_is_truncated_head_and_tail(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    ws = Workspace(tmp_path / "root", output_cap=1000)
    obs = ws.execute("run_command", {"command": "python3 -c \"print('A' * 3000 + 'B' * 3000)\""})
    assert obs.truncated and obs.original_chars == 6001
    assert obs.output.startswith("A" * 500) and obs.output.endswith("B" * 499 + "\n")
    assert "\n[... 5001 characters truncated ...]\n" in obs.output


SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-fake-anthropic-0123456789",
    "GH_TOKEN": "ghp_fakeGitHubToken0123456789abcdef",
    "db_password": "fake-db-password",
    "AWS_SECRET_ACCESS_KEY": "fake/aws+secret0123456789",
    "DATABASE_URL": "postgresql://app:hunter2pw@db.internal/prod",
    "SENTRY_DSN": "https://abc123@o1.ingest.sentry.io/42",
}
ENV_DUMP = "env; echo; tr '\\0' '\\n' < /proc/1/environ; echo; tr '\\0' '\\n' < /proc/$PPID/environ"


@pytest.mark.parametrize("kind", ["bwrap", "none"])
def test_the_environment_is_an_allowlist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Nothing of the agent's environment reaches a command, only PATH, HOME, ... and the task's
    [env] (in the sandbox, not even through /proc/N/environ of its parents)."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("APOLLO_AGENT_ONLY", "agent-side")
    (tmp_path / "root").mkdir()
    ws = Workspace(tmp_path / "root", sandbox=SandboxSpec(kind=kind, env={"OMP_NUM_THREADS": "4"}))
    env_output = ok(ws, "run_command", command=ENV_DUMP if kind == "bwrap" else "env").output
    ok(ws, "create_session", command="env")
    wait_until(lambda: "exited" in ok(ws, "get_session_output", session_id="s1").output)
    session_output = ok(ws, "get_session_output", session_id="s1").output

    for output in (env_output, session_output):
        assert "OMP_NUM_THREADS=4" in output and "PATH=" in output
        assert "APOLLO_AGENT_ONLY" not in output
        for name, value in SECRETS.items():
            assert name not in output and value not in output


# -- sessions ---------------------------------------------------------------------------------


def test_session_lifecycle(ws: Workspace) -> None:
    started = ok(ws, "create_session", command=ECHO_COMMAND, name="echo")
    assert started.output.startswith("Started session s1 (echo)")
    wait_until(lambda: "ready" in ok(ws, "get_session_output", session_id="s1").output)

    wait_until(lambda: ok(ws, "check_session_idle", session_id="s1").output.startswith("idle:"))
    ok(ws, "send_session_input", session_id="s1", text="hello")
    wait_until(lambda: "echo:hello" in ok(ws, "get_session_output", session_id="s1").output)
    patient = Workspace(ws.root, idle_after=30)  # fresh output is certainly within 30 s
    assert ok(patient, "check_session_idle", session_id="s1").output.startswith("busy:")

    output = ok(ws, "get_session_output", session_id="s1", tail_lines=1).output
    assert output.startswith("echo:hello\n") and "ready" not in output
    assert "[session s1 (echo): running" in output

    assert ok(ws, "kill_session", session_id="s1").output == "Killed session s1 (echo)."
    assert "killed by kill_session" in ok(ws, "get_session_output", session_id="s1").output
    assert ok(ws, "check_session_idle", session_id="s1").output.startswith("idle:")
    assert call(ws, "send_session_input", session_id="s1", text="again").is_error
    assert "not running" in ok(ws, "kill_session", session_id="s1").output


def test_session_records_its_exit_code(ws: Workspace) -> None:
    ok(ws, "create_session", command="echo done; exit 7")
    wait_until(lambda: "exited with code 7" in ok(ws, "get_session_output", session_id="s1").output)
    assert ok(ws, "get_session_output", session_id="s1").exit_code == 7
    assert ok(ws, "create_session", command="true").output.startswith("Started session s2")


@pytest.mark.parametrize("kind", ["bwrap", "none"])
def test_kill_session_kills_every_process_it_started(tmp_path: Path, kind: str) -> None:
    (tmp_path / "root").mkdir()
    ws = Workspace(tmp_path / "root", sandbox=SandboxSpec(kind=kind))
    job = "trap 'echo flushed > flushed.txt; exit 0' TERM; touch up; sleep 30 & wait"
    late = "sh -c 'sleep 1.5; echo late > late.txt' > /dev/null 2>&1"
    ok(ws, "create_session", command=f"setsid {late} & {job}")
    wait_until((ws.root / "up").exists)
    ok(ws, "kill_session", session_id="s1")
    assert (ws.root / "flushed.txt").read_text() == "flushed\n"  # SIGTERM first, with time to flush
    if kind == "bwrap":  # the whole PID namespace ends; unconfined, a setsid'ed orphan can get away
        assert never_appears(ws.root / "late.txt", 1.5)


def test_unknown_session_ids_are_errors(ws: Workspace) -> None:
    for session_id in ["s1", "../../etc", "x"]:
        obs = call(ws, "get_session_output", session_id=session_id)
        assert obs.is_error and "Unknown session" in obs.output


def test_session_survives_a_new_workspace_object(ws: Workspace) -> None:
    ok(ws, "create_session", command=ECHO_COMMAND)
    wait_until(lambda: "ready" in ok(ws, "get_session_output", session_id="s1").output)
    ws.close()

    resumed = Workspace(ws.root)
    ok(resumed, "send_session_input", session_id="s1", text="after close")
    wait_until(lambda: "echo:after close" in ok(resumed, "get_session_output", session_id="s1").output)
    assert resumed.kill_all_sessions() == ["s1"]


def test_session_survives_the_agent_process_being_killed(ws: Workspace) -> None:
    agent = textwrap.dedent(
        """\
        import os, signal, sys
        from apollo_es.tools import Workspace
        ws = Workspace(sys.argv[1])
        print(ws.execute("create_session", {"command": sys.argv[2], "name": "job"}).output, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    crashed = subprocess.run(
        [sys.executable, "-c", agent, str(ws.root), ECHO_COMMAND], env=env, capture_output=True, text=True, timeout=30
    )
    assert crashed.returncode == -signal.SIGKILL
    assert crashed.stdout.startswith("Started session s1 (job)")

    wait_until(lambda: "ready" in ok(ws, "get_session_output", session_id="s1").output)
    assert "running" in ok(ws, "get_session_output", session_id="s1").output
    ok(ws, "send_session_input", session_id="s1", text="still there?")
    wait_until(lambda: "echo:still there?" in ok(ws, "get_session_output", session_id="s1").output)
    ok(ws, "kill_session", session_id="s1")


# -- reasoning --------------------------------------------------------------------------------


def test_think_and_finish(ws: Workspace) -> None:
    thought = ok(ws, "think", thought="try a smaller learning rate")
    assert not thought.finished
    done = ok(ws, "finish", answer="accuracy 0.93")
    assert done.finished
    assert not call(ws, "finish", answer=3).finished
