"""The demo's agent process: runs (or resumes) the demo run with the recorded model.

    python -m apollo_es.demo.worker DB RUN_ID WORKSPACE [PAUSE_AFTER_STEP FLAG_FILE]

A separate process, so the demo can kill it mid-run and resume the run from the log, and
so the annotator's message really comes from another process while it works. With
PAUSE_AFTER_STEP, the agent waits after that step's observation until FLAG_FILE exists: a
demo device that makes the annotator's message land at the same step every time (a real
agent never waits for anyone).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

from apollo_es.agent import Agent, StepReport
from apollo_es.demo.recording import responses, summary_response
from apollo_es.models import RecordedClient
from apollo_es.store import EventStore
from apollo_es.tools import Workspace
from projections.context import fold


def main(db: str, run_id: str, workspace: str, pause_after: str = "0", flag: str = "") -> int:
    store = EventStore(db)
    context = fold(store.read(run_id))
    served = context.steps  # on resume, skip the responses already in the log
    client = RecordedClient(responses()[served:])
    summarizer = RecordedClient([summary_response()])

    def maybe_pause(report: StepReport) -> None:
        if report.steps == int(pause_after) and not fold(store.read(run_id)).pending_calls:
            while not Path(flag).exists():
                time.sleep(0.05)

    agent = Agent(store, run_id, client, Workspace(workspace, sandbox=context.run.sandbox), summarizer=summarizer, on_step=maybe_pause if flag else None)
    finished = anyio.run(lambda: agent.run(resume=served > 0))
    print(finished.status, flush=True)
    return 0 if finished.status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
