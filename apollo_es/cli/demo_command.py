"""`apollo-es demo`: the whole system on embedded defaults, no network, no API key."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from apollo_es.cli._common import json_option, print_json


@click.command()
@click.option("--out", type=click.Path(file_okay=False), help="Where to write everything (default: a new temporary directory).")
@click.option("--serve", "then_serve", is_flag=True, help="Then keep the annotator console running on the demo's store.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="With --serve: the console's port.")
@json_option
@click.pass_context
def demo(ctx: click.Context, out: str | None, then_serve: bool, port: int, as_json: bool) -> None:
    """Run the whole pipeline offline: a recorded research run, real imports, rules, a branch, a dataset, training.

    A 32-step research run by a recorded model (an annotator steers it from another process,
    the context is summarized, the agent process is killed and resumed), the bundled
    SWE-agent and OpenHands trajectories imported, every action judged by a scripted
    stand-in judge and the rules applied, a branch continued
    with other guidance, a dataset projected with a small tokenizer, and a tiny model
    trained on it for a few steps on the CPU. Takes a minute or two.

    Example:

        apollo-es demo --out /tmp/apollo-demo --serve
    """
    from apollo_es.demo.run import run_demo

    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="apollo-demo-"))
    if (root / "apollo.db").exists():
        raise click.ClickException(f"{root / 'apollo.db'} already exists; pick another --out")
    started = time.monotonic()
    report = run_demo(root, say=(lambda _: None) if as_json else click.echo)
    if as_json:
        print_json(report)
        return
    click.echo(f"\n== apollo-es demo: done in {time.monotonic() - started:.0f} s")
    click.echo(f"runs {report.runs}, branches {report.branches}, events {report.events}")
    click.echo(f"research run score {report.score}, branch score {report.branch_score}")
    masked = ", ".join(f"{rule} {n}" for rule, n in report.masked_by_rule.items()) or "none"
    click.echo(f"masked actions by rule or verdict: {masked}")
    click.echo("judge verdicts: " + (", ".join(f"{verdict} {n}" for verdict, n in sorted(report.verdicts.items())) or "none"))
    samples = ", ".join(f"{kind} {n}" for kind, n in report.samples_by_type.items())
    click.echo(f"samples by type: {samples}; trained tokens {report.trained_tokens:,}")
    for skipped in report.skipped_runs:
        click.echo(f"not projected: {skipped}")
    click.echo("loss curve: " + " ".join(f"{loss:.3f}" for loss in report.losses))
    for name, path in report.paths.items():
        click.echo(f"{name:>13}: {path}")
    click.echo(f"\nnext: apollo-es audit demo-tune-classifier --db {report.paths['store']}   # rule hits and verdicts")
    if then_serve:
        from apollo_es.cli.serve_command import serve

        ctx.invoke(serve, db_path=report.paths["store"], port=port)
    else:
        click.echo(f"      apollo-es serve --db {report.paths['store']}   # the annotator console in a browser")
