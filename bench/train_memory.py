"""Benchmark of the trainer's step on CPU: peak memory against plain transformers and peer losses, and speed.

    python bench/train_memory.py [--smoke] [--out DIR]

A tiny Llama-style model (hidden 256, 2 layers, 4 heads / 2 KV heads) with GLM-4.5's
vocabulary of 151,552, so the logits dominate memory as they do in long-context
fine-tuning: at 32k tokens the fp32 logits alone are 18.5 GiB. One forward+backward on one
sample of L tokens, every token trained, fp32, CPU. The implementations:

- `hf`: plain transformers, `model(input_ids, labels=input_ids).loss.backward()` (stock
  SDPA, no checkpointing: the full L x vocab logits, their log-softmax and their gradient);
- `hf_ckpt`: the same with transformers' gradient checkpointing: what checkpointing alone buys;
- `hf_ckpt_chunked`: `hf_ckpt` with the loss swapped for ours (`train.loss.chunked_cross_entropy`
  on the decoder's hidden states): against `hf_ckpt`, the loss's own contribution;
- `ours`: the trainer's step (`train.recipe.accumulate_gradients` on a packed batch: SDPA
  per sample segment, activation checkpointing, chunked cross-entropy with the trainer's
  default chunk of 1,024 tokens);
- peers, each on the `hf_ckpt` trunk with only the loss swapped, so they compare with
  `hf_ckpt_chunked` loss for loss: torchtune's `CEWithChunkedOutputLoss` (pure torch; the
  lm_head is applied per chunk as torchtune's `TransformerDecoder.chunked_output` does, so
  all chunks' logits exist at once: its saving is upcasting one bf16 chunk at a time to
  fp32, which an fp32 run cannot show), Liger's `LigerFusedLinearCrossEntropyLoss` and
  Apple's Cut Cross-Entropy (`linear_cross_entropy`). Liger and CCE are Triton kernels:
  on a machine without a GPU they are tried on a tiny input and reported "not runnable on
  CPU" with the error they raise. A peer that is not installed is reported "unavailable";
  none is re-implemented here.

Every (implementation, length) runs in a fresh subprocess; its peak memory is the
process's peak RSS (`ru_maxrss`), whole process included (interpreter, torch, the model's
weights and gradients: about 0.7 GiB before the step, a little more where a peer's imports
are heavy, so the table also gives each step's rise). The parent watches each child's RSS
and kills it above the memory that was available when it started (minus 1.5 GiB; lower with
APOLLO_BENCH_MAX_MEMORY_GB), or when the machine's free memory falls under 0.5 GiB, so a
step that does not fit is reported as skipped rather than taking the machine down.

1. Peak memory of every implementation at 8k and 32k tokens, with its ratio to plain HF
   where plain HF fits. Target for ours at 8k: ratio <= 0.15.
2. Our peak memory growth per doubling of the length, 2k -> 4k -> ... -> 64k (one run).
   Target: <= 2.2 for each doubling (linear, not quadratic).
3. Throughput at 4k tokens (tokens/s, median of 3 steps after a warm-up), ours vs plain HF,
   the two alternating step by step in one process, so that a busy machine slows both
   alike. Target: ratio >= 0.9.

The GPU step (131,072 tokens, ~1.7B model, MFU) is bench/gpu_check.py, which builds it
with `trainer_model` and `packed_batch` from here. `--smoke` shrinks the model and the
lengths so the script runs in under a minute; its figures mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    import torch

    from train.data import PackedBatch
    from train.model import PackedCausalLM

GIB = 1024**3
MACHINE_FLOOR = GIB // 2  # free memory under which a child is killed whatever its cap: the machine is shared

BENCH_MODEL: dict[str, Any] = {
    "model_type": "llama", "vocab_size": 151_552, "hidden_size": 256, "intermediate_size": 704,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 131_072, "tie_word_embeddings": False,
}
SMOKE_MODEL: dict[str, Any] = {**BENCH_MODEL, "vocab_size": 8_192, "hidden_size": 64, "intermediate_size": 128,
                               "max_position_embeddings": 4096}


@dataclass(frozen=True)
class Impl:
    """One way of doing the step, labelled with what it really is."""

    key: str
    label: str
    package: str | None = None  # the peer's import name, checked before a child is started
    triton: bool = False  # a Triton kernel: needs a GPU driver


HF_TRUNK = "HF model + gradient checkpointing"
IMPLS = [
    Impl("hf", "plain HF: model(input_ids, labels=input_ids), stock SDPA, no checkpointing (full logits)"),
    Impl("hf_ckpt", f"{HF_TRUNK}, HF's own loss (full logits)"),
    Impl("hf_ckpt_chunked", f"{HF_TRUNK} + our chunked_cross_entropy (train/loss.py)"),
    Impl("ours", "the trainer's step (accumulate_gradients: per-sample SDPA, checkpointing, chunked CE)"),
    Impl("torchtune", f"{HF_TRUNK} + torchtune CEWithChunkedOutputLoss (8 chunks, lm_head per chunk as torchtune does)",
         package="torchtune"),
    Impl("liger", f"{HF_TRUNK} + Liger LigerFusedLinearCrossEntropyLoss", package="liger_kernel", triton=True),
    Impl("cce", f"{HF_TRUNK} + Apple Cut Cross-Entropy linear_cross_entropy (impl cce)", package="cut_cross_entropy",
         triton=True),
]
BY_KEY = {impl.key: impl for impl in IMPLS}
THROUGHPUT = "throughput"  # the child that times plain HF and ours together
PIP_NAMES = {"torchtune": "torchtune", "liger_kernel": "liger-kernel", "cut_cross_entropy": "cut-cross-entropy"}


@dataclass(frozen=True)
class Plan:
    model: dict[str, Any]
    lengths: list[int]  # ours at each (growth)
    compare_lengths: list[int]  # every implementation at each
    ratio_length: int  # target 1
    throughput_length: int  # target 3
    chunk_tokens: int


FULL = Plan(BENCH_MODEL, [2048, 4096, 8192, 16_384, 32_768, 65_536], [8192, 32_768], 8192, 4096, 1024)
SMOKE = Plan(SMOKE_MODEL, [256, 512], [512], 512, 512, 128)


# -- the trainer's step, shared with bench/gpu_check.py ------------------------------------


def packed_batch(vocab_size: int, lengths: Sequence[int], *, seed: int = 0) -> PackedBatch:
    """One packed bin of random samples of `lengths` tokens, every token trained (collated as the trainer does)."""
    import numpy as np

    from train.data import collate

    rng = np.random.default_rng(seed)
    return collate([(rng.integers(0, vocab_size, n).astype(np.int32), np.ones(n, dtype=np.uint8)) for n in lengths])


def trainer_model(config: dict[str, Any], *, attention: str, device: torch.device, chunk_tokens: int,
                  offload_activations: bool = False) -> PackedCausalLM:
    """The model as the trainer builds it in one process: fp32 master weights, activation
    checkpointing, no KV cache, wrapped with the chunked loss. The weights are initialised
    on `device` itself, so a 1.7B model builds in seconds on a GPU rather than minutes on CPU."""
    import torch

    from train.attention import register_attention
    from train.model import PackedCausalLM, build_model
    from train.recipe import _enable_checkpointing

    register_attention()
    with torch.device(device):
        model = build_model(config, attention=attention)
    _enable_checkpointing(model)
    model.config.use_cache = False
    model.train()
    return PackedCausalLM(model, chunk_tokens=chunk_tokens, offload_activations=offload_activations)


# -- the child: one step, one implementation, one length -----------------------------------


class NotRunnable(Exception):
    """The implementation cannot run here; the message says why (the child reports it, not a failure)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def head_loss(impl: Impl, chunk_tokens: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss `impl` puts on the decoder's hidden states: (hidden (1, T, H), lm_head weight (V, H),
    labels (1, T)) -> the mean over labelled tokens. Imports the peer; raises NotRunnable when it
    does not import, or (a Triton kernel on a machine without a GPU) fails on a tiny input."""
    import torch
    import torch.nn.functional as F

    from train.data import IGNORE_INDEX

    try:
        if impl.key == "hf_ckpt_chunked":
            from train.loss import chunked_cross_entropy

            def loss(h, w, y):
                return chunked_cross_entropy(h, w, y, chunk_tokens=chunk_tokens) / (y != IGNORE_INDEX).sum()
        elif impl.key == "torchtune":
            from torchtune.modules.loss import CEWithChunkedOutputLoss

            chunked = CEWithChunkedOutputLoss(ignore_index=IGNORE_INDEX)

            def loss(h, w, y):  # torchtune's TransformerDecoder.chunked_output, then its loss
                return chunked([F.linear(part, w) for part in h.chunk(chunked.num_output_chunks, dim=1)], y)
        elif impl.key == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX)

            def loss(h, w, y):
                return fused(w, h.reshape(-1, h.shape[-1]), y.reshape(-1))
        elif impl.key == "cce":
            from cut_cross_entropy import linear_cross_entropy

            def loss(h, w, y):
                return linear_cross_entropy(h.reshape(-1, h.shape[-1]), w, y.reshape(-1), ignore_index=IGNORE_INDEX)
        else:
            raise ValueError(f"{impl.key} has no head loss of its own")
    except ImportError as exc:
        raise NotRunnable("unavailable", f"installed, but does not import: {type(exc).__name__}: {exc}") from exc
    if impl.triton and not torch.cuda.is_available():
        try:  # tried, not assumed: a future release may run on CPU
            loss(torch.randn(1, 4, 8, requires_grad=True), torch.randn(16, 8, requires_grad=True),
                 torch.tensor([[1, 2, 3, IGNORE_INDEX]])).backward()
        except Exception as exc:
            raise NotRunnable("not runnable on CPU", f"Triton kernel, no GPU here: {type(exc).__name__}: {exc}") from exc
    return loss


def build_step(impl: Impl, config: dict[str, Any], length: int, chunk_tokens: int) -> Callable[[], None]:
    """One forward+backward of `impl` on one `length`-token sample, every token trained; the
    gradients are dropped after each, as an optimizer step would."""
    import torch

    from train.attention import choose_attention
    from train.data import StepPlan
    from train.model import build_model
    from train.recipe import _enable_checkpointing, accumulate_gradients

    device = torch.device("cpu")
    batch = packed_batch(config["vocab_size"], [length])
    if impl.key == "ours":
        wrapper = trainer_model(config, attention=choose_attention("auto", device).implementation, device=device,
                                chunk_tokens=chunk_tokens)
        plan = StepPlan([batch], trained_tokens=batch.trained_tokens, tokens=length, samples=1, bins=1)

        def step() -> None:
            accumulate_gradients(wrapper, plan, device=device)
            wrapper.zero_grad(set_to_none=True)
        return step
    loss = None if impl.key in ("hf", "hf_ckpt") else head_loss(impl, chunk_tokens)
    model = build_model(config, attention="sdpa").train()
    if impl.key != "hf":
        _enable_checkpointing(model)

    def hf_step() -> None:
        if loss is None:
            model(input_ids=batch.input_ids, labels=batch.input_ids).loss.backward()
        else:
            hidden = model.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                         use_cache=False).last_hidden_state
            loss(hidden, model.get_output_embeddings().weight, batch.labels).backward()
        model.zero_grad(set_to_none=True)
    return hf_step


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """A "throughput" spec times plain HF and ours alternately in this one process (so a busy
    machine slows both alike); any other measures one step of one implementation."""
    import torch

    from bench._common import compare_seconds

    length, config, chunk_tokens = spec["length"], spec["model"], spec["chunk_tokens"]
    if spec["impl"] == THROUGHPUT:
        hf, ours = (build_step(BY_KEY[key], config, length, chunk_tokens) for key in ("hf", "ours"))
        hf_seconds, ours_seconds = compare_seconds(hf, ours, repeat=3, warmup=1)
        return {"status": "measured", "hf_seconds": hf_seconds, "ours_seconds": ours_seconds,
                "torch_threads": torch.get_num_threads()}
    step = build_step(BY_KEY[spec["impl"]], config, length, chunk_tokens)
    before = _rss()
    started = time.perf_counter()
    step()
    return {"status": "measured", "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_step": before, "seconds": time.perf_counter() - started}


def _rss() -> int:
    return _status_bytes(Path("/proc/self/status"), "VmRSS:")


# -- the parent: subprocesses under a memory watch -------------------------------------------


def _status_bytes(path: Path, field: str) -> int:
    """A `kB` field of a /proc file, in bytes; 0 when the file is gone (the process ended)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _available_bytes() -> int:
    return _status_bytes(Path("/proc/meminfo"), "MemAvailable:")


