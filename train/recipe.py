"""The training recipe, top to bottom: setup, the loop, save.

    apollo-es train CONFIG.toml                      one process (CPU or one GPU)
    torchrun --nproc-per-node N -m train CONFIG.toml FSDP2 over N GPUs (or gloo processes on CPU)
        --set parallel.sequence=S                    ... with each packed row spread over S of them

Setup checks every input before the first step: the config, the dataset (exists, not
empty, no sample over max_tokens), the tokenizer hash, token ids against the vocabulary,
the checkpoint to resume from. Then it builds the model, wraps it with the chunked loss,
shards it (FSDP2) when there are several processes, and makes AdamW and the schedule.
Under FSDP2 the model is built on the meta device and sharded before any weight exists:
rank 0 alone loads the full weights and broadcasts them, or, on resume, every rank reads
its own shards from the checkpoint (written by any number of ranks).

Each optimizer step takes `global_batch` samples from the data order, packs them into bins
of at most `max_tokens` and deals the bins to the ranks; every bin is one forward/backward
(gradient accumulation). The loss of a bin is its summed token loss divided by the
trained-token count of the *whole global batch*, so the gradients summed over bins and
ranks are those of one mean over the global batch, however it was split.

With `[parallel] sequence = S` the ranks form a (world/S data x S sequence) grid: the bins
are dealt to the world/S data-parallel groups, each of the S ranks of a group trains its
contiguous slice of every bin, and the attention layers exchange q, k, v and the output
with all-to-alls so that attention sees the whole row (train/sequence_parallel.py). FSDP2
still shards over all ranks. Each rank's loss is that of its slice's labels, over the same
global denominator, so the sums over slices, bins and ranks are again one mean.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import torch
import torch.distributed as dist
from torch import nn

from train.attention import choose_attention
from train.checkpoint import TrainerState, find_checkpoint, load_training_state, save_checkpoint
from train.config import TrainConfig
from train.data import DataOrder, StepPlan, check_vocabulary, open_dataset, plan_step
from train.errors import TrainError
from train.metrics import MetricsLog, StepProgress, model_flops_per_token, peak_flops, peak_memory, reset_peak_memory
from train.model import PackedCausalLM, empty_model, load_model, materialize, model_config
from train.sequence_parallel import check_heads, parallel_layout
from train.sharding import broadcast_weights, shard
from train.tokenizer import check_tokenizer

__all__ = ["TrainResult", "accumulate_gradients", "build_model", "init_distributed", "learning_rate", "run", "training_dtype"]

log = logging.getLogger("apollo_es.train")


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # optimizer steps done in total (including those before a resume)
    losses: list[float] = field(default_factory=list)  # this invocation's per-step losses
    checkpoints: list[Path] = field(default_factory=list)
    attention: str = ""


def run(config: TrainConfig, *, resume: str | None = None, progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Train as `config` says; returns what was done.

    resume: None (start fresh), "auto" (the newest checkpoint in run_dir if there is one),
    "latest" (the newest, which must exist), or a checkpoint directory.
    stop_at: stop after this optimizer step, with a checkpoint, as if interrupted there (the
    schedule still spans the whole run): resuming continues the same curve.
    """
    # -- setup: processes and devices ---------------------------------------------------
    world, rank, device = init_distributed()
    is_main = rank == 0
    run_dir = Path(config.run_dir)
    try:
        return _run(config, resume, progress, stop_at, world, rank, device, is_main, run_dir)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(config: TrainConfig, resume, progress, stop_at, world, rank, device, is_main, run_dir) -> TrainResult:
    # -- setup: data and tokenizer, checked before anything heavy -------------------------
    dataset = open_dataset(config.data.path, max_tokens=config.data.max_tokens)
    tok_hash = check_tokenizer(dataset.manifest.tokenizer_hash, config.tokenizer_dir, dataset=f"dataset {config.data.path}")
    order = DataOrder([m.repeat for m in dataset.meta], global_batch=config.train.global_batch,
                      seed=config.data.seed, shuffle=config.data.shuffle)
    total_steps = order.steps_per_epoch * config.data.epochs
    if config.train.max_steps:
        total_steps = min(total_steps, config.train.max_steps)
    schedule_steps = total_steps  # the LR schedule spans the whole run, even when stop_at cuts it short
    end_step = min(total_steps, stop_at) if stop_at else total_steps

    # -- setup: where to start ------------------------------------------------------------
    checkpoint = find_checkpoint(run_dir, resume)
    start_step = 0
    if checkpoint is not None:
        state = TrainerState.read(checkpoint)
        _check_resumable(state, config, dataset.manifest.content_hash, checkpoint)
        start_step = state.step

    # -- setup: model -------------------------------------------------------------------
    layout = parallel_layout(world, rank, config.parallel.sequence, device)
    attention = choose_attention(config.model.attention, device, sequence=layout.sequence_size)
    compute_dtype = training_dtype(config.model.dtype, device)
    use_fsdp = config.train.fsdp == "on" or (config.train.fsdp == "auto" and world > 1)
    if world > 1 and not use_fsdp:
        raise TrainError("several processes need FSDP: set train.fsdp to \"auto\" or \"on\"")
    if config.train.offload_parameters and not use_fsdp:
        raise TrainError("train.offload_parameters needs FSDP2 (several processes, or train.fsdp = \"on\")")
    hf_model, module = build_model(config, checkpoint, attention=attention.implementation, device=device,
                                    use_fsdp=use_fsdp, dtype=compute_dtype, is_main=is_main, sequence_group=layout.sequence_group)
    check_vocabulary(dataset, hf_model.config.vocab_size)
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32 and not use_fsdp)

    # -- setup: optimizer, schedule, resume -----------------------------------------------
    o = config.optim
    optimizer = torch.optim.AdamW(module.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                  foreach=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(s, config, schedule_steps) / o.lr)
    if checkpoint is not None:
        load_training_state(checkpoint, hf_model=hf_model, optimizer=optimizer, scheduler=scheduler)
        log.info("resumed from %s at step %d", checkpoint, start_step)
    else:
        torch.manual_seed(config.train.seed + rank)

    metrics = MetricsLog(run_dir, enabled=is_main, resume_step=start_step if checkpoint else None,
                         sinks=config.metrics.sinks, config=msgspec.to_builtins(config))
    bar = StepProgress(end_step, start_step, enabled=progress and is_main)
    n_params = sum(p.numel() for p in hf_model.parameters())  # a DTensor's numel() is its global size
    peak = peak_flops(device)
    result = TrainResult(run_dir=run_dir, steps=start_step, attention=attention.path)
    if is_main:
        log.info("training %s: %d steps (%d per epoch), %d samples per epoch, world size %d (%d data x %d sequence), "
                 "attention: %s, dtype %s", type(hf_model).__name__, total_steps, order.steps_per_epoch, order.samples_per_epoch,
                 world, layout.data_size, layout.sequence_size, attention.path, str(compute_dtype).removeprefix("torch."))

    # -- the loop -------------------------------------------------------------------------
    try:
        for step in range(start_step, end_step):
            epoch, step_in_epoch = divmod(step, order.steps_per_epoch)
            plan = plan_step(dataset, order.step(epoch, step_in_epoch), max_tokens=config.data.max_tokens,
                             world_size=layout.data_size, rank=layout.data_rank,
                             sequence_size=layout.sequence_size, sequence_rank=layout.sequence_rank)
            reset_peak_memory(device)
            started = time.perf_counter()
            loss_sum = accumulate_gradients(module, plan, device=device, autocast=autocast, world_size=world)
            grad_norm = _clip(module, o.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if world > 1:
                dist.all_reduce(loss_sum)
            loss = loss_sum.item() / max(plan.trained_tokens, 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            memory, memory_kind = peak_memory(device)
            if world > 1:
                tensor = torch.tensor([memory], dtype=torch.int64, device=device)
                dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
                memory = int(tensor.item())
            record = {
                "step": step + 1, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "tokens": plan.tokens, "trained_tokens": plan.trained_tokens, "samples": plan.samples, "bins": plan.bins,
                "micro_batches": len(plan.micro_batches), "tokens_per_s": plan.tokens / elapsed, "step_time_s": elapsed,
                "peak_memory_bytes": memory, "memory": memory_kind, "attention": attention.path, "world_size": world,
                "sequence_parallel": layout.sequence_size,
            }
            if peak:
                lengths = [dataset.meta[i].tokens for i in order.step(epoch, step_in_epoch)]
                record["mfu"] = model_flops_per_token(hf_model.config, n_params, lengths) * plan.tokens / elapsed / (peak * world)
            if not math.isfinite(loss):
                raise TrainError(f"step {step + 1}: the loss is {loss}; stopping (last checkpoint kept)")
            metrics.write(record)
            bar.update(record)
            result.losses.append(loss)
            result.steps = step + 1
            every = config.checkpoint.every_steps
            if every and (step + 1) % every == 0 and step + 1 < end_step:
                result.checkpoints.append(_save(run_dir, step + 1, order, config, world, dataset, tok_hash, hf_model, optimizer, scheduler))
    finally:
        bar.close()
        metrics.close()

    # -- save ---------------------------------------------------------------------------
    if (config.checkpoint.save_final or end_step < total_steps) and result.steps > start_step:
        result.checkpoints.append(_save(run_dir, result.steps, order, config, world, dataset, tok_hash, hf_model, optimizer, scheduler))
    return result


def accumulate_gradients(module: nn.Module, plan: StepPlan, *, device: torch.device, autocast=None,
                         world_size: int = 1) -> torch.Tensor:
    """Forward and backward every micro-batch of this rank's plan; returns this rank's summed loss.

    Each micro-batch's summed token loss is divided by the trained-token count of the whole
    global batch before backward, so the accumulated gradient (summed over micro-batches and,
    by FSDP's reduce, over ranks) is the gradient of the mean over the global batch. FSDP
    averages over all ranks, hence the extra factor world_size. Under sequence parallelism a
    micro-batch is this rank's slice of a bin and the loss that of its labels; every rank of
    the sequence group holds a partial gradient of the bin's loss (the all-to-alls carry
    each slice's gradient to the others), and the same average times world_size sums them.
    Under FSDP2 every backward reduce-scatters into the sharded gradients (see
    train/sharding.py): every rank has the same number of micro-batches, so the collectives
    line up.
    """
    scale = world_size / max(plan.trained_tokens, 1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for micro in plan.micro_batches:
        with autocast or contextlib.nullcontext():
            micro_loss = module(micro.to(device))
        (micro_loss * scale).backward()
        loss_sum += micro_loss.detach().double()
    return loss_sum


def learning_rate(step: int, config: TrainConfig, total_steps: int) -> float:
    """The LR of optimizer step `step` (0-based): linear warm-up, then lr -> min_lr by the last step."""
    o = config.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps - 1))
    if o.schedule == "linear":
        return o.lr - (o.lr - o.min_lr) * progress
    return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


# -- helpers ----------------------------------------------------------------------------


def init_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return world, rank, device


def training_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def build_model(config: TrainConfig, checkpoint: Path | None, *, attention: str, device: torch.device,
                 use_fsdp: bool, dtype: torch.dtype, is_main: bool,
                 sequence_group: dist.ProcessGroup | None = None) -> tuple[nn.Module, PackedCausalLM]:
    """The model and the loss wrapper that is trained, sharded under FSDP2.

    One process starting fresh loads the model whole. Otherwise the model is built on the
    meta device (and sharded) first, then its shards are allocated: from a checkpoint,
    `load_training_state` fills them later (each rank reading its own); starting fresh,
    rank 0 alone loads the full model in CPU memory and broadcasts it.
    """
    m = config.model
    if checkpoint is None and not use_fsdp:
        hf_model = load_model(m.path, m.config, attention=attention, init_seed=m.init_seed)
    else:
        source = checkpoint or m.path
        hf_model = empty_model(model_config(source, None if source else m.config), attention=attention)
    check_heads(hf_model.config, config.parallel.sequence)  # on the meta model under FSDP2: before rank 0 loads weights
    if config.train.activation_checkpointing:
        _enable_checkpointing(hf_model)
    hf_model.config.use_cache = False
    hf_model.train()
    module = PackedCausalLM(hf_model, chunk_tokens=config.train.loss_chunk_tokens, offload_activations=config.train.offload_activations,
                            sequence_group=sequence_group)
    if checkpoint is None and not use_fsdp:
        module.to(device)
        return hf_model, module
    if use_fsdp:
        shard(module, hf_model, dtype=dtype, cpu_offload=config.train.offload_parameters)
    materialize(module, hf_model, params_device=torch.device("cpu") if config.train.offload_parameters else device, device=device)
    if checkpoint is None:
        full = load_model(m.path, m.config, attention=attention, init_seed=m.init_seed).state_dict() if is_main else None
        broadcast_weights(hf_model, full)
    return hf_model, module


def _enable_checkpointing(hf_model: nn.Module) -> None:
    """Recompute each decoder layer in backward (transformers >= 5 renamed the switch)."""
    if hasattr(hf_model, "activation_checkpointing_enable"):
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _clip(module: nn.Module, max_norm: float) -> float:
    params = [p for p in module.parameters() if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _check_resumable(state: TrainerState, config: TrainConfig, content_hash: str, checkpoint: Path) -> None:
    if state.dataset_content_hash != content_hash:
        raise TrainError(f"{checkpoint} was trained on another dataset (content hash differs); resuming would not continue its data order")
    if (state.global_batch, state.data_seed, state.shuffle) != (config.train.global_batch, config.data.seed, config.data.shuffle):
        raise TrainError(f"{checkpoint}: train.global_batch, data.seed and data.shuffle must match the run being resumed")


def _save(run_dir, step, order, config, world, dataset, tok_hash, hf_model, optimizer, scheduler) -> Path:
    epoch, step_in_epoch = divmod(step, order.steps_per_epoch)
    state = TrainerState(
        step=step, epoch=epoch, step_in_epoch=step_in_epoch, data_seed=config.data.seed, shuffle=config.data.shuffle,
        global_batch=config.train.global_batch, world_size=world, dataset_content_hash=dataset.manifest.content_hash,
        tokenizer_hash=tok_hash, config=msgspec.to_builtins(config),
    )
    return save_checkpoint(run_dir, state, hf_model=hf_model, optimizer=optimizer, scheduler=scheduler,
                           tokenizer_dir=config.tokenizer_dir, keep_last=config.checkpoint.keep_last)
