"""`apollo-es demo`: the whole pipeline on embedded defaults, in a few minutes, offline.

1. A research run of examples/tune-classifier by the recorded model (apollo_es.demo.recording)
   in a separate agent process: an annotator's guidance arrives from another process
   mid-run, the context is summarized, the agent process is killed and the run resumed.
2. The bundled real trajectories (examples/trajectories) are imported.
3. The rules are applied to every run.
4. The run is branched before its breakthrough with different guidance, and the branch is
   continued live (recorded model) in a workspace rebuilt at the fork.
5. Everything is projected into a dataset with a small bundled tokenizer and chat template.
6. A tiny model trains a few steps on it, on the CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec

from apollo_es.demo.recording import BRANCH_GUIDANCE, GUIDANCE, branch_responses
from apollo_es.errors import ApolloError
from apollo_es.models import RecordedClient
from apollo_es.store import NO_STREAM, EventStore
from apollo_es.tasks import Task, load_task, prepare_workspace, run_started
from apollo_es.tools import SandboxError, Workspace, check_available
from events import ActionJudged
from projections.context import fold

__all__ = ["DemoReport", "run_demo"]

REPO = Path(__file__).resolve().parents[2]
TASK = REPO / "examples" / "tune-classifier" / "task.toml"
TRAJECTORIES = REPO / "examples" / "trajectories"
RUN_ID = "demo-tune-classifier"
INTERVENE_AT_STEP = 13
KILL_AT_STEP = 21  # the `sleep 3` step: the kill lands while its command runs, every time
FORK_AFTER_STEP = 9  # the degree-2 result: the branch tries another feature map from there
MAX_TOKENS = 8_192  # samples are cut to this (the tiny tokenizer spends many tokens) so CPU training takes seconds
TRAIN_STEPS = 6


class DemoReport(msgspec.Struct):
    out_dir: str
    runs: int
    branches: int
    events: int
    masked_by_rule: dict[str, int]
    verdicts: dict[str, int]
    """The scripted judge's verdicts: keep and mask counts."""
    samples_by_type: dict[str, int]
    skipped_runs: list[str]
    """Runs the projection could not render, with why."""
    trained_tokens: int
    losses: list[float]
    score: float | None
    branch_score: float | None
    paths: dict[str, str]


def run_demo(out_dir: Path, say: Callable[[str], None] = print) -> DemoReport:
    if not TASK.exists():
        raise ApolloError(f"the demo needs the repository's examples/ (looked at {TASK}); run it from a source checkout")
    out_dir.mkdir(parents=True, exist_ok=True)
    db = out_dir / "apollo.db"
    store = EventStore(db)

    say("1/6 research run with the recorded model (agent in its own process)")
    score = _research_run(store, db, out_dir / "workspace", say)

    say("2/6 importing the bundled real trajectories")
    from apollo_es.importers import import_paths

    imported = import_paths(store, "auto", sorted(p for p in TRAJECTORIES.rglob("*") if p.suffix in (".traj", ".json")))
    say(f"    {len(imported)} files -> {sum(r.added for r in imported)} events")

    say("3/6 judging every action (a scripted stand-in judge) and applying the rules")
    from apollo_es.demo.judge import DemoJudge
    from apollo_es.judge import Judge
    from projections.policy import annotations_for, decide
    from projections.rules import RuleSet

    anyio.run(Judge(store, DemoJudge(), concurrency=2).run)
    verdicts = Counter(r.event.verdict for r in store.read_all() if isinstance(r.event, ActionJudged))
    say(f"    verdicts: {', '.join(f'{n} {v}' for v, n in sorted(verdicts.items()))}")
    rules = RuleSet.default()
    masked: Counter[str] = Counter()
    for info in store.streams():
        recorded = store.read(info.stream_id)
        for decision in decide(recorded, rules, extra=annotations_for(store, recorded)).values():
            if decision.stream_id == info.stream_id:
                masked.update(reason.name for reason in decision.masked_by)

    say("4/6 branching before the breakthrough with other guidance, and continuing it")
    branch_score = _branch(store, out_dir / "branch-workspace")

    say("5/6 projecting a dataset (bundled tiny tokenizer, GLM-4.5-style template)")
    from projections.dataset import project
    from projections.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(out_dir / "tokenizer", "glm45")
    projection = project(store, out_dir / "dataset", tokenizer_path=tokenizer, ruleset=rules,
                         max_tokens=MAX_TOKENS, length_policy="truncate")

    say("6/6 training a tiny model on the CPU")
    losses = _train(out_dir, tokenizer)

    stats = store.stats()
    store.close()
    return DemoReport(
        out_dir=str(out_dir), runs=stats["runs"], branches=stats["branches"], events=stats["events"],
        masked_by_rule=dict(masked.most_common()), verdicts=dict(verdicts), samples_by_type=projection.manifest.samples_by_type,
        skipped_runs=[f"{skip.stream_id} (v{skip.version}): {skip.reason}" for skip in projection.skipped],
        trained_tokens=projection.manifest.trained_tokens, losses=losses, score=score, branch_score=branch_score,
        paths={"store": str(db), "workspace": str(out_dir / "workspace"), "dataset": str(out_dir / "dataset"),
               "training run": str(out_dir / "train")},
    )


