"""An agent's hold on its run: one agent per run, and a live run told from a dead one.

The lease is a row in the store (`EventStore.acquire_lease`), renewed every third of its
length while the agent works and released when it stops. An agent that dies stops renewing,
so its run reads `idle` within one lease; a new agent on the same host takes over at once
from a holder whose process is gone. Holders are `host:pid:nonce`, so hosts that share a
store (PostgreSQL) tell each other's agents apart.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

import anyio

from apollo_es.errors import ApolloError
from apollo_es.store import EventStore

__all__ = ["LEASE_SECONDS", "RunHeld", "holding"]

LEASE_SECONDS = 30.0

log = logging.getLogger(__name__)


class RunHeld(ApolloError):
    """Another live agent works on the run."""


@asynccontextmanager
async def holding(store: EventStore, stream_id: str, seconds: float = LEASE_SECONDS) -> AsyncIterator[str]:
    """Hold `stream_id` while the block runs; RunHeld if another live agent holds it."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    lease = await anyio.to_thread.run_sync(lambda: store.acquire_lease(stream_id, holder, seconds))
    if lease is None:
        current = store.leases().get(stream_id)
        if current is not None and _dead(current.holder):
            lease = await anyio.to_thread.run_sync(
                lambda: store.acquire_lease(stream_id, holder, seconds, take_over=current.holder))
        if lease is None:
            until = datetime.fromtimestamp(current.expires_at, timezone.utc).strftime("%H:%M:%S UTC") if current else "?"
            raise RunHeld(f"run {stream_id!r} is held by another agent ({current.holder if current else '?'}, lease until "
                          f"{until}); one agent per run: stop it first, or wait for its lease to run out")
    stop = threading.Event()
    # A thread, not a task: the run's own errors must reach the caller as they are, not wrapped
    # in a task group's exception group, and a renewal must not wait for a busy event loop.
    renewer = threading.Thread(target=_renew, args=(store, stream_id, holder, seconds, stop), daemon=True,
                               name=f"lease-{stream_id}")
    renewer.start()
    try:
        yield holder
    finally:
        stop.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(renewer.join)
            await anyio.to_thread.run_sync(store.release_lease, stream_id, holder)


def _renew(store: EventStore, stream_id: str, holder: str, seconds: float, stop: threading.Event) -> None:
    while not stop.wait(seconds / 3):
        try:
            renewed = store.acquire_lease(stream_id, holder, seconds)
        except ApolloError as exc:  # a busy or briefly unavailable store: try again next time
            log.warning("could not renew the lease on %s: %s", stream_id, exc)
            continue
        if renewed is None:
            log.warning("the lease on %s ran out and another agent took it", stream_id)


def _dead(holder: str) -> bool:
    """Whether `holder` was a process on this host that no longer exists (looked up, never signalled)."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    return Path("/proc/self").exists() and not Path(f"/proc/{parts[1]}").exists()
