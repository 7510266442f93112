"""Many hosts on one PostgreSQL log: agents, an annotator and a would-be second agent, each a
separate process standing in for a host of its own (`APOLLO_ES_HOST`), and the run lease
(`apollo_es.lease`) working across them.

The end-to-end test runs the real `apollo-es` CLI in subprocesses on a fresh database. A step
that must be in progress when the test acts is a `run_command` that creates a flag file and
then waits for a file the test creates, so the timing never depends on sleeps. Leases last a
few seconds (`APOLLO_ES_LEASE_SECONDS`) so expiry is seen quickly.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from apollo_es.errors import ApolloError
from apollo_es.lease import HOST_ENV, LEASE_ENV, RunHeld, holding, host_name, lease_seconds
from apollo_es.models import ModelResponse, save_recording
from apollo_es.store import Store, open_store
from events import AgentActed, HumanIntervened, RunFinished, ToolCall, ToolObserved
from projections.context import fold
from projections.requests import digest, render_request
from conftest import fresh_database, wait_until

CLI = [sys.executable, "-m", "apollo_es.cli"]
TIMEOUT = 30.0  # seconds for any one wait; never reached when things work
LEASE = 8.0  # seconds: renewed every 8/3 s, so a killed holder's lease outlives a CLI start (about 1 s) by far

TASK_TOML = '''
id = "hosts"
description = "Run the commands you are given, then finish."
max_steps = 10
'''

_call_ids = itertools.count(1)


def respond(name: str, **arguments) -> ModelResponse:
    """A recorded model response calling one tool."""
    return ModelResponse(tool_calls=[ToolCall(id=f"call-{next(_call_ids)}", name=name, arguments=arguments)],
                         model="recorded-model", stop_reason="tool_use")


def blocking_command(name: str) -> str:
    """Creates `<name>.started` in the workspace (the only place a sandboxed command can write),
    then waits (at most 30 s) for the test to create `<name>.go` there."""
    return f"touch {name}.started; for i in $(seq 600); do [ -f {name}.go ] && break; sleep 0.05; done; echo released"


class Host:
    """One stand-in host: runs the CLI in subprocesses with its own `APOLLO_ES_HOST`."""

    def __init__(self, name: str, db: str, cwd: Path) -> None:
        self.name, self.db, self.cwd = name, db, cwd
        self.env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "APOLLO_ES_DB")}
        self.env.update({"CI": "1", HOST_ENV: name, LEASE_ENV: str(LEASE)})

    def start(self, *args: object) -> subprocess.Popen:
        return subprocess.Popen([*CLI, *map(str, args), "--db", self.db], cwd=self.cwd, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, *args: object) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *map(str, args), "--db", self.db], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def database() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    with fresh_database("apollo_es_hosts") as url:
        yield url


def leases(store: Store) -> dict[str, str]:
    return {stream_id: lease.holder for stream_id, lease in store.leases().items()}


def test_two_hosts_an_annotator_and_a_third_host_share_one_postgres_log(database, tmp_path):
    db = database
    task = tmp_path / "task.toml"
    task.write_text(TASK_TOML)
    guidance = "Host B: also note the GPU count in notes.txt."
    recordings = {
        # alpha: works, then is killed on host-a inside its second command; host-c finishes it
        "alpha": [respond("write_file", path="a.txt", content="alpha\n"),
                  respond("run_command", command=blocking_command("alpha")),
                  respond("finish", answer="alpha done")],
        # beta: guided by an annotator while its command runs, then writes and finishes
        "beta": [respond("run_command", command=blocking_command("beta")),
                 respond("write_file", path="notes.txt", content="gpus: 8\n"),
                 respond("finish", answer="beta done")],
    }
    for run_id, responses in recordings.items():
        save_recording(tmp_path / f"{run_id}.jsonl", responses)
    host_a, host_b, host_c, annotator = (Host(name, db, tmp_path) for name in ("host-a", "host-b", "host-c", "annotator"))

    def run_args(run_id: str) -> list[object]:
        return ["run", task, "--model", "recorded-model", "--provider", "recorded", "--recording", tmp_path / f"{run_id}.jsonl",
                "--run-id", run_id, "--workspace", tmp_path / f"ws-{run_id}", "--json"]

    def resume_args(run_id: str) -> list[object]:
        return ["resume", run_id, "--provider", "recorded", "--recording", tmp_path / f"{run_id}.jsonl", "--json"]

    started = time.monotonic()
    init = host_a.run("init")
    assert init.returncode == 0, init.stderr
    store = open_store(db)
    alpha, beta = host_a.start(*run_args("alpha")), host_b.start(*run_args("beta"))
    try:
        # Both hosts work at once, each under its own lease, each inside its blocking command.
        ws = {run_id: tmp_path / f"ws-{run_id}" for run_id in recordings}
        wait_until(lambda: (ws["alpha"] / "alpha.started").exists() and (ws["beta"] / "beta.started").exists(),
                   "both runs to be inside their commands", alpha, beta)
        held = leases(store)
        assert held["alpha"].startswith(f"host-a:{alpha.pid}:") and held["beta"].startswith(f"host-b:{beta.pid}:"), held
        quiet_at = store.last_position()

        # The annotator, a third process, guides beta while it works: delivered, so no warning.
        sent = annotator.run("intervene", "beta", "-m", guidance, "--annotator", "ana", "--json")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["warning"] is None and sent.stderr == ""
        assert store.last_position() == quiet_at + 1

        # Host C may not resume alpha while host-a holds it: refused, the holder named, nothing written.
        refused = host_c.run(*resume_args("alpha"))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"Error: run 'alpha' is held by another agent (host-a:{alpha.pid}:" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert store.last_position() == quiet_at + 1

        # Host A dies (SIGKILL to the process this test started) inside alpha's command. Its pid
        # is gone from this machine, but host-a is another host to host-c: only expiry frees alpha.
        alpha.send_signal(signal.SIGKILL)
        alpha.wait(timeout=TIMEOUT)
        (ws["beta"] / "beta.go").touch()  # beta goes on meanwhile
        lease = store.leases()["alpha"]
        refused = host_c.run(*resume_args("alpha"))
        assert refused.returncode == 1 and f"held by another agent (host-a:{alpha.pid}:" in refused.stderr, refused.stderr
        assert store.read("alpha")[-1].kind == "AgentActed"  # alpha's log ends in the interrupted action

        wait_until(lambda: "alpha" not in store.leases(), "alpha's lease to run out")
        assert time.time() >= lease.expires_at
        took_over = host_c.run(*resume_args("alpha"))
        assert took_over.returncode == 0, took_over.stderr
        assert json.loads(took_over.stdout)["status"] == "finished"

        out, err = beta.communicate(timeout=TIMEOUT)
        assert beta.returncode == 0, err
        assert json.loads(out)["status"] == "finished"
        assert leases(store) == {}  # every lease released

        verified = host_b.run("verify", "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        report = json.loads(verified.stdout)
        assert report["ok"] and report["events_checked"] == store.last_position(), report

        # One log, gapless: positions 1..N over both runs, versions 1..n within each.
        everything = store.read_all()
        assert [e.position for e in everything] == list(range(1, len(everything) + 1))
        runs = {run_id: store.read(run_id) for run_id in recordings}
        for events in runs.values():
            assert [e.version for e in events] == list(range(1, len(events) + 1))
            assert isinstance(events[-1].event, RunFinished) and events[-1].event.status == "finished"
            for index, recorded in enumerate(events):
                if isinstance(recorded.event, AgentActed):  # what the model saw is what the log renders
                    assert recorded.event.context_digest == digest(render_request(fold(events[:index])))
        assert len(everything) == sum(map(len, runs.values()))  # nothing else was written, by anyone

        # The guidance is in beta's log, and in the very next request beta's model was sent.
        beta_events = runs["beta"]
        [guided] = [e for e in beta_events if isinstance(e.event, HumanIntervened)]
        assert guided.actor == "human:ana" and guided.event.message == guidance
        after = next(i for i, e in enumerate(beta_events) if isinstance(e.event, AgentActed) and e.version > guided.version)
        assert guidance in json.dumps(render_request(fold(beta_events[:after])))
        assert not any(isinstance(e.event, HumanIntervened) for e in runs["alpha"])

        # alpha was taken over where host-a left it: the lost command's result is reported as lost.
        lost = [e.event for e in runs["alpha"] if isinstance(e.event, ToolObserved) and e.event.origin == "notice"]
        assert len(lost) == 1 and "was lost" in lost[0].output
        assert time.monotonic() - started < 40
    finally:
        for process in (alpha, beta):
            if process.poll() is None:
                process.kill()
                process.communicate()
        for run_id in recordings:  # end any command a killed agent left waiting
            if (tmp_path / f"ws-{run_id}").is_dir():
                (tmp_path / f"ws-{run_id}" / f"{run_id}.go").touch()
        store.close()


# -- holder identity and lease length, in this process --------------------------------------


def test_the_host_identity_comes_from_the_environment(monkeypatch):
    import socket

    monkeypatch.delenv(HOST_ENV, raising=False)
    assert host_name() == socket.gethostname()
    monkeypatch.setenv(HOST_ENV, "  ")
    assert host_name() == socket.gethostname()
    monkeypatch.setenv(HOST_ENV, "rack-7")
    assert host_name() == "rack-7"


@pytest.mark.parametrize("value", ["0.5", "-3", "nan", "inf", "soon"])
def test_a_bad_lease_length_is_an_error_that_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(LEASE_ENV, value)
    with pytest.raises(ApolloError, match=f"{LEASE_ENV} must be a number of seconds, at least 1, not '{value}'"):
        lease_seconds()


def test_the_lease_length_from_the_environment_wins(monkeypatch):
    monkeypatch.delenv(LEASE_ENV, raising=False)
    assert lease_seconds(12.0) == 12.0
    monkeypatch.setenv(LEASE_ENV, "2.5")
    assert lease_seconds(12.0) == 2.5


def test_a_dead_holder_is_taken_over_only_on_its_own_host(tmp_path, monkeypatch):
    from apollo_es import EventStore

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    gone = child.stdout.strip()  # a process of ours that has exited
    store = EventStore(tmp_path / "a.db")

    async def hold() -> str:
        async with holding(store, "run-1", 60) as held:
            return held.holder

    monkeypatch.setenv(HOST_ENV, "here")
    store.acquire_lease("run-1", f"there:{gone}:x", 60)  # another host's pid: means nothing here
    with pytest.raises(RunHeld, match=f"held by another agent \\(there:{gone}:x, lease until"):
        anyio.run(hold)
    store.release_lease("run-1", f"there:{gone}:x")
    store.acquire_lease("run-1", f"here:{gone}:x", 60)  # this host's, and its process is gone
    assert anyio.run(hold).startswith(f"here:{os.getpid()}:")
    assert store.leases() == {}
