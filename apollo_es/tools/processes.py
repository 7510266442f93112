"""Finding and ending the processes a tool started, without ever signalling anyone else's.

Why it is shaped this way: a pid is only a number, and numbers are recycled. Every signal here
goes to a process this code started itself (a `Popen` it holds, or a session leader whose pid
and start time it recorded where sandboxed commands cannot write), or to a descendant of one,
found through the kernel's own parent links and signalled through a pidfd opened *before* its
identity is re-checked. Nothing read back from the workspace ever decides who gets a signal,
and pids 0 and 1 and our own process group are refused outright (`os.killpg(1, ...)` is
`kill(-1, ...)`: every process of the user).

Process handling relies on Linux (`/proc`, pidfds, process groups).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["KILL_GRACE_S", "ProcessId", "process_id", "terminate"]

KILL_GRACE_S = 2.0
"""Between SIGTERM and SIGKILL, so jobs can flush logs and checkpoints."""


ProcessId = tuple[int, str]
"""A pid and its start time in clock ticks: the pair names one process, even after pid reuse."""


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def process_id(pid: int) -> ProcessId | None:
    """The identity of a live process (zombies count as gone), or None."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return pid, fields[19]


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _descendants(leader: int) -> list[ProcessId]:
    """Every live process below `leader` in the parent tree, parents before children.

    Inside a sandbox an orphan is re-parented to the sandbox's own init, itself below the
    leader, so `setsid` and double forks stay found.
    """
    children: dict[int, list[ProcessId]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: list[ProcessId] = []
    queue = [leader]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child[0])
    return found


def _signal_process(target: ProcessId, sig: int) -> None:
    """Signal exactly the process `target` names: the pidfd pins it, the start time proves it."""
    pid, start_time = target
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        if process_id(pid) == target:
            signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass  # it exited in between
    finally:
        os.close(fd)


def _signal_group(leader: int, sig: int) -> None:
    if leader <= 1 or leader == os.getpgrp():
        raise ValueError(f"refusing to signal process group {leader}")
    try:
        os.killpg(leader, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def terminate(leader: int, is_alive: Callable[[], bool], *, sandboxed: bool, grace: float = KILL_GRACE_S) -> None:
    """End a process we started as a session leader, and everything it started.

    SIGTERM first, then SIGKILL after `grace` (or as soon as `is_alive()` turns false). In a
    sandbox only the processes inside its PID namespace get the SIGTERM: the outer bwrap would
    die of it at once and take the sandbox down without a grace period. The SIGKILL to the
    leader's group ends the outer bwrap, and with it, by `--die-with-parent` and the PID
    namespace, every process inside.
    """
    own_namespace = _pid_namespace(os.getpid())
    for target in _descendants(leader):
        if not sandboxed or _pid_namespace(target[0]) != own_namespace:
            _signal_process(target, signal.SIGTERM)
    if not sandboxed:
        _signal_group(leader, signal.SIGTERM)  # orphans of the group that left the parent tree
    deadline = time.monotonic() + grace
    while is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    stragglers = _descendants(leader)
    _signal_group(leader, signal.SIGKILL)
    for target in stragglers:
        _signal_process(target, signal.SIGKILL)
