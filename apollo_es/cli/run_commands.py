"""Commands that drive live runs: run, resume, intervene, stop, watch."""

from __future__ import annotations

import contextlib
import functools
import getpass
import time
from datetime import datetime, timezone
from pathlib import Path

import anyio
import click
import msgspec
from rich.console import Console
from rich.live import Live
from rich.text import Text

from apollo_es.agent import Agent, StepReport
from apollo_es.interventions import intervene as intervene_run
from apollo_es.interventions import undelivered_warning
from apollo_es.cli._common import (
    INT64,
    MAX_INT,
    beside_store,
    console,
    creating_store,
    db_option,
    json_option,
    open_store,
    print_json,
    print_ndjson,
    quiet_option,
    stderr_is_tty,
    with_reader,
    with_store,
)
from apollo_es.cli.progress import StepLines
from apollo_es.models import ModelClient, RecordedClient, load_recording, make_client
from apollo_es.store import NO_STREAM, EventStore
from apollo_es.tasks import load_task, prepare_workspace, reconfiguration, run_started, sampling_of
from apollo_es.tools import Workspace
from apollo_es.tools import check as check_sandbox
from events import ContextSummarized, RunFinished, RunReconfigured
from projections.audit import timeline
from projections.context import fold


def model_options(fn):
    for option in reversed(
        [
            click.option("--provider", type=click.Choice(["anthropic", "openai", "recorded"]), help="Model API (default: anthropic, or the run's own on resume)."),
            click.option("--base-url", help="API base URL (OpenAI-compatible servers; ANTHROPIC_BASE_URL also works)."),
            click.option("--recording", type=click.Path(dir_okay=False, exists=True), help="JSONL of recorded responses, for --provider recorded."),
        ]
    ):
        fn = option(fn)
    return fn


def settings_options(fn):
    """The run settings `run` takes from the task and `resume` / `replay --continue` may change
    (recorded as a `RunReconfigured`); they reach the command as one dict, `settings`."""
    options = [
        click.option("--max-steps", type=click.IntRange(min=1, max=MAX_INT), help="Steps allowed (from the start, or the fork of a branch)."),
        click.option("--time-limit", type=click.FloatRange(min=1), help="Seconds of active time allowed (model answers plus tool calls, from the start or the fork; downtime is free)."),
        click.option("--token-budget", type=click.IntRange(min=1, max=MAX_INT), help="Tokens allowed: whole prompts (cached ones too) plus outputs."),
        click.option("--max-output-tokens", type=click.IntRange(min=1, max=MAX_INT), help="Tokens one answer may take."),
        click.option("--thinking-budget", type=click.IntRange(min=1024, max=MAX_INT), help="Anthropic extended thinking: budget tokens per answer."),
        click.option("--prompt-caching/--no-prompt-caching", default=None, help="Anthropic prompt caching (on for new runs)."),
    ]
    names = ("max_steps", "time_limit", "token_budget", "max_output_tokens", "thinking_budget", "prompt_caching")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, settings={name: kwargs.pop(name) for name in names}, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def make_model_client(provider: str, model: str, base_url: str | None, recording: str | None, *, served: int = 0) -> ModelClient:
    """The model client the options describe; `recorded` replays a JSONL of responses.

    On resume, the first `served` recorded responses (one per model call already in the
    log: actions and summaries) are skipped, so the recording picks up where the run stopped.
    """
    if provider == "recorded":
        if not recording:
            raise click.ClickException("--provider recorded needs --recording FILE")
        return RecordedClient(load_recording(recording)[served:])
    if recording:
        raise click.ClickException("--recording only goes with --provider recorded")
    return make_client(provider, model, base_url=base_url)


@click.command()
@click.argument("task_file", type=click.Path(dir_okay=False))
@click.option("--model", required=True, help="Model id, e.g. claude-sonnet-4-5 or zai-org/GLM-4.5.")
@model_options
@click.option("--run-id", help="Stream id of the new run (default: TASK-ID-YYYYmmdd-HHMMSS).")
@click.option("--workspace", "workspace_dir", type=click.Path(file_okay=False), help="New or empty directory for the agent (default: workspaces/RUN-ID next to the store).")
@settings_options
@click.option("--summary-threshold", type=click.IntRange(min=1, max=MAX_INT), help="Override the task's summary_threshold (tokens).")
@click.option("--sandbox", "sandbox_kind", type=click.Choice(["bwrap", "none"]),
              help="Where the agent's commands run (default: the task's [sandbox] kind, bwrap). "
                   "'none' runs them unconfined on this host; it warns and is recorded in the run.")
