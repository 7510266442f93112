"""The `apollo-es` command line."""

from __future__ import annotations

import logging

import click

from apollo_es.cli._common import ApolloGroup
from apollo_es.cli.demo_command import demo
from apollo_es.cli import supervision_commands
from apollo_es.cli import dataset_commands, replay_commands, run_commands, store_commands
from apollo_es.cli import train_commands
from apollo_es.cli import import_commands
from apollo_es.cli.serve_command import serve


@click.group(cls=ApolloGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="apollo-es")
def cli(verbose: int) -> None:
    """apollo-es: asynchronous human-agent rollouts on an event-sourced trajectory store.

    Every action, observation, intervention, summary and verdict is an immutable event in
    one SQLite file (--db or APOLLO_ES_DB). Start with `apollo-es demo`.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


for command in [*store_commands.COMMANDS, *run_commands.COMMANDS, *supervision_commands.COMMANDS, *replay_commands.COMMANDS, *dataset_commands.COMMANDS, *train_commands.COMMANDS, *import_commands.COMMANDS, serve, demo]:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="apollo-es")


__all__ = ["cli", "main"]
