"""`apollo-es project` (runs → training datasets) and `apollo-es dataset inspect`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from apollo_es.cli._common import (
    INT64,
    MAX_INT,
    cell,
    console,
    json_option,
    print_json,
    print_table,
    stderr_is_tty,
    table,
    with_store,
)
from apollo_es.store import EventStore
from projections.chat_template import RenderError, load_tokenizer
from projections.dataset import DEFAULT_FORMATS, FORMATS, project
from projections.native_format import NativeDataset
from projections.rules import RuleSet


@click.command("project")
@click.argument("runs", nargs=-1)
@click.option("--tokenizer", "tokenizer_path", required=True,
              help="Tokenizer with a chat template: a local directory or a Hugging Face hub id (from the cache when HF_HUB_OFFLINE=1).")
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, exists=True), help="Rule set TOML (default: the built-in rules).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--format", "formats", default=",".join(DEFAULT_FORMATS), show_default=True,
              help=f"Comma-separated: {', '.join(FORMATS)} (hf is Parquet).")
@click.option("--rebuild", is_flag=True, help="Render every run again, ignoring the checkpoint and the cache.")
@click.option("--max-tokens", type=click.IntRange(min=1, max=MAX_INT), default=131_072, show_default=True, help="Longest sample.")
@click.option("--length-policy", type=click.Choice(["drop", "truncate"]), default="drop", show_default=True, help="What to do with longer samples.")
@click.option("--react-repeat", type=click.IntRange(min=1, max=MAX_INT), default=7, show_default=True, help="Upsampling of ReAct samples.")
@click.option("--summary-repeat", type=click.IntRange(min=1, max=MAX_INT), default=10, show_default=True, help="Upsampling of summarization samples.")
@with_store
@json_option
def project_command(store: EventStore, runs, tokenizer_path, rules_path, out_dir, formats, rebuild, max_tokens, length_policy,
                    react_repeat, summary_repeat, as_json):
    """Project runs (default: all) into loss-masked training datasets.

    Only runs with new events are rendered again; a changed rule set or tokenizer renders
    everything. The output is replaced whole, never left half-written. A run that cannot
    be rendered is skipped and named, the rest is written, and the exit status is 1.

    Example:

        apollo-es project --tokenizer tokenizers/glm45 --rules examples/rules.toml --out datasets/v1 --format native,hf
    """
    ruleset = RuleSet.load(rules_path) if rules_path else RuleSet.default()
    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    with Progress(TextColumn("projecting"), BarColumn(), MofNCompleteColumn(), transient=True, disable=as_json or not stderr_is_tty()) as bar:
        task = bar.add_task("project", total=None)
        report = project(
            store, out_dir, tokenizer_path=tokenizer_path, ruleset=ruleset, formats=wanted, runs=list(runs) or None,
            rebuild=rebuild, max_tokens=max_tokens, length_policy=length_policy, react_repeat=react_repeat,
            summary_repeat=summary_repeat, progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if report.skipped:
        for skip in report.skipped:
            click.echo(f"Error: skipped run {skip.stream_id} (v{skip.version}, {skip.sample_id}): {skip.reason}", err=True)
        raise SystemExit(1)


def _print_report(report) -> None:
    m = report.manifest
    click.echo(f"{report.out_dir}: {m.samples} samples ({_counts(m.samples_by_type)}), "
               f"{m.total_tokens:,} tokens, {m.trained_tokens:,} trained")
    click.echo(f"rendered {report.rendered_streams} stream(s), reused {report.cached_streams} from the cache; "
               f"over {m.max_tokens:,} tokens: {m.dropped_over_length} dropped, {m.truncated_over_length} truncated; "
               f"actions masked: {m.extra.get('masked_actions', 0)}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "none"


@click.group()
def dataset() -> None:
    """Look at projected datasets.

    Example:

        apollo-es dataset inspect datasets/v1 --sample 0
    """


@dataset.command("inspect")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--sample", "index", type=INT64, default=0, show_default=True, help="Which sample to show.")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(file_okay=False), help="Tokenizer to decode with (default: the one recorded in the manifest).")
@json_option
def inspect(directory, index, tokenizer_path, as_json):
    """Show a dataset's manifest and one sample, trained tokens highlighted.

    DIRECTORY is a projection output (its native/ is read) or a native dataset itself.

    Example:

        apollo-es dataset inspect datasets/v1 --sample 3
    """
    root = Path(directory)
    native = root / "native" if (root / "native" / "manifest.json").exists() else root
    try:
        data = NativeDataset(native)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if not 0 <= index < len(data):
        raise click.ClickException(f"--sample {index} is outside 0..{len(data) - 1}")
    meta, ids, mask = data[index]
    tokenizer = _tokenizer(tokenizer_path or data.manifest.extra.get("tokenizer_path"))
    pieces = [tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids] if tokenizer else [f"[{int(i)}]" for i in ids]
    if as_json:
        print_json({"manifest": data.manifest, "sample": meta,
                    "tokens": [{"id": int(i), "text": p, "trained": bool(m)} for i, p, m in zip(ids, pieces, mask)]})
        return
    out = table("", "")
    m = data.manifest
    for key in ("samples", "total_tokens", "trained_tokens", "max_tokens", "length_policy", "dropped_over_length",
                "truncated_over_length", "rule_fingerprint", "tokenizer_hash", "content_hash"):
        out.add_row(cell(key), cell(getattr(m, key)))
    out.add_row(cell("samples_by_type"), cell(_counts(m.samples_by_type)))
    out.add_row(cell("upsampled_by_type"), cell(_counts(m.upsampled_by_type)))
    print_table(out)
    console.print(f"\nsample {index}: {meta.sample_id} ({meta.type}, x{meta.repeat}), {meta.tokens:,} tokens, "
                  f"{meta.trained_tokens:,} trained (highlighted)\n", markup=False)
    text = Text()
    for piece, trained in zip(pieces, mask):
        text.append(piece, style="bold black on green" if trained else "dim")
    console.print(text)


def _tokenizer(path):
    if not path or not Path(path).is_dir():
        return None
    try:
        return load_tokenizer(path)
    except RenderError:
        return None


COMMANDS = [project_command, dataset]
