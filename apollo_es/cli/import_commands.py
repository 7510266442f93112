"""`apollo-es import`: other agents' trajectories (SWE-agent, OpenHands, InnovatorBench, OpenAI) as runs."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from apollo_es.cli._common import creating_store, db_option, json_option, print_json, stderr_is_tty
from apollo_es.importers import ALIASES, DEFAULT_REAL_USER_TAGS, FORMATS, import_paths

FORMAT_CHOICES = [*FORMATS, *ALIASES, "auto"]
SHOWN_WARNINGS = 5


@click.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(FORMAT_CHOICES))
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--stream", "stream_id", help="Stream id for a single PATH (default: <format>/<file name>).")
@click.option("--real-user-tag", "tags", multiple=True,
              help=f"A tag that marks a user message as a person's (repeatable; default: {', '.join(DEFAULT_REAL_USER_TAGS)}).")
@click.option("--dry-run", is_flag=True, help="Read and check the files and count what would be added; write nothing.")
@db_option
@json_option
def import_command(fmt: str, paths: tuple[str, ...], stream_id: str | None, tags: tuple[str, ...], dry_run: bool,
                   db_path: str, as_json: bool) -> None:
    """Import trajectories of another agent as runs: FORMAT is swe-agent, openhands,
    innovatorbench (a directory of node files; alias researchgym), openai (chat messages
    JSONL) or auto.

    Tool calls, observations, reasoning, model ids and timestamps are kept; events are
    recorded with actor import:<format>. Every file is read and checked before anything
    is written: a malformed file imports nothing and the error names the file, the place in
    it and the reason. Event ids come from the content, so importing a file again adds
    nothing. The store is created if it does not exist.

    Each run's context is what the source agent's model was sent, as far as the file tells:
    where it recorded its prompts (SWE-agent), they are compared with the replayed context,
    and what differs (and any other known difference) is printed as a note and kept in the
    run's RunStarted.import_notes.

    Example:

    \b
        apollo-es import swe-agent runs/*.traj --db apollo.db
        apollo-es import innovatorbench logs/task_3/nodes --stream ib/task-3 --json
    """
    real_user_tags = tuple(tags) or DEFAULT_REAL_USER_TAGS
    with creating_store(db_path) as store, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
        disable=as_json or not stderr_is_tty(),
    ) as bar:
        reading = bar.add_task("reading", total=len(paths))
        writing = bar.add_task("writing", total=None, visible=False)

        def on_write(done: int, total: int) -> None:
            bar.update(writing, completed=done, total=total, visible=True)

        reports = import_paths(
            store, fmt, list(paths), stream_id=stream_id, real_user_tags=real_user_tags, dry_run=dry_run,
            on_read=lambda done, total: bar.update(reading, completed=done), on_write=on_write,
        )
    if as_json:
        print_json({"dry_run": dry_run, "files": reports, "added": sum(r.added for r in reports),
                    "present": sum(r.present for r in reports)})
        return
    verb = "would add" if dry_run else "added"
    for report in reports:
        click.echo(f"{report.path} ({report.format})")
        for s in report.streams:
            origin = f" (branch of {s.parent_id} at v{s.fork_version})" if s.parent_id else ""
            click.echo(f"  {s.stream_id}{origin}: {verb} {s.added} event(s), {s.present} already present")
            for note in s.notes:
                click.echo(f"    note: {note}")
        for warning in report.warnings[:SHOWN_WARNINGS]:
            click.echo(f"  warning: {warning}")
        if len(report.warnings) > SHOWN_WARNINGS:
            click.echo(f"  ... and {len(report.warnings) - SHOWN_WARNINGS} more warning(s) (--json lists them all)")
    added, present = sum(r.added for r in reports), sum(r.present for r in reports)
    click.echo(f"{len(reports)} file(s): {verb} {added} new event(s), {present} already present")


COMMANDS = [import_command]
