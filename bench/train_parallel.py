"""Benchmark of the trainer's parallel layouts: one step against one process, and memory per rank.

    python bench/train_parallel.py [--smoke] [--out DIR]

Every layout runs `train.equivalence` on gloo processes on CPU (torchrun): the recipe's own
setup (the data x sequence grid, the model built on the meta device and sharded by FSDP2
over every process, rank 0's weights broadcast) and its `accumulate_gradients` on one
global batch (every sample of a random dataset, several to a packed row and cut by the
slice boundaries), compared with one process training that batch unsharded. fp32,
Llama-style models with fewer key/value heads than query heads.

Layouts: FSDP2 world 1 (one process; the memory baseline), FSDP2 world 2 with the bins
dealt to both processes, and one sequence group of 2 (each process holds half of every
row). The full sizes (a 4-layer model with a 32,000-token vocabulary, rows of 8,192
tokens) add world 4 as 2 data x 2 sequence and as one sequence group of 4 (KV heads
repeated), and give every layout a launch of its own.

Rows, per layout: the loss and the gradients against one process, as the largest relative
difference over ranks against the fp32 tolerance 1e-5 (target: ratio <= 1; for gradients,
max |g - g_ref| / max |g_ref| of the worst parameter); and, beside world 1's, the largest
rank's peak RSS during the step (no target). It is the whole process's RSS (interpreter,
torch, transformers: ~370 MiB before any tensor), so at smoke sizes it shows nothing of
the split; at full sizes the activations of a long row do. The table is printed, then the
per-layout summary as JSON (each rank's peak RSS included), which the result file holds
too (parameters.layouts). `--smoke` keeps the sizes tiny and shares one launch between
the world-2 layouts, so CI runs it in about half a minute.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOLERANCE = 1e-5
MIB = 1024**2


@dataclass(frozen=True)
class Layout:
    world: int
    sequence: int

    @property
    def key(self) -> str:
        return f"world{self.world}_sp{self.sequence}"

    @property
    def name(self) -> str:
        if self.sequence == 1:
            return f"FSDP2 world {self.world}" + (" (one process)" if self.world == 1 else ", bins dealt to all")
        if self.sequence == self.world:
            return f"FSDP2 world {self.world}, one sequence group of {self.sequence}"
        return f"FSDP2 world {self.world}, {self.world // self.sequence} data x {self.sequence} sequence"


@dataclass(frozen=True)
class Plan:
    model: dict[str, Any]
    lengths: list[int]  # sample lengths of the random dataset, all in one global batch
    max_tokens: int  # the packed row
    launches: list[list[Layout]]  # the layouts of one launch share its processes (and world size)


MODEL = {"model_type": "llama", "vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": False}
SMOKE = Plan(MODEL, [30, 90, 12, 50, 41, 7, 64, 25, 33, 18, 60, 9], max_tokens=96,
             launches=[[Layout(1, 1)], [Layout(2, 1), Layout(2, 2)]])
FULL = Plan(
    {**MODEL, "vocab_size": 32_000, "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
     "num_attention_heads": 8, "max_position_embeddings": 8192},
    [6000, 2100, 4500, 3600, 1500, 7000, 900, 2500], max_tokens=8192,
    launches=[[Layout(1, 1)], [Layout(2, 1)], [Layout(2, 2)], [Layout(4, 2)], [Layout(4, 4)]],
)


def measure(plan: Plan, work: Path) -> dict[Layout, list[dict[str, Any]]]:
    """Every layout's per-rank reports from `train.equivalence`."""
    from bench._common import log
    from train.equivalence import check
    from train.testing import fake_tokenizer, random_dataset, tiny_config_file

    tok = fake_tokenizer(work / "tok")
    data = random_dataset(work / "ds", plan.lengths, tokenizer_dir=tok, vocab_size=plan.model["vocab_size"],
                          repeats=[1] * len(plan.lengths), max_tokens=plan.max_tokens)
    config = tiny_config_file(work / "config.toml", work / "run", data, tok,
                              model={"config": plan.model, "tokenizer": str(tok), "dtype": "fp32"},
                              data={"max_tokens": plan.max_tokens},
                              train={"global_batch": len(plan.lengths), "loss_chunk_tokens": 1024})
    reports = {}
    for number, layouts in enumerate(plan.launches):
        world = layouts[0].world
        log(f"   {world} process(es): {', '.join(layout.name for layout in layouts)} ...")
        found = check(config, work / f"launch-{number}", nproc=world, sequences=[layout.sequence for layout in layouts], timeout=1800)
        reports.update(zip(layouts, found))
    return reports


