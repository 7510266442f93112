"""State at any point, branches, verification and re-runs of recorded trajectories."""

from replay.branching import branch, fork_point
from replay.live import branch_workspace, continue_branch
from replay.rerun import DEFAULT_NORMALIZATIONS, Divergence, ImportedCommandsRefused, RerunReport, rerun, restore_workspace
from replay.state import State, state_at
from replay.verification import RunVerification, verify_run

__all__ = [
    "fork_point",
    "DEFAULT_NORMALIZATIONS",
    "Divergence",
    "ImportedCommandsRefused",
    "RerunReport",
    "RunVerification",
    "State",
    "branch",
    "branch_workspace",
    "continue_branch",
    "rerun",
    "restore_workspace",
    "state_at",
    "verify_run",
]
