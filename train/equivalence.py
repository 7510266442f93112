"""Does a parallel layout train the step one process trains? Loss, gradients, memory, isolation.

    torchrun --nproc-per-node N -m train.equivalence CONFIG.toml OUT_DIR S [S ...]

For each sequence-parallel degree S (dividing N), every rank sets up as the recipe does: the
(N/S data x S sequence) grid, the model built on the meta device and sharded by FSDP2 over
all N ranks, rank 0's weights broadcast into the shards. It runs the global batch of the
config's first optimizer step (its data group's bins, its slice of each) through the
recipe's `accumulate_gradients`. Then rank 0 alone trains that batch as one process does
without torchrun (unsharded, whole rows) and compares the loss (all-reduced) and every
parameter's full gradient (gathered from the shards) with it; every rank's report gets
the differences. Checking one step this way is
cheaper and sharper than comparing loss curves: a gradient that is off by a factor (a
missing sum over the sequence group, a double normalisation) shows at once.

It also checks that a packed row spread over the group keeps its samples apart: every token
of the first sample of each rank's first bin is changed, and the final hidden states of
every other sample's tokens, on every slice, must stay bit for bit the same (those of the
changed sample must not).

Each rank writes OUT_DIR/sequence-S-rank-R.json: the losses, the loss's relative
difference, the largest gradient difference, absolute and relative to the largest entry of
that parameter's reference gradient, the isolation check, and peak memory as the recipe
reports it (the CUDA allocator's peak during the step, or the process's peak RSS during it;
heap that an earlier degree of the same launch freed but kept can raise the latter, so
bench/train_parallel.py gives each layout its own launch at full sizes). `check` launches
it and returns the reports; the tests and the benchmark use it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from train.attention import choose_attention
from train.config import TrainConfig, load_config
from train.data import DataOrder, PackedBatch, open_dataset, plan_step, slice_sequence
from train.metrics import peak_memory, reset_peak_memory
from train.model import PackedCausalLM, load_model
from train.recipe import accumulate_gradients, build_model, init_distributed, training_dtype
from train.sequence_parallel import ParallelLayout, parallel_layout
from train.testing import torchrun

if TYPE_CHECKING:
    from projections.native_format import NativeDataset

__all__ = ["check", "probe"]


def check(config_path: str | Path, out_dir: str | Path, *, nproc: int, sequences: list[int],
          timeout: float = 240) -> list[list[dict[str, Any]]]:
    """Launch `probe` on `nproc` gloo processes; for each degree in `sequences`, every rank's report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = torchrun(["-m", "train.equivalence", str(config_path), str(out_dir), *map(str, sequences)], nproc=nproc, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"train.equivalence on {nproc} processes failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return [[json.loads((out_dir / f"sequence-{s}-rank-{r}.json").read_text()) for r in range(nproc)] for s in sequences]


def probe(config: TrainConfig, out_dir: Path, sequences: list[int]) -> None:
    """One step per sequence-parallel degree, then the one-process reference (run under torchrun)."""
    import msgspec

    world, rank, device = init_distributed()
    dataset = open_dataset(config.data.path, max_tokens=config.data.max_tokens)
    indices = DataOrder([m.repeat for m in dataset.meta], global_batch=config.train.global_batch,
                        seed=config.data.seed, shuffle=config.data.shuffle).step(0, 0)
    dtype = training_dtype(config.model.dtype, device)
    reports, gradients = [], []
    for sequence in sequences:
        layout = parallel_layout(world, rank, sequence, device)
        settings = msgspec.structs.replace(config, parallel=msgspec.structs.replace(config.parallel, sequence=sequence))
        attention = choose_attention(config.model.attention, device, sequence=sequence)
        hf_model, module = build_model(settings, None, attention=attention.implementation, device=device, use_fsdp=True,
                                        dtype=dtype, is_main=rank == 0, sequence_group=layout.sequence_group)
        plan = plan_step(dataset, indices, max_tokens=config.data.max_tokens, world_size=layout.data_size,
                         rank=layout.data_rank, sequence_size=layout.sequence_size, sequence_rank=layout.sequence_rank)
        reset_peak_memory(device)
        loss = accumulate_gradients(module, plan, device=device, world_size=world)
        memory, memory_kind = peak_memory(device)
        dist.all_reduce(loss)
        full = {name: p.grad.full_tensor().cpu() for name, p in module.named_parameters()}  # collective: every rank
        gradients.append(full if rank == 0 else None)
        rows = plan_step(dataset, indices, max_tokens=config.data.max_tokens, world_size=layout.data_size, rank=layout.data_rank)
        reports.append({
            "rank": rank, "world": world, "data": layout.data_size, "sequence": sequence, "data_rank": layout.data_rank,
            "sequence_rank": layout.sequence_rank, "attention": attention.path, "micro_batches": len(plan.micro_batches),
            "slice_tokens": [int(b.input_ids.shape[1]) for b in plan.micro_batches], "trained_tokens": plan.trained_tokens,
            "loss": float(loss) / plan.trained_tokens, "peak_memory_bytes": memory, "memory": memory_kind,
            "isolation": _isolation(module, rows.micro_batches[0], layout, hf_model.config.vocab_size, device),
        })
        del hf_model, module

    shared = [_compare(config, dataset, indices, reports, gradients, dtype, device) if rank == 0 else None]
    dist.broadcast_object_list(shared, src=0)  # the losses and gathered gradients are the same on every rank
    for report, comparison in zip(reports, shared[0]):
        report.update(comparison)
        (out_dir / f"sequence-{report['sequence']}-rank-{rank}.json").write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()


