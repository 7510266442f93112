"""What every command shares: the store option, --json, output helpers, error handling."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from apollo_es.errors import ApolloError
from apollo_es.store import Store, sqlite_file
from apollo_es.store import open_store as open_backend

DEFAULT_DB = "apollo.db"

MAX_INT = 2**63 - 1
"""Every integer option is bounded by SQLite's 64 bits: a bigger one is a usage error, not an OverflowError."""
INT64 = click.IntRange(-MAX_INT - 1, MAX_INT)

console = Console(highlight=False)


class ApolloGroup(click.Group):
    """A click group that turns the project's own errors into `Error: ...` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApolloError as exc:
            raise click.ClickException(str(exc)) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            # A bug, not bad input: still an `Error:` line, never a traceback a user must read.
            if os.environ.get("APOLLO_ES_DEBUG"):
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {exc} (a bug in apollo-es; APOLLO_ES_DEBUG=1 shows the traceback)"
            ) from exc


def db_option(fn: Callable) -> Callable:
    return click.option(
        "--db",
        "db_path",
        envvar="APOLLO_ES_DB",
        default=DEFAULT_DB,
        show_default=True,
        help="The store: an SQLite file or a postgresql://USER@HOST/DB URL (or set APOLLO_ES_DB).",
    )(fn)


def quiet_option(fn: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No per-step lines or status line, only the outcome.")(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def open_store(db_path: str, *, create: bool = False, read_only: bool = False) -> Store:
    """Open the store (a SQLite path or a PostgreSQL URL); a mistyped path must not silently
    create an empty one unless asked to (a PostgreSQL database is created by its operator).

    `read_only` (commands that only read): nothing in the file changes, not even a schema
    upgrade. APOLLO_ES_MAX_PAYLOAD_BYTES overrides the 16 MiB limit on one event's payload.
    """
    file = sqlite_file(db_path)
    if not create and file is not None and not file.is_file():
        raise click.ClickException(f"no store at {db_path} (create one with: apollo-es init --db {db_path})")
    limit = os.environ.get("APOLLO_ES_MAX_PAYLOAD_BYTES")
    if limit is not None and (not limit.isdigit() or int(limit) < 1):
        raise click.ClickException(f"APOLLO_ES_MAX_PAYLOAD_BYTES must be a positive integer, not {limit!r}")
    extra = {"max_payload_bytes": int(limit)} if limit is not None else {}
    return open_backend(db_path, read_only=read_only, **extra)


def beside_store(db_path: str, name: str) -> Path:
    """`name` next to the store's file, or in the current directory for a store without one
    (PostgreSQL): where commands put workspaces by default."""
    file = sqlite_file(db_path)
    return (file.resolve().parent if file is not None else Path.cwd()) / name


@contextlib.contextmanager
def creating_store(db_path: str) -> Iterator[Store]:
    """`open_store(create=True)` for a command that may fail before it writes anything: a
    store file it created and left empty is removed again, so a failed command leaves nothing."""
    file = sqlite_file(db_path)
    existed = file is None or file.exists()
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(db_path, create=True)
    try:
        yield store
    except BaseException:
        empty = not existed and store.last_position() == 0
        store.close()
        if empty:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.remove(f"{file}{suffix}")
        raise
    else:
        store.close()


def with_store(fn: Callable) -> Callable:
    """Open the store named by --db for the command and close it afterwards."""
    return _opening(fn, read_only=False)


def with_reader(fn: Callable) -> Callable:
    """`with_store` for commands that only read: the file is opened read-only."""
    return _opening(fn, read_only=True)


def _opening(fn: Callable, *, read_only: bool) -> Callable:
    @db_option
    @functools.wraps(fn)
    def wrapper(db_path: str, **kwargs: Any) -> Any:
        with open_store(db_path, read_only=read_only) as store:
            return fn(store, **kwargs)

    return wrapper


def print_json(data: Any) -> None:
    click.echo(json.dumps(msgspec.to_builtins(data), indent=2, ensure_ascii=False))


def nl_option(fn: Callable) -> Callable:
    return click.option("--nl", "as_ndjson", is_flag=True, help="One JSON object per line (NDJSON), for pipes.")(fn)


def print_ndjson(items: Any) -> None:
    for item in items:
        click.echo(json.dumps(msgspec.to_builtins(item), ensure_ascii=False))


def table(*columns: str) -> Table:
    """A table whose long cells wrap on a terminal, never cut: ids and hashes must be copyable."""
    out = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        out.add_column(column, overflow="fold")
    return out


def print_table(out: Table) -> None:
    """On a terminal, the table; piped, a header line and one tab-separated line per row, for grep and cut."""
    if sys.stdout.isatty():
        console.print(out)
        return
    def plain(value: Any) -> str:
        text = value.plain if isinstance(value, Text) else str(value)
        return " ".join(text.split("\t")).replace("\n", " ")
    click.echo("\t".join(plain(column.header) for column in out.columns))
    for row in zip(*(column.cells for column in out.columns)):
        click.echo("\t".join(plain(value) for value in row))


def cell(value: Any) -> Text:
    """Table cells are plain text: agent output must never be read as rich markup."""
    return Text("" if value is None else str(value))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str | None) -> str | None:
    """`--since` as a timestamp in the store's format: accepts `15m`, `2h`, `3d` or ISO-8601."""
    if value is None:
        return None
    match = _DURATION.fullmatch(value.strip())
    if match:
        try:
            moment = datetime.now(timezone.utc) - timedelta(**{_UNITS[match[2]]: float(match[1])})
        except OverflowError:
            raise click.ClickException(f"--since {value!r} reaches before year 1") from None
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise click.ClickException(f"--since {value!r} is neither a duration (90s, 15m, 2h, 3d) nor an ISO-8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def stderr_is_tty() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def report_moved_fork(requested: int, fork: int, as_json: bool) -> None:
    """Say on stderr when `replay.fork_point` moved a branch past an action's results."""
    if fork != requested and not as_json:
        click.echo(f"v{requested} is inside an action and its results: branched after v{fork}", err=True)


def statuses(store: Store, stream_ids: list[str]) -> dict[str, str]:
    """`projections.status.run_status` of each stream: the status every surface shows."""
    from projections.context import fold
    from projections.status import run_status

    held = store.leases()
    return {stream_id: run_status(fold(store.read(stream_id)), stream_id in held) for stream_id in stream_ids}
