"""What a run reports: one JSON line per optimizer step, a progress bar, a plot.

RUN_DIR/metrics.jsonl has one object per step with at least: step, epoch, loss, lr,
grad_norm, tokens, trained_tokens, samples, tokens_per_s, step_time_s, peak_memory_bytes
(and `memory`, saying what that figure is: the CUDA allocator's peak, or the process's peak
RSS on CPU, both during the step), attention (which path ran), world_size,
sequence_parallel; `mfu` on GPUs whose peak is known.

`[metrics] sinks` adds, for the people who watch runs in them: "tensorboard" (event files
in RUN_DIR/tensorboard/, torch.utils.tensorboard, needs the `tensorboard` package) and
"wandb" (Weights & Biases in offline mode, files in RUN_DIR/wandb/, `wandb sync` uploads
them; needs `wandb`, which is not a dependency). Every numeric field becomes a scalar
`train/FIELD` at its step. metrics.jsonl is always written: plots and resumes read it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["SINKS", "MetricsLog", "StepProgress", "model_flops_per_token", "peak_flops", "peak_memory", "plot_metrics", "read_metrics", "reset_peak_memory"]

METRICS_FILE = "metrics.jsonl"
SINKS = {"jsonl": None, "tensorboard": "tensorboard", "wandb": "wandb"}  # sink -> the package it needs

# dense bf16 tensor-core peaks, FLOP/s; the first name the device's contains wins (PCIe before SXM)
_PEAK_BF16 = {"H100 PCIe": 756e12, "H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
              "L40S": 362e12, "B200": 2250e12}


class MetricsLog:
    """Appends step records to RUN_DIR/metrics.jsonl and the other sinks (rank 0 only writes)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, resume_step: int | None = None,
                 sinks: Sequence[str] = ("jsonl",), config: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.sinks: list[Any] = []
        if not enabled:
            return
        if "tensorboard" in sinks:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops what an interrupted run logged after the checkpoint resumed from
            self.sinks.append(SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1))
        if "wandb" in sinks:
            self.sinks.append(_WandbSink(Path(run_dir), config or {}, resumed=resume_step is not None))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():  # drop what an interrupted run logged after its last checkpoint
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {key: value for key, value in record.items() if key != "step" and isinstance(value, (int, float))}
        for sink in self.sinks:
            for key, value in scalars.items():
                sink.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class _WandbSink:
    """W&B in offline mode, shaped like a SummaryWriter (add_scalar, close)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], *, resumed: bool) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="apollo-es", name=run_dir.name, dir=str(run_dir), mode="offline", config=config,
                              resume="allow" if resumed else None)

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.run.log({key: value}, step=step)

    def close(self) -> None:
        self.run.finish()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring a peak: the CUDA allocator's, or on Linux the process's peak RSS
    (writing 5 to /proc/self/clear_refs sets the kernel's high-water mark to the current
    RSS); elsewhere the CPU figure stays the peak since the process started."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what it is): the CUDA allocator's peak since the last reset, or the process's
    peak RSS (VmHWM: since the last reset on Linux)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024, "cpu_max_rss"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, when known."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in _PEAK_BF16.items() if key in name), None)


def model_flops_per_token(config: Any, n_params: int, seq_lens: list[int] | None = None) -> float:
    """Training FLOPs per token: 6 x parameters plus causal attention, 12 x layers x heads x
    head_dim x mean attended length (2 matmuls x 2 FLOPs, x3 for forward+backward; causal:
    a token attends to half its sample on average). Counts every parameter, so for MoE models
    (only some experts active per token) the MFU it gives is overstated."""
    layers = getattr(config, "num_hidden_layers", 0)
    heads = getattr(config, "num_attention_heads", 0)
    head_dim = getattr(config, "head_dim", None) or (getattr(config, "hidden_size", 0) // max(heads, 1))
    if not seq_lens:
        return 6.0 * n_params
    tokens = sum(seq_lens)
    mean_attended = sum(n * n for n in seq_lens) / (2 * tokens)
    return 6.0 * n_params + 12.0 * layers * heads * head_dim * mean_attended


class StepProgress:
    """A rich progress bar on a terminal; elsewhere a plain line now and then on stderr."""

    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, start, enabled
        self.interactive = enabled and sys.stderr.isatty() and not os.environ.get("CI")
        self.every = max(1, total // 20)
        self.bar = None
        self.started = time.perf_counter()
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, record: dict[str, Any]) -> None:
        self.done = record["step"]
        info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, info=info)
        elif self.enabled and (self.done % self.every == 0 or self.done == self.total):
            print(f"step {self.done}/{self.total}  {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def plot_metrics(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a PNG of the loss and learning-rate curves of RUN_DIR/metrics.jsonl; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{Path(run_dir) / METRICS_FILE} has no steps yet")
    steps = [r["step"] for r in records]
    out = Path(out) if out else Path(run_dir) / "metrics.png"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, constrained_layout=True)
    top.plot(steps, [r["loss"] for r in records], color="tab:blue", linewidth=1.2)
    top.set_ylabel("loss (mean over trained tokens)")
    finite = [r["loss"] for r in records if math.isfinite(r["loss"])]
    top.set_title(f"{Path(run_dir).name}: {len(records)} steps" + (f", last loss {finite[-1]:.4f}" if finite else ""))
    top.grid(alpha=0.3)
    bottom.plot(steps, [r["lr"] for r in records], color="tab:orange", linewidth=1.2)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("optimizer step")
    bottom.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    bottom.grid(alpha=0.3)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
