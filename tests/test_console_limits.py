"""What a client can make the console hold: event streams are capped (429), a run's backlog is
shared by its viewers, a body is refused while it streams in. A load test: 50 clients that open
a big run's event stream and never read it."""

from __future__ import annotations

import socket
import time

import httpx

from apollo_es import EventStore
from events import AgentActed, RunStarted, ToolCall, ToolObserved
from tests.console_support import TOKEN, ConsoleServer

CLIENTS = 50
HOLD_SECONDS = 10
MEMORY_BOUND_MB = 150


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def big_run(store: EventStore, steps: int = 1_000) -> None:
    store.append("big", [RunStarted(task_id="t", task="x")])
    for start in range(0, steps, 250):
        batch = []
        for i in range(start, start + 250):
            batch.append(AgentActed(model="m", text=f"step {i}", tool_calls=[ToolCall(id=f"c{i}", name="run_command",
                                                                                     arguments={"command": f"echo {i}"})]))
            batch.append(ToolObserved(tool_call_id=f"c{i}", tool_name="run_command", output=("log line %d\n" % i) * 200, exit_code=0))
        store.append("big", batch, actor="agent")


def open_stream(port: int, run: str = "big") -> socket.socket:
    """An event-stream request from a client that never reads the answer."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /api/events/stream?run={run} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_fifty_clients_that_never_read_hold_no_copy_of_the_run(tmp_path):
    store = EventStore(tmp_path / "a.db")
    big_run(store)  # about 2,000 events, 4 MB of payloads
    with ConsoleServer(store) as server:
        first = open_stream(server.port)
        time.sleep(1.0)  # the backlog is read, encoded and cached once
        before = rss_mb()
        clients = [open_stream(server.port) for _ in range(CLIENTS - 1)]
        time.sleep(HOLD_SECONDS)
        grown = rss_mb() - before
        print(f"\n{CLIENTS} stuck clients for {HOLD_SECONDS} s: resident memory grew {grown:.1f} MB (bound {MEMORY_BOUND_MB} MB)")
        assert grown < MEMORY_BOUND_MB
        ok = httpx.get(f"{server.url}/api/runs", timeout=10)  # the server still answers
        assert ok.status_code == 200
        for sock in [first, *clients]:
            sock.close()


def test_event_streams_are_capped_per_client_with_429(tmp_path):
    store = EventStore(tmp_path / "a.db")
    store.append("run-1", [RunStarted(task_id="t", task="x")])
    with ConsoleServer(store, max_streams_per_client=2) as server:
        held = [open_stream(server.port, "run-1") for _ in range(2)]
        time.sleep(0.5)
        refused = httpx.get(f"{server.url}/api/events/stream?run=run-1", timeout=5)
        assert refused.status_code == 429 and "2 event streams are open" in refused.json()["error"]
        for sock in held:
            sock.close()
        time.sleep(1.0)  # the server notices the closed streams and frees their slots
        with httpx.stream("GET", f"{server.url}/api/events/stream?run=run-1", timeout=5) as again:
            assert again.status_code == 200


def test_a_huge_streamed_body_is_refused_without_being_held(tmp_path):
    store = EventStore(tmp_path / "a.db")
    store.append("run-1", [RunStarted(task_id="t", task="x")])
    with ConsoleServer(store) as server:
        sent = 0

        def chunks():
            nonlocal sent
            piece = b"x" * 65_536
            while sent < 200 * 1024 * 1024:
                sent += len(piece)
                yield piece

        before = rss_mb()
        response = httpx.post(f"{server.url}/api/interventions", content=chunks(),
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert response.status_code == 413 and "over 262144 bytes" in response.json()["error"]
        assert rss_mb() - before < 50  # the server counted the body as it came, never held 200 MiB of it
