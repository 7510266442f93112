"""`apollo-es replay` (inspect, branch, verify, re-run, continue) and `apollo-es tree`."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from apollo_es.cli._common import (
    INT64,
    cell,
    json_option,
    print_json,
    print_table,
    quiet_option,
    report_moved_fork,
    statuses,
    table,
    with_reader,
    with_store,
)
from apollo_es.cli.run_commands import drive, make_model_client, model_options, settings_options
from apollo_es.store import EventStore
from apollo_es.tasks import load_task, prepare_workspace, reconfiguration
from apollo_es.tools import Workspace
from projections.audit import timeline
from replay import branch as branch_run
from replay import branch_workspace, fork_point, rerun, state_at, verify_run
from replay.rerun import refuse_imported
from replay.rerun import DEFAULT_NORMALIZATIONS, DEFAULT_SKIP_TOOLS


@click.command()
@click.argument("run_id")
@click.option("--at", "at_version", type=INT64, help="The version to inspect or branch after (default: the head).")
@click.option("--show", type=click.Choice(["context", "events"]), default="context", show_default=True, help="What to print for --at.")
@click.option("--branch", "make_branch", is_flag=True, help="Branch RUN after --at.")
@click.option("--inject", help="With --branch: guidance recorded right after the fork, as the annotator's message.")
@click.option("--reason", default="", help="With --branch: why, recorded in BranchCreated.")
@click.option("--name", "new_stream_id", help="With --branch: the branch's id (default RUN~bN).")
@click.option("--annotator", default=lambda: getpass.getuser(), show_default="your user name", help="With --branch: who branches.")
@click.option("--continue", "continue_live", is_flag=True, help="With --branch: run the agent live on the branch (needs --model).")
@click.option("--model", help="With --continue: the model to continue with.")
@model_options
@settings_options
@click.option("--verify", "do_verify", is_flag=True, help="Check every action's and summary's request digest against today's fold, and the hash chain.")
@click.option("--rerun", "do_rerun", is_flag=True, help="Re-execute the recorded actions in --workspace and compare the observations.")
@click.option("--workspace", "workspace_dir", type=click.Path(file_okay=False), help="For --rerun and --continue: the workspace to use.")
@click.option("--task", "task_file", type=click.Path(dir_okay=False, exists=True), help="For --rerun and --continue: prepare --workspace from this task file first.")
@click.option("--normalize", multiple=True, metavar="REGEX=>REPLACEMENT", help="For --rerun: another volatile pattern to normalize (repeatable).")
@click.option("--skip-tool", "skip_tools", multiple=True, help="For --rerun: run but do not compare this tool's output (repeatable).")
@click.option("--allow-imported-commands", is_flag=True,
              help="For --rerun and --continue --task: execute the recorded commands of an imported run (in the sandbox). "
                   "Refused by default: they are code from another machine's trajectory file.")
@with_store
@json_option
@quiet_option
def replay(store: EventStore, run_id, at_version, show, make_branch, inject, reason, new_stream_id, annotator, continue_live, model,
           provider, base_url, recording, settings, do_verify, do_rerun, workspace_dir, task_file, normalize, skip_tools, allow_imported_commands, as_json,
           quiet):
    """Inspect a run at any version, branch it with new guidance, verify it, or re-run it.

    Example:

        apollo-es replay run-1 --at 40 --show context

        apollo-es replay run-1 --at 40 --branch --inject "Try a smaller learning rate first." --continue --model claude-sonnet-4-5

        apollo-es replay run-1 --verify

        apollo-es replay run-1 --rerun --workspace /tmp/fresh --task examples/tune-classifier/task.toml
    """
    modes = [m for m, on in (("--branch", make_branch), ("--verify", do_verify), ("--rerun", do_rerun)) if on]
    if len(modes) > 1:
        raise click.ClickException(f"choose one of {', '.join(modes)}")
    if (inject or continue_live or new_stream_id) and not make_branch:
        raise click.ClickException("--inject, --name and --continue go with --branch")
    if continue_live and not (model or provider == "recorded"):
        raise click.ClickException("--continue needs --model (or --provider recorded --recording FILE)")
    store.head(run_id)  # unknown runs fail here, before anything is written
    if do_rerun or (continue_live and task_file):  # before a workspace or a branch is made
        refuse_imported(run_id, store.read(run_id, up_to=1)[0], allow_imported_commands)
    if do_verify:
        return _verify(store, run_id, as_json)
    if do_rerun:
        return _rerun(store, run_id, at_version, workspace_dir, task_file, normalize, skip_tools, allow_imported_commands, as_json)
    state = state_at(store, run_id, at_version)  # validates --at
    changed = any(value is not None for value in settings.values())
    if changed and not continue_live:
        raise click.ClickException("--max-steps, --thinking-budget and the other run settings go with --branch --continue")
    if make_branch:
        client = make_model_client(provider or state.context.run.provider or "anthropic", model, base_url, recording) if continue_live else None
        new_settings = reconfiguration(state.context.run, **settings, reason="continued branch") if changed else None  # checked first
        fork = fork_point(store, run_id, state.version)
        new_id = branch_run(store, run_id, fork, inject=inject, reason=reason, annotator=annotator, new_stream_id=new_stream_id)
        report_moved_fork(state.version, fork, as_json)
        if not continue_live:
            if as_json:
                print_json({"stream_id": new_id, "parent_id": run_id, "fork_version": fork, "head": store.head(new_id)})
            else:
                click.echo(new_id)
            return
        root = branch_workspace(store, run_id, fork, workspace_dir or Path(store.path).resolve().parent / "workspaces" / new_id,
                                load_task(task_file) if task_file else None, allow_imported_commands=allow_imported_commands)
        if new_settings is not None:
            store.append(new_id, [new_settings], actor="system")
        drive(store, new_id, client, Workspace(root, sandbox=state.context.run.sandbox), resume=False, as_json=as_json, quiet=quiet)
        return
    if as_json:
        print_json(state)
    elif show == "events":
        for row in timeline(store, run_id):
            if row.version <= state.version:
                click.echo(f"v{row.version:<5} {row.kind:<17} {row.actor:<14} {row.summary}")
    else:
        _print_context(state)


def _print_context(state) -> None:
    lineage = " > ".join(f"{s}@v{fork}" if fork else s for s, fork in state.lineage)
    click.echo(f"{state.stream_id} at v{state.version} of {lineage}: {len(state.context.messages)} messages, ~{state.tokens:,} tokens")
    if state.context.system:
        click.echo(f"\n[system]\n{_clip(state.context.system)}")
    for m in state.context.messages:
        label = f"{m.role}/{m.source} v{m.version}"
        body = m.content
        if m.tool_calls:
            body += "".join(f"\n→ {c.name}({c.raw_arguments or c.arguments})" for c in m.tool_calls)
        click.echo(f"\n[{label}]\n{_clip(body)}")
    if state.pending_human:
        click.echo(f"\n{len(state.pending_human)} human message(s) not yet seen by the model.")


def _clip(text: str, limit: int = 2_000) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]"


def _verify(store: EventStore, run_id: str, as_json: bool) -> None:
    report = verify_run(store, run_id)
    if as_json:
        print_json(report)
    if not report.ok:
        where = f"version {report.first_bad_version}" if report.first_bad_version else f"position {report.first_bad_position}"
        raise click.ClickException(f"{run_id} does not verify at {where}: {report.reason}")
    if not as_json:
        click.echo(f"OK: {report.actions_checked} actions and {report.summaries_checked} summaries reproduce "
                   "their recorded request digests; hash chain intact")


def _rerun(store, run_id, at_version, workspace_dir, task_file, normalize, skip_tools, allow_imported_commands, as_json) -> None:
    if not workspace_dir:
        raise click.ClickException("--rerun needs --workspace DIR (a fresh copy of the run's starting files, or an empty directory with --task)")
    patterns = []
    for item in normalize:
        if "=>" not in item:
            raise click.ClickException(f"--normalize {item!r}: write REGEX=>REPLACEMENT")
        patterns.append(tuple(item.split("=>", 1)))
    started_empty = not task_file and not (Path(workspace_dir).is_dir() and any(Path(workspace_dir).iterdir()))
    root = _prepared(workspace_dir, task_file)
    report = rerun(store, run_id, root, normalizations=[*DEFAULT_NORMALIZATIONS, *patterns],
                   skip_tools=[*DEFAULT_SKIP_TOOLS, *skip_tools], up_to=at_version, allow_imported_commands=allow_imported_commands)
    if as_json:
        print_json(report)
    if report.divergence is not None:
        d = report.divergence
        if not as_json:
            click.echo(f"{d.tool}({d.arguments}) at v{d.version} diverges (exit {d.expected_exit_code} recorded, {d.actual_exit_code} now):")
            click.echo(d.diff)
        hint = ("; the workspace started empty: pass --task TASK.toml to put the task's files there first"
                if started_empty and report.compared == 1 else "")
        raise click.ClickException(f"rerun of {run_id} diverges at v{d.version} after {report.compared - 1} matching observations{hint}")
    if not as_json:
        click.echo(f"OK: {report.compared} observations reproduced ({report.executed} tool calls executed) in {root}")


def _prepared(workspace_dir: str, task_file: str | None) -> Path:
    root = Path(workspace_dir)
    if task_file:
        return prepare_workspace(load_task(task_file), root)
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


@click.command()
@click.argument("run_id")
@with_reader
@json_option
def tree(store: EventStore, run_id: str, as_json: bool) -> None:
    """Print the branch tree RUN belongs to: fork points, lengths and statuses.

    Example:

        apollo-es tree run-1
    """
    root = store.lineage(run_id)[0][0]
    infos = {info.stream_id: info for info in store.streams()}
    children: dict[str, list[str]] = {}
    for info in infos.values():
        if info.parent_id:
            children.setdefault(info.parent_id, []).append(info.stream_id)
    nodes = []

    def walk(stream_id: str, depth: int) -> None:
        info = infos[stream_id]
        nodes.append({"stream_id": stream_id, "depth": depth, "parent_id": info.parent_id, "fork_version": info.fork_version,
                      "head": info.head, "own_events": info.own_events})
        for child in children.get(stream_id, []):
            walk(child, depth + 1)

    walk(root, 0)
    for node, status in zip(nodes, statuses(store, [node["stream_id"] for node in nodes]).values()):
        node["status"] = status
    if as_json:
        print_json(nodes)
        return
    out = table("stream", "fork", "head", "own events", "status")
    for node in nodes:
        marker = "* " if node["stream_id"] == run_id else "  "
        name = marker + "  " * node["depth"] + ("└ " if node["depth"] else "") + node["stream_id"]
        fork = f"@v{node['fork_version']}" if node["fork_version"] else ""
        out.add_row(cell(name), cell(fork), cell(node["head"]), cell(node["own_events"]), cell(node["status"]))
    print_table(out)


COMMANDS = [replay, tree]
