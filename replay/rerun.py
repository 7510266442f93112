"""Re-executing a recorded run's actions in a fresh workspace.

The actions are the recording's (the responses a `RecordedClient` would serve); the tools
run for real. `rerun` compares each new observation with the recorded one and stops at the
first divergence; `restore_workspace` only executes, to rebuild the files of a run at a
version (the state a branch continues from).

Both run the recorded commands in the run's own sandbox (`RunStarted.sandbox`; the default
one for runs that recorded none). A run imported from a file was written by another agent on
another machine: re-executing it is running that file's code, so it is refused unless the
caller says `allow_imported_commands=True`.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from apollo_es.errors import ApolloError
from apollo_es.store import EventStore, RecordedEvent
from apollo_es.tools import Observation, Workspace
from events import AgentActed, RunStarted, ToolCall, ToolObserved

__all__ = ["DEFAULT_NORMALIZATIONS", "Divergence", "ImportedCommandsRefused", "RerunReport", "refuse_imported", "rerun", "restore_workspace"]


class ImportedCommandsRefused(ApolloError):
    """Re-executing the recorded commands of an imported run, without being asked to."""

DEFAULT_NORMALIZATIONS: tuple[tuple[str, str], ...] = (
    (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?", "<time>"),
    (r"/tmp/[\w.+-]+(?:/[\w.+-]+)*", "<tmp>"),
    (r"0x[0-9a-fA-F]{6,}", "<addr>"),
    (r"\b\d+(?:\.\d+)?\s?(?:ms|s|sec|seconds)\b", "<duration>"),
    (r"\b\d+m\d+(?:\.\d+)?s\b", "<duration>"),  # bash's `time`: 0m0.090s
    (r"(?m)^(real|user|sys)([ \t]+)\d+(?:[.,]\d+)?$", r"\1\2<duration>"),  # `time -p`
    (r"\b(pid|PID|process)([ =:#]+)\d+\b", r"\1\2<pid>"),
)
"""Volatile parts of tool output: timestamps, temporary paths, memory addresses, durations, pids."""

DEFAULT_SKIP_TOOLS = ("check_session_idle",)
"""Tools whose answer depends on timing alone; they run but are not compared."""

SESSION_WAIT_SECONDS = 600.0
"""How long a re-run waits for a session to end before reading output recorded after its end."""

_SESSION_ENDED = re.compile(r"\[session [^\]\n]*: (?:exited with code -?\d+|killed by kill_session)\]\s*$")
_SESSION_RUNNING = re.compile(r"\[session [^\]\n]*: running for \d+ s\]\s*$")


class Divergence(msgspec.Struct, frozen=True):
    version: int
    """Version of the recorded observation that differs."""
    tool: str
    arguments: dict
    expected_exit_code: int | None
    actual_exit_code: int | None
    diff: str


class RerunReport(msgspec.Struct, frozen=True):
    stream_id: str
    ok: bool
    compared: int
    executed: int
    divergence: Divergence | None = None


def rerun(
    store: EventStore,
    stream_id: str,
    workspace: str | Path,
    *,
    normalizations: Sequence[tuple[str, str]] = DEFAULT_NORMALIZATIONS,
    skip_tools: Sequence[str] = DEFAULT_SKIP_TOOLS,
    up_to: int | None = None,
    allow_imported_commands: bool = False,
) -> RerunReport:
    """Execute the recorded actions in `workspace` and compare every observation.

    Outputs are compared after the normalizations (regex, replacement) and after replacing
    both runs' workspace paths with `<workspace>`; exit codes exactly.
    """
    recorded = store.read(stream_id, up_to=up_to)
    tools = _workspace(stream_id, recorded, workspace, allow_imported_commands)
    roots = [r for r in (_original_root(recorded), str(tools.root), tools.sandbox.workdir) if r]  # commands may name any
    rules = [(re.compile(pattern), replacement) for pattern, replacement in normalizations]
    compared = executed = 0
    for call, expected, actual in _replay(recorded, tools):
        executed += 1
        if call.name in skip_tools or _SESSION_RUNNING.search(expected.event.output):
            continue  # what a running session has printed so far depends on timing alone
        compared += 1
        want = _normalize(expected.event.output, roots, rules)
        got = _normalize(actual.output, roots, rules)
        if want != got or expected.event.exit_code != actual.exit_code:
            diff = "\n".join(
                difflib.unified_diff(
                    want.splitlines(), got.splitlines(), f"recorded (v{expected.version})", "rerun", lineterm=""
                )
            )
            divergence = Divergence(
                expected.version, call.name, call.arguments, expected.event.exit_code, actual.exit_code,
                diff or f"exit code {expected.event.exit_code} recorded, {actual.exit_code} now",
            )
            return RerunReport(stream_id, False, compared, executed, divergence)
    return RerunReport(stream_id, True, compared, executed)


def restore_workspace(
    store: EventStore, stream_id: str, workspace: str | Path, up_to: int, *, allow_imported_commands: bool = False
) -> int:
    """Rebuild a run's files at `up_to` by executing its actions there; returns how many ran."""
    recorded = store.read(stream_id, up_to=up_to)
    return sum(1 for _ in _replay(recorded, _workspace(stream_id, recorded, workspace, allow_imported_commands)))


