"""The annotator console: an ASGI app over the store.

Pages are static files; everything they show comes from a small JSON API and two
server-sent-event streams (the runs table, one run's timeline) fed by one `EventHub`.
Writes go through the same functions the CLI uses (`apollo_es.interventions.intervene`,
`replay.branch`), so an event written from the page is the event the CLI would write; the
context at a step comes from `replay.state_at`, the fold the agent itself uses.

Who may do what: writes always need the token (`Authorization: Bearer TOKEN`); reads need
it too unless the server listens on loopback only. Run ids travel as query parameters, never
in the path, because they may contain `/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from apollo_es.console.limits import Backlogs, BodyTooLarge, Slot, StreamSlots, TooManyStreams, read_body
from apollo_es.console.hub import EventHub
from apollo_es.console.views import context_view, event_view
from apollo_es.errors import ApolloError, ConcurrencyError, StoreBusyError, StreamExistsError, StreamNotFound
from apollo_es.interventions import intervene, undelivered_warning
from apollo_es.models import ModelClient
from apollo_es.store import EventStore
from apollo_es.tasks import Task
from apollo_es.tools import Workspace
from projections.policy import annotations_for, decide
from projections.rules import RuleSet
from replay import branch, branch_workspace, continue_branch, fork_point, state_at
from replay.rerun import refuse_imported

__all__ = ["ConsoleSettings", "create_app"]

log = logging.getLogger("apollo_es.console")

STATIC = Path(__file__).parent / "static"
ANNOTATOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._@ -]{0,62}[A-Za-z0-9._@-])?")  # no trailing space: one name, one actor
DIGITS = re.compile(r"[0-9]{1,18}")  # str.isdigit() also accepts "²", which int() refuses
READ_COOKIE = "apollo_es_read"
MAX_MESSAGE_CHARS = 20_000
MAX_BODY_BYTES = 256 * 1024
KEEPALIVE_SECONDS = 15.0
SSE_BATCH = 500
"""Backlog events per write on a run's event stream (the first batch shows before the rest is encoded)."""
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