@db_option
@json_option
@quiet_option
def run(task_file, model, provider, base_url, recording, run_id, workspace_dir, settings, summary_threshold, sandbox_kind, db_path, as_json,
        quiet):
    """Run an agent on a task file until it finishes, is stopped or runs out of budget.

    From another terminal, `apollo-es intervene RUN -m "..."` steers it and `apollo-es stop RUN`
    stops it. If the process dies, `apollo-es resume RUN` continues where the log ends.

    Example:

        apollo-es run examples/tune-classifier/task.toml --model claude-sonnet-4-5
    """
    task = load_task(task_file)
    overrides = {**{k: settings[k] for k in ("max_steps", "time_limit", "token_budget", "max_output_tokens")}, "summary_threshold": summary_threshold}
    task = msgspec.structs.replace(task, **{k: v for k, v in overrides.items() if v is not None})
    if sandbox_kind:
        task = msgspec.structs.replace(task, sandbox=msgspec.structs.replace(task.sandbox, kind=sandbox_kind))
    model_overrides = {"thinking_budget": settings["thinking_budget"], "prompt_caching": settings["prompt_caching"]}
    task = msgspec.structs.replace(task, model=msgspec.structs.replace(task.model, **{k: v for k, v in model_overrides.items() if v is not None}))
    if task.sandbox.kind == "none":
        click.echo("Warning: sandbox 'none': the agent's commands run unconfined on this host, "
                   "with your user's rights (recorded in the run's RunStarted).", err=True)
    provider = provider or "anthropic"
    client = make_model_client(provider, model, base_url, recording)
    sampling_of(task, client.provider)  # before the store or the workspace is made, like the sandbox
    check_sandbox(task.sandbox)
    run_id = run_id or f"{task.id}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    with creating_store(db_path) as store:
        if store.exists(run_id):
            raise click.ClickException(f"run {run_id!r} already exists; use apollo-es resume {run_id}")
        root = Path(workspace_dir) if workspace_dir else beside_store(db_path, "workspaces") / run_id
        root = prepare_workspace(task, root)
        request_provider = client.provider
        store.append(run_id, [run_started(task, model=model, provider=request_provider, workspace=root)], expected_version=NO_STREAM, actor="system")
        console.print(f"run {run_id}: workspace {root}", markup=False, highlight=False) if not as_json else None
        drive(store, run_id, client, Workspace(root, sandbox=task.sandbox), resume=False, as_json=as_json, quiet=quiet)


@click.command()
@click.argument("run_id")
@click.option("--model", help="Model id (default: the run's own).")
@model_options
@settings_options
@db_option
@json_option
@quiet_option
def resume(run_id, model, provider, base_url, recording, settings, db_path, as_json, quiet):
    """Continue a run from where its log ends: after a crash, a failure or an exhausted budget.

    The run's model, provider and workspace come from its RunStarted event. Budgets, the output
    limit, thinking and caching can be changed for the rest of the run: the change is recorded
    as a RunReconfigured event.

    Example:

        apollo-es resume tune-classifier-20261123-101500 --max-steps 200 --thinking-budget 8192
    """
    with open_store(db_path) as store:
        recorded = store.read(run_id)
        context = fold(recorded)
        started = context.run
        if started is None:
            raise click.ClickException(f"{run_id!r} has no RunStarted event; it was not started by apollo-es run")
        if context.finished is not None and context.finished.status in ("finished", "stopped"):
            # Nothing to do, which is not an error; checked before building the client, so the
            # answer does not depend on having an API key.
            if as_json:
                print_json({"run_id": run_id, "status": context.finished.status, "resumed": False})
            else:
                click.echo(f"run {run_id} already {context.finished.status}; nothing to resume "
                           f"(branch it to go on: apollo-es replay {run_id} --branch --at V)")
            return
        if not started.workspace or not Path(started.workspace).is_dir():
            raise click.ClickException(f"the run's workspace {started.workspace!r} is gone; cannot resume")
        # one recorded response per model call already in the log: each action and each summary
        served = context.steps + sum(isinstance(e.event, ContextSummarized) for e in recorded)
        client = make_model_client(provider or started.provider or "anthropic", model or started.model, base_url, recording, served=served)
        drive(store, run_id, client, Workspace(started.workspace, sandbox=started.sandbox), resume=True, as_json=as_json,
              quiet=quiet, reconfigured=reconfiguration(started, **settings, reason="resume"))


def drive(store: EventStore, run_id: str, client: ModelClient, workspace: Workspace, *, resume: bool, as_json: bool,
          quiet: bool = False, reconfigured: RunReconfigured | None = None) -> None:
    """Run the agent with a line per step and a live status line, then print how the run ended.

    `reconfigured` (new settings asked for on the command line) is recorded by the agent once
    it holds the run's lease, so a refused resume writes nothing.

    Progress goes to stderr, and only to a terminal: stdout keeps just the outcome.
    """
    line = Text("")
    terminal = Console(stderr=True, highlight=False)
    # rich's Live has no `disable`, so there is none off a terminal.
    live = Live(line, console=terminal, transient=True) if not as_json and not quiet and stderr_is_tty() else None
    steps = StepLines(store, run_id, lambda text: terminal.print(text, markup=False)) if live is not None else None

    def show(report: StepReport) -> None:
        if steps is not None:
            steps()
        line.plain = f"{report.stream_id}  step {report.steps}  ~{report.tokens:,} tokens  {report.last}"
        if live is not None and live.is_started:
            live.refresh()

    async def go() -> RunFinished:
        try:
            return await Agent(store, run_id, client, workspace, on_step=show).run(resume=resume, reconfigured=reconfigured)
        finally:
            await client.aclose()

    with live or contextlib.nullcontext():
        finished = anyio.run(go)
        if steps is not None:
            steps()
            steps.flush()
    context = fold(store.read(run_id))
    summary = {"run_id": run_id, "status": finished.status, "steps": context.steps, "final_answer": finished.final_answer, "score": finished.score, "error": finished.error}
    if as_json:
        print_json(summary)
    else:
        click.echo(f"{run_id}: {finished.status} after {context.steps} steps" + (f", score {finished.score:g}" if finished.score is not None else ""))
        if finished.final_answer:
            click.echo(finished.final_answer)
    if finished.status == "failed":
        raise click.ClickException(f"run {run_id} failed: {finished.error}. Fix the cause, then: apollo-es resume {run_id}")