def refuse_imported(stream_id: str, first: RecordedEvent | None, allow_imported_commands: bool) -> None:
    """ImportedCommandsRefused if the run starting with `first` was imported and that is not allowed."""
    origin = first.actor if first is not None else ""
    if origin.startswith("import:") and not allow_imported_commands:
        raise ImportedCommandsRefused(
            f"run {stream_id!r} was imported ({origin}): executing its recorded commands would run code from that "
            "file. Pass --allow-imported-commands to run them anyway (in the sandbox), or continue without its files"
        )


def _workspace(stream_id: str, recorded: list[RecordedEvent], root: str | Path, allow_imported_commands: bool) -> Workspace:
    """The run's own sandbox around `root`, once the run's origin allows executing its actions."""
    refuse_imported(stream_id, recorded[0] if recorded else None, allow_imported_commands)
    started = next((r.event for r in recorded if isinstance(r.event, RunStarted)), None)
    return Workspace(Path(root).resolve(), sandbox=started.sandbox if started else None)


def _replay(recorded: list[RecordedEvent], workspace: Workspace) -> Iterator[tuple[ToolCall, RecordedEvent, Observation]]:
    """Each recorded tool call with its recorded observation and a new one from `workspace`.

    Calls whose observation was never recorded (a crash), whose result was lost or never
    produced (a `notice`: the agent died while it ran, or finish came first) and calls the
    agent could not make (malformed arguments) are not executed: the recording has no result
    to compare with. Output recorded after a session ended is read after it ends here too.
    """
    observed = {r.event.tool_call_id: r for r in recorded if isinstance(r.event, ToolObserved) and r.event.tool_call_id}
    for item in recorded:
        if not isinstance(item.event, AgentActed):
            continue
        for call in item.event.tool_calls:
            expected = observed.get(call.id)
            if expected is None or call.raw_arguments is not None or expected.event.origin == "notice":
                continue
            if call.name == "get_session_output" and _SESSION_ENDED.search(expected.event.output):
                _wait_for_session_end(workspace, call.arguments.get("session_id", ""))
            yield call, expected, workspace.execute(call.name, call.arguments)


def _wait_for_session_end(workspace: Workspace, session_id: str) -> None:
    deadline = time.monotonic() + SESSION_WAIT_SECONDS
    while time.monotonic() < deadline:
        if "is running" not in workspace.execute("check_session_idle", {"session_id": session_id}).output:
            return
        time.sleep(0.2)


def _original_root(recorded: list[RecordedEvent]) -> str:
    started = next((r.event for r in recorded if isinstance(r.event, RunStarted)), None)
    return started.workspace if started else ""


def _normalize(text: str, roots: list[str], rules: list[tuple[re.Pattern[str], str]]) -> str:
    for root in roots:
        text = text.replace(root, "<workspace>")
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text
