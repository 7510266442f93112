"""The sandbox under attack: each test tries what a model running arbitrary code might, and checks
it fails inside while the workspace keeps working. Signals only ever go to processes a test
started itself (the decoy below is a child it holds)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apollo_es.redaction import Redactor, is_secret_name
from apollo_es.tools import SandboxError, Workspace, check_available
from apollo_es.tools.processes import process_id
from events import SandboxSpec


def make(tmp_path: Path, **spec) -> Workspace:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return Workspace(root, sandbox=SandboxSpec(**spec), idle_after=0.3)


def run(ws: Workspace, command: str, **arguments) -> tuple[bool, str]:
    obs = ws.execute("run_command", {"command": command, **arguments})
    return obs.is_error, obs.output


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = make(tmp_path)
    yield workspace
    workspace.kill_all_sessions()


@pytest.fixture
def loopback_server() -> Iterator[tuple[int, list[str]]]:
    """A server on 127.0.0.1 the test runs itself; yields its port and the paths it was asked for."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"reached")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], hits
    server.shutdown()
    server.server_close()


# -- the filesystem ---------------------------------------------------------------------------


def test_writes_outside_the_workspace_fail(ws: Workspace, tmp_path: Path) -> None:
    host_tmp = Path("/tmp") / f"apollo-escape-{os.getpid()}-{time.monotonic_ns()}"
    for target in ["../outside.txt", "/outside.txt", "/etc/outside.txt", "/usr/outside.txt", str(tmp_path / "outside.txt")]:
        failed, output = run(ws, f"echo x > {target}")
        assert failed and ("Read-only file system" in output or "No such file" in output), (target, output)
    assert not (tmp_path / "outside.txt").exists()
    # /tmp is the run's own: a file written there is kept for the next command, and not on the host
    assert run(ws, f"echo x > {host_tmp}") == (False, "(no output)")
    assert run(ws, f"cat {host_tmp}") == (False, "x\n")
    assert not host_tmp.exists()
    assert run(ws, "echo ok > inside.txt && cat inside.txt") == (False, "ok\n")


