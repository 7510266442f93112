"""Test helpers for the annotator console: a real uvicorn server and a paced scripted agent.

`ConsoleServer` serves `create_app` on a free loopback port from a thread. `PacedAgent` runs
the real rollout engine, through the real anthropic SDK, against a scripted Messages API
whose every answer waits for the test to release it, so a test decides when each step lands.
The `browser` and `page` fixtures (import them into a test module) drive Debian's chromium.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from apollo_es import EventStore
from apollo_es.agent import Agent
from apollo_es.console import ConsoleSettings, Server, create_app
from apollo_es.tasks import Task, prepare_workspace, run_started
from apollo_es.tools import Workspace
from tests.system_packages import debian_binary
from events import RunFinished
from tests.scripted import ScriptedAnthropic

TOKEN = "console-test-token-0123456789"
ARTIFACTS = Path(os.environ.get("APOLLO_ES_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts")) / "console"


class ConsoleServer:
    """The console app under uvicorn on 127.0.0.1, in a background thread."""

    def __init__(self, store: EventStore, **settings: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = ConsoleSettings(token=TOKEN, **{"poll_interval": 0.05, **settings})
        self.server = Server(create_app(store, config), grace=1)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ConsoleServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def start_run(store: EventStore, tmp_path: Path, run_id: str = "run-1", **task_fields: Any) -> Workspace:
    task = Task(**{"id": "t", "description": "Make hello.py print the sum of 2 and 3.", "eval": None, **task_fields})
    root = prepare_workspace(task, tmp_path / f"ws-{run_id}")
    store.append(run_id, [run_started(task, model="claude-test", provider="anthropic", workspace=root)], actor="system")
    return Workspace(root)


class PacedAgent:
    """The agent in its own thread; model answer N is held until `release(N)` (1-based).

    `requests[i]` is the body of the i-th Messages API request the SDK sent.
    """

    def __init__(self, store: EventStore, workspace: Workspace, replies: list[dict], run_id: str = "run-1") -> None:
        self.gates = [threading.Event() for _ in replies]
        self.served = 0
        self.script = ScriptedAnthropic([self._held(reply) for reply in replies])
        self.store, self.workspace, self.run_id = store, workspace, run_id
        self.finished: RunFinished | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def requests(self) -> list[dict]:
        return self.script.requests

    def _held(self, reply: dict):
        def answer(body: dict) -> dict:
            index = self.served
            self.served += 1
            if not self.gates[index].wait(60):
                raise RuntimeError(f"answer {index + 1} was never released")
            return reply

        return answer

    def release(self, n: int) -> None:
        self.gates[n - 1].set()

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()

    def wait_for_request(self, n: int, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the agent sent {len(self.requests)} requests, not {n}")
            time.sleep(0.02)
        return self.requests[n - 1]

    def _run(self) -> None:
        async def go() -> RunFinished:
            client = self.script.client()
            try:
                return await Agent(self.store, self.run_id, client, self.workspace).run()
            finally:
                await client.aclose()

        try:
            self.finished = anyio.run(go)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def start(self) -> PacedAgent:
        self.thread.start()
        return self

    def join(self, timeout: float = 30) -> RunFinished:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.finished is not None, "the agent did not finish"
        return self.finished


def chromium_path() -> str:
    """Debian's chromium, installed here if missing (the test set-up; no browser download)."""
    if os.environ.get("APOLLO_ES_SKIP_BROWSER") == "1":
        pytest.skip("APOLLO_ES_SKIP_BROWSER=1")
    path = shutil.which("chromium-browser") or debian_binary("chromium", "chromium")
    if path:
        return path
    pytest.fail("the browser tests need Debian's chromium (apt-get install chromium) and could not install it; "
                "set APOLLO_ES_SKIP_BROWSER=1 to skip them")


CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
"""Headless on a closed network: without the networking flags chromium keeps trying to reach Google."""


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; the test fails if the page logged an error or threw."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    assert not problems, problems


def shot(page, name: str) -> None:
    """A full-page screenshot into test-artifacts/console/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header belongs at the top of a full-page shot
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
