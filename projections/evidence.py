"""What each observation is evidence of: the action it speaks about, and the command behind it.

An observation answers one call of one action, but the outcome it shows is not always that
action's doing. APOLLO's agents run long jobs in sessions: `create_session` answers at once
("Started session s1"), and the crash shows up steps later in a `get_session_output` that only
read the log. Blaming the reader would mask a harmless look and train on the launch that
broke, so a session's output is traced back to the action that started the session or last
sent it input. And an exit code means what the command that returned it says it means
(`grep` exits 1 for "no match"), so each observation also carries the shell line behind it;
`last_command` names the command whose status that line returns.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from apollo_es.store import RecordedEvent
from apollo_es.tools import TOOL_SPECS
from events import AgentActed, ToolCall, ToolObserved

__all__ = [
    "SESSION_FEEDERS",
    "SESSION_READERS",
    "SESSION_STARTERS",
    "Evidence",
    "evidence",
    "last_command",
    "observations_by_action",
]

SESSION_STARTERS = frozenset({"create_session"})
"""Tools that start a session; their answer names it (`Started session s1 (train).`)."""
SESSION_FEEDERS = frozenset({"send_session_input"})
"""Tools that send a running session input (`session_id` argument)."""
SESSION_READERS = frozenset({"get_session_output"})
"""Tools whose output is a session's output and exit code (`session_id` argument)."""

_STARTED = re.compile(r"^Started session (s[1-9][0-9]*)\b")
_PROCESS_OUTPUT = frozenset({"run_command", *SESSION_READERS})
_OWN_TOOLS = frozenset(spec["name"] for spec in TOOL_SPECS)
_SEPARATORS = frozenset(";&|()\n")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)


@dataclass(frozen=True)
class Evidence:
    """One observation, the action it answers, and the action its outcome speaks about."""

    observation: RecordedEvent
    action: RecordedEvent
    """The action whose call the observation answers (or, for feedback without a call, the one before it)."""
    cause: RecordedEvent
    """`action`, or for a session's output the action that started the session or last sent it input."""
    tool: str = ""
    """The tool's name, from the observation or else from the call it answers."""
    command: str = ""
    """The shell line whose output and exit code this is ('' when not a command)."""
    session: str = ""
    """The session whose output was traced back to `cause`, if any."""

    @property
    def event(self) -> ToolObserved:
        return self.observation.event

    @property
    def process_output(self) -> bool:
        """Whether the output is what a process printed (stdout and stderr, interleaved).

        The file tools answer with file contents and the other tools of apollo-es with its
        own text, so error shapes in them mean nothing; tools of other harnesses (imports) are
        taken to print a process's output.
        """
        return self.tool in _PROCESS_OUTPUT or self.tool not in _OWN_TOOLS


@dataclass
class _Session:
    command: str
    cause: RecordedEvent


def observations_by_action(events: Sequence[RecordedEvent]) -> dict[str, list[RecordedEvent]]:
    """Each action's observations: by `causation_id`, else by tool call id, else the latest action.

    The agent records `causation_id`; importers may only have tool call ids; feedback with
    neither (an environment message after a turn without a tool call) belongs to the action
    before it.
    """
    actions: dict[str, RecordedEvent] = {}
    call_owner: dict[str, str] = {}
    last_action: str | None = None
    out: dict[str, list[RecordedEvent]] = {}
    for recorded in events:
        event = recorded.event
        if isinstance(event, AgentActed):
            actions[recorded.event_id] = recorded
            out[recorded.event_id] = []
            for call in event.tool_calls:
                call_owner[call.id] = recorded.event_id
            last_action = recorded.event_id
        elif isinstance(event, ToolObserved):
            if recorded.causation_id in actions:
                owner = recorded.causation_id
            elif event.tool_call_id:
                owner = call_owner.get(event.tool_call_id)
            else:
                owner = last_action
            if owner is not None:
                out[owner].append(recorded)
    return out


def evidence(events: Sequence[RecordedEvent]) -> list[Evidence]:
    """Every observation of `events` (a stream's lineage, in version order) with its cause.

    Sessions are followed in log order: a `create_session` that succeeded (origin "tool", no
    error) starts one, a successful `send_session_input` makes its action the session's latest
    cause, and what a `get_session_output` read is evidence about that cause, judged by the
    session's command. A read apollo-es refused, or of a session whose start is not in the
    log, stays evidence about the reader.
    """
    actions = {r.event_id: r for r in events if isinstance(r.event, AgentActed)}
    owners = {o.event_id: owner for owner, observed in observations_by_action(events).items() for o in observed}
    sessions: dict[str, _Session] = {}
    found: list[Evidence] = []
    for recorded in events:
        if recorded.event_id not in owners:
            continue
        action = actions[owners[recorded.event_id]]
        event: ToolObserved = recorded.event
        call = _call(action.event, event.tool_call_id)
        name = event.tool_name or (call.name if call else "")
        arguments = call.arguments if call else {}
        command = arguments.get("command") if isinstance(arguments.get("command"), str) else ""
        session_id = str(arguments.get("session_id", ""))
        succeeded = event.origin == "tool" and not event.is_error
        item = Evidence(recorded, action, action, name, command)
        if name in SESSION_READERS and event.origin == "tool" and session_id in sessions:
            session = sessions[session_id]
            item = Evidence(recorded, action, session.cause, name, session.command, session_id)
        elif name in SESSION_STARTERS and succeeded and (started := _STARTED.match(event.output)):
            sessions[started[1]] = _Session(command, action)
        elif name in SESSION_FEEDERS and succeeded and session_id in sessions:
            sessions[session_id].cause = action
        found.append(item)
    return found


def _call(action: AgentActed, call_id: str) -> ToolCall | None:
    return next((call for call in action.tool_calls if call_id and call.id == call_id), None)


def last_command(command: str) -> str:
    """The name of the last simple command of a shell line: the line's exit status is its status.

    In `cd data && grep -c x f | sort` that is `sort`: a pipeline returns its last command's
    status, a list (`;`, `&&`, `||`, newlines) that of the last command it ran, which is taken
    to be the last one written (if `cd` fails, its status is judged as `sort`'s). Words are
    split as the shell splits them; leading `NAME=value` assignments are skipped and a path
    is cut to its name (`/usr/bin/grep` is `grep`). Compound commands end in a keyword (`done`,
    `fi`) and a here-document in its delimiter, names no table lists; an unclosed quote gives ''.
    """
    lexer = shlex.shlex(command.replace("\\\n", " "), posix=True, punctuation_chars="".join(sorted(_SEPARATORS | {"<", ">"})))
    lexer.whitespace = " \t\r"  # a newline separates commands
    lexer.whitespace_split = True
    lexer.commenters = ""  # comments are dropped below, up to the newline that ends them
    try:
        words = list(lexer)
    except ValueError:
        return ""
    last: list[str] = []
    current: list[str] = []
    in_comment = False
    for word in words:
        if set(word) <= _SEPARATORS:
            in_comment = in_comment and "\n" not in word
            last, current = (current or last), []
        elif word.startswith("#") or in_comment:
            in_comment = True
        else:
            current.append(word)
    simple = current or last
    names = [word for word in simple if not _ASSIGNMENT.fullmatch(word)]
    return os.path.basename(names[0]) if names else ""
