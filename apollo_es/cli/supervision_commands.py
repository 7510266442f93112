"""Supervision commands: judge actions with an LLM, dry-run rule sets, audit a run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from apollo_es.cli._common import (
    MAX_INT,
    cell,
    json_option,
    print_json,
    print_table,
    stderr_is_tty,
    table,
    with_reader,
    with_store,
)
from apollo_es.judge import Judge, JudgeReport
from apollo_es.models import make_client
from apollo_es.store import EventStore, RecordedEvent
from projections.audit import timeline
from projections.policy import Decision, annotations_for, decide
from projections.rules import RULES, RuleHit, RuleSet


def _ruleset(path: str | None) -> RuleSet:
    return RuleSet.load(path) if path else RuleSet.default()


def _streams(store: EventStore, runs: Sequence[str]) -> list[str]:
    if runs:
        for run in runs:
            store.head(run)  # StreamNotFound -> Error: no stream 'x'
        return list(dict.fromkeys(runs))
    return [info.stream_id for info in store.streams()]


# -- judge --------------------------------------------------------------------------------


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--all", "all_runs", is_flag=True, help="Judge every run and branch in the store.")
@click.option("--model", required=True, help="The judge model, e.g. claude-sonnet-4-5 or zai-org/GLM-4.5.")
@click.option("--provider", type=click.Choice(["anthropic", "openai"]), default="anthropic", show_default=True, help="Model API.")
@click.option("--base-url", help="API base URL (OpenAI-compatible servers; ANTHROPIC_BASE_URL also works).")
@click.option("--concurrency", type=click.IntRange(1, 512), default=4, show_default=True, help="Requests in flight at most.")
@click.option("--budget-tokens", type=click.IntRange(min=1, max=MAX_INT), help="Start no new request once this many tokens (input + output) are spent.")
@click.option("--attempts", type=click.IntRange(1, 20), default=3, show_default=True, help="Attempts per action when the judge's answer is malformed.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Sampling temperature of the judge.")
@click.option("--max-output-tokens", type=click.IntRange(min=16, max=MAX_INT), default=1024, show_default=True, help="Output limit of one verdict (raise it for reasoning models).")
@click.option("--judge-id", help="Override the judge id (default: MODEL@PROMPT_VERSION).")
@with_store
@json_option
def judge(store: EventStore, runs, all_runs, model, provider, base_url, concurrency, budget_tokens, attempts, temperature, max_output_tokens, judge_id, as_json):
    """Judge the actions of RUNs (or --all) that have no verdict yet from this judge, with an LLM.

    Each verdict (keep or mask, a score from 0 to 1 and a reason) is appended as an
    ActionJudged event. Running it again judges only what is left: after a crash, a
    Ctrl-C, or a spent --budget-tokens. The judge id is MODEL@PROMPT_VERSION, so a new
    model or prompt judges everything afresh, next to the old verdicts.

    Example:

        apollo-es judge --all --model claude-sonnet-4-5 --concurrency 8 --budget-tokens 2000000
    """
    if bool(runs) == bool(all_runs):
        raise click.ClickException("name the runs to judge, or pass --all (not both)")
    streams = None if all_runs else _streams(store, runs)
    client = make_client(provider, model, base_url=base_url)
    bar = Progress(
        TextColumn("judging"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tokens]:,} tokens"),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True, disable=as_json or not stderr_is_tty(),
    )
    task = bar.add_task("judge", total=None, tokens=0)

    def on_progress(done: int, total: int, report: JudgeReport) -> None:
        bar.update(task, completed=done, total=total, tokens=report.tokens)

    judge_ = Judge(
        store, client, model=model, judge_id=judge_id, concurrency=concurrency, budget_tokens=budget_tokens,
        max_attempts=attempts, max_output_tokens=max_output_tokens, sampling={"temperature": temperature},
        on_progress=on_progress,
    )

    async def go() -> JudgeReport:
        try:
            return await judge_.run(streams)
        finally:
            await client.aclose()

    with bar:
        report = anyio.run(go)
    if as_json:
        print_json(report)
    else:
        click.echo(
            f"{report.judge_id}: {report.judged} judged, {report.errors} judge errors, {report.skipped} already judged, "
            f"{report.pending} waiting for an observation, {report.failed} failed, {report.remaining} left; "
            f"{report.tokens:,} tokens in {report.requests} requests"
        )
        if report.budget_exhausted and report.requests == 0:
            click.echo("The token budget does not cover one request: each reserves its estimated prompt and the "
                       "output limit (--max-output-tokens) before it is sent. Raise --budget-tokens.")
        elif report.budget_exhausted:
            click.echo(f"Token budget spent: {report.remaining} actions left. Run the same command again to continue.")
        elif report.failed:
            click.echo(f"The model was unavailable for {report.failed} actions ({report.last_error}); run again to retry them.")
    if report.stopped:
        raise click.ClickException(f"the judge stopped: {report.stopped}")


# -- rules --------------------------------------------------------------------------------


@click.group(name="rules")
def rules_group() -> None:
    """Symbolic filter rules: list them, and dry-run a rule set over the log.

    A rule set is a TOML file ([rules.NAME] tables with `enabled` and parameters, and a
    [policy] table); see examples/rules.toml. Its fingerprint identifies datasets built with it.

    Example:

        apollo-es rules check examples/rules.toml run-1
    """


@rules_group.command(name="list")
@click.argument("rules_file", required=False, type=click.Path(dir_okay=False))
@json_option
def rules_list(rules_file: str | None, as_json: bool) -> None:
    """Print the rules and policy with every parameter (as TOML): the defaults, or as RULES_FILE sets them.

    Example:

        apollo-es rules list > my-rules.toml
    """
    ruleset = _ruleset(rules_file)
    data = ruleset.to_dict()
    if as_json:
        print_json({"source": ruleset.source, "fingerprint": ruleset.fingerprint, **data, "descriptions": {n: r.description for n, r in RULES.items()}})
        return
    # TOML, so the output is a starting point for a rule set file.
    click.echo(f"# {ruleset.source}, fingerprint {ruleset.fingerprint}")
    for name, params in data["rules"].items():
        click.echo(f"\n[rules.{name}]  # {RULES[name].description}")
        for key, value in params.items():
            click.echo(f"{key} = {_toml(value)}")
    click.echo("\n[policy]")
    for key, value in data["policy"].items():
        click.echo(f"{key} = {_toml(value)}")


def _toml(value: Any) -> str:
    """A TOML value: JSON's scalars, strings and arrays are valid TOML; a table is written inline."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(key)} = {_toml(item)}" for key, item in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)


