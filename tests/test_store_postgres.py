"""PostgreSQL-only guarantees: what many hosts sharing one log over a network rely on.

- Positions stay gapless and in commit order under 16 writer processes appending and
  branching at once, and a reader tailing the log from another process never skips one.
- A connection killed mid-append (`pg_terminate_backend`) followed by a retry with the same
  event ids: a no-op returning the stored envelopes when the first commit landed, a normal
  append when it did not.
- `lock_timeout`: a writer blocked past it gets `StoreBusyError` and nothing is written.
- LISTEN across a reconnect: subscribers whose listening connection is terminated still
  receive every later event, in order, without gaps, and promptly.
- The documented writer role (`postgres_schema.py`): it can do a host's work, and it cannot
  change or remove rows or switch the append-only triggers off.

Sessions are ended only by the pid their own connection reported: `ProxyLink.backend_pid`
is read from the server's BackendKeyData message on that very connection (see `Proxy`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from apollo_es import NewEvent, RecordedEvent, StoreBusyError, StoreError
from apollo_es.store import open_store
from apollo_es.stores import postgres_schema
from apollo_es.stores.base import Store
from events import BranchCreated, ToolObserved

from conftest import make_events, run_processes, wait_until


@pytest.fixture
def backend() -> str:
    return "postgres"


def tool_events(prefix: str, n: int, size: int = 0) -> list[NewEvent]:
    """`n` events with chosen ids `prefix-0` .. `prefix-{n-1}` (outputs of about `size` bytes)."""
    return [NewEvent(event=ToolObserved(tool_call_id=f"{prefix}-{i}", output=f"{prefix} {i} " + "x" * size),
                     event_id=f"{prefix}-{i}") for i in range(n)]


# -- many processes -------------------------------------------------------------------------

# Appends to its own run and branches a shared root (generated ids, so the processes race
# for the same names) and its own run, appending to each branch; prints the branches made.
BRANCHING_WRITER = """
import json, sys
from apollo_es import NewEvent
from apollo_es.store import open_store
from events import ToolObserved

url, worker, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(url, pool_size=1)
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
made = []
for i in range(rounds):
    ids = [f"{worker}-{i}-{k}" for k in range(3)]
    store.append(f"run-{worker}", [NewEvent(event=ToolObserved(tool_call_id=e, output=e), event_id=e) for e in ids])
    parent, at = ("root", 1 + i % 3) if i % 2 == 0 else (f"run-{worker}", 3 * i)
    branch = store.branch(parent, at, reason=worker)
    e = f"{worker}-{i}-b"
    store.append(branch, [NewEvent(event=ToolObserved(tool_call_id=e, output=e), event_id=e)])
    made.append([branch, parent, at, e])
store.close()
print(json.dumps(made), flush=True)
"""


def test_sixteen_processes_appending_and_branching_keep_positions_contiguous(
    tmp_path: Path, store_factory: Callable[..., Store]
) -> None:
    """Every position 1..total is taken exactly once, whatever order 16 hosts commit in, and
    every branch made in the race reads as its parent's prefix, its marker and its own event."""
    store = store_factory()
    root = store.append("root", tool_events("root", 3))
    workers, rounds = 16, 4
    outs = run_processes(tmp_path, BRANCHING_WRITER, [[store.path, f"w{k}", str(rounds)] for k in range(workers)])
    made = [branch for out in outs for branch in json.loads(out)]

    total = 3 + workers * rounds * (3 + 1 + 1)  # three on the run, a branch marker, one on the branch
    log = store.read_all()
    assert [r.position for r in log] == list(range(1, total + 1))
    assert len({r.event_id for r in log}) == total
    assert len({branch for branch, *_ in made}) == workers * rounds  # no two processes got one name
    assert len(store.streams()) == 1 + workers + workers * rounds
    for k in range(workers):
        run = store.read(f"run-w{k}")
        assert [r.event_id for r in run] == [f"w{k}-{i}-{j}" for i in range(rounds) for j in range(3)]
        assert [r.version for r in run] == list(range(1, 3 * rounds + 1))
    for branch, parent, at, own in made:
        events_ = store.read(branch)
        assert events_[:at] == store.read(parent, up_to=at)
        assert isinstance(events_[at].event, BranchCreated) and events_[at].event.parent_stream == parent
        assert [r.event_id for r in events_[at + 1:]] == [own]
    assert store.read("root") == root
    report = store.verify()
    assert report.ok and report.events_checked == total, report


