"""Ulysses sequence parallelism: one packed row spread over the ranks of a group.

A bin of `data.max_tokens` tokens must otherwise fit one GPU's activations. With
`[parallel] sequence = N`, the ranks form a (data, sequence) grid of world/N x N, and the N
ranks of a sequence group train the same bins: each holds a contiguous 1/N of every packed
row (ids, labels, per-sample positions; `train.data.slice_sequence` cuts it), and every
layer but attention runs on that slice alone. Attention needs the whole row, so, as in
DeepSpeed-Ulysses (and Snowflake's ArcticTraining / ALST, which brought it to Hugging Face
models), each attention layer:

1. exchanges q, k and v in one all-to-all each: [T/N tokens, all heads] on every rank
   becomes [all T tokens, heads/N];
2. runs the packed-segment attention of `train.attention` over the whole row with the
   row's `cu_seqlens`, so samples never attend across each other, wherever the slice
   boundaries fall;
3. exchanges the output back: [T tokens, heads/N] -> [T/N tokens, all heads].

The exchange is its own inverse, so its gradient is the same exchange (`_Exchange`);
activation checkpointing recomputes it, and every rank of a group makes the same
collectives in the same order. `ulysses(inner)` wraps an attention function this way;
`train.attention` registers the wrapped ones with transformers' `AttentionInterface`, so
any model that dispatches attention through it works unchanged. The group reaches the
layers in the forward kwargs (`SEQUENCE_GROUP_KWARG`, next to the sample boundaries), not
through global state.

Heads: the query heads must divide by N. Key/value heads (grouped-query attention) either
divide by N too, or divide N; then each is repeated N/kv times before the exchange, as
Ulysses does, so every rank receives the one KV head its query heads read. `kv_repeats`
checks this, at setup (`check_heads`, from the model config) and in every call.

Why FSDP2 shards over the whole world, not over the data dimension only (`train.sharding`
applies `fully_shard` with the default, world-wide mesh; the grid here only picks each
rank's bins, slice and sequence group):
- memory: sequence parallelism is for models whose long rows do not fit, and sharding
  over all world ranks splits parameters, gradients and AdamW state N times finer than
  over world/N (with world = N, sharding over data only would not shard at all);
- gradients: the N ranks of a group each hold a partial gradient of every parameter (from
  their slice's tokens, with upstream gradients from the whole row through the
  all-to-alls) and those must be summed; FSDP2's reduce-scatter over the world sums them
  together with the data-parallel reduction, in the collective it makes anyway. It
  averages, so the recipe scales each loss by the world size (`accumulate_gradients`),
  which turns the average into that sum;
- checkpoints: the shards depend on the world size alone, so a run saved at one
  sequence-parallel degree resumes at another.
Consecutive ranks form a sequence group, so on a multi-GPU node its all-to-alls stay on
the node's links.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from train.errors import TrainConfigError

__all__ = ["SEQUENCE_GROUP_KWARG", "ParallelLayout", "check_heads", "kv_repeats", "parallel_layout", "ulysses"]

SEQUENCE_GROUP_KWARG = "sequence_parallel_group"

AttentionFunction = Callable[..., tuple[torch.Tensor, Any]]


@dataclass(frozen=True)
class ParallelLayout:
    """This rank's place in the (data, sequence) grid."""

    data_size: int  # groups that train different bins
    data_rank: int
    sequence_size: int  # ranks that share each bin, a slice each
    sequence_rank: int
    sequence_group: dist.ProcessGroup | None  # None without sequence parallelism


def parallel_layout(world: int, rank: int, sequence: int, device: torch.device) -> ParallelLayout:
    """Arrange `world` ranks into a world/sequence x sequence grid (every rank calls this)."""
    if world % sequence:
        raise TrainConfigError(f"parallel.sequence = {sequence} must divide the number of processes, {world}")
    if sequence == 1:
        return ParallelLayout(world, rank, 1, 0, None)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world // sequence, sequence), mesh_dim_names=("dp", "sp"))
    return ParallelLayout(world // sequence, mesh.get_local_rank("dp"), sequence, mesh.get_local_rank("sp"), mesh.get_group("sp"))


def kv_repeats(heads: int, kv_heads: int, sequence: int) -> int:
    """How often each key/value head is repeated before the exchange (1: not at all)."""
    if heads % sequence:
        raise TrainConfigError(f"parallel.sequence = {sequence} must divide the model's {heads} attention heads")
    if kv_heads % sequence == 0:
        return 1
    if sequence % kv_heads:
        raise TrainConfigError(f"parallel.sequence = {sequence} and the model's {kv_heads} key/value heads: "
                               "one must divide the other (KV heads are repeated when there are fewer than ranks)")
    return sequence // kv_heads


def check_heads(hf_config: Any, sequence: int) -> None:
    """Raise TrainConfigError if the model's heads cannot be split over `sequence` ranks."""
    heads = hf_config.num_attention_heads
    kv_repeats(heads, getattr(hf_config, "num_key_value_heads", None) or heads, sequence)


def ulysses(inner: AttentionFunction) -> AttentionFunction:
    """`inner` (an attention function over a whole packed row) run on a row spread over a group."""

    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        # query (B, heads, T/N, d), key and value (B, kv_heads, T/N, d); returns (B, T/N, heads, d)
        group = kwargs.pop(SEQUENCE_GROUP_KWARG, None)
        if group is None:
            raise ValueError(f"sequence-parallel attention needs the group in the forward kwargs ({SEQUENCE_GROUP_KWARG})")
        size = dist.get_world_size(group)
        repeats = kv_repeats(query.shape[1], key.shape[1], size)
        if repeats > 1:
            key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
        query, key, value = (_tokens_to_heads(t, group, size) for t in (query, key, value))
        out, _ = inner(module, query, key, value, attention_mask, **kwargs)
        return _heads_to_tokens(out, group, size), None

    attention.__name__ = attention.__qualname__ = f"ulysses_{inner.__name__}"
    return attention


def _tokens_to_heads(x: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """(B, H, T/N, d), this rank's tokens -> (B, H/N, T, d), this rank's heads."""
    b, h, t, d = x.shape
    sent = x.reshape(b, size, h // size, t, d).transpose(0, 1)  # chunk r: the heads rank r gets
    received = _Exchange.apply(sent, group)  # chunk r: rank r's tokens of this rank's heads
    return received.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * t, d)


def _heads_to_tokens(x: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """(B, T, H/N, d), this rank's heads -> (B, T/N, H, d), this rank's tokens."""
    b, t, h, d = x.shape
    sent = x.reshape(b, size, t // size, h, d).transpose(0, 1)  # chunk r: the tokens rank r holds
    received = _Exchange.apply(sent, group)  # chunk r: rank r's heads of this rank's tokens
    return received.permute(1, 2, 0, 3, 4).reshape(b, t // size, size * h, d)


class _Exchange(torch.autograd.Function):
    """all_to_all_single over dim 0 (chunk r goes to rank r); its own inverse, hence its gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _Exchange.apply(grad, ctx.group), None
