"""The research tool workspace: the tools a ReAct agent calls to work inside one directory.

Why it is shaped this way:
- `Workspace.execute` turns every tool-level problem (unknown tool, bad arguments, a path
  outside the root, a missing file, a non-unique edit...) into an error `Observation` instead
  of raising: the agent has to see its own mistakes to recover from them. Such observations,
  and commands killed at their timeout or by a person's stop, say so in `origin`, so the
  filter rules never have to tell our messages from a command's output by their wording.
- Every process the tools start runs in the workspace's `Sandbox` (`sandbox.py`): the agent's
  secrets, the rest of the host and the network are out of reach, and a timeout ends every
  process the command started.
- apollo-es keeps its own state for the workspace (sessions, the sandbox's /tmp) in a
  directory *beside* it, `../.apollo/<name>/`, which sandboxed commands cannot see; the file tools
  open paths beneath the root through the kernel (`files.py`), so no race leads them out.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import select
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from apollo_es.tools.files import Root
from apollo_es.tools.observation import Observation, capped, read_bounded
from apollo_es.tools.processes import terminate
from apollo_es.tools.sandbox import Sandbox
from apollo_es.tools.sessions import Sessions
from apollo_es.tools.specs import ToolError, validate_arguments
from events import SandboxSpec

__all__ = ["Workspace"]

_MAX_LIST_ENTRIES = 1000
_MAX_SEARCH_MATCHES = 200
_MAX_MATCH_LINE_CHARS = 300


def _lines(text: str) -> list[str]:
    """Lines as a file iterator with newline="" gives them: \\n, \\r\\n and \\r end a line, kept."""
    return list(io.StringIO(text, newline=""))


def _exited(pid: int) -> bool:
    """Whether our child `pid` has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _count_occurrences(text: str, needle: str) -> int:
    """Count matches including overlapping ones: 'aa' is ambiguous in 'aaa'."""
    count, start = 0, text.find(needle)
    while start != -1:
        count += 1
        start = text.find(needle, start + 1)
    return count


