"""GPU check of the trainer: flash-attn's varlen path against per-sample SDPA, then one 131,072-token step.

    bash bench/gpu_check.sh            installs flash-attn from a prebuilt wheel if one fits, then runs this
    python bench/gpu_check.py [--out DIR]

Sized to run in under 8 minutes on one H100 or H200 (an estimate: it has not yet run on a
GPU); the machines that run the tests have none, so this is what a lent GPU machine runs.
Without CUDA it exits 2 at once. Its parts run tiny on CPU in tests/test_train_bench.py.

1. Attention. The trainer packs samples into one row and relies on the attention to keep
   them apart; on a GPU with flash-attn it takes `FLASH_VARLEN` (flash_attn_varlen_func),
   elsewhere `SDPA_SEGMENTS` (one causal SDPA call per sample), so the two must agree. A
   2-layer model with the 1.7B model's layer shapes runs one packed batch of four samples of
   odd lengths three times, through the trainer's wrapper (checkpointing, chunked loss): an
   fp32 SDPA reference, then SDPA and flash-attn in bf16 autocast. The logits and every
   parameter's gradient must be as close to the reference through flash-attn as through
   SDPA: max|flash - ref| <= 2 max|sdpa - ref| + 1e-3 max|ref| for each tensor (the factor
   flash-attn's own tests use, plus a floor under bf16's resolution for tensors SDPA gets
   almost exactly). Skipped, and said so, when flash-attn does not import.
2. Step. One 131,072-token packed bin (six samples, 65,536 down to 4,096 tokens) of a
   ~1.7B-parameter Llama-style model built from a config (hidden 2048, 24 layers, vocab
   151,552), with the trainer's step (`accumulate_gradients`: bf16 autocast, fp32 master
   weights, activation checkpointing, chunked loss) and fused AdamW; the attention the
   trainer picks (flash-attn if it imports, else SDPA per segment). Median of 3 steps after
   1 warm-up: tokens/s; MFU against the GPU's dense bf16 peak (989 TFLOP/s on H100 SXM and
   H200, from train.metrics.peak_flops by device name), counting FLOPs with the trainer's
   own formula and, beside it, without the input embedding (a lookup, not a matmul); the
   CUDA allocator's peak. If the step runs out of memory it is run again with the trainer's
   activation offload (`train.offload_activations`), and the JSON says so.

The result is printed as JSON and written to $OUT/gpu_check.json when OUT is set, else to
bench/results/gpu_check.json (or DIR/gpu_check.json with --out). Exit 0 when everything
that ran passed, 1 when the attention check failed or the step could not run, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_memory import GIB, packed_batch, trainer_model

if TYPE_CHECKING:
    import torch

    from train.data import PackedBatch
    from train.model import PackedCausalLM

EXIT_NO_CUDA = 2

STEP_MODEL: dict[str, Any] = {  # ~1.7B parameters
    "model_type": "llama", "vocab_size": 151_552, "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
    "max_position_embeddings": 131_072, "tie_word_embeddings": False,
}
STEP_PACK = [65_536, 32_768, 16_384, 8_192, 4_096, 4_096]  # one 131,072-token bin of six samples
STEP_CHUNK_TOKENS = 2048
# the step model's layer shapes (head_dim 128, grouped KV heads) in 2 layers, with a smaller vocabulary so that
# three sets of fp32 logits and gradients (reference, SDPA, flash-attn) take a few GiB
CHECK_MODEL: dict[str, Any] = {**STEP_MODEL, "vocab_size": 32_000, "num_hidden_layers": 2}
CHECK_PACK = [3001, 1999, 2500, 692]  # odd lengths: boundaries off every tile edge
TOLERANCE_FACTOR = 2.0
TOLERANCE_FLOOR = 1e-3  # relative to the reference's largest magnitude


def packed_outputs(wrapper: PackedCausalLM, batch: PackedBatch, *, autocast: Any) -> dict[str, torch.Tensor]:
    """Logits (fp32) and every parameter's gradient (fp32) of one forward+backward of the
    trainer's wrapper on `batch`, loss = mean over labelled tokens (the trainer's chunked loss)."""
    import torch

    from train.loss import chunked_cross_entropy

    model = wrapper.model
    weight = model.get_output_embeddings().weight
    model.zero_grad(set_to_none=True)
    with autocast:
        hidden = wrapper.hidden_states(batch)
        loss = chunked_cross_entropy(hidden, weight, batch.labels, chunk_tokens=wrapper.chunk_tokens) / batch.trained_tokens
        with torch.no_grad():
            logits = torch.nn.functional.linear(hidden, weight).float()
    loss.backward()
    outputs = {"logits": logits, "loss": loss.detach().float()}
    outputs |= {f"grad {name}": p.grad.float() for name, p in model.named_parameters() if p.grad is not None}
    return outputs


def compare_attention(candidate: str, *, config: dict[str, Any], lengths: Sequence[int], device: torch.device,
                      chunk_tokens: int = 1024) -> dict[str, Any]:
    """The candidate attention implementation (a name registered with transformers) against
    per-sample SDPA on one packed batch: see the module docstring for the bound. Both models
    have the same weights; returns the per-tensor errors and whether every one is in bounds."""
    import torch

    from train.attention import SDPA_SEGMENTS

    batch = packed_batch(config["vocab_size"], lengths, seed=1).to(device)
    reference = trainer_model(config, attention=SDPA_SEGMENTS, device=device, chunk_tokens=chunk_tokens)
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16)
    exact = packed_outputs(reference, batch, autocast=torch.autocast(device.type, enabled=False))
    baseline = packed_outputs(reference, batch, autocast=bf16)
    tested = trainer_model(config, attention=candidate, device=device, chunk_tokens=chunk_tokens)
    tested.model.load_state_dict(reference.model.state_dict())
    del reference
    outputs = packed_outputs(tested, batch, autocast=bf16)
    tensors = {}
    for name, ref in exact.items():
        scale = float(ref.abs().max())
        candidate_error = float((outputs[name] - ref).abs().max())
        baseline_error = float((baseline[name] - ref).abs().max())
        bound = TOLERANCE_FACTOR * baseline_error + TOLERANCE_FLOOR * scale
        tensors[name] = {"candidate_error": candidate_error, "sdpa_bf16_error": baseline_error, "bound": bound,
                         "reference_max": scale, "passed": candidate_error <= bound}
    worst = max(tensors, key=lambda name: tensors[name]["candidate_error"] / max(tensors[name]["bound"], 1e-30))
    return {"candidate": candidate, "reference": f"{SDPA_SEGMENTS}, fp32", "baseline": f"{SDPA_SEGMENTS}, bf16 autocast",
            "lengths": list(lengths), "passed": all(t["passed"] for t in tensors.values()),
            "worst": {"tensor": worst, **tensors[worst]}, "tensors": tensors}


def packed_step(config: dict[str, Any], lengths: Sequence[int], *, device: torch.device, attention: str,
                offload_activations: bool, chunk_tokens: int, steps: int = 3) -> dict[str, Any]:
    """One packed bin of `lengths` through the trainer's step and fused AdamW, timed: median of
    `steps` after 1 warm-up. `attention` is what the trainer's `model.attention` takes (auto,
    flash, sdpa). Any device (the tests run it tiny on CPU); see the module docstring."""
    import torch

    from train.attention import choose_attention
    from train.data import StepPlan
    from train.metrics import model_flops_per_token, peak_flops, peak_memory, reset_peak_memory
    from train.recipe import accumulate_gradients

    choice = choose_attention(attention, device)
    wrapper = trainer_model(config, attention=choice.implementation, device=device, chunk_tokens=chunk_tokens,
                            offload_activations=offload_activations)
    model = wrapper.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, fused=True)
    batch = packed_batch(config["vocab_size"], lengths)
    tokens = sum(lengths)
    plan = StepPlan([batch], trained_tokens=batch.trained_tokens, tokens=tokens, samples=len(lengths), bins=1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> float:
        synchronize()
        started = time.perf_counter()
        accumulate_gradients(wrapper, plan, device=device, autocast=autocast)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        return time.perf_counter() - started

    warmup = step()  # allocations, kernel selection, optimizer state
    reset_peak_memory(device)
    times = [step() for _ in range(steps)]
    seconds = statistics.median(times)
    memory, memory_kind = peak_memory(device)
    n_params = sum(p.numel() for p in model.parameters())
    lookup = model.get_input_embeddings().weight.numel()
    flops = model_flops_per_token(model.config, n_params, list(lengths))
    flops_without_lookup = model_flops_per_token(model.config, n_params - lookup, list(lengths))
    peak = peak_flops(device)
    tokens_per_s = tokens / seconds
    result = {
        "model": (f"{n_params / 1e9:.2f}B parameters (hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, "
                  f"{config['num_attention_heads']} heads / {config['num_key_value_heads']} KV heads, vocab {config['vocab_size']:,})"),
        "parameters": n_params, "tokens": tokens, "samples": list(lengths), "attention": choice.path,
        "offload_activations": offload_activations, "chunk_tokens": chunk_tokens,
        "precision": "bf16 autocast, fp32 master weights and AdamW state (fused AdamW)",
        "warmup_seconds": warmup, "seconds": times, "median_seconds": seconds, "tokens_per_s": tokens_per_s,
        "flops_per_token": flops, "flops_per_token_without_input_embedding": flops_without_lookup,
        "peak_bf16_flops": peak,
        "mfu": None if peak is None else tokens_per_s * flops / peak,
        "mfu_without_input_embedding": None if peak is None else tokens_per_s * flops_without_lookup / peak,
        "peak_memory_gib": memory / GIB, "peak_memory_kind": memory_kind,
    }
    if device.type == "cuda":
        result["peak_memory_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
        result["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
    if peak is None:
        result["mfu_note"] = f"no bf16 peak known for this device (train.metrics.peak_flops): {device}"
    return result


def run_step(device: torch.device, attention: str) -> dict[str, Any]:  # pragma: no cover - needs a CUDA GPU
    """The step, and once more with activation offload if it does not fit as the trainer runs by default."""
    import torch

    try:
        return packed_step(STEP_MODEL, STEP_PACK, device=device, attention=attention, offload_activations=False,
                           chunk_tokens=STEP_CHUNK_TOKENS)
    except torch.cuda.OutOfMemoryError as exc:
        first_try = f"out of memory without activation offload: {str(exc).splitlines()[0]}"
    gc.collect()  # the failed step's tensors went with its frames when the except block ended
    torch.cuda.empty_cache()
    retry = packed_step(STEP_MODEL, STEP_PACK, device=device, attention=attention, offload_activations=True,
                        chunk_tokens=STEP_CHUNK_TOKENS)
    return {**retry, "without_offload": first_try}


def output_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for gpu_check.json (default: $OUT if set, else bench/results)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts: less fragmentation
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch "
              f"({torch.__version__}, CUDA build {torch.version.cuda or 'none'}); this check needs one GPU. Nothing was run.",
              file=sys.stderr)
        return EXIT_NO_CUDA
    return run_on_gpu(torch.device("cuda"), output_dir(args.out))


def run_on_gpu(device: torch.device, out_dir: Path) -> int:  # pragma: no cover - needs a CUDA GPU
    import torch

    from bench._common import environment, log
    from train.attention import FLASH_VARLEN, flash_attn_available

    document: dict[str, Any] = {
        "check": "gpu_check", "device": torch.cuda.get_device_name(device), "torch_cuda": torch.version.cuda,
        "environment": environment(["apollo-es", "torch", "transformers", "flash-attn"]),
    }
    started = time.perf_counter()
    if flash_attn_available():
        log(f"1. flash-attn varlen vs per-sample SDPA on a packed batch of {CHECK_PACK} tokens ...")
        try:
            check = compare_attention(FLASH_VARLEN, config=CHECK_MODEL, lengths=CHECK_PACK, device=device)
            log(f"   {'passed' if check['passed'] else 'FAILED'}; worst: {check['worst']}")
        except Exception as exc:  # the flash path does not even run: that is the finding, and the step still runs
            check = {"passed": False, "failed": f"{type(exc).__name__}: {exc}"}
            log(f"   FAILED: {check['failed']}")
    else:
        check = {"skipped": "flash-attn does not import here; the trainer uses SDPA per sample segment"}
        log("1. skipped: flash-attn does not import here")
    document["attention_check"] = check
    # flash-attn only where it was just shown to match SDPA; where it was not, the step is still measured, with SDPA
    if check.get("passed"):
        attention, document["step_attention"] = "flash", "flash-attn: it matched per-sample SDPA in part 1"
    else:
        why = "does not import" if "skipped" in check else "failed part 1"
        attention, document["step_attention"] = "sdpa", f"SDPA per sample segment: flash-attn {why}"
    gc.collect()
    torch.cuda.empty_cache()
    log(f"2. one {sum(STEP_PACK):,}-token packed step of a ~1.7B model ({attention}) ...")
    try:
        document["step"] = run_step(device, attention)
        log(f"   {document['step']['tokens_per_s']:,.0f} tokens/s, MFU {document['step']['mfu']}, "
            f"peak {document['step']['peak_memory_gib']:.1f} GiB")
    except Exception as exc:  # report it in the JSON with the attention result, which is not lost
        document["step"] = {"failed": f"{type(exc).__name__}: {exc}"}
        log(f"   failed: {document['step']['failed']}")
    document["seconds"] = time.perf_counter() - started
    document["passed"] = check.get("passed", True) and "failed" not in document["step"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    log(f"wrote {path}")
    return 0 if document["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
