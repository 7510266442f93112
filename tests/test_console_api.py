"""The annotator console's HTTP side against a real uvicorn server: reads, writes, who may
write, validation, the live event streams under 20 viewers, live branch continuation, and
`apollo-es serve` itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anyio
import httpx
import msgspec
import pytest
from click.testing import CliRunner

from apollo_es import EventStore, NewEvent
from apollo_es.cli import cli
from apollo_es.console.app import _safe_dirname
from apollo_es.console.hub import EventHub
from apollo_es.console.runs import RunsIndex
from apollo_es.tasks import Task
from events import AgentActed, ContextSummarized, HumanIntervened, RunFinished, RunStarted, ToolCall, ToolObserved
from replay import state_at
from tests.console_support import TOKEN, ConsoleServer, start_run
from tests.scripted import ScriptedAnthropic, texts, tool_use

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def step(i: int, text: str = "") -> list:
    call = ToolCall(id=f"c{i}", name="think", arguments={"thought": f"step {i}"})
    return [AgentActed(model="m", text=text, tool_calls=[call]), ToolObserved(tool_call_id=f"c{i}", tool_name="think", output=f"noted {i}")]


@pytest.fixture
def store(tmp_path):
    store = EventStore(tmp_path / "a.db")
    store.append("run-1", [RunStarted(task_id="t", task="Find the bug.", summary_threshold=5_000)], actor="system")
    for i in range(1, 4):
        store.append("run-1", step(i), actor="agent")
    yield store
    store.close()


def count(store: EventStore) -> int:
    return store.query("SELECT count(*) FROM events")[0][0]


def test_runs_lists_every_run_and_branch_with_where_it_stands(store):
    child = store.branch("run-1", 3, reason="retry", actor="human:ana")
    store.append("run-1", [HumanIntervened(annotator="ana", kind="guidance", message="check the tests")], actor="human:ana")
    store.append("done", [RunStarted(task_id="t2", task="Other."), RunFinished(status="finished", score=0.5)], actor="system")
    with ConsoleServer(store) as server:
        runs = {r["stream_id"]: r for r in httpx.get(f"{server.url}/api/runs").json()["runs"]}
        tree = httpx.get(f"{server.url}/api/runs", params={"tree": child}).json()["runs"]

    assert set(runs) == {"run-1", child, "done"}
    run = runs["run-1"]
    assert (run["status"], run["steps"], run["head"], run["open_interventions"]) == ("idle", 3, 8, 1)
    assert run["last_action"] == 'think({"thought":"step 3"})' and run["summary_threshold"] == 5_000
    assert run["tokens"] > 0 and run["last_event_at"].endswith("Z")
    branch = runs[child]
    assert (branch["parent_id"], branch["fork_version"], branch["root_id"], branch["steps"]) == ("run-1", 3, "run-1", 1)
    assert (runs["done"]["status"], runs["done"]["score"], runs["done"]["agent"]) == ("finished", 0.5, False)
    assert run["score"] is None and run["agent"] is False
    assert {r["stream_id"] for r in tree} == {"run-1", child}


def test_context_at_a_version_is_the_fold_replay_shows(store):
    store.append("run-1", [ContextSummarized(summary="Thought twice.", replaces_from=2, replaces_to=5)], actor="agent")  # v8
    with ConsoleServer(store) as server:
        get = lambda **params: httpx.get(f"{server.url}/api/context", params={"run": "run-1", **params})  # noqa: E731
        before, now, beyond, unknown = get(version=3).json(), get().json(), get(version=99), get(run="nope")

    expected = state_at(store, "run-1", 3)
    assert (before["version"], before["tokens"], before["steps"]) == (3, expected.tokens, 1)
    assert [(m["role"], m["version"], m["content"]) for m in before["messages"]] == [
        (m.role, m.version, m.content) for m in expected.context.messages]
    assert before["messages"][1]["tool_calls"][0]["arguments"] == {"thought": "step 1"}
    assert [(m["source"], m["version"]) for m in now["messages"]] == [("task", 1), ("summary", 8), ("agent", 6), ("tool", 7)]
    assert "Thought twice." in now["messages"][1]["content"]
    assert beyond.status_code == 400 and "versions 1..8" in beyond.json()["error"]
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-000000000000"}, {"Authorization": "Basic " + TOKEN}],
    ids=["no-token", "wrong-token", "not-bearer"],
)
def test_a_write_without_the_token_is_refused_and_writes_nothing(store, headers):
    before = count(store)
    with ConsoleServer(store) as server:
        guidance = {"run": "run-1", "kind": "guidance", "message": "hi", "annotator": "ana"}
        refused = [
            httpx.post(f"{server.url}/api/interventions", json=guidance, headers=headers),
            httpx.post(f"{server.url}/api/interventions", params={"token": TOKEN}, json=guidance, headers=headers),
            httpx.post(f"{server.url}/api/branches", json={"run": "run-1", "at": 2, "message": "b", "annotator": "ana"}, headers=headers),
        ]
    for response in refused:
        assert response.status_code == 401, response.text
        assert "needs the console token" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert count(store) == before


def test_guidance_from_the_console_is_the_event_the_cli_writes(store, tmp_path):
    with ConsoleServer(store) as server:
        response = httpx.post(f"{server.url}/api/interventions", headers=AUTH,
                              json={"run": "run-1", "kind": "guidance", "message": "Re-run the tests first.", "annotator": "ana", "seen_version": 5})
    assert response.status_code == 201, response.text
    assert response.json()["version"] == 8
    from_console = store.read("run-1")[-1]
    store.close()
    result = CliRunner().invoke(cli, ["intervene", "run-1", "-m", "Re-run the tests first.", "--seen", "5", "--annotator", "ana",
                                      "--db", str(tmp_path / "a.db")])
    assert result.exit_code == 0, result.output
    with EventStore(tmp_path / "a.db") as again:
        from_cli = again.read("run-1")[-1]
    assert from_console.actor == from_cli.actor == "human:ana"
    assert from_console.event == from_cli.event == HumanIntervened(annotator="ana", kind="guidance", message="Re-run the tests first.", seen_version=5)


def test_stop_reject_and_approve_from_the_console(store):
    with ConsoleServer(store) as server:
        approve = httpx.post(f"{server.url}/api/interventions", headers=AUTH,
                             json={"run": "run-1", "kind": "approve", "target": 6, "message": "fine", "annotator": "cy"})
        reject = httpx.post(f"{server.url}/api/interventions", headers=AUTH,
                            json={"run": "run-1", "kind": "reject", "target": 4, "message": "pointless", "annotator": "ana"})
        stop = httpx.post(f"{server.url}/api/interventions", headers=AUTH,
                          json={"run": "run-1", "kind": "stop", "message": "drifting", "annotator": "ben"})
        decisions = httpx.get(f"{server.url}/api/annotations", params={"run": "run-1"}).json()["decisions"]
    assert (approve.status_code, reject.status_code, stop.status_code) == (201, 201, 201)
    events = store.read("run-1")
    rejected = events[3]
    assert events[-2].event.target_event_id == rejected.event_id and events[-2].causation_id == rejected.event_id
    assert events[-1].event.kind == "stop" and events[-1].actor == "human:ben"
    assert decisions[rejected.event_id]["keep"] is False
    assert [r["name"] for r in decisions[rejected.event_id]["reasons"]] == ["human_rejected"]
    assert all(d["keep"] for eid, d in decisions.items() if eid != rejected.event_id)
    approved = events[5]
    assert decisions[approved.event_id]["reasons"][0]["detail"] == "approved by cy: fine"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/interventions", b"not json", 400, "the body is not JSON"),
        ("/api/interventions", {"run": "run-1", "kind": "guidance", "message": "hi", "annotator": "ana", "extra": 1}, 400, "unknown field `extra`"),
        ("/api/interventions", {"run": "run-1", "kind": "shout", "message": "hi", "annotator": "ana"}, 400, "invalid request"),
        ("/api/interventions", {"run": "run-1", "kind": "guidance", "message": "hi", "annotator": 7}, 400, "Expected `str`, got `int`"),
        ("/api/interventions", {"run": "run-1", "kind": "guidance", "message": "   ", "annotator": "ana"}, 400, "the message is empty"),
        ("/api/interventions", {"run": "run-1", "kind": "guidance", "message": "x" * 20_001, "annotator": "ana"}, 400, "over 20,000 characters"),
        ("/api/interventions", {"run": "run-1", "kind": "guidance", "message": "hi", "annotator": "<b>ana</b>"}, 400, "invalid annotator name"),
        ("/api/interventions", {"run": "nope", "kind": "guidance", "message": "hi", "annotator": "ana"}, 404, "no stream 'nope'"),
        ("/api/interventions", {"run": "run-1", "kind": "guidance", "message": "hi", "annotator": "ana", "seen_version": 99}, 400, "outside versions 1..7"),
        ("/api/interventions", {"run": "run-1", "kind": "reject", "target": 1, "message": "hi", "annotator": "ana"}, 400, "not an AgentActed"),
        ("/api/interventions", {"run": "run-1", "kind": "guidance", "message": "x" * 300_000, "annotator": "ana"}, 413, "request body over"),
        ("/api/branches", {"run": "run-1", "at": 99, "message": "b", "annotator": "ana"}, 400, "99"),
        ("/api/branches", {"run": "run-1", "at": 0, "message": "b", "annotator": "ana"}, 400, "at version 0: it has versions 1..7"),
        ("/api/interventions", {"run": "run-1", "kind": "guidance", "message": "hi", "annotator": "ana   "}, 400, "invalid annotator name"),
        ("/api/branches", {"run": "nope", "at": 1, "message": "b", "annotator": "ana"}, 404, "no stream 'nope'"),
        ("/api/branches", {"run": "run-1", "at": 2, "message": "b", "annotator": "ana", "name": "bad name!"}, 400, "invalid stream id"),
        ("/api/branches", {"run": "run-1", "at": 2, "message": "b", "annotator": "ana", "name": "run-1"}, 409, "run-1"),
        ("/api/branches", {"run": "run-1", "at": 2, "message": "b", "annotator": "ana", "live": True}, 400, "no model is configured"),
    ],
)
def test_bad_writes_get_a_clear_error_and_write_nothing(store, path, body, status, message):
    before = count(store)
    with ConsoleServer(store) as server:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(server.url + path, content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert count(store) == before


def test_guidance_to_a_finished_run_is_refused(store):
    store.append("run-1", [RunFinished(status="finished")], actor="system")
    with ConsoleServer(store) as server:
        response = httpx.post(f"{server.url}/api/interventions", headers=AUTH,
                              json={"run": "run-1", "kind": "guidance", "message": "hi", "annotator": "ana"})
    assert response.status_code == 400 and "already ended (finished); branch it" in response.json()["error"]


def test_reads_are_open_on_loopback_but_need_the_token_off_it(store):
    with ConsoleServer(store, open_reads=False, loopback_only=False) as server:
        refused = httpx.get(f"{server.url}/api/runs")
        by_header = httpx.get(f"{server.url}/api/runs", headers=AUTH)
        by_query = httpx.get(f"{server.url}/api/events", params={"run": "run-1", "token": TOKEN})
        page = httpx.get(f"{server.url}/")
        config = httpx.get(f"{server.url}/api/config").json()
        no_session = httpx.post(f"{server.url}/api/session")
        with httpx.Client(base_url=server.url) as browser:
            session = browser.post("/api/session", headers=AUTH)
            by_cookie = browser.get("/api/events", params={"run": "run-1"})
            write_by_cookie = browser.post("/api/interventions", json={"run": "run-1", "kind": "stop", "message": "x", "annotator": "ana"})
        forged = httpx.get(f"{server.url}/api/runs", cookies={"apollo_es_read": "made-up"})
    assert config["reads_need_token"] is True and config["can_continue"] is False
    assert refused.status_code == 401 and by_query.status_code == 401  # the token never rides in a URL
    assert by_header.status_code == 200 and page.status_code == 200  # the page itself holds no data
    assert no_session.status_code == 401 and session.status_code == 200
    cookie = session.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert by_cookie.status_code == 200 and len(by_cookie.json()["events"]) == 7
    assert write_by_cookie.status_code == 401 and forged.status_code == 401
    assert store.head("run-1") == 7


def test_a_foreign_host_name_is_refused_on_loopback(store):
    with ConsoleServer(store, hosts=frozenset({"127.0.0.1", "localhost", "::1", "127.0.0.2"})) as server:
        rebound = httpx.get(f"{server.url}/api/runs", headers={"Host": "evil.example:8765"})
        local = httpx.get(f"{server.url}/api/runs", headers={"Host": f"localhost:{server.port}"})
        bound = httpx.get(f"{server.url}/api/runs", headers={"Host": f"127.0.0.2:{server.port}"})
    assert rebound.status_code == 421 and local.status_code == 200 and bound.status_code == 200


def test_pages_forbid_inline_scripts(store):
    with ConsoleServer(store) as server:
        page = httpx.get(f"{server.url}/run", params={"id": "run-1"})
        scripts = [httpx.get(f"{server.url}/static/{name}") for name in ("common.js", "runs.js", "run.js")]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for script in scripts:  # agent output only ever goes in as text
        assert script.status_code == 200 and "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text


def test_unknown_run_streams_404(store):
    with ConsoleServer(store) as server:
        response = httpx.get(f"{server.url}/api/events/stream", params={"run": "nope"})
        bad = httpx.get(f"{server.url}/api/events/stream", params={"run": "run-1", "after": "-1"})
        superscript = httpx.get(f"{server.url}/api/events/stream", params={"run": "run-1", "after": "²"})
    assert response.status_code == 404 and "no stream 'nope'" in response.json()["error"]
    assert bad.status_code == 400 and superscript.status_code == 400


# -- live streams -----------------------------------------------------------------------------


async def _view(url: str, last_version: int, received: list[int], headers: dict | None = None) -> None:
    """One page viewer: read the run's event stream until `last_version` arrives (or fail after 30 s)."""
    with anyio.fail_after(30):
        await _read_stream(url, last_version, received, headers)