@rules_group.command(name="check")
@click.argument("rules_file", type=click.Path(dir_okay=False))
@click.argument("runs", nargs=-1)
@with_reader
@json_option
def rules_check(store: EventStore, rules_file: str, runs: tuple[str, ...], as_json: bool) -> None:
    """Dry-run RULES_FILE over RUNs (default: every run and branch): which actions each rule would mask.

    Nothing is written. The summary also shows what the whole policy decides, with the
    judges' verdicts and people's rejects.

    Example:

        apollo-es rules check examples/rules.toml run-1 run-2 --json
    """
    ruleset = RuleSet.load(rules_file)
    hits_by_rule: dict[str, dict[str, RuleHit]] = {name: {} for name in RULES}
    decisions: dict[str, Decision] = {}
    for stream_id in _streams(store, runs):
        events, extra = _read(store, stream_id)
        hits = ruleset.evaluate([*events, *extra])
        for hit in hits:
            hits_by_rule[hit.rule].setdefault(hit.action_event_id, hit)
        for action_id, decision in decide(events, ruleset, extra=extra, hits=hits).items():
            decisions.setdefault(action_id, decision)
    by_rules = {a for per_rule in hits_by_rule.values() for a in per_rule}
    masked = [d for d in decisions.values() if not d.keep]
    summary = {
        "actions": len(decisions),
        "hit_by_rules": len(by_rules),
        "masked": len(masked),
        "kept": len(decisions) - len(masked),
    }
    if as_json:
        print_json({
            "rules_file": rules_file,
            "fingerprint": ruleset.fingerprint,
            "rules": {
                name: {
                    "enabled": ruleset.rules[name].enabled,
                    "hits": [
                        {"run": h.stream_id, "version": h.action_version, "action_event_id": h.action_event_id, "reason": h.reason}
                        for h in sorted(per_rule.values(), key=_order)
                    ],
                }
                for name, per_rule in hits_by_rule.items()
            },
            "summary": summary,
        })
        return
    counts = table("rule", "on", "actions hit")
    for name, per_rule in hits_by_rule.items():
        counts.add_row(cell(name), cell("yes" if ruleset.rules[name].enabled else "no"), cell(len(per_rule)))
    print_table(counts)
    click.echo("")
    details = table("rule", "run", "version", "reason")
    for name, per_rule in hits_by_rule.items():
        for hit in sorted(per_rule.values(), key=_order):
            details.add_row(cell(name), cell(hit.stream_id), cell(f"v{hit.action_version}"), cell(hit.reason))
    if details.row_count:
        print_table(details)
        click.echo("")
    click.echo(
        f"{summary['actions']} actions: {summary['hit_by_rules']} hit by rules; the policy masks {summary['masked']} "
        f"and keeps {summary['kept']} (with verdicts and rejects)"
    )
    click.echo(f"fingerprint: {ruleset.fingerprint}")


