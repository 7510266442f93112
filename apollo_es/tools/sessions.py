"""Long-running jobs (training, servers) in sessions that outlive a step and the agent process.

A session's whole state is on disk in apollo-es' own directory for the workspace, *outside*
the workspace, where sandboxed commands cannot write: `<state>/sessions/<id>/` holds
`meta.json` (the supervisor's pid and start time, the command, its name), `output.log`,
`stdin` (a named FIFO) and `exit_code`. Nothing lives only in this process's memory, so the
agent can be SIGKILLed and resumed, and a new `Workspace` picks the sessions up; and nothing a
command writes can make `kill_session` signal another process.

Each session is a small supervisor shell on the host in its own process group: it runs the
(sandboxed) command and writes its exit code when it ends. The command line is an argument
of bwrap, never read by that shell. The supervisor's stdin is the FIFO, opened read-write
here, so a reader stays attached for the session's whole life and any later process can
write to it without blocking.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apollo_es.tools.observation import Observation, capped, read_bounded
from apollo_es.tools.processes import process_id, terminate
from apollo_es.tools.sandbox import Sandbox
from apollo_es.tools.specs import ToolError

__all__ = ["Sessions"]

_SESSION_ID = re.compile(r"s[1-9][0-9]*")
_SUPERVISOR = 'exit_file=$1; shift; "$@"; echo $? > "$exit_file.tmp" && mv "$exit_file.tmp" "$exit_file"; exit 0'
"""The trailing `exit` keeps `mv` from being the script's last command, which dash would exec in
place of the shell: for that moment the supervisor's command line would not be ours, and a
session read then looked killed from outside, with no exit code yet."""


@dataclass(frozen=True)
class _Session:
    """One session's directory and what its meta.json says."""

    dir: Path
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def label(self) -> str:
        return f"{self.id} ({self.meta['name']})" if self.meta.get("name") else self.id

    @property
    def log(self) -> Path:
        return self.dir / "output.log"

    @property
    def stdin(self) -> Path:
        return self.dir / "stdin"

    @property
    def killed(self) -> Path:
        return self.dir / "killed"

    def exit_code(self) -> int | None:
        try:
            return int((self.dir / "exit_code").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        """Whether the supervisor we started is still that very process: same pid and start
        time, and still our supervisor command line for this very session. (Unconfined, a
        command could rewrite meta.json to name another process; that process fails this.)"""
        pid = self.meta["pid"]
        if process_id(pid) != (pid, self.meta["proc_start_time"]):
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return argv[:5] == [b"/bin/sh", b"-c", _SUPERVISOR.encode(), b"apollo-session", os.fsencode(self.dir / "exit_code")]


def _read_meta(directory: Path) -> dict[str, Any] | None:
    """meta.json if it is whole and well-formed; a pid below 2 is never one we started."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    valid = (
        isinstance(meta, dict)
        and isinstance(meta.get("pid"), int) and meta["pid"] > 1
        and isinstance(meta.get("proc_start_time"), str)
        and isinstance(meta.get("sandboxed"), bool)
    )
    return meta if valid else None


class Sessions:
    """The sessions of one workspace; `directory` is outside the workspace."""

    def __init__(self, directory: Path, sandbox: Sandbox, *, output_cap: int, idle_after: float) -> None:
        self.directory = directory
        self.sandbox = sandbox
        self.output_cap = output_cap
        self.idle_after = idle_after
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # started by this object, to reap

    def create(self, command: str, name: str | None = None) -> Observation:
        directory = self._allocate()
        os.mkfifo(directory / "stdin")
        stdin = os.open(directory / "stdin", os.O_RDWR)  # never blocks on Linux, and keeps a reader
        try:
            with open(directory / "output.log", "ab") as log:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", _SUPERVISOR, "apollo-session", str(directory / "exit_code"), *self.sandbox.argv(command)],
                    cwd=self.sandbox.root,
                    env=self.sandbox.env(),
                    stdin=stdin,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killable as a whole, immune to our death
                )
        finally:
            os.close(stdin)
        identity = process_id(proc.pid)  # not reaped yet, so this exists even if it already exited
        meta = {
            "id": directory.name,
            "name": name,
            "command": command,
            "pid": proc.pid,
            "proc_start_time": identity[1] if identity else "",
            "sandboxed": self.sandbox.confined,
            "started_at": time.time(),
        }
        tmp = directory / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, directory / "meta.json")
        self._children[directory.name] = proc
        return Observation(output=f"Started session {_Session(directory, meta).label}.")

    def output(self, session_id: str, tail_lines: int | None = None) -> Observation:
        session = self._load(session_id)
        if tail_lines is not None and tail_lines < 0:
            raise ToolError(f"get_session_output: tail_lines must be >= 0, got {tail_lines}")
        with open(session.log, "rb") as f:
            text = read_bounded(f)
        if tail_lines is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[max(0, len(lines) - tail_lines) :])
        footer = f"[session {session.label}: {self._status(session)}]"
        return capped(text, self.output_cap, footer, exit_code=session.exit_code())

    def check_idle(self, session_id: str) -> Observation:
        session = self._load(session_id)
        if not self._running(session):
            return Observation(output=f"idle: session {session.label} {self._status(session)}")
        quiet = time.time() - session.log.stat().st_mtime
        if quiet >= self.idle_after:
            return Observation(output=f"idle: session {session.label} is running but has printed nothing for {quiet:.1f} s")
        return Observation(output=f"busy: session {session.label} is running and printed output {quiet:.1f} s ago")

    def send(self, session_id: str, text: str) -> Observation:
        session = self._load(session_id)
        if not self._running(session):
            raise ToolError(f"Session {session.label} is not running ({self._status(session)})")
        data = (text if text.endswith("\n") else text + "\n").encode()
        # O_NONBLOCK: with no reader the open fails (ENXIO) and a full pipe fails (EAGAIN)
        # instead of hanging the agent forever. O_NOFOLLOW|fstat: only our own FIFO.
        try:
            fd = os.open(session.stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno == errno.ENXIO:
                raise ToolError(f"Session {session.label} is not reading input (no reader on its stdin)") from e
            raise
        sent = 0
        try:
            while sent < len(data):
                sent += os.write(fd, data[sent:])
        except (BlockingIOError, BrokenPipeError) as e:
            raise ToolError(f"Session {session.label} is not consuming its input: sent {sent} of {len(data)} bytes") from e
        finally:
            os.close(fd)
        return Observation(output=f"Sent {len(data)} bytes to session {session.label}.")

    def kill(self, session_id: str) -> Observation:
        session = self._load(session_id)
        if not self._running(session):
            return Observation(output=f"Session {session.label} is not running ({self._status(session)}).")
        self._terminate(session)
        return Observation(output=f"Killed session {session.label}.")

    def kill_all(self) -> list[str]:
        """Kill every running session (end of a rollout); return their ids."""
        killed = []
        for session in self._all():
            if self._running(session):
                self._terminate(session)
                killed.append(session.id)
        return killed

    def discard(self) -> None:
        """Kill every running session and forget them all: a new workspace at this path starts with none."""
        self.kill_all()
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def close(self) -> None:
        """Reap finished supervisors this object started; the sessions themselves keep running."""
        for child in self._children.values():
            child.poll()
        self._children.clear()

    # -- helpers -------------------------------------------------------------------------------

    def _running(self, session: _Session) -> bool:
        child = self._children.get(session.id)
        if child is not None:
            child.poll()  # reap it if it exited, so it does not linger as a zombie
        return session.running()

    def _status(self, session: _Session) -> str:
        running = self._running(session)
        code = session.exit_code()  # read after the liveness check: the supervisor writes it before exiting
        if session.killed.exists() and not running:
            return "killed by kill_session"
        if code is not None:
            return f"exited with code {code}"
        if running:
            return f"running for {time.time() - session.meta['started_at']:.0f} s"
        return "ended without an exit code (killed from outside)"

    def _terminate(self, session: _Session) -> None:
        session.killed.touch()
        terminate(session.meta["pid"], lambda: self._running(session), sandboxed=session.meta["sandboxed"])

    def _allocate(self) -> Path:
        """Create the next session directory, s1, s2, ... counted from what is on disk; mkdir is
        atomic, so two processes can never get the same id."""
        self.directory.mkdir(parents=True, exist_ok=True)
        number = max((int(session.id[1:]) for session in self._all()), default=0) + 1
        while True:
            try:
                (self.directory / f"s{number}").mkdir()
                return self.directory / f"s{number}"
            except FileExistsError:
                number += 1

    def _all(self) -> list[_Session]:
        if not self.directory.is_dir():
            return []
        ids = sorted((p.name for p in self.directory.iterdir() if _SESSION_ID.fullmatch(p.name)), key=lambda s: int(s[1:]))
        sessions = [(self.directory / sid, _read_meta(self.directory / sid)) for sid in ids]
        return [_Session(directory, meta) for directory, meta in sessions if meta is not None]

    def _load(self, session_id: str) -> _Session:
        meta = _read_meta(self.directory / session_id) if _SESSION_ID.fullmatch(session_id) else None
        if meta is None:
            known = ", ".join(session.id for session in self._all()) or "none"
            raise ToolError(f"Unknown session {session_id!r}. Existing sessions: {known}")
        return _Session(self.directory / session_id, meta)