async def _read_stream(url: str, last_version: int, received: list[int], headers: dict | None) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60)) as client:
        async with client.stream("GET", f"{url}/api/events/stream", params={"run": "run-1"}, headers=headers or {}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:])["version"])
                    if received[-1] >= last_version:
                        return


def test_twenty_viewers_each_receive_every_event_in_order(store):
    steps = 40
    last_version = 7 + 2 * steps
    received: list[list[int]] = [[] for _ in range(20)]

    def writer() -> None:
        for i in range(4, 4 + steps):
            store.append("run-1", step(i), actor="agent")
            time.sleep(0.01)

    async def main(url: str) -> None:
        with anyio.fail_after(60):
            await viewers(url)

    async def viewers(url: str) -> None:
        async with anyio.create_task_group() as tg:
            for viewer in received:
                tg.start_soon(_view, url, last_version, viewer)
            await anyio.sleep(0.3)  # viewers connected and reading their backlog
            await anyio.to_thread.run_sync(writer)

    with ConsoleServer(store) as server:
        anyio.run(main, server.url)
        hub = server.server.config.app.state.hub
        deadline = time.monotonic() + 10
        while hub.viewers and time.monotonic() < deadline:  # closed streams leave the hub
            time.sleep(0.05)
        assert hub.viewers == 0
    expected = list(range(1, last_version + 1))
    for viewer in received:
        assert viewer == expected