def _order(hit: RuleHit) -> tuple[str, int]:
    return hit.stream_id, hit.action_version


def _read(store: EventStore, stream_id: str) -> tuple[list[RecordedEvent], list[RecordedEvent]]:
    events = store.read(stream_id)
    return events, annotations_for(store, events)


# -- audit --------------------------------------------------------------------------------


@click.command()
@click.argument("run")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), help="Rule set TOML (default: every rule with its defaults).")
@click.option("--masked", "only_masked", is_flag=True, help="Only the actions the policy masks (with their reasons).")
@with_reader
@json_option
def audit(store: EventStore, run: str, rules_file: str | None, only_masked: bool, as_json: bool) -> None:
    """A run's timeline with each action's rule hits, verdicts and keep/mask decision beside it.

    Example:

        apollo-es audit run-1 --rules examples/rules.toml --masked
    """
    ruleset = _ruleset(rules_file)
    rows = timeline(store, run)
    events, extra = _read(store, run)
    decisions = decide(events, ruleset, extra=extra)
    if as_json:
        out = []
        for row in rows:
            item: dict[str, Any] = {
                "version": row.version, "kind": row.kind, "actor": row.actor, "recorded_at": row.recorded_at,
                "summary": row.summary, "event_id": row.event_id, "stream_id": row.stream_id,
            }
            decision = decisions.get(row.event_id)
            if only_masked and (decision is None or decision.keep):
                continue
            if decision is not None:
                item["keep"] = decision.keep
                item["reasons"] = msgspec.to_builtins(decision.reasons)
            out.append(item)
        print_json({"run": run, "rules": ruleset.source, "fingerprint": ruleset.fingerprint, "summary": _counts(decisions), "events": out})
        return
    for row in rows:
        decision = decisions.get(row.event_id)
        if only_masked and (decision is None or decision.keep):
            continue
        mark = "" if decision is None else ("KEEP " if decision.keep else "MASK ")
        click.echo(f"v{row.version:<5} {row.kind:<17} {row.actor:<16} {mark}{row.summary}")
        for reason in decision.reasons if decision is not None else ():
            sign = "✗" if reason.masks else "✓"
            click.echo(f"{'':7}{sign} {reason.source} {reason.name}: {reason.detail}")
    counts = _counts(decisions)
    click.echo(f"{counts['actions']} actions: {counts['kept']} kept, {counts['masked']} masked ({ruleset.source}, fingerprint {ruleset.fingerprint[:12]})")


def _counts(decisions: dict[str, Decision]) -> dict[str, int]:
    masked = sum(not d.keep for d in decisions.values())
    return {"actions": len(decisions), "kept": len(decisions) - masked, "masked": masked}


COMMANDS = [judge, rules_group, audit]
