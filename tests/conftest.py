"""Shared fixtures for the apollo-es test suite.

Fixtures
--------
- ``backend``: the storage backend a contract test runs against ("sqlite-file" or
  "sqlite-memory"); every test that uses ``store`` or ``store_factory`` runs once per backend.
  ``tests/test_store_contract.py`` adds "postgres" (``ALL_BACKENDS``): one database per test
  session on the local server (``APOLLO_ES_TEST_PG``, default ``postgresql://root@127.0.0.1:5432/test``
  as the maintenance database), one schema per store, dropped afterwards.
- ``store_factory``: opens a *fresh, empty* store on the current backend, with any
  ``EventStore`` keyword arguments (``max_payload_bytes=...``); closes them all afterwards.
- ``store``: one fresh store on the current backend.
- ``db_path``: a path for a SQLite file in the test's tmp dir (the file does not exist yet).
- ``make_event`` / ``make_events`` / ``one_of_each_kind``: deterministic event factories
  (session-scoped, so they are safe to use from hypothesis tests).
- ``raw_append``: insert a row straight through SQL with a correct hash chain (for rows an
  older apollo-es would have written, e.g. old schema versions); ``row_hash`` recomputes a
  stored row's hash.

Every tool process runs in bubblewrap, so the session starts by installing Debian's
``bubblewrap`` where it is missing (as the browser tests do with chromium).

The factories are plain functions in this module too; ``tests/`` is on ``sys.path`` under
pytest's default import mode, but prefer the fixtures.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from apollo_es import EventStore
from apollo_es.store import open_store as open_backend
from apollo_es.store import GENESIS_HASH, chain_hash, utc_now
from tests.system_packages import debian_binary
from events import (
    ActionJudged,
    AgentActed,
    BranchCreated,
    ContextSummarized,
    Event,
    HumanIntervened,
    RunFinished,
    RunReconfigured,
    RunStarted,
    ToolCall,
    ToolObserved,
    ToolSpec,
    Usage,
)

BACKENDS = ("sqlite-file", "sqlite-memory")
ALL_BACKENDS = (*BACKENDS, "postgres")
REPO_ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("APOLLO_ES_TEST_PG", "postgresql://root@127.0.0.1:5432/test")


# -- event factories ----------------------------------------------------------------------


def one_of_each_kind() -> list[Event]:
    """One fully populated (non-default fields) instance of every event kind, in KINDS order."""
    return [
        RunStarted(
            task_id="task-42",
            task="Fix the failing test in repo/ and explain the change.\nBe brief.",
            system_prompt="You are a careful software agent.",
            tools=[
                ToolSpec(
                    name="bash",
                    description="run a shell command",
                    input_schema={"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
                ),
                ToolSpec(name="noop"),
            ],
            model="claude-test",
            provider="anthropic",
            sampling={"temperature": 0.7, "top_p": 0.95, "stop": ["\n\n"]},
            summary_threshold=50_000,
            context_limit=200_000,
            max_output_tokens=4_096,
            environment="docker://swe:1",
            tags=["smoke", "ünïcødé ✓"],
        ),
        AgentActed(
            model="claude-test",
            text="Let me look at the tests first.",
            reasoning="The failure is probably in the parser.",
            tool_calls=[
                ToolCall(id="call-1", name="bash", arguments={"cmd": "pytest -x", "env": {"A": 1}}),
                ToolCall(id="call-2", name="bash", raw_arguments="{not json"),
            ],
            stop_reason="tool_use",
            usage=Usage(input_tokens=1200, output_tokens=85, cache_read_tokens=1000, cache_write_tokens=12),
            latency_ms=812.5,
            context_digest="sha256:abc",
        ),
        ToolObserved(
            tool_call_id="call-1",
            output="1 failed, 12 passed\nE   AssertionError",
            tool_name="bash",
            is_error=True,
            exit_code=1,
            duration_ms=1534.25,
            truncated=True,
            original_chars=99_999,
        ),
        HumanIntervened(
            annotator="alice",
            kind="guidance",
            message="Check the tokenizer, not the parser.",
            seen_version=3,
            target_event_id="evt-3",
        ),
        ContextSummarized(
            summary="The agent ran the tests; one failure in the parser.",
            replaces_from=2,
            replaces_to=4,
            tokens_before=90_000,
            tokens_after=2_000,
            model="claude-small",
            usage=Usage(input_tokens=90_000, output_tokens=2_000),
            request_digest="sha256:def",
        ),
        ActionJudged(target_event_id="evt-2", verdict="mask", judge_id="judge-v1", score=0.25, reason="off track"),
        BranchCreated(parent_stream="run-1", fork_version=3, reason="try the tokenizer", created_by="human:alice"),
        RunReconfigured(sampling={"temperature": 1.0, "thinking": {"type": "enabled", "budget_tokens": 2048}}, prompt_caching=True,
                        max_output_tokens=16_000, max_steps=80, time_limit=7200.0, token_budget=5_000_000, reason="resume with more budget"),
        RunFinished(status="finished", final_answer="Fixed the tokenizer.", score=1.0, error=""),
    ]


def make_event(i: int, kind: str | None = None) -> Event:
    """A small deterministic event numbered `i`; `kind` picks the kind, else it cycles.

    BranchCreated and RunStarted are left out of the cycle (the store takes them only as a
    branch's or a run's first event); ask for them explicitly if needed. Every event's content
    depends on `i`, so two events with different numbers never compare equal.
    """
    kinds = ("AgentActed", "ToolObserved", "HumanIntervened", "ActionJudged", "ContextSummarized", "RunReconfigured", "RunFinished")
    kind = kind or kinds[i % len(kinds)]
    if kind == "RunStarted":
        return RunStarted(task_id=f"task-{i}", task=f"task number {i}")
    if kind == "AgentActed":
        return AgentActed(
            model="m",
            text=f"step {i}",
            tool_calls=[ToolCall(id=f"call-{i}", name="bash", arguments={"cmd": f"echo {i}"})],
            usage=Usage(input_tokens=i, output_tokens=1),
        )
    if kind == "ToolObserved":
        return ToolObserved(tool_call_id=f"call-{i}", output=f"output {i}", tool_name="bash", exit_code=0)
    if kind == "HumanIntervened":
        return HumanIntervened(annotator="alice", kind="guidance", message=f"hint {i}", seen_version=i)
    if kind == "ActionJudged":
        return ActionJudged(target_event_id=f"evt-{i}", verdict="keep", judge_id="judge", score=i / 10)
    if kind == "ContextSummarized":
        return ContextSummarized(summary=f"summary {i}", replaces_from=1, replaces_to=i + 1)
    if kind == "BranchCreated":
        return BranchCreated(parent_stream=f"run-{i}", fork_version=i + 1)
    if kind == "RunFinished":
        return RunFinished(status="finished", final_answer=f"answer {i}")
    if kind == "RunReconfigured":
        return RunReconfigured(max_steps=i + 1, reason=f"more steps {i}")
    raise ValueError(f"unknown kind {kind!r}")


def make_events(n: int, start: int = 0, kind: str | None = None) -> list[Event]:
    """`n` events numbered `start`..`start + n - 1` (see `make_event`)."""
    return [make_event(i, kind) for i in range(start, start + n)]


@pytest.fixture(scope="session", name="make_event")
def _make_event_fixture() -> Callable[..., Event]:
    return make_event


@pytest.fixture(scope="session", name="make_events")
def _make_events_fixture() -> Callable[..., list[Event]]:
    return make_events


@pytest.fixture(scope="session", name="one_of_each_kind")
def _one_of_each_kind_fixture() -> Callable[[], list[Event]]:
    return one_of_each_kind


# -- stores -------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test may create a SQLite store file (not created yet)."""
    return tmp_path / "apollo.db"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@contextlib.contextmanager
