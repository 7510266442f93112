"""Continuing a branch live: the rollout engine picks up from the branch point."""

from __future__ import annotations

from pathlib import Path

from apollo_es.agent import Agent
from apollo_es.models import ModelClient
from apollo_es.store import EventStore
from apollo_es.tasks import Task, prepare_workspace
from apollo_es.tools import Workspace
from events import RunFinished
from replay.rerun import refuse_imported, restore_workspace

__all__ = ["branch_workspace", "continue_branch"]


def branch_workspace(
    store: EventStore, stream_id: str, at_version: int, root: str | Path, task: Task | None = None,
    *, allow_imported_commands: bool = False,
) -> Path:
    """The directory a branch of `stream_id` at `at_version` continues in.

    With the run's task, the task's files are laid out and the recorded actions re-run up to
    the fork in the run's sandbox, so the agent finds the files as they were there; without
    one, an empty directory. Imported runs are not re-executed unless allowed (see `rerun`).
    """
    if task is None:
        path = Path(root)
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()
    refuse_imported(stream_id, next(iter(store.read(stream_id, up_to=1)), None), allow_imported_commands)
    path = prepare_workspace(task, Path(root))
    restore_workspace(store, stream_id, path, at_version, allow_imported_commands=allow_imported_commands)
    return path


async def continue_branch(
    store: EventStore,
    branch_id: str,
    client: ModelClient,
    workspace: Workspace,
    *,
    on_step=None,
) -> RunFinished:
    """Run the agent on `branch_id` from its head (the fork, plus any injected guidance).

    Its first request is the fold of the branch: the parent's events up to the fork, then
    the branch's own — never anything the parent did after the fork.
    """
    return await Agent(store, branch_id, client, workspace, on_step=on_step).run()