def summary(layout: Layout, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """What the benchmark prints per layout: the differences from one process, each rank's memory."""
    return {
        "layout": layout.key, "name": layout.name, "world": layout.world, "data": reports[0]["data"], "sequence": layout.sequence,
        "loss": reports[0]["loss"], "reference_loss": reports[0]["reference_loss"],
        "max_loss_difference": max(abs(r["loss"] - r["reference_loss"]) for r in reports),
        "max_loss_relative_difference": max(r["loss_error"] for r in reports),
        "max_grad_difference": max(r["max_grad_abs_error"] for r in reports),
        "max_grad_relative_difference": max(r["max_grad_error"] for r in reports),
        "peak_rss_bytes_per_rank": [r["peak_memory_bytes"] for r in sorted(reports, key=lambda r: r["rank"])],
        "slice_tokens": reports[0]["slice_tokens"],
        "samples_across_slices": sum(r["isolation"]["samples_across_slices"] for r in reports if r["sequence_rank"] == 0),
        "samples_isolated": all(r["isolation"]["others_unchanged"] for r in reports),
    }


def rows(plan: Plan, summaries: list[dict[str, Any]]) -> list:
    from bench._common import Row, Target

    conditions = (f"one step of {len(plan.lengths)} samples ({sum(plan.lengths):,} tokens, rows of up to "
                  f"{plan.max_tokens:,}); Llama-style, hidden {plan.model['hidden_size']}, {plan.model['num_hidden_layers']} layers, "
                  f"{plan.model['num_attention_heads']} heads / {plan.model['num_key_value_heads']} KV heads; fp32; gloo on CPU")
    base_memory = max(summaries[0]["peak_rss_bytes_per_rank"]) / MIB
    out = []
    for s in summaries:
        details = {key: s[key] for key in ("world", "data", "sequence", "loss", "reference_loss", "samples_across_slices")}
        for key, what, field in (("loss", "loss", "max_loss_relative_difference"), ("grad", "gradients", "max_grad_relative_difference")):
            out.append(Row(
                key=f"{key}_{s['layout']}", name=f"{s['name']}: {what} vs one process (relative difference)",
                baseline_label="the fp32 tolerance", ours_label="largest difference over ranks", conditions=conditions,
                unit="relative", baseline=TOLERANCE, ours=s[field], target=Target("<=", 1.0), details=details))
        if s is not summaries[0]:
            out.append(Row(
                key=f"memory_{s['layout']}", name=f"{s['name']}: peak RSS per rank",
                baseline_label=summaries[0]["name"], ours_label="largest rank", conditions=conditions + "; whole process",
                unit="MiB", baseline=base_memory, ours=max(s["peak_rss_bytes_per_rank"]) / MIB,
                details={"peak_rss_mib_per_rank": [b / MIB for b in s["peak_rss_bytes_per_rank"]], **details}))
    return out


def main() -> int:
    from bench._common import environment, log, parse_args, report

    args = parse_args(__doc__.splitlines()[0])
    plan = SMOKE if args.smoke else FULL
    log(f"Measuring {sum(map(len, plan.launches))} layouts in {len(plan.launches)} launches ...")
    with tempfile.TemporaryDirectory(prefix="apollo-bench-train-parallel-") as tmp:
        reports = measure(plan, Path(tmp))
    summaries = [summary(layout, found) for layout, found in reports.items()]
    parameters = {"smoke": args.smoke, "model": plan.model, "lengths": plan.lengths, "max_tokens": plan.max_tokens,
                  "tolerance": TOLERANCE, "layouts": summaries,
                  "reports": {layout.key: found for layout, found in reports.items()}}
    path = report("train_parallel", "apollo-es trainer: parallel layouts against one process", rows(plan, summaries),
                  environment(["apollo-es", "torch", "transformers"]), out_dir=args.out, parameters=parameters)
    print(json.dumps({"layouts": summaries}, indent=1))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