def fresh_database(prefix: str = "apollo_es_test") -> Iterator[str]:
    """A new, empty database on the local server (its URL), dropped afterwards.

    The server is expected to be up (CI and the project machines start it); if it is not,
    the PostgreSQL tests fail with the reason rather than skip.
    """
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_SERVER} is unreachable (set APOLLO_ES_TEST_PG): {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of its own for this test session (tests use a schema of it each)."""
    with fresh_database() as url:
        yield url


def pg_schema_url(database: str, schema: str) -> str:
    """`database` with `schema` first on the search path: a fresh, isolated store inside it."""
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{database}?options=-csearch_path%3D{schema}"


@pytest.fixture
def store_factory(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., EventStore]]:
    """`open(**kwargs)` → a fresh, empty `EventStore` on the current backend."""
    opened: list[EventStore] = []
    counter = itertools.count(1)
    database = request.getfixturevalue("pg_database") if backend == "postgres" else ""
    schemas: list[str] = []

    def open_store(**kwargs: Any) -> EventStore:
        if backend == "postgres":
            schemas.append(f"s_{uuid.uuid4().hex[:16]}")
            store = open_backend(pg_schema_url(database, schemas[-1]), **kwargs)
        else:
            path = ":memory:" if backend == "sqlite-memory" else tmp_path / f"store-{next(counter)}.db"
            store = EventStore(path, **kwargs)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()
    if schemas:
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(store_factory: Callable[..., EventStore]) -> EventStore:
    """A fresh, empty store on the current backend (file in tmp_path, or ':memory:')."""
    return store_factory()


# -- processes and places shared by the store tests ------------------------------------


def wait_until(condition: Callable[[], Any], what: str = "the condition", *processes: subprocess.Popen,
               timeout: float = 60.0) -> Any:
    """Poll `condition` until it returns something truthy, and return that. Fail naming `what`
    at the deadline, or at once, with its output, if one of `processes` exits first."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        for process in processes:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"{process.args} exited ({process.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return result


@contextlib.contextmanager
def empty_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Where no store is yet: a file path, or a URL whose search path is an empty schema of
    its own (dropped afterwards). Processes given it create the store themselves."""
    if backend == "sqlite-file":
        yield str(tmp_path / "apollo.db")
        return
    import psycopg

    database = request.getfixturevalue("pg_database")
    schema = f"s_{uuid.uuid4().hex[:16]}"
    try:
        yield pg_schema_url(database, schema)
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run_processes(tmp_path: Path, script: str, argvs: list[list[str]], timeout: float = 120) -> list[str]:
    """Run `script` once per argv; each prints "ready" and waits for "go", which all get at
    once, so their writes overlap. Fails unless every one exits 0; returns their stdouts."""
    path = tmp_path / f"script-{uuid.uuid4().hex[:8]}.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    procs: list[subprocess.Popen] = []
    try:
        for argv in argvs:
            procs.append(subprocess.Popen(
                [sys.executable, str(path), *argv],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            ))
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.wait(timeout)
                err = proc.stderr.read()  # type: ignore[union-attr]
                pytest.fail(f"process did not start ({proc.returncode}): {line}{err}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=timeout) + (proc.returncode,) for proc in procs]
    finally:
        for proc in procs:  # only ours, by the handle we hold
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failures = [f"process {argvs[k]} exited {rc}:\n{err}" for k, (_, err, rc) in enumerate(results) if rc != 0]
    assert not failures, "\n".join(failures)
    assert not any("locked" in err for _, err, _ in results)
    return [out for out, _, _ in results]


@pytest.fixture
def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty file path or PostgreSQL schema (per the module's `backend`) for processes to
    create the store in."""
    with empty_location(backend, tmp_path, request) as where:
        yield where


# -- raw rows -----------------------------------------------------------------------------


def row_hash(prev_hash: str, row: tuple | list) -> str:
    """The chain hash of a stored row's first ten columns (position .. payload), as the store computes it.

    Goes through `apollo_es.store.chain_hash`, whatever the split of its arguments.
    """
    params = inspect.signature(chain_hash).parameters
    if len(params) == 2:  # chain_hash(prev_hash, row)
        return chain_hash(prev_hash, list(row))
    header, payload = list(row[:9]), row[9]  # chain_hash(prev_hash, header, payload bytes)
    return chain_hash(prev_hash, header, payload.encode() if isinstance(payload, str) else payload)


def raw_append(
    store: EventStore,
    stream_id: str,
    kind: str,
    schema: int,
    payload: dict[str, Any] | str | bytes,
    *,
    event_id: str | None = None,
    actor: str = "system",
    causation_id: str | None = None,
    recorded_at: str | None = None,
) -> int:
    """Append one row through raw SQL, as an older writer would have, with a valid hash chain.

    Creates the stream (as a root stream) if needed and returns the row's position. The
    payload is stored as given (a dict is JSON-encoded): nothing checks that it decodes.
    """
    if isinstance(payload, dict):
        payload = msgspec.json.encode(payload).decode()
    elif isinstance(payload, bytes):
        payload = payload.decode()
    conn = store.connection
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM streams WHERE stream_id = ?", (stream_id,)).fetchone() is None:
            conn.execute(
                "INSERT INTO streams (stream_id, parent_id, fork_version, created_at) VALUES (?, NULL, NULL, ?)",
                (stream_id, utc_now()),
            )
        last = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
        position, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        version = conn.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM events WHERE stream_id = ?", (stream_id,)
        ).fetchone()[0]
        row = (
            position,
            stream_id,
            version,
            event_id or str(uuid.uuid4()),
            kind,
            schema,
            recorded_at or utc_now(),
            actor,
            causation_id,
            payload,
        )
        conn.execute(
            "INSERT INTO events (position, stream_id, version, event_id, kind, schema, recorded_at, actor,"
            " causation_id, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, prev_hash, row_hash(prev_hash, row)),
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return position


@pytest.fixture(scope="session", name="raw_append")
def _raw_append_fixture() -> Callable[..., int]:
    return raw_append


def pytest_sessionstart(session: pytest.Session) -> None:
    """Install bubblewrap where missing; without it the sandbox tests fail with the fix named."""
    debian_binary("bwrap", "bubblewrap")


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny tokenizer of every bundled chat-template family, built once per test session."""
    from projections.tiny_tokenizer import FAMILIES, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    return {family: build_tiny_tokenizer(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tokenizers(tokenizer_dirs) -> dict:
    from projections.chat_template import load_tokenizer

    return {family: load_tokenizer(path) for family, path in tokenizer_dirs.items()}