def test_a_reconnecting_viewer_resumes_after_its_last_event_id_and_goes_on_live(store):
    received: list[int] = []

    async def main(url: str) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_view, url, 9, received, {"Last-Event-ID": "4"})
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(lambda: store.append("run-1", step(4), actor="agent"))

    with ConsoleServer(store) as server:
        anyio.run(main, server.url)
    assert received == [5, 6, 7, 8, 9]


def test_an_event_landing_between_backlog_and_live_is_not_lost(store):
    """The stream subscribes to the hub before it reads the backlog, so nothing falls between."""
    received: list[int] = []
    read = store.read

    def read_then_append(stream_id, up_to=None):
        events = read(stream_id, up_to)
        if stream_id == "run-1" and len(events) == 7:
            store.append("run-1", step(4)[:1], actor="agent")  # lands right after the backlog was read
            time.sleep(0.3)  # the hub publishes it before this stream would otherwise subscribe
        return events

    with ConsoleServer(store) as server:
        store.read = read_then_append
        try:
            anyio.run(_view, server.url, 8, received)
        finally:
            del store.read
    assert received == [1, 2, 3, 4, 5, 6, 7, 8]


def test_the_runs_stream_sends_changed_rows(store):
    async def main(url: str) -> list[dict]:
        messages = []
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", f"{url}/api/runs/stream") as response:
                event = None
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        messages.append({"event": event, **json.loads(line[6:])})
                        if event == "runs":
                            await anyio.to_thread.run_sync(lambda: store.append("run-1", step(9), actor="agent"))
                        else:
                            return messages

    with ConsoleServer(store) as server:
        messages = anyio.run(main, server.url)
    assert [m["event"] for m in messages] == ["runs", "changed"]
    assert messages[0]["runs"][0]["steps"] == 3
    assert [(r["stream_id"], r["steps"]) for r in messages[1]["runs"]] == [("run-1", 4)]


