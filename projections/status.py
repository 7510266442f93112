"""The one status of a run, which every surface shows (`runs`, `tree`, the console).

From the fold and whether an agent holds the run's lease (`apollo_es.lease`):
- the `RunFinished` status once the run ended: `finished`, `stopped`, `failed`,
  `budget_exhausted` (or an importer's `imported`);
- `stopping`: a person's stop waits for the agent that holds the run;
- `stopped`: a person's stop with no agent left to record the end (resume records it);
- `running`: an agent holds the run;
- `idle`: no agent holds it (crashed, killed, or never resumed): guidance waits for `resume`.
"""

from __future__ import annotations

from projections.context import Context

__all__ = ["STATUSES", "run_status"]

STATUSES = ("running", "idle", "stopping", "stopped", "finished", "failed", "budget_exhausted", "imported")


def run_status(context: Context, held: bool) -> str:
    if context.finished is not None:
        return context.finished.status
    if context.stopped:
        return "stopping" if held else "stopped"
    return "running" if held else "idle"
