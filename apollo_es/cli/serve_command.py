"""`apollo-es serve`: the annotator console in a browser."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path

import anyio
import click

from apollo_es.cli._common import beside_store, db_option, open_store
from apollo_es.cli.run_commands import make_model_client, model_options
from apollo_es.console import ConsoleSettings, Server, create_app
from apollo_es.console.app import LOOPBACK_HOSTS
from apollo_es.models import ModelClient
from apollo_es.tasks import load_task
from projections.rules import RuleSet

MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; anything but loopback needs APOLLO_ES_TOKEN.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.option("--model", help="Continue branches live with this model (without it, branches are only created).")
@model_options
@click.option("--task", "task_file", type=click.Path(dir_okay=False, exists=True), help="The runs' task file: a continued branch's workspace is rebuilt at its fork from it.")
@click.option("--workspaces", type=click.Path(file_okay=False), help="Where continued branches get their workspaces (default: workspaces/ next to the store).")
@click.option("--allow-imported-commands", is_flag=True,
              help="With --task: rebuild the workspace of an imported run's branch by executing its recorded commands "
                   "(in the sandbox). Refused by default: they are code from another machine's trajectory file.")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False, exists=True), help="Rule set TOML for the rule hits shown beside actions (default: every rule).")
@db_option
def serve(host, port, model, provider, base_url, recording, task_file, workspaces, allow_imported_commands, rules_file, db_path):
    """Serve the annotator console: watch runs live, send guidance, stop runs, branch them.

    Reading needs nothing on loopback; every write needs the token, taken from
    APOLLO_ES_TOKEN or made up and printed at start. Listening on another address
    needs APOLLO_ES_TOKEN, and then reads need it too.

    Example:

        apollo-es serve --db apollo.db

        APOLLO_ES_TOKEN=... apollo-es serve --host 0.0.0.0 --model claude-sonnet-4-5 --task examples/tune-classifier/task.toml
    """
    loopback = is_loopback(host)
    token = os.environ.get("APOLLO_ES_TOKEN", "")
    if token and len(token) < MIN_TOKEN_CHARS:
        raise click.ClickException(f"APOLLO_ES_TOKEN is too short: use at least {MIN_TOKEN_CHARS} characters")
    if not loopback and not token:
        raise click.ClickException(f"refusing to listen on {host} without a token: set APOLLO_ES_TOKEN (at least {MIN_TOKEN_CHARS} characters)")
    printed_token = not token
    token = token or secrets.token_urlsafe(24)
    def continuation_client(run_provider: str) -> ModelClient:  # like replay --continue: the run's own provider unless --provider
        return make_model_client(provider or run_provider or "anthropic", model or "recorded", base_url, recording)

    can_continue = bool(model) or provider == "recorded"
    if can_continue:
        anyio.run(continuation_client("").aclose)  # a missing API key or recording fails now, not at the first branch
    rules = RuleSet.load(rules_file) if rules_file else RuleSet.default()
    with open_store(db_path) as store:
        settings = ConsoleSettings(
            token=token, open_reads=loopback, loopback_only=loopback, hosts=frozenset({*LOOPBACK_HOSTS, host.lower()}),
            model_client=continuation_client if can_continue else None, model=model or "",
            task=load_task(task_file) if task_file else None,
            workspaces=Path(workspaces) if workspaces else beside_store(db_path, "workspaces"), rules=rules,
            allow_imported_commands=allow_imported_commands,
        )
        sock = _listen(host, port)
        address = f"[{host}]" if ":" in host else host
        url = f"http://{address}:{sock.getsockname()[1]}/"
        click.echo(f"Annotator console for {db_path}: {url}" + (f"#token={token}" if printed_token else ""))
        click.echo(f"Write token: {token}" if printed_token else "Writes (and reads, off loopback) need the token in APOLLO_ES_TOKEN.")
        Server(create_app(store, settings)).run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock
