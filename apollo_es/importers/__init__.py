"""Importers: other agents' trajectories as apollo-es runs.

Formats (`apollo-es import FORMAT PATH...`):

| format | input | module |
| --- | --- | --- |
| `swe-agent` | a SWE-agent `.traj` file (function calling or free-text actions) | `swe_agent` |
| `openhands` | an OpenHands event list (`.json`), a dict with `history`, or eval `output.jsonl`; V1 input too (below) | `openhands` |
| `openhands-v1` | an OpenHands V1 (`openhands-sdk`) conversation folder (`events/event-*.json`), or its events as a JSON array or JSON lines | `openhands_v1` |
| `innovatorbench` (alias `researchgym`) | a directory of InnovatorBench/ResearchGym node JSON files | `node_log` |
| `openai` (alias `openai-messages`) | JSONL, one chat conversation (`messages`, `tools`) per line | `openai_messages` |
| `auto` | any of the above, recognised by its name and shape | |

`openhands` hands V1 input (recognised by its folder or its events' `kind`) to `openhands-v1`,
so either name imports a V1 conversation the same way, under `openhands-v1/<conversation>`.

Every importer keeps tool calls, observations, reasoning, model ids and timestamps where the
source has them, and records `actor=import:<format>`. The imported run's context is what the
source agent's model was sent: tool calls only where the model made them (a free-text agent's
turns are its text), observations rendered as the source rendered them, the source's history
processing recorded in `RunStarted` and applied by the fold. Where the source recorded its
prompts, `importers.fidelity` compares each with the fold at that step; the verdict and every
known difference are kept in `RunStarted.import_notes` and printed by `apollo-es import`.
Each module's docstring lists what it maps and what it cannot reproduce.

Importing is atomic per command: every file is parsed and validated into a plan first, and a
malformed file (bad JSON, wrong types, nesting deeper than 200, a lone surrogate, a node
whose parent is missing) raises
`TrajectoryImportError` naming the file, the place in it and the reason, before anything is
written. Event ids are derived from the content, so importing the same file again adds
nothing.

Example:

    from apollo_es import EventStore
    from apollo_es.importers import import_paths

    with EventStore("apollo.db") as store:
        for report in import_paths(store, "swe-agent", ["runs/marshmallow-1867.traj"]):
            print(report.path, report.added, "new events")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from apollo_es.importers import node_log, openai_messages, openhands, openhands_v1, swe_agent
from apollo_es.importers.fidelity import Fidelity, record_notes
from apollo_es.importers.base import (
    DEFAULT_REAL_USER_TAGS,
    FilePlan,
    PlannedEvent,
    StreamPlan,
    TrajectoryImportError,
    default_stream_id,
    sanitize_stream_id,
)
from apollo_es.importers.writer import FileReport, StreamReport, check_plans, write_plans
from apollo_es.store import EventStore

__all__ = [
    "ALIASES",
    "DEFAULT_REAL_USER_TAGS",
    "FORMATS",
    "FilePlan",
    "Fidelity",
    "FileReport",
    "PlannedEvent",
    "StreamPlan",
    "StreamReport",
    "TrajectoryImportError",
    "check_plans",
    "default_stream_id",
    "detect_format",
    "import_paths",
    "read_trajectory",
    "sanitize_stream_id",
    "write_plans",
]

FORMATS: dict[str, Callable[..., FilePlan]] = {
    swe_agent.FORMAT: swe_agent.parse,
    openhands.FORMAT: openhands.parse,
    openhands_v1.FORMAT: openhands_v1.parse,
    node_log.FORMAT: node_log.parse,
    openai_messages.FORMAT: openai_messages.parse,
}
"""Format name -> parser `(path, *, stream_id=None, real_user_tags=...) -> FilePlan`."""

ALIASES = {"researchgym": node_log.FORMAT, "node-log": node_log.FORMAT, "openai-messages": openai_messages.FORMAT, "swe": swe_agent.FORMAT}


def detect_format(path: str | Path) -> str:
    """Guess the format of `path` from its name and, if need be, its first bytes."""
    path = Path(path)
    if openhands_v1.is_v1(path):
        return openhands_v1.FORMAT
    if path.is_dir():
        return node_log.FORMAT
    if path.suffix == ".traj":
        return swe_agent.FORMAT
    try:
        with path.open("rb") as f:
            head = f.read(65536).decode("utf-8", errors="replace")
    except OSError as exc:
        raise TrajectoryImportError(path, "", f"cannot read: {exc.strerror or exc}") from None
    stripped = head.lstrip()
    if path.suffix == ".jsonl":
        first = stripped.split("\n", 1)[0]
        return openhands.FORMAT if re.search(r'"(history|trajectory)"\s*:\s*\[', first) else openai_messages.FORMAT
    if '"node_type"' in head and '"parent_id"' in head:
        return node_log.FORMAT
    if '"source"' in head and ('"action"' in head or '"observation"' in head):
        return openhands.FORMAT
    if '"history"' in head:
        return swe_agent.FORMAT
    if '"messages"' in head:
        return openai_messages.FORMAT
    raise TrajectoryImportError(path, "", "cannot tell the format; name it (swe-agent, openhands, openhands-v1, innovatorbench, openai)")


def resolve_format(name: str) -> str:
    name = ALIASES.get(name, name)
    if name != "auto" and name not in FORMATS:
        known = ", ".join([*FORMATS, *ALIASES, "auto"])
        raise TrajectoryImportError(name, "", f"unknown format; known formats: {known}")
    return name


def read_trajectory(
    fmt: str,
    path: str | Path,
    *,
    stream_id: str | None = None,
    real_user_tags: tuple[str, ...] = DEFAULT_REAL_USER_TAGS,
) -> FilePlan:
    """Parse and validate one file (or node-log directory) into a plan, with event ids; writes nothing."""
    fmt = resolve_format(fmt)
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt == openhands.FORMAT and openhands_v1.is_v1(path):
        fmt = openhands_v1.FORMAT
    if not Path(path).exists():
        raise TrajectoryImportError(path, "", "no such file or directory")
    plan = FORMATS[fmt](path, stream_id=stream_id, real_user_tags=tuple(real_user_tags))
    for stream in plan.streams:
        record_notes(stream)
    plan.assign_ids()
    return plan


def import_paths(
    store: EventStore,
    fmt: str,
    paths: Sequence[str | Path],
    *,
    stream_id: str | None = None,
    real_user_tags: tuple[str, ...] = DEFAULT_REAL_USER_TAGS,
    dry_run: bool = False,
    on_read: Callable[[int, int], None] | None = None,
    on_write: Callable[[int, int], None] | None = None,
) -> list[FileReport]:
    """Import trajectory files into `store`: all of them, or (on any error) none.

    `stream_id` names the stream of a single file (a node-log directory's branches get
    `<stream_id>~<node>`). `dry_run` parses, validates and counts without writing.
    `on_read(done, total)` and `on_write(done, total)` report progress.
    """
    if stream_id is not None and len(paths) != 1:
        raise TrajectoryImportError(", ".join(map(str, paths)) or "(no files)", "", "a stream id can only be given for one file")
    plans = []
    for n, path in enumerate(paths, 1):
        plans.append(read_trajectory(fmt, path, stream_id=stream_id, real_user_tags=real_user_tags))
        if on_read is not None:
            on_read(n, len(paths))
    return write_plans(store, plans, dry_run=dry_run, progress=on_write)