# A reader subscribes from 0 and prints every (position, event id) it is given; writers append
# batches of a few KB, so their commits overlap.
TAIL_OR_WRITE = """
import json, sys
from apollo_es import NewEvent
from apollo_es.store import open_store
from events import ToolObserved

url, role, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store(url, pool_size=1)
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
if role == "reader":
    seen = []
    for r in store.subscribe(poll_interval=0.01, idle_timeout=60):
        seen.append([r.position, r.event_id])
        if r.position >= n:
            break
    print(json.dumps(seen), flush=True)
else:
    for i in range(n):
        ids = [f"{name}-{i}-{k}" for k in range(4)]
        store.append(f"run-{name}", [NewEvent(event=ToolObserved(tool_call_id=e, output=e + " " + "x" * 3000),
                                              event_id=e) for e in ids])
    print("[]", flush=True)
store.close()
"""


def test_a_tailing_reader_never_skips_while_writers_commit_concurrently(
    tmp_path: Path, store_factory: Callable[..., Store]
) -> None:
    """Positions are handed out in commit order, so a reader asking for `position > n` never
    sees n + 2 before n + 1: it gets 1..total, each once, in order, and the same event at each
    position as a read afterwards."""
    store = store_factory()
    writers, batches = 8, 12
    total = writers * batches * 4
    argvs = [[store.path, "reader", "tail", str(total)]] + [[store.path, "writer", f"w{k}", str(batches)]
                                                             for k in range(writers)]
    seen = json.loads(run_processes(tmp_path, TAIL_OR_WRITE, argvs)[0])
    assert [position for position, _ in seen] == list(range(1, total + 1))
    assert [tuple(pair) for pair in seen] == [(r.position, r.event_id) for r in store.read_all()]
    assert store.verify().ok


# -- connections killed mid-append ----------------------------------------------------------


