"""FSDP2: sharding the model across ranks, and getting the first weights into the shards.

    shard(...)          each decoder layer one FSDP unit, the rest (embeddings, norm,
                        lm_head and the chunked loss) the root unit
    broadcast_weights   rank 0 holds the full state dict; every rank receives its shards

The shards span every rank, sequence-parallel ranks included (`fully_shard`'s default mesh,
the whole world; train/sequence_parallel.py says why), so the reduce-scatter that averages
gradients over the world also sums the partial gradients of a sequence group.

Mixed precision is FSDP2's `MixedPrecisionPolicy`: the sharded parameters (the optimizer's
master weights) stay fp32, layers are all-gathered and computed in `param_dtype` (bf16 on
GPUs), and gradients are reduce-scattered in fp32 into fp32 shards. Gradient sync stays on
for every micro-batch: each backward reduce-scatters and FSDP2 adds the result into the
sharded gradient, so a rank never holds more than its shard of the gradients between
micro-batches (with sync off, FSDP2 would keep the whole unsharded gradient, upcast to
fp32, on every rank until the last micro-batch).

With `cpu_offload`, the sharded parameters, gradients and hence AdamW's state live in CPU
memory; FSDP2 copies each unit's shard to the GPU for its all-gather and the gradient
shard back after the reduce-scatter, and the optimizer step runs on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["broadcast_weights", "shard"]


def shard(module: nn.Module, hf_model: nn.Module, *, dtype: torch.dtype, cpu_offload: bool) -> None:
    """Apply FSDP2 to `module` (the loss wrapper around `hf_model`), on the meta device or not."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    settings: dict[str, Any] = {
        "mp_policy": MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32),
        "offload_policy": CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy(),
    }
    layer_types = set(getattr(hf_model, "_no_split_modules", None) or [])
    layers = [m for m in hf_model.modules() if type(m).__name__ in layer_types] or list(hf_model.get_decoder().layers)
    for layer in layers:
        fully_shard(layer, **settings)
    fully_shard(module, **settings)


def broadcast_weights(hf_model: nn.Module, full_state: dict[str, torch.Tensor] | None) -> None:
    """Load rank 0's full state dict into every rank's shards (others pass None).

    Tensors go out one at a time, so no rank other than 0 ever holds more than one full
    tensor beyond its shards; rank 0 holds the source model in CPU memory once.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(hf_model, full_state or {}, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