def _compare(config: TrainConfig, dataset: NativeDataset, indices: list[int], reports: list[dict[str, Any]],
             gradients: list[dict[str, torch.Tensor]], dtype: torch.dtype, device: torch.device) -> list[dict[str, float]]:
    """Train the global batch in this process alone, unsharded; each degree's differences from it."""
    attention = choose_attention(config.model.attention, device).implementation
    reference = PackedCausalLM(load_model(config.model.path, config.model.config, attention=attention, init_seed=config.model.init_seed),
                               chunk_tokens=config.train.loss_chunk_tokens).to(device)
    whole = plan_step(dataset, indices, max_tokens=config.data.max_tokens)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)  # as the recipe on one process
    reference_loss = float(accumulate_gradients(reference, whole, device=device, autocast=autocast)) / whole.trained_tokens
    reference_grads = {name: p.grad.cpu() for name, p in reference.named_parameters()}
    scales = {name: max(float(ref.abs().max()), 1e-30) for name, ref in reference_grads.items()}
    comparisons = []
    for report, grads in zip(reports, gradients):
        errors = {name: float((grads[name] - ref).abs().max()) for name, ref in reference_grads.items()}
        comparisons.append({"reference_loss": reference_loss, "loss_error": abs(report["loss"] - reference_loss) / abs(reference_loss),
                            "max_grad_abs_error": max(errors.values()), "max_grad_error": max(errors[n] / scales[n] for n in errors)})
    return comparisons


@torch.no_grad()
def _isolation(module: torch.nn.Module, row: PackedBatch, layout: ParallelLayout, vocab_size: int,
               device: torch.device) -> dict[str, Any]:
    """Change the first sample of `row`; did only its tokens' hidden states change, on this rank's slice?"""
    cu = row.cu_seqlens
    changed = replace(row, input_ids=row.input_ids.clone())
    changed.input_ids[:, int(cu[0]):int(cu[1])] = (changed.input_ids[:, int(cu[0]):int(cu[1])] + 1) % vocab_size
    module.unshard()  # the root's own parameters (embeddings, norm): hidden_states bypasses its forward hooks
    before, after = (module.hidden_states(slice_sequence(b, layout.sequence_rank, layout.sequence_size).to(device))[0].cpu()
                     for b in (row, changed))
    module.reshard()
    part = slice_sequence(row, layout.sequence_rank, layout.sequence_size)
    length = part.input_ids.shape[1]
    positions = torch.arange(layout.sequence_rank * length, (layout.sequence_rank + 1) * length)
    owner = torch.searchsorted(part.cu_seqlens.long(), positions, right=True) - 1  # the sample (or padding) of each position
    bounds = [int(b) for b in cu]
    edges = range(length, length * layout.sequence_size, length)  # where the slices meet
    return {
        "samples": len(row.samples),
        "samples_across_slices": sum(any(a < e < b for e in edges) for a, b in zip(bounds, bounds[1:])),
        "others_unchanged": bool(torch.equal(before[owner != 0], after[owner != 0])),
        "changed_sample_changed": None if not (owner == 0).any() else not torch.equal(before[owner == 0], after[owner == 0]),
    }


if __name__ == "__main__":
    probe(load_config(sys.argv[1]), Path(sys.argv[2]), [int(s) for s in sys.argv[3:]])
