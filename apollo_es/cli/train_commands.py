"""`apollo-es train`, `apollo-es plot-metrics` and `apollo-es export-checkpoint`: the trainer in train/ from the command line.

torch, transformers and matplotlib are imported only when a command runs, so the rest of
the CLI starts fast and works without the `train` extra installed.
"""

from __future__ import annotations

from pathlib import Path

import click

from apollo_es.cli._common import MAX_INT, print_json


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise click.ClickException(
            f"{module} is not installed; install the trainer's dependencies with: pip install -c constraints.txt 'apollo-es[train]'"
        ) from None


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(file_okay=False), help="The native dataset directory (overrides data.path).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Where metrics.jsonl and checkpoints/ go (overrides run_dir).")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[CHECKPOINT]",
              help="Continue from the newest checkpoint in the run dir, or from the checkpoint directory given.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.max_steps=10 (repeatable; values are TOML).")
@click.option("--stop-at", type=click.IntRange(min=1, max=MAX_INT), help="Stop after this step with a checkpoint (the schedule still spans the whole run).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
def train(config: str, data: str | None, run_dir: str | None, resume: str | None, overrides: tuple[str, ...],
          stop_at: int | None, no_progress: bool, as_json: bool) -> None:
    """Fine-tune a causal LM on a native dataset, as CONFIG (TOML) says.

    Everything is checked before the first step: the config, the dataset (not empty, no
    sample over data.max_tokens, ids inside the vocabulary), and that the dataset was made
    with the model's tokenizer. Writes RUN_DIR/metrics.jsonl (one line per step) and
    checkpoints to RUN_DIR/checkpoints/step-N/ (a Hugging Face model directory plus the
    optimizer, scheduler, RNG and data-order state). For several GPUs use
    `torchrun --nproc-per-node N -m train CONFIG.toml` (same options).

    Example:

        apollo-es train train/configs/tiny-cpu.toml --data runs/dataset/native --set train.max_steps=20
    """
    _need("torch")
    _need("transformers")
    from train.config import load_config
    from train.recipe import run

    settings = list(overrides)
    if data:
        settings.append(f"data.path={_toml_string(data)}")
    if run_dir:
        settings.append(f"run_dir={_toml_string(run_dir)}")
    result = run(load_config(config, settings), resume=resume, progress=not no_progress, stop_at=stop_at)
    summary = {
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        "last_loss": result.losses[-1] if result.losses else None,
        "attention": result.attention,
        "metrics": str(result.run_dir / "metrics.jsonl"),
        "checkpoint": str(result.checkpoints[-1]) if result.checkpoints else None,
    }
    if as_json:
        print_json(summary)
        return
    last = f", last loss {summary['last_loss']:.4f}" if result.losses else ""
    click.echo(f"trained {result.steps} steps{last} (attention: {result.attention})")
    click.echo(f"metrics:    {summary['metrics']}")
    if summary["checkpoint"]:
        click.echo(f"checkpoint: {summary['checkpoint']}")
    click.echo(f"next:       apollo-es plot-metrics {result.run_dir}")


@click.command("plot-metrics")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="The PNG to write (default: RUN_DIR/metrics.png).")
def plot_metrics(run_dir: str, out: str | None) -> None:
    """Plot the loss and learning-rate curves of a training run into a PNG.

    Reads RUN_DIR/metrics.jsonl, as written by `apollo-es train`.

    Example:

        apollo-es plot-metrics runs/tiny-cpu --out loss.png
    """
    _need("matplotlib")
    from train.metrics import METRICS_FILE
    from train.metrics import plot_metrics as plot

    if not (Path(run_dir) / METRICS_FILE).is_file():
        raise click.ClickException(f"no {METRICS_FILE} in {run_dir}: is it a training run directory?")
    try:
        path = plot(run_dir, out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")


@click.command("export-checkpoint")
@click.argument("checkpoint", type=click.Path(file_okay=False, exists=True))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True, help="dtype of the written weights.")
def export_checkpoint(checkpoint: str, out_dir: str, dtype: str) -> None:
    """Write a Hugging Face model directory from a training checkpoint.

    Checkpoints hold sharded torch.distributed.checkpoint state (any number of ranks);
    OUT_DIR gets config.json, safetensors and the tokenizer files, loadable by
    `AutoModelForCausalLM.from_pretrained(OUT_DIR)`. Needs the model's size in CPU memory.

    Example:

        apollo-es export-checkpoint runs/tiny-cpu/checkpoints/step-20 runs/tiny-cpu/hf
    """
    _need("torch")
    _need("transformers")
    from train.export import export_checkpoint as export

    click.echo(f"wrote {export(checkpoint, out_dir, dtype=dtype)}")


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


COMMANDS = [train, plot_metrics, export_checkpoint]