def measure(spec: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run one child; returns its result, always with a "status" ("measured" or why not) and a "reason" if not."""
    from bench._common import log

    cap, origin = _available_bytes() - int(1.5 * GIB), "free memory at start minus 1.5 GiB"
    if os.environ.get("APOLLO_BENCH_MAX_MEMORY_GB"):
        limit = int(float(os.environ["APOLLO_BENCH_MAX_MEMORY_GB"]) * GIB)
        if limit < cap:
            cap, origin = limit, "APOLLO_BENCH_MAX_MEMORY_GB"
    logits_gib = spec["length"] * spec["model"]["vocab_size"] * 4 / GIB
    log(f"   {spec['impl']:>15} at {spec['length']:>6,} tokens (memory cap {cap / GIB:.1f} GiB) ...")
    # a new session: the child leads its own process group, which is what is killed (and nothing else)
    process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    started, highest, status, reason = time.monotonic(), 0, None, None
    while process.poll() is None:
        highest = max(highest, _status_bytes(Path(f"/proc/{process.pid}/status"), "VmRSS:"))
        if highest > cap:
            status = "skipped (would not fit)"
            reason = (f"passed the {cap / GIB:.1f} GiB cap ({origin}), killed; "
                      f"the full fp32 logits alone are {logits_gib:.1f} GiB")
        elif _available_bytes() < MACHINE_FLOOR:
            status = "skipped (machine memory ran low)"
            reason = f"the machine's free memory fell under {MACHINE_FLOOR / GIB:.1f} GiB at {highest / GIB:.1f} GiB RSS, killed"
        elif time.monotonic() - started > timeout:
            status, reason = "skipped (timed out)", f"timed out after {timeout:.0f} s, killed"
        if status:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if status is None and process.returncode != 0:
        tail = stderr.strip().splitlines()[-1:] or ["?"]
        status, reason = "failed", f"exit {process.returncode}: {tail[0][:300]}"
        if "can't allocate memory" in stderr or process.returncode == -signal.SIGKILL:
            status = "skipped (would not fit)"
    if status:
        log(f"      {status}: {reason}")
        return {"status": status, "reason": reason, "highest_rss_seen": highest}
    result = json.loads(stdout.strip().splitlines()[-1])
    if "peak_bytes" in result:
        log(f"      peak {result['peak_bytes'] / GIB:.2f} GiB, {result['seconds']:.2f} s")
    elif result["status"] == "measured":
        log(f"      plain HF {result['hf_seconds']:.2f} s/step, ours {result['ours_seconds']:.2f} s/step")
    else:
        log(f"      {result['status']}: {result['reason']}")
    return result


def not_installed(impl: Impl) -> dict[str, Any] | None:
    """The result for a peer that is not installed at all (found without starting a child), else None."""
    if impl.package is None or importlib.util.find_spec(impl.package) is not None:
        return None
    return {"status": "unavailable", "reason": f"not installed (pip install {PIP_NAMES[impl.package]})"}


# -- the report --------------------------------------------------------------------------------


def kilo(n: int) -> str:
    """2048 -> '2k': the short form row keys use."""
    return f"{n // 1024}k" if n >= 1024 else str(n)


def memory_table(results: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every implementation at every length where it was tried, measured or not, with why not."""
    entries = []
    for impl in IMPLS:
        for length in sorted({n for key, n in results if key == impl.key}):
            r, base = results[impl.key, length], results.get(("hf", length), {})
            entry: dict[str, Any] = {"impl": impl.key, "label": impl.label, "length": length, "status": r["status"]}
            if r["status"] == "measured":
                entry |= {"peak_gib": r["peak_bytes"] / GIB, "step_increment_gib": (r["peak_bytes"] - r["rss_before_step"]) / GIB,
                          "seconds": r["seconds"],
                          "ratio_vs_plain_hf": r["peak_bytes"] / base["peak_bytes"] if base.get("status") == "measured" else None}
            else:
                entry["reason"] = r["reason"]
            entries.append(entry)
    return entries


def print_memory_table(entries: list[dict[str, Any]], lengths: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Peak memory of one step: peak RSS of a fresh process, its ratio to plain HF, and its rise during the step",
                  show_lines=True)
    table.add_column("Implementation")
    for length in lengths:
        table.add_column(f"{length:,} tokens", justify="right")
    by = {(e["impl"], e["length"]): e for e in entries}
    for impl in IMPLS:
        cells = []
        for length in lengths:
            e = by.get((impl.key, length))
            if e is None:
                cells.append("—")
            elif e["status"] == "measured":
                ratio = e["ratio_vs_plain_hf"]
                versus = "no plain HF to compare" if ratio is None else f"{ratio:.2f}x plain HF"
                cells.append(f"{e['peak_gib']:.2f} GiB\n[dim]{versus}; +{e['step_increment_gib']:.2f} GiB in the step[/dim]")
            else:
                cells.append(f"[yellow]{e['status']}[/yellow]\n[dim]{e['reason']}[/dim]")
        table.add_row(f"{impl.key}\n[dim]{impl.label}[/dim]", *cells)
    Console(width=160).print(table)


def main() -> int:
    from bench._common import Row, Target, environment, log, parse_args, report

    args = parse_args(__doc__.splitlines()[0])
    plan = SMOKE if args.smoke else FULL
    timeout = 300 if args.smoke else 1800
    runs = [("ours", n) for n in sorted({*plan.lengths, *plan.compare_lengths})]
    runs += [(impl.key, n) for n in plan.compare_lengths for impl in IMPLS if impl.key != "ours"]
    runs += [(THROUGHPUT, plan.throughput_length)]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    log(f"{len(runs)} measurements, each in its own process (none for a peer known not to run) ...")
    for key, length in runs:
        earlier = next((r for (other, _), r in results.items() if other == key and r["status"] in ("unavailable", "not runnable on CPU")), None)
        known = earlier or (None if key == THROUGHPUT else not_installed(BY_KEY[key]))
        if known:  # the same answer at every length: no child for it
            results[key, length] = known
            continue
        spec = {"impl": key, "length": length, "model": plan.model, "chunk_tokens": plan.chunk_tokens}
        results[key, length] = measure(spec, timeout=timeout)

    def ok(key: str, length: int) -> dict[str, Any] | None:
        r = results.get((key, length))
        return r if r is not None and r["status"] == "measured" else None

    model_note = (f"Llama-style, hidden {plan.model['hidden_size']}, {plan.model['num_hidden_layers']} layers, "
                  f"vocab {plan.model['vocab_size']:,}; fp32; CPU")
    rows: list[Row] = []
    notes: list[str] = []
    # 1. memory against plain HF, wherever both were measured
    for length in sorted({n for _, n in results}):
        base = ok("hf", length)
        for impl in IMPLS:
            mine = ok(impl.key, length)
            if impl.key == "hf" or base is None or mine is None:
                continue
            rows.append(Row(
                key=f"memory_{kilo(length)}_{impl.key}", name=f"peak memory of one step at {length:,} tokens: {impl.key}",
                baseline_label=BY_KEY["hf"].label, ours_label=impl.label,
                conditions=f"one {length:,}-token sample, all tokens trained; {model_note}; peak RSS of a fresh process",
                unit="GiB", baseline=base["peak_bytes"] / GIB, ours=mine["peak_bytes"] / GIB,
                target=Target("<=", 0.15) if (impl.key, length) == ("ours", plan.ratio_length) else None,
                details={"baseline_step_increment_gib": (base["peak_bytes"] - base["rss_before_step"]) / GIB,
                         "ours_step_increment_gib": (mine["peak_bytes"] - mine["rss_before_step"]) / GIB},
            ))
    for (key, length), r in results.items():
        if r["status"] != "measured":
            notes.append(f"{key} at {kilo(length)}: {r['status']}: {r['reason']}")
    # 2. our growth per doubling
    for short, long in zip(plan.lengths, plan.lengths[1:]):
        a, b = ok("ours", short), ok("ours", long)
        if a is None or b is None:
            continue
        rows.append(Row(
            key=f"growth_{kilo(short)}_{kilo(long)}", name=f"our peak memory, {kilo(short)} -> {kilo(long)} tokens (ratio = growth per doubling)",
            baseline_label=f"trainer step at {short:,} tokens", ours_label=f"trainer step at {long:,} tokens",
            conditions=f"one sample per step, all tokens trained; {model_note}; peak RSS of a fresh process",
            unit="GiB", baseline=a["peak_bytes"] / GIB, ours=b["peak_bytes"] / GIB, target=Target("<=", 2.2),
            details={"seconds_short": a["seconds"], "seconds_long": b["seconds"],
                     "step_increment_growth": (b["peak_bytes"] - b["rss_before_step"]) / max(1, a["peak_bytes"] - a["rss_before_step"])},
        ))
    # 3. throughput
    length = plan.throughput_length
    timed = ok(THROUGHPUT, length)
    if timed:
        rows.append(Row(
            key=f"throughput_{kilo(length)}", name=f"training throughput at {length:,} tokens (forward+backward)",
            baseline_label=BY_KEY["hf"].label, ours_label=BY_KEY["ours"].label,
            conditions=(f"one {length:,}-token sample; {model_note}; median of 3 steps after 1 warm-up each, "
                        "the two alternating in one process"),
            unit="tokens/s", baseline=length / timed["hf_seconds"], ours=length / timed["ours_seconds"],
            target=Target(">=", 0.9), details={"baseline_seconds": timed["hf_seconds"], "ours_seconds": timed["ours_seconds"],
                                              "torch_threads": timed["torch_threads"]},
        ))
    entries = memory_table(results)
    for note in notes:
        log(f"note: {note}")
    parameters = {"smoke": args.smoke, "model": plan.model, "lengths": plan.lengths, "compare_lengths": plan.compare_lengths,
                  "chunk_tokens": plan.chunk_tokens, "implementations": {impl.key: impl.label for impl in IMPLS},
                  "notes": notes, "memory_table": entries,
                  "measurements": {f"{key}@{length}": r for (key, length), r in results.items()}}
    libraries = ["apollo-es", "torch", "transformers", "torchtune", "torchao", "liger-kernel", "cut-cross-entropy", "triton"]
    path = report("train_memory", "apollo-es trainer memory and speed benchmark", rows, environment(libraries),
                  out_dir=args.out, parameters=parameters)
    print_memory_table(entries, plan.compare_lengths)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        try:
            print(json.dumps(child(json.loads(sys.argv[2]))))
        except NotRunnable as exc:
            print(json.dumps({"status": exc.status, "reason": str(exc)}))
        sys.exit(0)
    sys.exit(main())
