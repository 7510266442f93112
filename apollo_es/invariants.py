"""What every event in the log must satisfy beyond decoding: checked by `append`, which refuses
a violating event, and by `verify`, which reports a violating row.

- Placement: a `RunStarted` only as the first event of a root stream; a `BranchCreated` only
  as the first own event of a branch (as `branch()` writes it).
- Identifiers (actors, annotators, judge ids, task ids, event ids an event names) hold no NUL or
  other control character: they are shown in terminals and logs and used as keys.
- Integers fit SQLite's and JSON readers' 64 bits, and versions an event names are positive.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from events import BranchCreated, Event, RunStarted

__all__ = ["event_problem", "identifier_problem", "placement_problem"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INT64 = (-(2**63), 2**63 - 1)
_IDENTIFIERS = ("annotator", "judge_id", "task_id", "target_event_id", "tool_call_id", "parent_stream", "created_by")
_VERSIONS = ("seen_version", "fork_version", "replaces_from", "replaces_to")


def identifier_problem(name: str, value: str | None) -> str:
    if value is not None and _CONTROL.search(value):
        return f"{name} {value!r} contains a control character"
    return ""


def placement_problem(event: Event, version: int, fork_version: int | None) -> str:
    """Why `event` cannot be at `version` of its stream (`fork_version`: None for a root stream)."""
    if isinstance(event, RunStarted) and (fork_version is not None or version != 1):
        return "a RunStarted can only be the first event of a run (a root stream)"
    if isinstance(event, BranchCreated) and (fork_version is None or version != fork_version + 1):
        return "a BranchCreated can only be a branch's first own event (written by branch)"
    return ""


def event_problem(event: Event) -> str:
    """Why `event`'s fields break the log's rules, naming the field, or ''."""
    for name in _IDENTIFIERS:
        problem = identifier_problem(name, getattr(event, name, None))
        if problem:
            return problem
    for name in _VERSIONS:
        value = getattr(event, name, None)
        if value is not None and value < 1 and not (name == "seen_version" and value == 0):
            return f"{name} must be a positive version, got {value}"
    return _int_problem(msgspec.to_builtins(event), type(event).__name__)


def _int_problem(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return f"{path} = {value} does not fit in 64 bits" if not _INT64[0] <= value <= _INT64[1] else ""
    if isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _int_problem(v, f"{path}.{k}"))), "")
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _int_problem(v, f"{path}[{i}]"))), "")
    return ""
