"""Commands over the log itself: init, runs, log, show, branch, append, verify, stats, copy."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click
import msgspec
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

import events
from apollo_es.cli._common import (
    INT64,
    MAX_INT,
    cell,
    creating_store,
    db_option,
    json_option,
    nl_option,
    open_store,
    parse_since,
    print_json,
    print_ndjson,
    print_table,
    report_moved_fork,
    statuses,
    stderr_is_tty,
    table,
    with_reader,
    with_store,
)
from apollo_es.store import ANY, NO_STREAM, EventStore, NewEvent, sqlite_file
from apollo_es.stores.copy import copy_store
from projections.audit import timeline
from replay import fork_point


@click.command()
@db_option
@json_option
def init(db_path: str, as_json: bool) -> None:
    """Create an empty store (or check an existing one).

    Example:

        apollo-es init --db runs/apollo.db
    """
    file = sqlite_file(db_path)
    created = file is not None and not file.exists()
    with creating_store(db_path) as store:
        stats = store.stats()
    if as_json:
        print_json({"path": db_path, "created": created, "events": stats["events"]})
    else:
        state = "Created" if created else "Opened existing" if file is not None else "Ready:"
        click.echo(f"{state} store {db_path} ({stats['events']} events)")


@click.command()
@with_reader
@json_option
@nl_option
def runs(store: EventStore, as_json: bool, as_ndjson: bool) -> None:
    """List runs and their branches, each branch under its parent (with --json or --nl, each stream's recorded cost).

    Piped, the table becomes tab-separated lines with nothing cut.

    Example:

        apollo-es runs --db apollo.db --nl | grep finished
    """
    infos = store.streams()
    status = statuses(store, [info.stream_id for info in infos])
    if as_json or as_ndjson:
        costs = store.costs()
        rows = [{**msgspec.to_builtins(info), "status": status[info.stream_id], "cost_usd": costs.get(info.stream_id)}
                for info in infos]
        print_ndjson(rows) if as_ndjson else print_json(rows)
        return
    children: dict[str | None, list] = {}
    for info in infos:
        children.setdefault(info.parent_id, []).append(info)
    out = table("stream", "fork", "status", "head", "own events", "last event", "at")

    def add(info, depth: int) -> None:
        name = ("  " * depth) + ("└ " if depth else "") + info.stream_id
        fork = f"{info.parent_id}@v{info.fork_version}" if info.parent_id else ""
        out.add_row(cell(name), cell(fork), cell(status[info.stream_id]), cell(info.head), cell(info.own_events),
                    cell(info.last_kind), cell(info.last_recorded_at))
        for child in children.get(info.stream_id, []):
            add(child, depth + 1)

    for root in children.get(None, []):
        add(root, 0)
    print_table(out)


@click.command()
@click.argument("run")
@click.option("--kind", "kinds", multiple=True, help="Only events of this kind (repeatable).")
@click.option("--actor", "actors", multiple=True, help="Only events by this actor; globs work: 'human:*' (repeatable).")
@click.option("--since", help="Only events recorded since: a duration (90s, 15m, 2h, 3d) or an ISO-8601 time.")
@click.option("--tail", "limit", type=click.IntRange(min=1, max=MAX_INT), help="Only the newest N events.")
@with_reader
@json_option
@nl_option
def log(store: EventStore, run: str, kinds: tuple[str, ...], actors: tuple[str, ...], since: str | None, limit: int | None, as_json: bool,
        as_ndjson: bool) -> None:
    """Print a run's timeline: version, kind, actor and a one-line summary.

    A branch's timeline includes the events it inherits from its parents.

    Example:

        apollo-es log run-1 --kind AgentActed --actor 'human:*' --since 2h
    """
    for kind in kinds:
        if kind not in events.KINDS:
            raise click.ClickException(f"unknown kind {kind!r}; known kinds: {', '.join(events.KINDS)}")
    rows = timeline(store, run, kinds=kinds, actors=actors, since=parse_since(since), limit=limit)
    if as_json:
        print_json(rows)
        return
    if as_ndjson:
        print_ndjson(rows)
        return
    for row in rows:
        click.echo(f"v{row.version:<5} {row.recorded_at[:19]}  {row.kind:<17} {row.actor:<16} {row.summary}")


@click.command()
@click.argument("run")
@click.argument("version", type=INT64)
@with_reader
@json_option
def show(store: EventStore, run: str, version: int, as_json: bool) -> None:
    """Show one event of a run in full: its envelope and payload.

    Example:

        apollo-es show run-1 12 --json
    """
    recorded = store.event(run, version)
    data = {
        "position": recorded.position,
        "stream_id": recorded.stream_id,
        "version": recorded.version,
        "event_id": recorded.event_id,
        "kind": recorded.kind,
        "schema": recorded.schema,
        "recorded_at": recorded.recorded_at,
        "actor": recorded.actor,
        "causation_id": recorded.causation_id,
        "hash": recorded.hash,
        "prev_hash": recorded.prev_hash,
        "payload": events.to_builtins(recorded.event),
    }
    if as_json:
        print_json(data)
        return
    payload = data.pop("payload")
    for key, value in data.items():
        click.echo(f"{key:>13}: {value}")
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


@click.command()
@click.argument("run")
@click.option("--at", "at_version", type=INT64, required=True, help="The last version the branch shares with RUN.")
@click.option("--name", "new_stream_id", help="The branch's stream id (default: RUN~bN).")
@click.option("--reason", default="", help="Why you branch; recorded in the BranchCreated event.")
@click.option("--actor", default="system", show_default=True, help="Who branches: human:<name>, system, ...")
@with_store
@json_option
def branch(store: EventStore, run: str, at_version: int, new_stream_id: str | None, reason: str, actor: str, as_json: bool) -> None:
    """Branch RUN after version --at, without copying any event.

    A version inside an action and its results moves to after the results, so the branch
    never has to report them lost.

    Example:

        apollo-es branch run-1 --at 40 --reason "retry with a smaller learning rate" --actor human:ana
    """
    store.head(run)  # an unknown run fails before anything else
    fork = fork_point(store, run, at_version)
    new_id = store.branch(run, fork, new_stream_id=new_stream_id, reason=reason, actor=actor)
    report_moved_fork(at_version, fork, as_json)
    if as_json:
        print_json({"stream_id": new_id, "parent_id": run, "fork_version": fork, "head": store.head(new_id)})
    else:
        click.echo(new_id)


@click.command()
@click.argument("run")
@click.argument("kind")
@click.argument("payload", default="-")
@click.option("--actor", default="system", show_default=True, help="agent, system, human:<name>, judge:<id> or import:<format>.")
@click.option("--expected-version", help="An int, 'any' or 'no-stream' (default: any).")
@click.option("--event-id", help="A fixed event id, to make the append idempotent.")
@click.option("--causation-id", help="The event this one answers.")
@with_store
@json_option
def append(store: EventStore, run: str, kind: str, payload: str, actor: str, expected_version: str | None, event_id: str | None, causation_id: str | None, as_json: bool) -> None:
    """Append one event of KIND to RUN; PAYLOAD is JSON, @FILE, or - for standard input.

    For scripts and tools that write events without Python. The payload is validated
    against the kind's schema; a bad one writes nothing.

    Example:

        apollo-es append run-1 HumanIntervened '{"annotator": "ana", "kind": "guidance", "message": "check the baseline first"}' --actor human:ana
    """
    if payload == "-":
        text = sys.stdin.read()
    elif payload.startswith("@"):
        try:
            text = Path(payload[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot read {payload[1:]}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise click.ClickException(f"{payload[1:]} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    else:
        text = payload
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise click.ClickException(f"payload is not JSON: {exc}") from exc
    except RecursionError:
        raise click.ClickException("payload is nested too deeply to be an event") from None
    if not isinstance(data, dict):
        raise click.ClickException("payload must be a JSON object")
    try:
        event = events.from_dict(kind, data)
    except events.EventError as exc:
        raise click.ClickException(str(exc)) from exc
    recorded = store.append(
        run,
        [NewEvent(event=event, event_id=event_id, actor=actor, causation_id=causation_id)],
        expected_version=_expected(expected_version),
    )[0]
    if as_json:
        print_json({"stream_id": recorded.stream_id, "version": recorded.version, "position": recorded.position, "event_id": recorded.event_id})
    else:
        click.echo(f"{recorded.stream_id} v{recorded.version} (position {recorded.position})")


def _expected(value: str | None):
    if value is None or value == "any":
        return ANY
    if value == "no-stream":
        return NO_STREAM
    try:
        return int(value)
    except ValueError:
        raise click.ClickException(f"--expected-version {value!r}: use an int, 'any' or 'no-stream'") from None


@click.command()
@click.option("--anchor", "anchors", multiple=True, metavar="HASH@POSITION",
              help="A head hash kept elsewhere (from `stats`): the log must still extend it (repeatable).")
@click.option("--anchors", "anchors_file", type=click.Path(dir_okay=False, exists=True),
              help="A file of HASH@POSITION lines, one per anchor kept.")
@click.option("--fast", is_flag=True, help="SQLite's quick_check instead of integrity_check (skips index contents).")
@with_reader
@json_option
def verify(store: EventStore, anchors: tuple[str, ...], anchors_file: str | None, fast: bool, as_json: bool) -> None:
    """Check the whole log: the file, the hash chain, positions and versions, branch records, anchors.

    Runs SQLite's integrity check first (a damaged page or index can make reads wrong while
    every row looks intact), then walks the chain, then reads every stream through its
    index, then checks each anchor. Exits 1 and says what is wrong if anything is.

    Example:

        apollo-es verify --db apollo.db --anchor 3f9a...c2@120000
    """
    wanted = [*anchors, *(_anchor_lines(anchors_file) if anchors_file else [])]
    pairs = [_anchor(text) for text in wanted]
    total = store.last_position()
    with Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), transient=True, disable=not stderr_is_tty()) as bar:
        task = bar.add_task("verify", total=total)
        report = store.verify(progress=lambda n: bar.update(task, completed=n), anchors=pairs, fast=fast)
    if as_json:
        print_json(report)
    if not report.ok:
        if report.corruption:
            raise click.ClickException(f"the database file is damaged: {report.reason}")
        raise click.ClickException(f"log is corrupt at position {report.first_bad_position}: {report.reason}")
    if not as_json:
        anchored = f"; {report.anchors_checked} anchor(s) still extended" if report.anchors_checked else ""
        click.echo(f"OK: {report.events_checked} events, file, hash chain, streams and index consistent{anchored}")


def _anchor_lines(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read anchors from {path}: {exc}") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _anchor(text: str) -> tuple[str, int]:
    hash_, at, position = text.partition("@")
    if not at or not re.fullmatch(r"[0-9a-f]{64}", hash_) or not position.isdigit() or int(position) < 1:
        raise click.ClickException(f"anchor {text!r}: write HASH@POSITION, as `apollo-es stats` prints it")
    return hash_, int(position)


@click.command()
@with_reader
@json_option
def stats(store: EventStore, as_json: bool) -> None:
    """Counts of events, runs and branches, the database size and the head hash.

    Keep the anchor (HEAD_HASH@POSITION) somewhere else: `verify --anchor` proves with it later
    that no newest events were cut off and the chain was not rewritten.

    Example:

        apollo-es stats --json
    """
    data = store.stats()
    if as_json:
        print_json(data)
        return
    out = table("", "")
    for key in ("path", "events", "runs", "branches", "last_position", "database_bytes", "head_hash"):
        out.add_row(cell(key), cell(f"{data[key]:,}" if isinstance(data[key], int) else data[key]))
    out.add_row(cell("anchor"), cell(f"{data['head_hash']}@{data['last_position']}"))
    for kind, count in data["events_by_kind"].items():
        out.add_row(cell(f"  {kind}"), cell(f"{count:,}"))
    out.add_row(cell("cost_usd"), cell("no priced model calls" if data["cost_usd"] is None else f"${data['cost_usd']:,.2f}"))
    print_table(out)


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="Events per transaction on the destination.")
@json_option
def copy(source: str, destination: str, batch_size: int, as_json: bool) -> None:
    """Copy a whole log to another store, byte for byte, checking both sides.

    SOURCE and DESTINATION are SQLite files or postgresql:// URLs. The destination must be
    empty (a missing file is created) or hold the start of an interrupted copy, which is then
    continued. Hashes, positions and event ids are kept, so anchors stay valid. Every source
    row is checked before it is written; the destination is verified at the end.

    Example:

        apollo-es copy apollo.db postgresql://apollo@db-host/apollo
    """
    with open_store(source, read_only=True) as src, creating_store(destination) as dst, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), transient=True, disable=not stderr_is_tty()
    ) as bar:
        task = bar.add_task("copying", total=src.last_position())
        report = copy_store(src, dst, batch_size=batch_size,
                            progress=lambda phase, done, total: bar.update(task, description=phase, completed=done, total=total))
    if as_json:
        print_json(report)
        return
    kept = f" ({report.already_there} were already there)" if report.already_there else ""
    click.echo(f"Copied {report.copied} events and {report.streams} stream records{kept}; "
               f"the copy verifies; anchor {report.head_hash}@{report.destination.events_checked}")


COMMANDS = [init, runs, log, show, branch, append, verify, stats, copy]