def test_a_viewer_that_falls_behind_is_dropped_not_buffered(store):
    async def main() -> list[int]:
        hub = EventHub(store, backlog=2, page_size=2)
        got = []
        with hub.subscribe() as slow:
            while await hub.poll():
                pass
            dropped = hub.viewers == 0
            async for batch in slow:  # what was buffered before the drop, then the end
                got.extend(e.version for e in batch.events)
        return got, dropped

    got, dropped = anyio.run(main)
    assert got == [1, 2, 3, 4] and dropped


def test_runs_index_folded_in_pieces_equals_folded_at_once(store):
    store.branch("run-1", 5, actor="human:ana")
    store.append("run-1", [HumanIntervened(annotator="ana", kind="stop", message="enough")], actor="human:ana")
    events = store.read_all()
    whole, pieces = RunsIndex(store), RunsIndex(store)
    whole.apply(events)
    for start in range(0, len(events), 3):
        pieces.apply(events[start : start + 3])
    assert msgspec.to_builtins(pieces.summaries()) == msgspec.to_builtins(whole.summaries())
    assert {s.stream_id: s.status for s in whole.summaries()} == {"run-1": "stopped", "run-1~b1": "idle"}


# -- live continuation of a branch ---------------------------------------------------------------


def test_a_branch_continues_live_with_the_configured_model(tmp_path):
    store = EventStore(tmp_path / "live.db")
    start_run(store, tmp_path)
    for i in range(1, 3):
        store.append("run-1", step(i), actor="agent")
    script = ScriptedAnthropic([tool_use("think", {"thought": "new plan"}), tool_use("finish", {"answer": "done"})])
    with ConsoleServer(store, model_client=lambda provider: script.client(), model="claude-test", workspaces=tmp_path / "workspaces") as server:
        response = httpx.post(f"{server.url}/api/branches", headers=AUTH,
                              json={"run": "run-1", "at": 3, "message": "Try the other plan.", "annotator": "ana", "live": True})
        assert response.status_code == 201, response.text
        branch_id = response.json()["stream_id"]
        deadline = time.monotonic() + 30
        while not isinstance(store.read(branch_id)[-1].event, RunFinished):
            assert time.monotonic() < deadline, "the branch did not finish"
            time.sleep(0.05)
        live = httpx.get(f"{server.url}/api/live").json()["branches"]
    assert live == {branch_id: "finished"}
    first = "\n".join(texts(script.requests[0]))
    assert "Try the other plan." in first and "noted 1" in first and "noted 2" not in first
    assert [p.name for p in (tmp_path / "workspaces").iterdir() if p.name != ".apollo"] == [_safe_dirname(branch_id)]
    assert _safe_dirname("a/b") != _safe_dirname("a_b")
    store.close()