def test_the_host_is_not_visible(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("host secret")
    for path in [str(tmp_path / "secret.txt"), "/etc/shadow", "/root/.bash_history", "/proc/1/root/etc/shadow"]:
        failed, output = run(ws, f"cat {path}")
        assert failed and "host secret" not in output, (path, output)
    failed, output = run(ws, "ls /proc | grep -c '^[0-9]'")  # only the sandbox's own processes
    assert int(output) < 10
    assert run(ws, "id -u; hostname")[1] == "1000\napollo-sandbox\n"


def test_file_tools_refuse_symlinks_and_hard_links_out(tmp_path: Path) -> None:
    ws = make(tmp_path, kind="none")  # unconfined, so the test can plant what a command could
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    os.link(outside, ws.root / "hard.txt")
    (ws.root / "soft.txt").symlink_to(outside)
    for name, arguments in [
        ("write_file", {"path": "hard.txt", "content": "pwned"}),
        ("edit_file", {"path": "hard.txt", "old": "original", "new": "pwned"}),
        ("read_file", {"path": "hard.txt"}),
        ("write_file", {"path": "soft.txt", "content": "pwned"}),
        ("edit_file", {"path": "soft.txt", "old": "original", "new": "pwned"}),
    ]:
        obs = ws.execute(name, arguments)
        assert obs.is_error and ("hard links" in obs.output or "outside the workspace" in obs.output), (name, obs.output)
    assert outside.read_text() == "original"
    assert ws.execute("search", {"pattern": "original"}).output.startswith("No matches")


def test_hard_links_cannot_be_made_from_inside(ws: Workspace) -> None:
    failed, output = run(ws, "ln /usr/bin/env env-link")
    assert failed and "cross-device" in output.lower()


def test_a_symlink_race_never_leads_a_file_tool_out(ws: Workspace, tmp_path: Path) -> None:
    """A thread swaps `d` between a link inside and links outside (as a command in a session
    could) while the file tools write through it: some writes fail, none lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.root / "sub").mkdir()
    targets = ["sub", "../outside", str(outside)]
    (ws.root / "d").symlink_to("sub")
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set():
            tmp = ws.root / f".d{i}"
            tmp.symlink_to(targets[i % 3])
            os.replace(tmp, ws.root / "d")
            i += 1

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        results = [ws.execute("write_file", {"path": "d/evil.txt", "content": "x"}).is_error for _ in range(400)]
        results += [ws.execute("edit_file", {"path": "d/evil.txt", "old": "x", "new": "x"}).is_error for _ in range(100)]
    finally:
        stop.set()
        swapper.join()
    assert list(outside.iterdir()) == []
    assert (ws.root / "sub" / "evil.txt").read_text() == "x"
    assert any(results) and not all(results)  # the race really happened both ways


def test_fifos_are_refused_without_blocking(ws: Workspace) -> None:
    assert not run(ws, "mkfifo pipe")[0]
    for name, arguments in [
        ("read_file", {"path": "pipe"}),
        ("write_file", {"path": "pipe", "content": "x"}),
        ("edit_file", {"path": "pipe", "old": "a", "new": "b"}),
    ]:
        started = time.monotonic()
        obs = ws.execute(name, arguments)
        assert obs.is_error and "is a FIFO" in obs.output, obs.output
        assert time.monotonic() - started < 1
    assert ws.execute("search", {"pattern": "x"}).output.startswith("No matches")


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("run_command", {"command": "echo a\0b"}, "contains a NUL byte at index 6"),
        ("write_file", {"path": "a\0b", "content": "x"}, "contains a NUL byte"),
        ("write_file", {"path": "a.txt", "content": "bad \udc80 text"}, "not valid Unicode at index 4"),
        ("create_session", {"command": "echo \ud800"}, "lone surrogate"),
    ],
)
def test_unusable_strings_are_error_observations(ws: Workspace, name: str, arguments: dict, message: str) -> None:
    obs = ws.execute(name, arguments)
    assert obs.is_error and message in obs.output
    assert run(ws, "echo still working") == (False, "still working\n")


# -- processes and sessions -------------------------------------------------------------------


def test_forged_session_files_never_choose_who_gets_a_signal(ws: Workspace) -> None:
    decoy = subprocess.Popen(["sleep", "60"])  # the test's own process, standing in for anyone's
    try:
        forged = {"id": "s1", "pid": decoy.pid, "proc_start_time": process_id(decoy.pid)[1], "sandboxed": False,
                  "command": "x", "name": None, "started_at": 0}
        # 1. a sandboxed command writes the old in-workspace session layout: it means nothing now
        command = f"mkdir -p .apollo/sessions/s7 && echo '{json.dumps(forged)}' > .apollo/sessions/s7/meta.json"
        assert not run(ws, command)[0]
        assert "Unknown session" in ws.execute("kill_session", {"session_id": "s7"}).output
        # 2. the real state is out of the sandbox's reach
        assert run(ws, f"ls {ws.state_dir}")[0]
        # 3. even rewritten from outside (an unconfined command could), a session's meta cannot
        #    name another process: it is not our supervisor for that session
        ws.execute("create_session", {"command": "sleep 30"})
        (ws.state_dir / "sessions" / "s1" / "meta.json").write_text(json.dumps(forged))
        assert "not running" in ws.execute("kill_session", {"session_id": "s1"}).output
        assert ws.kill_all_sessions() == []
        for pid in (0, 1, -1):
            (ws.state_dir / "sessions" / "s1" / "meta.json").write_text(json.dumps({**forged, "pid": pid}))
            assert "Unknown session" in ws.execute("kill_session", {"session_id": "s1"}).output
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()


def test_sessions_run_in_the_sandbox(ws: Workspace) -> None:
    ws.execute("create_session", {"command": "pwd; id -u; echo x > ../escape.txt; echo done"})
    deadline = time.monotonic() + 5
    while "exited" not in (out := ws.execute("get_session_output", {"session_id": "s1"}).output):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert out.startswith("/workspace\n1000\n") and "Read-only file system" in out
    assert not (ws.root.parent / "escape.txt").exists()


def test_a_command_dies_with_the_agent(tmp_path: Path) -> None:
    """SIGKILL of the agent's process (one this test starts) ends its running command too."""
    root = tmp_path / "root"
    root.mkdir()
    agent = (
        "import sys; from apollo_es.tools import Workspace; "
        "Workspace(sys.argv[1]).execute('run_command', {'command': 'touch started; sleep 2; echo late > late.txt'})"
    )
    proc = subprocess.Popen([os.sys.executable, "-c", agent, str(root)])
    deadline = time.monotonic() + 10
    while not (root / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    time.sleep(2.5)
    assert not (root / "late.txt").exists()


# -- settings ---------------------------------------------------------------------------------


def test_network_is_off_unless_the_task_opts_in(tmp_path: Path, loopback_server: tuple[int, list[str]]) -> None:
    port, hits = loopback_server
    fetch = f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/x', timeout=5).read())\""
    failed, output = run(make(tmp_path), fetch)
    assert failed and "Connection refused" in output and hits == []
    failed, output = run(make(tmp_path, network=True), fetch)
    assert not failed and "reached" in output and hits == ["/x"]


def test_memory_limit(tmp_path: Path) -> None:
    failed, output = run(make(tmp_path, memory_mb=64), "python3 -c 'bytearray(256 * 2**20)'")
    assert failed and "MemoryError" in output
    assert run(make(tmp_path), "python3 -c 'bytearray(256 * 2**20)'") == (False, "(no output)")


def test_the_agents_python_or_the_systems(tmp_path: Path) -> None:
    assert run(make(tmp_path), "python3 -c 'import msgspec'") == (False, "(no output)")
    failed, output = run(make(tmp_path, python="system"), "python3 -c 'import msgspec'")
    assert failed and "No module named 'msgspec'" in output


def test_read_only_paths_and_devices(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text("tokens")
    ws = make(tmp_path, read_only=[str(data)], devices=["/dev/fus[e]"] if os.path.exists("/dev/fuse") else [])
    assert run(ws, f"cat {data}/corpus.txt") == (False, "tokens")
    failed, output = run(ws, f"echo x > {data}/corpus.txt")
    assert failed and "Read-only file system" in output
    if os.path.exists("/dev/fuse"):
        assert run(ws, "test -c /dev/fuse && echo device")[1] == "device\n"
    with pytest.raises(SandboxError, match="nothing on this machine matches '/dev/nvidia\\*'"):
        make(tmp_path, devices=["/dev/nvidia*"])
    with pytest.raises(SandboxError, match="must be existing absolute paths"):
        make(tmp_path, read_only=["relative/dir"])


def test_sandbox_none_runs_on_the_host_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = make(tmp_path, kind="none")
    assert run(ws, "pwd") == (False, f"{ws.root}\n")
    assert "unconfined" in caplog.text


def test_a_machine_without_bubblewrap_is_told_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    monkeypatch.setenv("PATH", str(fake))
    check_available.cache_clear()
    try:
        with pytest.raises(SandboxError, match=r"apt-get install bubblewrap.*--sandbox none"):
            make(tmp_path)
        (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
        (fake / "bwrap").chmod(0o755)
        check_available.cache_clear()
        with pytest.raises(SandboxError, match=r"No permissions.*user namespaces.*unprivileged_userns_clone.*--sandbox none"):
            make(tmp_path)
    finally:
        check_available.cache_clear()


# -- redaction --------------------------------------------------------------------------------

REAL_SHAPES = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-" + "Ab3_" * 20 + "xyzAA",
    "OPENAI_API_KEY": "sk-proj-" + "Zq9-" * 30,
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "GITHUB_TOKEN": "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
    "DATABASE_URL": "postgresql://app:s3cr3t-pw@db.internal:5432/prod",
    "REDIS_URL": "redis://:r3dis-pass@cache:6379/0",
    "MYSQL_PWD": "mysql-pass-1",
    "SENTRY_DSN": "https://0123456789abcdef@o1.ingest.sentry.io/42",
    "GCP_CREDENTIAL": '{"type": "service_account"}',
    "GPG_PASSPHRASE": "correct horse battery",
    "COOKIE": "session=abcdef123456",
    "HF_TOKEN": "hf_" + "x" * 34,
}


def test_secret_values_are_redacted_by_name() -> None:
    redact = Redactor.from_environ({**REAL_SHAPES, "PWD": "/work/main", "HOME": "/root", "SHORT_TOKEN": "abc",
                                    "PLAIN_URL": "https://example.org/data.csv"})
    text = "\n".join(f"{name}={value}" for name, value in REAL_SHAPES.items()) + "\ncwd /work/main, home /root, abc"
    redacted = redact(text)
    for name, value in REAL_SHAPES.items():
        assert value not in redacted
        assert f"[REDACTED:{name}]" in redacted
    assert redacted.endswith("cwd /work/main, home /root, abc")  # not secrets, or too short to tell
    assert Redactor.from_environ({}, extra={"model API key": "sk-explicit-key-123"})("k=sk-explicit-key-123") == "k=[REDACTED:model API key]"
    assert not is_secret_name("PATH") and not is_secret_name("PWD") and is_secret_name("db_password")


def test_a_secret_containing_another_is_replaced_whole() -> None:
    redact = Redactor.from_environ({"A_TOKEN": "abcdef", "B_TOKEN": "abcdef-ghijkl"})
    assert redact("abcdef-ghijkl abcdef") == "[REDACTED:B_TOKEN] [REDACTED:A_TOKEN]"
