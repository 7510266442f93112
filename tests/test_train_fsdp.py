"""FSDP2 gradient accumulation holds only gradient shards, and matches one process exactly.

The test launches this file under torchrun (2 gloo processes on CPU); `probe` then builds the
tiny model the way the recipe does (meta device, sharded, rank 0's weights broadcast) and
runs one global batch micro-batch by micro-batch. After every micro-batch it records, per
rank, what gradient memory FSDP2 holds: the sharded gradients (DTensor local shards) and any
unsharded accumulated gradient. Then it compares the full gradients and the loss with one
plain process on the same global batch (fp32, atol 1e-6: only the reduction order differs).

Modes: `fp32` (what the recipe runs on CPU), `bf16` (MixedPrecisionPolicy with bf16
params and compute, fp32 reduce-scatter into fp32 shards, which gloo runs too), `offload`
(fp32 with CPUOffloadPolicy; on a CPU-only machine it only proves the path runs), and `no_sync`
(the old recipe, bf16 as on GPUs: gradient sync off but for the last micro-batch), kept to
show the memory it held: every rank a full, unsharded fp32 gradient of the model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [30, 90, 12, 50, 41, 7, 64, 25, 33, 18, 60, 9]
MODES = ("fp32", "bf16", "offload", "no_sync")


def probe(work: Path, model: dict | None = None) -> dict:
    """One global batch in each mode on this rank; returns what it measured (run under torchrun)."""
    from dataclasses import replace

    import msgspec
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from train.attention import choose_attention
    from train.data import DataOrder, open_dataset, plan_step
    from train.model import PackedCausalLM, load_model
    from train.recipe import build_model, init_distributed, accumulate_gradients
    from train.testing import tiny_config

    world, rank, device = init_distributed()
    config = tiny_config(work / "run", work / "ds", work / "tok", data={"max_tokens": 96},
                         train={"global_batch": 12, "loss_chunk_tokens": 64},
                         **({"model": {"config": model, "tokenizer": str(work / "tok")}} if model else {}))
    dataset = open_dataset(config.data.path, max_tokens=96)
    batch = DataOrder([m.repeat for m in dataset.meta], global_batch=12, seed=0, shuffle=True).step(0, 0)
    attention = choose_attention("sdpa", device).implementation
    plan = plan_step(dataset, batch, max_tokens=96, world_size=world, rank=rank)

    reference = PackedCausalLM(load_model(None, config.model.config, attention=attention), chunk_tokens=64)
    whole = plan_step(dataset, batch, max_tokens=96, world_size=1, rank=0)
    reference_loss = float(accumulate_gradients(reference, whole, device=device))
    reference_grads = {name: p.grad for name, p in reference.named_parameters()}
    full_bytes = sum(p.numel() * 4 for p in reference.parameters())

    report = {"rank": rank, "world": world, "micro_batches": len(plan.micro_batches), "full_grad_bytes_fp32": full_bytes}
    for mode in MODES:
        dtype = torch.float32 if mode in ("fp32", "offload") else torch.bfloat16
        settings = msgspec.structs.replace(config, train=msgspec.structs.replace(config.train, offload_parameters=mode == "offload"))
        hf_model, module = build_model(settings, None, attention=attention, device=device, use_fsdp=True, dtype=dtype, is_main=rank == 0)
        fsdp_params = [p for m in module.modules() if hasattr(m, "_get_fsdp_state")
                       for group in m._get_fsdp_state()._fsdp_param_groups for p in group.fsdp_params]
        loss, after_each = 0.0, []
        for number, micro in enumerate(plan.micro_batches):
            if mode == "no_sync":
                module.set_requires_gradient_sync(number == len(plan.micro_batches) - 1)
            loss += float(accumulate_gradients(module, replace(plan, micro_batches=[micro]), device=device, world_size=world))
            grads = [p.grad for p in hf_model.parameters()]
            after_each.append({
                "all_dtensor_shards": all(isinstance(g, DTensor) and g.to_local().shape == p.to_local().shape
                                          for g, p in zip(grads, hf_model.parameters()) if g is not None),
                "sharded_grad_bytes": sum(g.to_local().numel() * g.element_size() for g in grads if g is not None),
                "unsharded_grad_bytes": sum(g.numel() * g.element_size() for g in map(_unsharded_grad, fsdp_params) if g is not None),
            })
        total = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(total)
        grad_error = max(float((p.grad.full_tensor() - reference_grads[name]).abs().max()) for name, p in module.named_parameters())
        report[mode] = {
            "after_each_micro_batch": after_each,
            "loss_error": abs(float(total) - reference_loss) / reference_loss,
            "max_grad_error": grad_error,
            "master_dtypes": sorted({str(p.dtype) for p in hf_model.parameters()}),
            "grad_dtypes": sorted({str(p.grad.dtype) for p in hf_model.parameters()}),
        }
    dist.destroy_process_group()
    return report


def _unsharded_grad(fsdp_param):
    """What FSDP2 holds unsharded for a parameter between backwards: the gradient upcast to the
    reduce dtype, or (same dtypes) the unsharded parameter's own .grad."""
    if fsdp_param.unsharded_accumulated_grad is not None:
        return fsdp_param.unsharded_accumulated_grad
    unsharded = getattr(fsdp_param, "_unsharded_param", None)
    return None if unsharded is None else unsharded.grad


def run_probe(work: Path, model: dict | None = None) -> list[dict]:
    """Launch `probe` on 2 gloo processes; each rank's report."""
    from train.testing import torchrun

    done = torchrun([__file__, str(work), *([json.dumps(model)] if model else [])], nproc=2, timeout=120)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    return [json.loads((work / f"probe-rank-{rank}.json").read_text()) for rank in range(2)]


def test_gradients_stay_sharded_across_micro_batches_and_match_one_process(tmp_path: Path) -> None:
    from train.testing import fake_tokenizer, random_dataset

    tok = fake_tokenizer(tmp_path / "tok")
    random_dataset(tmp_path / "ds", LENGTHS, tokenizer_dir=tok, repeats=[2, 3] * 6, max_tokens=96)
    for report in run_probe(tmp_path):
        full = report["full_grad_bytes_fp32"]
        assert report["micro_batches"] >= 2  # accumulation happens on each rank
        for mode in ("fp32", "bf16", "offload"):
            for state in report[mode]["after_each_micro_batch"]:
                assert state["all_dtensor_shards"] and state["unsharded_grad_bytes"] == 0
                assert state["sharded_grad_bytes"] <= full / 2 + 4 * 1024  # a shard (dim 0 split in 2, padding aside)
            assert report[mode]["master_dtypes"] == report[mode]["grad_dtypes"] == ["torch.float32"]
        for mode in ("fp32", "offload"):
            assert report[mode]["loss_error"] < 1e-6 and report[mode]["max_grad_error"] < 1e-6
        assert report["bf16"]["loss_error"] < 2e-2 and report["bf16"]["max_grad_error"] < 2e-2
        # the old recipe: a whole fp32 gradient of the model on every rank until the last micro-batch
        assert report["no_sync"]["after_each_micro_batch"][0]["unsharded_grad_bytes"] == full


if __name__ == "__main__":
    work = Path(sys.argv[1])
    result = probe(work, json.loads(sys.argv[2]) if len(sys.argv) > 2 else None)
    (work / f"probe-rank-{result['rank']}.json").write_text(json.dumps(result, indent=1))