def test_a_live_branch_of_an_imported_run_is_refused_before_anything_is_written(tmp_path):
    """Rebuilding its workspace would execute the imported file's commands; only with the setting."""
    store = EventStore(tmp_path / "imp.db")
    call = ToolCall(id="c1", name="run_command", arguments={"command": "touch ran-here"})
    store.append("imp", [RunStarted(task_id="t", task="imported", model="m"), AgentActed(model="m", tool_calls=[call]),
                         NewEvent(event=ToolObserved(tool_call_id="c1", output="", exit_code=0))], actor="import:openhands")
    task = Task(id="t", description="d")
    with ConsoleServer(store, model_client=lambda provider: ScriptedAnthropic([]).client(), model="claude-test",
                       task=task, workspaces=tmp_path / "workspaces") as server:
        response = httpx.post(f"{server.url}/api/branches", headers=AUTH,
                              json={"run": "imp", "at": 3, "message": "go on", "annotator": "ana", "live": True})
    assert response.status_code == 400 and "was imported (import:openhands)" in response.json()["error"]
    assert [info.stream_id for info in store.streams()] == ["imp"] and not (tmp_path / "workspaces").exists()
    store.close()


# -- apollo-es serve ---------------------------------------------------------------------------------


def test_serve_refuses_another_address_without_a_token(tmp_path, store):
    db = str(tmp_path / "a.db")
    runner = CliRunner()
    refused = runner.invoke(cli, ["serve", "--db", db, "--host", "0.0.0.0"], env={"APOLLO_ES_TOKEN": ""})
    short = runner.invoke(cli, ["serve", "--db", db], env={"APOLLO_ES_TOKEN": "short"})
    missing = runner.invoke(cli, ["serve", "--db", str(tmp_path / "typo.db")])
    no_key = runner.invoke(cli, ["serve", "--db", db, "--model", "claude-x"], env={"ANTHROPIC_API_KEY": None})
    no_recording = runner.invoke(cli, ["serve", "--db", db, "--provider", "recorded"])
    assert no_key.exit_code == 1 and "no Anthropic API key" in no_key.output
    assert no_recording.exit_code == 1 and "--provider recorded needs --recording FILE" in no_recording.output
    assert refused.exit_code == 1 and "refusing to listen on 0.0.0.0 without a token" in refused.output
    assert short.exit_code == 1 and "APOLLO_ES_TOKEN is too short" in short.output
    assert missing.exit_code == 1 and "no store at" in missing.output