class ProxyLink:
    """One relayed connection: the client's socket, the server's, and what the relay saw."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.backend_pid: int | None = None  # from the server's BackendKeyData on this connection
        self.listening = False  # the client sent LISTEN on it
        self.closed = threading.Event()

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.closed.set()


class Proxy:
    """A TCP relay between stores and the local server, so a test can end exactly the session
    it means: each link learns its backend pid from the server's own BackendKeyData message
    during the connection's start-up. `intercept(link)`, if set, sees every reply before it is
    passed on; returning True ends that session instead (the reply is never delivered).

    Connections through it use `sslmode=disable` (the relay reads the protocol); nothing else
    about them changes. Only sessions opened through this relay can be ended by it.
    """

    def __init__(self, server_url: str) -> None:
        info = psycopg.conninfo.conninfo_to_dict(server_url)
        self.server_url = server_url
        self.upstream = (info.get("host") or "127.0.0.1", int(info.get("port") or 5432))
        self.intercept: Callable[[ProxyLink], bool] | None = None
        self.links: list[ProxyLink] = []
        self.terminated: list[int] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="pg-proxy-accept").start()

    def url(self, url: str) -> str:
        """`url` (a database on the proxied server) reached through this relay."""
        parts = urllib.parse.urlsplit(url)
        netloc = f"{parts.username}@127.0.0.1:{self.port}" if parts.username else f"127.0.0.1:{self.port}"
        query = "&".join(filter(None, [parts.query, "sslmode=disable", "gssencmode=disable"]))
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    def open_links(self) -> list[ProxyLink]:
        with self._lock:
            return [link for link in self.links if not link.closed.is_set() and link.backend_pid is not None]

    def terminate(self, link: ProxyLink) -> None:
        """End the link's server session with pg_terminate_backend (by the pid that session
        reported), waiting until it is gone, then close both sockets."""
        assert link.backend_pid is not None
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            ended = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (link.backend_pid,)).fetchone()[0]
        assert ended, f"backend {link.backend_pid} did not end"
        self.terminated.append(link.backend_pid)
        link.close()

    def close(self) -> None:
        self._socket.close()
        with self._lock:
            for link in self.links:
                link.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._socket.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.upstream)
            link = ProxyLink(client, upstream)
            with self._lock:
                self.links.append(link)
            threading.Thread(target=self._to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._to_client, args=(link,), daemon=True).start()

    def _to_server(self, link: ProxyLink) -> None:
        tail = b""
        try:
            while data := link.client.recv(65536):
                if b"LISTEN " in tail + data:
                    link.listening = True
                tail = data[-16:]
                link.upstream.sendall(data)
        except OSError:
            pass
        link.close()

    def _to_client(self, link: ProxyLink) -> None:
        start = b""  # start-up messages, until BackendKeyData has come
        try:
            while data := link.upstream.recv(65536):
                if link.backend_pid is None:
                    start += data
                    while len(start) >= 5 and len(start) >= 1 + int.from_bytes(start[1:5], "big"):
                        length = int.from_bytes(start[1:5], "big")
                        if start[:1] == b"K":
                            link.backend_pid = int.from_bytes(start[5:9], "big")
                        start = start[1 + length:]
                elif not link.listening and (intercept := self.intercept) is not None and intercept(link):
                    self.terminate(link)
                    return
                link.client.sendall(data)
        except OSError:
            pass
        link.close()


@pytest.fixture
def proxy(pg_database: str) -> Iterator[Proxy]:
    relay = Proxy(pg_database)
    yield relay
    relay.close()


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `call` in a thread; the dict gets its "result" or "error"."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_retry_after_the_connection_died_before_the_commit_appends_normally(
    store_factory: Callable[..., Store], proxy: Proxy
) -> None:
    """The append holds the log head (its positions taken) and waits for a table lock when
    its session is terminated: nothing lands, the head's counter is restored, and the retry
    with the same ids is an ordinary append at the next positions."""
    direct = store_factory()
    direct.append("run-1", make_events(2))
    items = tool_events("retry", 3)
    with open_store(proxy.url(direct.path)) as store, psycopg.connect(direct.path, autocommit=True) as blocker:
        with blocker.transaction():
            blocker.execute("LOCK TABLE events IN EXCLUSIVE MODE")  # lets reads through, no inserts
            thread, outcome = in_thread(lambda: store.append("run-1", items, expected_version=2))

            def waiting_for_the_lock() -> list[ProxyLink]:
                links = {link.backend_pid: link for link in proxy.open_links()}
                rows = blocker.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)"
                                       " AND wait_event_type = 'Lock'", (list(links),)).fetchall()
                return [links[pid] for pid, in rows]

            [link] = wait_until(waiting_for_the_lock, "the append to wait for the table lock")
            proxy.terminate(link)
            thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), StoreError), outcome
        assert direct.last_position() == 2
        assert direct.events_by_ids([item.event_id for item in items]) == {}
        assert direct.verify().ok  # the log head went back with the rollback

        retried = store.append("run-1", items, expected_version=2)
    assert [(r.position, r.version, r.event_id) for r in retried] == [(3 + i, 3 + i, f"retry-{i}") for i in range(3)]
    assert direct.read("run-1")[2:] == retried
    assert direct.verify().ok


def test_retry_after_the_connection_died_after_the_commit_returns_the_stored_envelopes(
    store_factory: Callable[..., Store], proxy: Proxy
) -> None:
    """The append commits, but its session is terminated before the reply reaches the client,
    which sees an error. The retry with the same ids (and the same expected version) writes
    nothing and returns the envelopes stored by the first attempt."""
    direct = store_factory()
    direct.append("run-1", make_events(2))
    items = tool_events("landed", 3)
    ids = [item.event_id for item in items]
    with open_store(proxy.url(direct.path)) as store, psycopg.connect(direct.path, autocommit=True) as watcher:

        def landed(link: ProxyLink) -> bool:
            """Hold each reply until the append's rows are committed: that reply is the commit's."""
            if watcher.execute("SELECT count(*) FROM events WHERE event_id = ANY(%s)", (ids,)).fetchone()[0] < len(ids):
                return False
            proxy.intercept = None
            return True

        proxy.intercept = landed
        with pytest.raises(StoreError):
            store.append("run-1", items, expected_version=2)
        assert proxy.terminated, "the append failed before its commit landed"
        stored = direct.read("run-1")[2:]
        assert [(r.position, r.event_id) for r in stored] == [(3 + i, f"landed-{i}") for i in range(3)]

        again = store.append("run-1", items, expected_version=2)
        assert again == stored
        assert direct.last_position() == 5
    assert direct.verify().ok


@pytest.mark.parametrize(
    "lock",
    [
        "LOCK TABLE events IN EXCLUSIVE MODE",  # as a bulk import or maintenance might
        "SELECT 1 FROM log_head FOR UPDATE",  # as another writer's append does until it commits
    ],
)
def test_a_writer_blocked_past_lock_timeout_gets_store_busy_and_writes_nothing(
    store_factory: Callable[..., Store], lock: str
) -> None:
    store = store_factory(lock_timeout=0.3)
    store.append("run-1", make_events(2))
    streams = store.streams()
    attempts: dict[str, Callable[[], object]] = {
        "append": lambda: store.append("run-1", tool_events("busy", 2), expected_version=2),
        "append to a new stream": lambda: store.append("run-new", tool_events("busy-new", 1)),
        "branch": lambda: store.branch("run-1", 1, "run-1-alt", then=tool_events("busy-branch", 1)),
    }
    with psycopg.connect(store.path, autocommit=True) as blocker, blocker.transaction():
        blocker.execute(lock)
        for what, attempt in attempts.items():
            started = time.monotonic()
            with pytest.raises(StoreBusyError):
                attempt()
            waited = time.monotonic() - started
            assert 0.3 <= waited < 10, (what, waited)
    assert store.last_position() == 2
    assert store.streams() == streams  # neither the new stream nor the branch left a row
    assert store.events_by_ids(["busy-0", "busy-1", "busy-new-0", "busy-branch-0"]) == {}
    assert store.verify().ok
    # the lock is gone: the same calls go through
    for attempt in attempts.values():
        attempt()
    assert store.last_position() == 2 + 2 + 1 + 2
    assert store.verify().ok


# -- LISTEN across a reconnect --------------------------------------------------------------


def test_subscribers_get_every_event_across_a_lost_listening_connection(
    store_factory: Callable[..., Store], proxy: Proxy
) -> None:
    """A thread's `subscribe` and an asyncio task's `asubscribe` tail the log; their process's
    listening connection is terminated, events are appended while it is down and after it is
    back. Both get every event once, in order, and within a few seconds although they poll
    only every 30 s: waking them is the listener's job, reconnecting included."""
    writer = store_factory()
    batches = [tool_events("before", 3), tool_events("while-down", 4), tool_events("after", 5)]
    total = sum(map(len, batches))
    sync_seen: list[RecordedEvent] = []
    async_seen: list[RecordedEvent] = []
    with open_store(proxy.url(writer.path)) as store:

        def tail() -> None:
            for recorded in store.subscribe(poll_interval=30):
                sync_seen.append(recorded)
                if len(sync_seen) == total:
                    return

        async def atail() -> None:
            async for recorded in store.asubscribe(poll_interval=30):
                async_seen.append(recorded)
                if len(async_seen) == total:
                    return

        threads = [threading.Thread(target=tail, daemon=True),
                   threading.Thread(target=anyio.run, args=(atail,), daemon=True)]
        for thread in threads:
            thread.start()
        [listening] = wait_until(lambda: [link for link in proxy.open_links() if link.listening], "a LISTEN")

        def delivered(n: int) -> bool:
            return len(sync_seen) >= n and len(async_seen) >= n

        writer.append("run-1", batches[0])
        wait_until(lambda: delivered(3), "the first events")
        proxy.terminate(listening)
        writer.append("run-1", batches[1])  # announced to nobody
        wait_until(lambda: [link for link in proxy.open_links() if link.listening], "listening again")
        wait_until(lambda: delivered(3 + 4), "the events appended while the listener was down")
        writer.append("run-2", batches[2])
        wait_until(lambda: delivered(total), "the events appended after the reconnect")
        for thread in threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in threads)
    log = writer.read_all()
    assert [r.position for r in log] == list(range(1, total + 1))
    assert sync_seen == log
    assert async_seen == log


