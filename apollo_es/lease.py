"""An agent's hold on its run: one agent per run, and a live run told from a dead one.

The lease is a row in the store (`EventStore.acquire_lease`), renewed every third of its
length while the agent works and released when it stops. An agent that dies stops renewing,
so its run reads `idle` within one lease; a new agent on the same host takes over at once
from a holder whose process is gone. Holders are `host:pid:nonce`, so hosts that share a
store (PostgreSQL) tell each other's agents apart.

A pid means something only on the host that issued it. So a holder is judged dead by its pid
only when its host is this host; a holder from any other host is never looked up (the same
number may be a live process here, or a dead one while the holder works on): it loses its
run only when its lease runs out. A host crash therefore costs one lease length of waiting,
never two agents on one run.

Two settings, read from the environment each time a lease is taken:

- `APOLLO_ES_HOST`: the host part of this process's holder id (default: the host name). Give
  agents in separate containers or VMs that share a host name distinct ones, and set it in
  tests that stand in several hosts on one machine: processes with different values treat
  each other as remote, so only expiry frees a run one of them held.
- `APOLLO_ES_LEASE_SECONDS`: the length of every lease this process takes (default 30, at
  least 1); it overrides the length the caller asks for, as an operator's setting should. Each
  holder renews at a third of its own length, and a taker only compares `expires_at` with its
  clock, so hosts may use different lengths. Tests use a few seconds to see expiry quickly.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

import anyio

from apollo_es.errors import ApolloError
from apollo_es.store import EventStore, Lease

__all__ = ["HOST_ENV", "LEASE_ENV", "LEASE_SECONDS", "MIN_LEASE_SECONDS", "Hold", "RunHeld", "holding", "host_name", "lease_seconds"]

LEASE_SECONDS = 30.0
MIN_LEASE_SECONDS = 1.0
HOST_ENV = "APOLLO_ES_HOST"
LEASE_ENV = "APOLLO_ES_LEASE_SECONDS"

log = logging.getLogger(__name__)


class RunHeld(ApolloError):
    """Another live agent works on the run."""


def host_name() -> str:
    """The host part of this process's holder ids: $APOLLO_ES_HOST if set and not blank, else the host name."""
    return os.environ.get(HOST_ENV, "").strip() or socket.gethostname()


def lease_seconds(requested: float = LEASE_SECONDS) -> float:
    """The lease length to use: $APOLLO_ES_LEASE_SECONDS if set (checked), else `requested`."""
    text = os.environ.get(LEASE_ENV)
    if text is None or not text.strip():
        return requested
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < MIN_LEASE_SECONDS:
        raise ApolloError(f"{LEASE_ENV} must be a number of seconds, at least {MIN_LEASE_SECONDS:g}, not {text!r}")
    return value


class Hold:
    """A lease this process holds. `lost` is set when a renewal finds that the lease ran out
    (the process was paused or cut off for longer than a lease) and another agent took the
    run; the holder must then stop writing to it (`check`)."""

    def __init__(self, stream_id: str, holder: str) -> None:
        self.stream_id = stream_id
        self.holder = holder
        self.lost = threading.Event()

    def check(self) -> None:
        """Raise RunHeld if the lease was lost: call it before every write to the run."""
        if self.lost.is_set():
            raise RunHeld(f"run {self.stream_id!r}: this agent's lease ran out and another agent took the run; "
                          "it stopped without writing more")


@asynccontextmanager
async def holding(store: EventStore, stream_id: str, seconds: float = LEASE_SECONDS) -> AsyncIterator[Hold]:
    """Hold `stream_id` while the block runs; RunHeld if another live agent holds it."""
    seconds = lease_seconds(seconds)
    host = host_name()
    holder = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(take_over: str | None = None) -> Awaitable[Lease | None]:
        return anyio.to_thread.run_sync(lambda: store.acquire_lease(stream_id, holder, seconds, take_over=take_over))

    lease = await acquire()
    if lease is None:
        current = (await anyio.to_thread.run_sync(store.leases)).get(stream_id)
        if current is None or _dead(current.holder, host):
            # run out or released between the two reads, or its holder's process is gone
            lease = await acquire(current.holder if current else None)
        if lease is None:
            current = (await anyio.to_thread.run_sync(store.leases)).get(stream_id) or current
            until = datetime.fromtimestamp(current.expires_at, timezone.utc).strftime("%H:%M:%S UTC") if current else "?"
            raise RunHeld(f"run {stream_id!r} is held by another agent ({current.holder if current else '?'}, lease until "
                          f"{until}); one agent per run: stop it first, or wait for its lease to run out")
    stop = threading.Event()
    hold = Hold(stream_id, holder)
    # A thread, not a task: the run's own errors must reach the caller as they are, not wrapped
    # in a task group's exception group, and a renewal must not wait for a busy event loop.
    renewer = threading.Thread(target=_renew, args=(store, hold, seconds, stop), daemon=True,
                               name=f"lease-{stream_id}")
    renewer.start()
    try:
        yield hold
    finally:
        stop.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(renewer.join)
            await anyio.to_thread.run_sync(store.release_lease, stream_id, holder)


def _renew(store: EventStore, hold: Hold, seconds: float, stop: threading.Event) -> None:
    while not stop.wait(seconds / 3):
        try:
            renewed = store.acquire_lease(hold.stream_id, hold.holder, seconds)
        except ApolloError as exc:  # a busy or briefly unavailable store: try again next time
            log.warning("could not renew the lease on %s: %s", hold.stream_id, exc)
            continue
        if renewed is None:
            log.warning("the lease on %s ran out and another agent took it; stopping", hold.stream_id)
            hold.lost.set()
            return


def _dead(holder: str, host: str) -> bool:
    """Whether `holder` was a process on `host` (this one) that no longer exists (looked up, never signalled).

    A holder from another host is never judged by its pid: that pid means nothing here.
    """
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    return Path("/proc/self").exists() and not Path(f"/proc/{parts[1]}").exists()