def _demo_task(say) -> Task:
    """The example task, in the sandbox where this machine has one. The demo's commands are the
    bundled recording's, so without bubblewrap they run unconfined rather than not at all."""
    task = msgspec.structs.replace(load_task(TASK), summary_threshold=6_000)
    try:
        check_available()
    except SandboxError as exc:
        say(f"    no sandbox on this machine, so the bundled recorded commands run unconfined: {exc}")
        return msgspec.structs.replace(task, sandbox=msgspec.structs.replace(task.sandbox, kind="none"))
    return task


def _research_run(store: EventStore, db: Path, root: Path, say) -> float | None:
    task = _demo_task(say)
    workspace = prepare_workspace(task, root)
    store.append(RUN_ID, [run_started(task, model="recorded-research-agent", provider="anthropic", workspace=workspace)],
                 expected_version=NO_STREAM)
    flag = root.parent / ".annotator-done"
    worker = _start_worker(db, workspace, INTERVENE_AT_STEP, flag)
    _wait_for_step(store, INTERVENE_AT_STEP, worker)
    subprocess.run([sys.executable, "-m", "apollo_es.cli", "intervene", RUN_ID, "-m", GUIDANCE, "--annotator", "ana",
                    "--db", str(db)], check=True, capture_output=True)
    flag.touch()
    say(f"    after step {INTERVENE_AT_STEP}: annotator 'ana' sent guidance from another process")
    _wait_for_step(store, KILL_AT_STEP, worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    say(f"    step {KILL_AT_STEP}: agent process killed (SIGKILL); resuming from the log")
    resumed = _start_worker(db, workspace)
    if resumed.wait(timeout=300) != 0:
        raise ApolloError(f"the resumed demo run did not finish: {resumed.stderr.read()[-2000:]}")
    context = fold(store.read(RUN_ID))
    summaries = sum(r.kind == "ContextSummarized" for r in store.read(RUN_ID))
    say(f"    {RUN_ID}: {context.finished.status} after {context.steps} steps, {summaries} summary, score {context.finished.score}")
    return context.finished.score


def _start_worker(db: Path, workspace: Path, pause_after: int = 0, flag: Path | None = None) -> subprocess.Popen:
    extra = [str(pause_after), str(flag)] if flag else []
    return subprocess.Popen([sys.executable, "-m", "apollo_es.demo.worker", str(db), RUN_ID, str(workspace), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_step(store: EventStore, step: int, worker: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while fold(store.read(RUN_ID)).steps < step:
        if worker.poll() is not None:
            raise ApolloError(f"the demo's agent process ended early: {worker.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise ApolloError(f"the demo run did not reach step {step} in {timeout:g} s")
        time.sleep(0.05)


def _branch(store: EventStore, root: Path) -> float | None:
    from replay import branch, branch_workspace, continue_branch

    fork = _version_after_step(store, FORK_AFTER_STEP)
    branch_id = branch(store, RUN_ID, fork, inject=BRANCH_GUIDANCE, reason="try radial basis features", annotator="ben")
    task = _demo_task(lambda line: None)
    workspace = Workspace(branch_workspace(store, RUN_ID, fork, root, task), sandbox=task.sandbox)
    finished = anyio.run(lambda: continue_branch(store, branch_id, RecordedClient(branch_responses()), workspace))
    return finished.score


def _version_after_step(store: EventStore, step: int) -> int:
    """The version of the observation that answers the agent's `step`-th action (1-based)."""
    seen = 0
    for recorded in store.read(RUN_ID):
        if recorded.kind == "AgentActed":
            seen += 1
        elif recorded.kind == "ToolObserved" and seen == step:
            return recorded.version
    raise ApolloError(f"{RUN_ID} has no step {step}")


def _train(out_dir: Path, tokenizer: Path) -> list[float]:
    from train.config import load_config
    from train.recipe import run

    config = load_config(REPO / "train" / "configs" / "tiny-cpu.toml", [
        f"run_dir={out_dir / 'train'}", f"model.tokenizer={tokenizer}", f"data.path={out_dir / 'dataset' / 'native'}",
        f"data.max_tokens={MAX_TOKENS}", f"train.max_steps={TRAIN_STEPS}", "train.global_batch=4",
    ])
    return list(run(config, progress=False).losses)