def test_serve_reports_a_port_in_use(tmp_path, store):
    with ConsoleServer(store) as server:
        result = CliRunner().invoke(cli, ["serve", "--db", str(tmp_path / "a.db"), "--port", str(server.port)])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{server.port}" in result.output


def test_serve_prints_a_url_with_a_fresh_token_and_serves(tmp_path, store):
    process = subprocess.Popen([sys.executable, "-m", "apollo_es.cli", "serve", "--db", str(tmp_path / "a.db"), "--port", "0"],
                               stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "APOLLO_ES_TOKEN": ""})
    try:
        first = process.stdout.readline()
        url, token = first.split()[-1].split("#token=")
        assert url.startswith("http://127.0.0.1:") and len(token) >= 32
        assert process.stdout.readline().strip() == f"Write token: {token}"
        for _ in range(100):
            try:
                runs = httpx.get(url + "api/runs").json()["runs"]
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert [r["stream_id"] for r in runs] == ["run-1"]
        written = httpx.post(url + "api/interventions", headers={"Authorization": f"Bearer {token}"},
                             json={"run": "run-1", "kind": "guidance", "message": "hi", "annotator": "ana"})
        assert written.status_code == 201
    finally:
        process.terminate()
        process.wait(10)


def test_guidance_racing_the_end_of_a_run_is_refused_not_written_after_it(store):
    """The check and the write happen at one version: a RunFinished in between is seen."""
    from apollo_es.interventions import InterventionError, intervene

    read = store.read
    finished = []

    def read_then_finish(stream_id, up_to=None):
        events = read(stream_id, up_to)
        if not finished:
            finished.append(store.append("run-1", [RunFinished(status="finished")], actor="agent"))
        return events

    store.read = read_then_finish
    try:
        with pytest.raises(InterventionError, match="already ended"):
            intervene(store, "run-1", kind="guidance", message="hi", annotator="ana")
    finally:
        del store.read
    assert isinstance(store.read("run-1")[-1].event, RunFinished)