class Workspace:
    """One directory the agent works in, and the tools that act on it.

    Sessions outlive this object: `close()` leaves them running so a resumed agent can
    reattach; `kill_all_sessions()` stops them. `sandbox` is the run's `[sandbox]` settings
    (bubblewrap with no network by default); making a Workspace fails with a `SandboxError`
    naming the fix where this machine cannot build that sandbox.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        sandbox: SandboxSpec | None = None,
        output_cap: int = 16_000,
        default_timeout: float = 60,
        max_timeout: float = 3600,
        idle_after: float = 5.0,
    ) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise NotADirectoryError(f"workspace root {str(root)!r} is not a directory")
        self.output_cap = output_cap
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.state_dir = self.root.parent / ".apollo" / self.root.name
        self.sandbox = Sandbox(sandbox or SandboxSpec(), self.root, self.state_dir)
        self.files = Root(self.root, aliases=tuple(sorted({str(self.root), self.sandbox.workdir})))
        self.sessions = Sessions(self.state_dir / "sessions", self.sandbox, output_cap=output_cap, idle_after=idle_after)
        self._lock = threading.Lock()  # between a running command and `interrupt` from another thread
        self._running: subprocess.Popen[bytes] | None = None
        self._interrupted = False
        self._handlers: dict[str, Callable[..., Observation]] = {
            "run_command": self._run_command,
            "create_session": self.sessions.create,
            "get_session_output": self.sessions.output,
            "check_session_idle": self.sessions.check_idle,
            "send_session_input": self.sessions.send,
            "kill_session": self.sessions.kill,
            "read_file": self._read_file,
            "write_file": self._write_file,
            "edit_file": self._edit_file,
            "list_files": self._list_files,
            "search": self._search,
            "think": lambda thought: Observation(output="Thought noted."),
            "finish": lambda answer: Observation(output="Final answer submitted.", finished=True),
        }

    def execute(self, name: str, arguments: dict) -> Observation:
        """Run one tool call. Never raises for problems with the call itself: those come back as
        `is_error=True` observations the agent can react to."""
        started = time.monotonic()
        try:
            validate_arguments(name, arguments)
            observation = self._handlers[name](**arguments)
        except ToolError as e:
            observation = Observation(output=str(e), is_error=True, origin="harness")
        except (OSError, UnicodeError) as e:  # permissions, disk full, ...: the agent can act on these
            observation = Observation(output=f"{name} failed: {e}", is_error=True, origin="harness")
        return replace(observation, duration_ms=(time.monotonic() - started) * 1000)

    def close(self) -> None:
        """Drop handles on session processes; the sessions keep running, to survive a restart."""
        self.sessions.close()

    def kill_all_sessions(self) -> list[str]:
        """Kill every running session in this workspace (end of a rollout); return their ids."""
        return self.sessions.kill_all()

    # -- commands ------------------------------------------------------------------------------

    def _run_command(self, command: str, timeout: float | None = None) -> Observation:
        timeout = self.default_timeout if timeout is None else timeout
        if not timeout > 0:
            raise ToolError(f"run_command: timeout must be positive, got {timeout}")
        timeout = min(timeout, self.max_timeout)
        # Output goes to a file, not a pipe: a background process holding a pipe open would make
        # us wait for it, and the file still holds the partial output after a timeout.
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(
                self.sandbox.argv(command),
                cwd=self.root,
                env=self.sandbox.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            with self._lock:
                self._running = proc
            # Wait on a pidfd, which does not reap: until proc.wait() below, the pid (and so the
            # process group) cannot go to another process, so ending the group is always safe.
            pidfd = os.pidfd_open(proc.pid)
            try:
                timed_out = not select.select([pidfd], [], [], timeout)[0]
            finally:
                os.close(pidfd)
            with self._lock:
                # Also ends what the command left in the background.
                terminate(proc.pid, lambda: not _exited(proc.pid), sandboxed=self.sandbox.confined)
                self._running = None
            proc.wait()
            text = read_bounded(out)
        interrupted, self._interrupted = self._interrupted, False
        if interrupted:
            footer = "[interrupted: a person stopped the run; the command and every process it started were killed]"
            return capped(text, self.output_cap, footer, is_error=True, exit_code=proc.returncode, origin="harness")
        if timed_out:
            footer = f"[command timed out after {timeout:g} s; it and every process it started were killed]"
            return capped(text, self.output_cap, footer, is_error=True, exit_code=proc.returncode, origin="timeout")
        if proc.returncode != 0:
            return capped(text, self.output_cap, f"[exit code {proc.returncode}]", is_error=True, exit_code=proc.returncode)
        return capped(text or "(no output)", self.output_cap, exit_code=0)

    def interrupt(self) -> None:
        """End the command running now, from another thread, as its timeout would (a person's
        stop). Sessions go on: they are ended by kill_session or at the end of the rollout."""
        with self._lock:
            proc = self._running
            if proc is not None:
                self._interrupted = True
                terminate(proc.pid, lambda: not _exited(proc.pid), sandboxed=self.sandbox.confined)

    # -- files ---------------------------------------------------------------------------------

    def _read_file(self, path: str, start_line: int | None = None, end_line: int | None = None) -> Observation:
        rel = self.files.relative(path)
        text = self.files.read_text(rel)
        if "\0" in text[:8192]:
            raise ToolError(f"{path!r} looks like a binary file; inspect it with run_command instead")
        if start_line is None and end_line is None:
            return capped(text, self.output_cap)
        start = 1 if start_line is None else start_line
        if start < 1 or (end_line is not None and end_line < start):
            raise ToolError(f"read_file: invalid line range {start_line}..{end_line} (lines are 1-based, inclusive)")
        lines = _lines(text)
        if start > len(lines) and start > 1:
            raise ToolError(f"read_file: start_line {start} is past the end of {path!r} ({len(lines)} lines)")
        return capped("".join(lines[start - 1 : end_line]), self.output_cap)

    def _write_file(self, path: str, content: str) -> Observation:
        rel = self.files.relative(path)
        self.files.write_text(rel, content)
        return Observation(output=f"Wrote {len(content)} characters to {rel}.")

    def _edit_file(self, path: str, old: str, new: str) -> Observation:
        rel = self.files.relative(path)
        if not old:
            raise ToolError("edit_file: `old` must not be empty")
        content = self.files.read_bytes(rel).decode()
        matches = _count_occurrences(content, old)
        if matches == 0:
            raise ToolError(f"edit_file: `old` was not found in {rel} (it must match exactly)")
        if matches > 1:
            raise ToolError(
                f"edit_file: `old` matches {matches} times in {rel}; include more surrounding text so it matches exactly once"
            )
        self.files.write_text(rel, content.replace(old, new, 1))
        return Observation(output=f"Edited {rel}.")

    def _list_files(self, path: str = ".") -> Observation:
        rel = self.files.relative(path)
        if stat.S_ISDIR(self.files.stat(rel).st_mode):
            entries = sorted(self._describe(entry, st) for entry, _, st in self.files.walk(rel))
        else:
            entries = [self._describe(rel, self.files.stat(rel))]
        shown = entries[:_MAX_LIST_ENTRIES]
        footer = f"[... {len(entries) - len(shown)} more entries not shown]" if len(entries) > len(shown) else ""
        return capped("\n".join(shown) or "(empty directory)", self.output_cap, footer)

    def _describe(self, rel: str, st: os.stat_result) -> str:
        if stat.S_ISLNK(st.st_mode):
            return f"{rel} -> {self.files.readlink(rel)}"
        if stat.S_ISDIR(st.st_mode):
            return f"{rel}/"
        return f"{rel}  ({st.st_size} bytes)"

    def _search(self, pattern: str, path: str = ".") -> Observation:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ToolError(f"search: invalid regular expression {pattern!r}: {e}") from e
        rel = self.files.relative(path)
        matches = list(itertools.islice(self._matches(regex, rel), _MAX_SEARCH_MATCHES + 1))
        if not matches:
            return Observation(output=f"No matches for {pattern!r} in {rel}.")
        footer = ""
        if len(matches) > _MAX_SEARCH_MATCHES:
            matches = matches[:_MAX_SEARCH_MATCHES]
            footer = f"[stopped after {_MAX_SEARCH_MATCHES} matches; narrow the pattern or the path]"
        return capped("\n".join(matches), self.output_cap, footer)

    def _matches(self, regex: re.Pattern[str], rel: str) -> Iterator[str]:
        for file in self._text_files(rel):
            for lineno, line in enumerate(_lines(file[1]), 1):
                if regex.search(line):
                    yield f"{file[0]}:{lineno}: {line.rstrip()[:_MAX_MATCH_LINE_CHARS]}"

    def _text_files(self, rel: str) -> Iterator[tuple[str, str]]:
        """(path, text) of the regular, non-binary files at or under `rel` that resolve beneath
        the root; symlinks leading out, FIFOs and hard-linked files are skipped."""
        if stat.S_ISDIR(self.files.stat(rel).st_mode):
            candidates = [entry for entry, _, st in self.files.walk(rel) if not stat.S_ISDIR(st.st_mode)]
        else:
            candidates = [rel]
        for candidate in candidates:
            try:
                text = self.files.read_text(candidate)
            except ToolError:
                continue
            if "\0" not in text[:8192]:
                yield candidate, text