SECURITY_HEADERS = [
    # Agent output is untrusted: the pages put it into the DOM as text only, and this policy
    # would stop an injected script even if one got through.
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                 b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class ConsoleSettings(msgspec.Struct, kw_only=True):
    token: str
    """The bearer token every write (and, off loopback, every read) must carry."""
    open_reads: bool = True
    """Reads without the token: only when the server listens on loopback."""
    loopback_only: bool = True
    """Refuse requests whose Host is not a loopback name (a DNS-rebinding page cannot read runs)."""
    hosts: frozenset[str] = frozenset(LOOPBACK_HOSTS)
    """The Host names answered when `loopback_only` (the loopback names and the bound address)."""
    model_client: Callable[[str], ModelClient] | None = None
    """Builds a client for continuing a branch live, given the run's own provider; None: branches are only created."""
    model: str = ""
    task: Task | None = None
    """The runs' task, to rebuild a branch's workspace at its fork before continuing it."""
    workspaces: Path = Path("workspaces")
    allow_imported_commands: bool = False
    """Rebuild workspaces of imported runs by executing their recorded commands (in the sandbox)."""
    rules: RuleSet = msgspec.field(default_factory=RuleSet.default)
    poll_interval: float = 0.1
    max_streams_per_client: int = 64
    """Open event streams one client address may hold (a page uses one or two)."""
    max_streams: int = 512
    """Open event streams in all."""


# -- request bodies ---------------------------------------------------------------------


class _Intervention(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    run: str
    kind: Literal["guidance", "stop", "reject", "approve"]
    message: str
    annotator: str
    seen_version: int | None = None
    target: int | None = None


class _Branch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    run: str
    at: int
    message: str
    annotator: str
    name: str | None = None
    reason: str = ""
    live: bool = False
    """Continue the branch with the configured model right away."""


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def create_app(store: EventStore, settings: ConsoleSettings) -> Starlette:
    """The console over `store` (kept open by the caller for the app's lifetime)."""
    hub = EventHub(store, poll_interval=settings.poll_interval)
    slots = StreamSlots(settings.max_streams_per_client, settings.max_streams)
    backlogs = Backlogs(store, lambda events: b"".join(_sse("event", event_view(r), id=r.version) for r in events), batch=SSE_BATCH)

    def stream_slot(request: Request) -> Slot:
        """A slot for one event stream, taken before the response starts (429 when none is free).

        The stream's generator holds it; it is released when the generator ends or, if the
        client left before the generator started, when the generator is dropped."""
        try:
            return slots.take(request.client.host if request.client else "")
        except TooManyStreams as exc:
            raise HTTPProblem(429, str(exc), {"Retry-After": "5"}) from None
    continuations: dict[str, str] = {}  # branch id -> "running" | final status | "error: ..."
    decided: dict[str, tuple[int, dict[str, Any]]] = {}  # run -> (log position, decisions)
    decided_lock = threading.Lock()  # filled from worker threads
    read_sessions: set[str] = set()  # cookie values that let a browser read off loopback
    task_group: list[anyio.abc.TaskGroup] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.catch_up()
        async with anyio.create_task_group() as tg:
            task_group.append(tg)
            tg.start_soon(hub.run)
            yield
            tg.cancel_scope.cancel()

    # -- helpers ------------------------------------------------------------------------

    def authorize(request: Request, *, write: bool) -> None:
        if not write and settings.open_reads:
            return
        if not write and request.cookies.get(READ_COOKIE, "") in read_sessions:
            return  # EventSource cannot send headers; a page reads with the cookie /api/session gave it
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token or not secrets.compare_digest(token.encode(), settings.token.encode()):
            what = "writing" if write else "reading"
            raise HTTPProblem(401, f"{what} needs the console token: send Authorization: Bearer TOKEN", {"WWW-Authenticate": "Bearer"})

    async def body(request: Request, kind: type[msgspec.Struct]) -> Any:
        try:
            raw = await read_body(request, MAX_BODY_BYTES)
        except BodyTooLarge as exc:
            raise HTTPProblem(413, str(exc)) from None
        try:
            value = msgspec.json.decode(raw, type=kind)
        except msgspec.ValidationError as exc:
            raise HTTPProblem(400, f"invalid request: {exc}") from None
        except msgspec.DecodeError:
            raise HTTPProblem(400, "invalid request: the body is not JSON") from None
        if not ANNOTATOR.fullmatch(value.annotator):
            raise HTTPProblem(400, "invalid annotator name: 1-64 letters, digits, spaces and ._@- , starting with a letter or digit")
        if not value.message.strip():
            raise HTTPProblem(400, "the message is empty")
        if len(value.message) > MAX_MESSAGE_CHARS:
            raise HTTPProblem(400, f"the message is over {MAX_MESSAGE_CHARS:,} characters")
        return value

    def run_param(request: Request) -> str:
        run = request.query_params.get("run", "")
        if not run:
            raise HTTPProblem(400, "missing ?run=RUN_ID")
        return run

    def version_param(request: Request, name: str, default: int = 0) -> int:
        value = request.query_params.get(name, str(default)) or str(default)
        if not DIGITS.fullmatch(value):
            raise HTTPProblem(400, f"?{name}= must be a non-negative integer, not {value!r}")
        return int(value)

    # -- pages --------------------------------------------------------------------------

    async def runs_page(request: Request) -> Response:
        return FileResponse(STATIC / "runs.html")

    async def run_page(request: Request) -> Response:
        return FileResponse(STATIC / "run.html")

    # -- reads --------------------------------------------------------------------------

    async def config(request: Request) -> Response:
        """What the page must know before it reads: open to all, it holds no run data."""
        return _json({"reads_need_token": not settings.open_reads, "can_continue": settings.model_client is not None,
                      "model": settings.model, "rules": settings.rules.enabled})

    async def tree_root(request: Request) -> str | None:
        """`?tree=STREAM` narrows the rows to the branch tree STREAM belongs to."""
        stream = request.query_params.get("tree")
        if not stream:
            return None
        lineage = await anyio.to_thread.run_sync(store.lineage, stream)  # StreamNotFound: 404
        return lineage[0][0]

    async def runs(request: Request) -> Response:
        authorize(request, write=False)
        root = await tree_root(request)
        return _json({"server_time": _now(), "runs": hub.index.summaries(root)})

    async def runs_stream(request: Request) -> Response:
        authorize(request, write=False)
        root = await tree_root(request)
        slot = stream_slot(request)

        async def events() -> AsyncIterator[bytes]:
            with slot, hub.subscribe() as receive:
                yield _sse("runs", {"server_time": _now(), "runs": hub.index.summaries(root)})
                async for batch in _with_keepalive(receive):
                    if batch is None:
                        yield b": keep-alive\n\n"
                        continue
                    changed = [s for s in batch.changed if root is None or s.root_id == root]
                    if changed:
                        yield _sse("changed", {"server_time": _now(), "runs": changed})

        return _event_stream(events())

    async def run_events(request: Request) -> Response:
        authorize(request, write=False)
        run, after = run_param(request), version_param(request, "after")
        events = await anyio.to_thread.run_sync(store.read, run)
        return _json({"run": run, "events": [event_view(e) for e in events if e.version > after]})

    async def run_events_stream(request: Request) -> Response:
        """The run's events after `after` (or Last-Event-ID), then each new one as it lands."""
        authorize(request, write=False)
        run = run_param(request)
        last_id = request.headers.get("last-event-id", "")
        after = int(last_id) if DIGITS.fullmatch(last_id) else version_param(request, "after")
        await anyio.to_thread.run_sync(store.head, run)  # unknown run: 404 before the stream starts
        slot = stream_slot(request)

        async def events() -> AsyncIterator[bytes]:
            sent = after
            # Subscribe before reading the backlog: whatever lands in between arrives twice and
            # is skipped by version, rather than falling into a gap. The backlog's chunks are
            # shared by every viewer of the run (limits.Backlogs); a chunk partly sent before
            # is sent again from its start only if it holds events the page has not seen.
            with slot, hub.subscribe() as receive:
                for first, last, chunk in await anyio.to_thread.run_sync(backlogs.chunks, run):
                    if last <= sent:
                        continue
                    if first > sent:
                        yield chunk
                    else:  # a page reconnecting mid-chunk: only what it lacks (rare, so not shared)
                        tail = [r for r in await anyio.to_thread.run_sync(store.read, run) if sent < r.version <= last]
                        yield b"".join(_sse("event", event_view(r), id=r.version) for r in tail)
                    sent = last
                async for batch in _with_keepalive(receive):
                    if batch is None:
                        yield b": keep-alive\n\n"
                        continue
                    new = [r for r in batch.events if r.stream_id == run and r.version > sent]
                    if new:
                        yield b"".join(_sse("event", event_view(r), id=r.version) for r in new)
                        sent = new[-1].version

        return _event_stream(events())

    async def run_context(request: Request) -> Response:
        """The context as the model saw it after `?version=` (default: the head), through the one fold."""
        authorize(request, write=False)
        run = run_param(request)
        version = version_param(request, "version") or None
        state = await anyio.to_thread.run_sync(state_at, store, run, version)
        return _json(context_view(state))

    async def annotations(request: Request) -> Response:
        """Rule hits, judge verdicts and rejects of the run's actions, and keep or mask."""
        authorize(request, write=False)
        run = run_param(request)

        def compute() -> dict[str, Any]:
            # Every open page of a run asks after the same new event: compute once per log position.
            position = store.last_position()
            with decided_lock:
                cached = decided.get(run)
            if cached is not None and cached[0] == position:
                return cached[1]
            events = store.read(run)
            decisions = decide(events, settings.rules, extra=annotations_for(store, events))
            result = {event_id: msgspec.to_builtins(d) for event_id, d in decisions.items()}
            with decided_lock:
                if len(decided) >= 256:
                    decided.pop(next(iter(decided)))
                decided[run] = (position, result)
            return result

        return _json({"run": run, "decisions": await anyio.to_thread.run_sync(compute)})

    # -- writes -------------------------------------------------------------------------

    async def post_intervention(request: Request) -> Response:
        authorize(request, write=True)
        item: _Intervention = await body(request, _Intervention)
        recorded = await anyio.to_thread.run_sync(
            lambda: intervene(store, item.run, kind=item.kind, message=item.message, annotator=item.annotator,
                              seen_version=item.seen_version, target=item.target)
        )
        log.info("%s by %s on %s v%d", item.kind, item.annotator, item.run, recorded.version)
        warning = await anyio.to_thread.run_sync(undelivered_warning, store, item.run, item.kind)
        return _json({"run": item.run, "version": recorded.version, "position": recorded.position, "kind": item.kind,
                      "warning": warning}, status=201)

    async def post_branch(request: Request) -> Response:
        authorize(request, write=True)
        item: _Branch = await body(request, _Branch)
        if item.live and settings.model_client is None:
            raise HTTPProblem(400, "no model is configured to continue branches: start the console with --model")
        if item.live and settings.task is not None:  # before the branch is written
            first = await anyio.to_thread.run_sync(store.read, item.run, 1)
            refuse_imported(item.run, first[0] if first else None, settings.allow_imported_commands)
        at = await anyio.to_thread.run_sync(fork_point, store, item.run, item.at)
        new_id = await anyio.to_thread.run_sync(
            lambda: branch(store, item.run, at, inject=item.message, reason=item.reason,
                           annotator=item.annotator, new_stream_id=item.name or None)
        )
        log.info("branch %s of %s at v%d by %s", new_id, item.run, at, item.annotator)
        if item.live:
            continuations[new_id] = "starting"
            task_group[0].start_soon(continue_live, item.run, at, new_id)
        return _json({"stream_id": new_id, "parent_id": item.run, "fork_version": at, "requested_version": item.at,
                      "live": item.live}, status=201)

    async def continue_live(parent: str, at: int, branch_id: str) -> None:
        """Run the agent on a new branch in the server's task group; errors are logged and shown."""
        assert settings.model_client is not None
        client = None
        try:
            root = settings.workspaces / _safe_dirname(branch_id)
            workspace = await anyio.to_thread.run_sync(
                lambda: branch_workspace(store, parent, at, root, settings.task, allow_imported_commands=settings.allow_imported_commands)
            )
            run = (await anyio.to_thread.run_sync(store.read, parent, 1))[0].event
            client = settings.model_client(getattr(run, "provider", ""))
            continuations[branch_id] = "running"
            tools = await anyio.to_thread.run_sync(lambda: Workspace(workspace, sandbox=getattr(run, "sandbox", None)))
            finished = await continue_branch(store, branch_id, client, tools)
            continuations[branch_id] = finished.status
        except Exception as exc:
            log.exception("continuing %s failed", branch_id)
            continuations[branch_id] = f"error: {exc}"
        finally:
            if client is not None:
                with anyio.CancelScope(shield=True):  # also when the server shuts down mid-run
                    await client.aclose()

    async def read_session(request: Request) -> Response:
        """Trade the bearer token for a read cookie, so a page's event streams never carry the token."""
        authorize(request, write=True)
        session = secrets.token_urlsafe(24)
        read_sessions.add(session)
        response = _json({"reads": "cookie"})
        response.set_cookie(READ_COOKIE, session, httponly=True, samesite="strict", path="/")
        return response

    async def live_branches(request: Request) -> Response:
        authorize(request, write=False)
        return _json({"branches": continuations})

    routes = [
        Route("/", runs_page),
        Route("/run", run_page),
        Route("/api/config", config),
        Route("/api/runs", runs),
        Route("/api/runs/stream", runs_stream),
        Route("/api/events", run_events),
        Route("/api/events/stream", run_events_stream),
        Route("/api/context", run_context),
        Route("/api/annotations", annotations),
        Route("/api/live", live_branches),
        Route("/api/session", read_session, methods=["POST"]),
        Route("/api/interventions", post_intervention, methods=["POST"]),
        Route("/api/branches", post_branch, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPProblem: _problem, ApolloError: _apollo_problem})
    app.state.hub = hub
    return _Guard(app, hosts=settings.hosts if settings.loopback_only else None)


# -- responses ------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def _sse(event: str, data: Any, *, id: int | None = None) -> bytes:
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + msgspec.json.encode(data) + b"\n\n"


def _event_stream(chunks: AsyncIterator[bytes]) -> Response:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _with_keepalive(receive: anyio.abc.ObjectReceiveStream) -> AsyncIterator[Any]:
    """Items from `receive`, with None after each quiet KEEPALIVE_SECONDS (proxies close idle streams)."""
    while True:
        with anyio.move_on_after(KEEPALIVE_SECONDS) as scope:
            try:
                item = await receive.receive()
            except anyio.EndOfStream:
                return  # dropped by the hub for falling behind: the page reconnects
        yield None if scope.cancelled_caught else item


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _safe_dirname(stream_id: str) -> str:
    """A directory name for a stream id; the hash keeps `a/b` and `a_b` apart."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stream_id) + "-" + hashlib.sha256(stream_id.encode()).hexdigest()[:8]


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _apollo_problem(request: Request, exc: Exception) -> Response:
    """The project's errors as HTTP: nothing was written, and the message says why."""
    if isinstance(exc, StreamNotFound):
        status = 404
    elif isinstance(exc, (ConcurrencyError, StreamExistsError)):
        status = 409
    elif isinstance(exc, StoreBusyError):
        status = 503
    else:
        status = 400
    return JSONResponse({"error": str(exc)}, status_code=status)


class _Guard:
    """Adds the security headers to every response and, on loopback, rejects foreign Host names."""

    def __init__(self, app: Starlette, *, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts
        self.state = app.state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and self.hosts is not None and _host(scope) not in self.hosts:
            response = JSONResponse({"error": "this console only answers to localhost / 127.0.0.1"}, status_code=421)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host(scope: dict) -> str:
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = value.decode("latin-1").lower()
            if host.startswith("["):
                return host[1 : host.find("]")]
            return host.rsplit(":", 1)[0] if ":" in host else host
    return ""