# -- the writer role ------------------------------------------------------------------------


def documented_grants(role: str) -> list[str]:
    """The writer role's statements, exactly as `postgres_schema`'s docstring gives them."""
    statements = []
    for line in (postgres_schema.__doc__ or "").splitlines():
        line = line.split("--")[0].strip()
        if line.startswith(("CREATE ROLE", "GRANT")):
            statements.append(line.rstrip(";").replace("apollo_writer", role))
    assert statements and statements[0].startswith("CREATE ROLE"), "the docstring no longer documents a writer role"
    return statements


@pytest.fixture
def writer_url(store_factory: Callable[..., Store], pg_database: str) -> Iterator[tuple[str, Store]]:
    """A store made by the (superuser) owner, and a URL to it as a fresh role granted exactly
    what `postgres_schema` documents (plus USAGE on the test's schema, which a store in the
    `public` schema would not need). The role is dropped afterwards."""
    owner = store_factory()
    role = f"apollo_writer_{uuid.uuid4().hex[:12]}"
    schema = psycopg.conninfo.conninfo_to_dict(owner.path)["options"].split("=")[-1]
    with psycopg.connect(owner.path, autocommit=True) as admin:
        for statement in documented_grants(role):
            admin.execute(statement)
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
    parts = urllib.parse.urlsplit(owner.path)
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
    try:
        yield url, owner
    finally:
        with psycopg.connect(pg_database, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")  # its grants
            admin.execute(f"DROP ROLE {role}")


def test_the_documented_writer_role_can_do_a_hosts_work(writer_url: tuple[str, Store]) -> None:
    """Appends, branches, reads, subscriptions, leases and checkpoints, as the role."""
    url, owner = writer_url
    with open_store(url) as store:
        first = store.append("run-1", make_events(3), expected_version=0)
        assert [r.position for r in first] == [1, 2, 3]
        [again] = store.append("run-1", [NewEvent(event=first[0].event, event_id=first[0].event_id)])
        assert again == first[0]  # the idempotency lookup works too
        child = store.branch("run-1", 2, reason="as the writer", then=make_events(1, start=10))
        assert [r.version for r in store.read(child)] == [1, 2, 3, 4]
        store.append(child, make_events(2, start=20), expected_version=4)
        assert store.head(child) == 6
        assert [r.position for r in store.subscribe(idle_timeout=0.1)] == list(range(1, 8))
        assert store.acquire_lease("run-1", "host-a", 30) is not None
        assert store.acquire_lease("run-1", "host-b", 30) is None
        assert store.acquire_lease("run-1", "host-b", 30, take_over="host-a") is not None
        store.release_lease("run-1", "host-b")
        assert store.leases() == {}
        store.save_checkpoint("projection", 7, "f1")
        store.save_checkpoint("projection", 7, "f2")
        assert store.checkpoint("projection") == (7, "f2")
        assert store.verify().ok
        written = store.read_all()
    assert owner.read_all() == written  # the owner sees the same log


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET actor = 'human:mallory'",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE streams SET fork_version = 1 WHERE parent_id IS NOT NULL",
        "DELETE FROM streams",
        "TRUNCATE streams",
        "DELETE FROM log_head",
        "ALTER TABLE events DISABLE TRIGGER events_append_only",
        "ALTER TABLE events DISABLE TRIGGER USER",
        "DROP TRIGGER events_append_only ON events",
        "SET session_replication_role = replica",
    ],
)
def test_the_writer_role_cannot_get_around_the_triggers(writer_url: tuple[str, Store], statement: str) -> None:
    """Refused for lack of privilege, before any trigger is asked: the role could not change
    or remove rows even if the triggers were gone, and cannot make them gone."""
    url, owner = writer_url
    owner.append("run-1", make_events(2))
    owner.branch("run-1", 1)
    rows = owner.read_all()
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    assert owner.read_all() == rows
    assert owner.verify().ok


def test_a_pooled_connection_the_server_ended_while_idle_is_replaced_unseen(
    store_factory: Callable[..., Store], proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restart or an operator ends the pool's idle sessions: the next call, made
    after the idle ping threshold, gets a fresh connection instead of failing once."""
    from apollo_es.stores import postgres

    monkeypatch.setattr(postgres, "_PING_AFTER_IDLE_S", 0.0)
    direct = store_factory()
    with open_store(proxy.url(direct.path)) as store:
        store.append("run-1", make_events(2))
        for link in proxy.open_links():
            proxy.terminate(link)
        assert [r.position for r in store.append("run-1", make_events(3)[2:])] == [3]
        assert store.head("run-1") == 3
    assert direct.verify().ok
