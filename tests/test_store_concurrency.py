"""Several writers on one log: no lost or duplicated versions, no 'database is locked'.

Every test runs on a SQLite file and on PostgreSQL (a schema of its own on the local
server); the one that shares a store object between threads runs on ':memory:' too. The
processes are real processes opening the store by its path or URL, as separate hosts would.
"""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from apollo_es.store import open_store
from apollo_es.stores.base import Store
from events import ToolObserved

from conftest import ALL_BACKENDS, run_processes

# How long a writer waits for another's locks before giving up (StoreBusyError).
WAIT_OPTIONS = {"sqlite-file": {"busy_timeout": 60}, "postgres": {"lock_timeout": 60, "pool_size": 2}}

# A worker waits for "go" on stdin so that all of them start writing at once. It exits 0
# after all its appends, 3 on any StoreError other than ConcurrencyError (database is
# locked included), 4 on anything else.
WORKER = textwrap.dedent(
    """
    import json, sys, traceback
    from apollo_es import ANY, ConcurrencyError, NewEvent, StoreError, StreamNotFound
    from apollo_es.store import open_store
    from events import ToolObserved

    path, options, stream, worker, mode, n = sys.argv[1:6] + [int(sys.argv[6])]
    retries = 0
    try:
        store = open_store(path, **json.loads(options))
        print("ready", flush=True)
        assert sys.stdin.readline().strip() == "go"
        for i in range(n):
            item = NewEvent(event=ToolObserved(tool_call_id=f"{worker}-{i}", output=f"{worker} {i}"), event_id=f"{worker}-{i}")
            if mode == "any":
                store.append(stream, [item], expected_version=ANY)
                continue
            while True:
                try:
                    head = store.head(stream)
                except StreamNotFound:
                    head = 0
                try:
                    store.append(stream, [item], expected_version=head)
                    break
                except ConcurrencyError as exc:
                    assert exc.actual > head, (exc.actual, head)
                    retries += 1
        store.close()
    except StoreError:
        traceback.print_exc()
        sys.exit(3)
    except BaseException:
        traceback.print_exc()
        sys.exit(4)
    print("done", retries, flush=True)
    """
)


@pytest.fixture(params=["sqlite-file", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backends that separate processes can share: a file, or a PostgreSQL database."""
    return request.param


def run_workers(tmp_path: Path, location: str, backend: str, stream: str, modes: list[str], n: int) -> list[int]:
    """Run one WORKER per mode against `location`, all released at once; returns each one's retries."""
    options = json.dumps(WAIT_OPTIONS[backend])
    argvs = [[location, options, stream, f"w{k}", mode, str(n)] for k, mode in enumerate(modes)]
    outs = run_processes(tmp_path, WORKER, argvs)
    return [int(out.split()[-1]) for out in outs]


def check_stream(location: str, stream: str, workers: int, n: int) -> None:
    with open_store(location) as store:
        events_ = store.read(stream)
        assert len(events_) == workers * n
        assert [r.version for r in events_] == list(range(1, workers * n + 1))
        assert {r.event_id for r in events_} == {f"w{k}-{i}" for k in range(workers) for i in range(n)}
        for r in events_:
            worker, i = r.event_id.split("-")
            assert r.event == ToolObserved(tool_call_id=r.event_id, output=f"{worker} {i}")
        # each worker's own events keep their order
        for k in range(workers):
            own = [int(r.event_id.split("-")[1]) for r in events_ if r.event_id.startswith(f"w{k}-")]
            assert own == list(range(n))
        log = store.read_all()
        assert [r.position for r in log] == list(range(1, len(log) + 1))
        report = store.verify()
        assert report.ok, report
        assert report.events_checked == workers * n


def test_four_processes_append_to_one_stream(tmp_path: Path, location: str, backend: str) -> None:
    open_store(location).close()  # the store exists, as it would for a running service
    modes = ["any", "retry", "any", "retry"]
    n = 500 if backend == "sqlite-file" else 150  # a PostgreSQL append is a few round trips
    retries = run_workers(tmp_path, location, backend, "shared", modes, n=n)
    check_stream(location, "shared", workers=4, n=n)
    assert all(r >= 0 for r in retries)


def test_processes_opening_a_new_store_at_once(tmp_path: Path, location: str, backend: str) -> None:
    """Nobody created the store: every worker sets it up (SQLite: the WAL switch and the
    schema; PostgreSQL: the tables, triggers and views in an empty schema) at the same time."""
    run_workers(tmp_path, location, backend, "shared", ["any", "retry", "any", "retry"], n=25)
    check_stream(location, "shared", workers=4, n=25)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_threads_share_one_store_object(store_factory: Callable[..., Store]) -> None:
    store = store_factory()
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for i in range(100):
                store.append("shared", [ToolObserved(tool_call_id=f"t{k}-{i}", output="x")])
                store.read_all(after=max(0, store.last_position() - 5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    assert [r.version for r in store.read("shared")] == list(range(1, 401))
    assert store.verify().ok


def test_two_store_objects_on_one_location_in_one_process(store_factory: Callable[..., Store]) -> None:
    a = store_factory()
    with open_store(a.path) as b:
        a.append("run-1", [ToolObserved(tool_call_id="a", output="a")])
        [r] = b.append("run-1", [ToolObserved(tool_call_id="b", output="b")], expected_version=1)
        assert r.version == 2 and r.position == 2
        assert a.read("run-1") == b.read("run-1")
        child = a.branch("run-1", 1)
        assert b.read(child)[0] == a.read("run-1")[0]
        assert b.verify().ok