def _annotator_option(fn):
    return click.option("--annotator", default=lambda: getpass.getuser(), show_default="your user name", help="Who is intervening.")(fn)


@click.command()
@click.argument("run_id")
@click.option("-m", "--message", required=True, help="What to tell the agent (or why you stop, reject or approve).")
@click.option("--kind", type=click.Choice(["guidance", "stop", "reject", "approve"]), default="guidance", show_default=True,
              help="reject: mask the --target action from training; approve: keep it whatever rules and judges say.")
@click.option("--target", type=INT64, help="For reject and approve: the version of the action.")
@click.option("--seen", "seen_version", type=INT64, help="The version you were looking at (default: the run's head).")
@_annotator_option
@with_store
@json_option
def intervene(store: EventStore, run_id, message, kind, target, seen_version, annotator, as_json):
    """Send guidance to a live run (it reaches the agent's next model request), stop it, or reject or approve an action for training.

    Example:

        apollo-es intervene run-1 -m "The baseline numbers are wrong; re-run eval.py first." --annotator ana
    """
    _intervene(store, run_id, message, kind, target, seen_version, annotator, as_json)


@click.command()
@click.argument("run_id")
@click.option("-m", "--message", default="Stopped by an annotator.", help="Why you stop it.")
@_annotator_option
@with_store
@json_option
def stop(store: EventStore, run_id, message, annotator, as_json):
    """Stop a live run cleanly: the agent ends with status `stopped` before its next model call.

    Example:

        apollo-es stop run-1 -m "drifting into unrelated refactoring"
    """
    _intervene(store, run_id, message, "stop", None, None, annotator, as_json)


def _intervene(store: EventStore, run_id: str, message: str, kind: str, target: int | None, seen_version: int | None, annotator: str, as_json: bool) -> None:
    recorded = intervene_run(store, run_id, kind=kind, message=message, annotator=annotator, seen_version=seen_version, target=target)
    warning = undelivered_warning(store, run_id, kind)
    if as_json:
        print_json({"run_id": run_id, "version": recorded.version, "position": recorded.position, "kind": kind, "warning": warning})
    else:
        click.echo(f"{kind} recorded as {run_id} v{recorded.version}")
        if warning:
            click.echo(f"Warning: {warning}", err=True)


@click.command()
@click.argument("run_id")
@click.option("--tail", "last", type=click.IntRange(min=0, max=MAX_INT), default=10, show_default=True, help="Show this many past events first.")
@click.option("--follow/--no-follow", default=True, help="Keep printing new events until the run ends.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="Seconds between polls.")
@click.option("--nl", "--json", "as_ndjson", is_flag=True, help="One JSON object per event (NDJSON), as they come.")
@with_reader
def watch(store: EventStore, run_id, last, follow, interval, as_ndjson):
    """Print a run's timeline as it grows, until the run ends (Ctrl-C to leave).

    Example:

        apollo-es watch run-1 --tail 20 --nl | jq .summary
    """
    show = print_ndjson if as_ndjson else _print_rows
    recorded = store.read(run_id)  # raises StreamNotFound for an unknown run
    # Whether the run has ended is decided by the whole log, not by the rows shown: with
    # --tail 0, or a verdict appended after RunFinished, the shown rows need not include it.
    shown, ended = recorded[-1].version, fold(recorded).finished is not None
    rows = [row for row in timeline(store, run_id, limit=last) if row.version <= shown] if last else []
    show(rows)
    while follow and not ended:
        time.sleep(interval)
        rows = timeline(store, run_id, after_version=shown)
        show(rows)
        for row in rows:
            shown = row.version
            if row.kind in ("AgentActed", "BranchCreated", "RunFinished"):  # as the fold decides `finished`
                ended = row.kind == "RunFinished"


def _print_rows(rows) -> None:
    for row in rows:
        click.echo(f"v{row.version:<5} {row.recorded_at[11:19]}  {row.kind:<17} {row.actor:<14} {row.summary}")


COMMANDS = [run, resume, intervene, stop, watch]
