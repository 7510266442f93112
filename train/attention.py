"""Attention over packed samples: each sample attends only to itself, causally.

Two functions are registered with transformers' `AttentionInterface`, so any model whose
attention layers dispatch through it (Llama, Qwen, GLM-4.5, ...) uses them unchanged:

- `flash_attention_2` path (`FLASH_VARLEN`): flash-attn's `flash_attn_varlen_func` over the
  whole packed row with `cu_seqlens`; used when flash-attn imports and CUDA is present.
- `sdpa` per segment (`SDPA_SEGMENTS`): `scaled_dot_product_attention(is_causal=True)` on
  each sample's slice of the row, one call per sample. No mask tensor is ever built (the
  memory stays linear in the length: on CPU and GPU, SDPA picks a flash-style kernel when
  there is no mask), and no sample sees another.

The sample boundaries travel through the model's forward kwargs as `cu_seq_lens_q` /
`cu_seq_lens_k` / `max_length_q` / `max_length_k` (transformers' names for packed
sequences). Both names are unknown to transformers' mask builder, so the model builds no
causal mask for them either.

Under sequence parallelism (`[parallel] sequence = N`) each rank holds 1/N of the row, and
the same two functions, wrapped by `train.sequence_parallel.ulysses`, are registered as
`ULYSSES_FLASH_VARLEN` and `ULYSSES_SDPA_SEGMENTS`: all-to-alls around them give each rank
the whole row for 1/N of the heads; the boundaries are the whole row's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from train.errors import TrainConfigError
from train.sequence_parallel import SEQUENCE_GROUP_KWARG, ulysses

__all__ = [
    "FLASH_VARLEN",
    "SDPA_SEGMENTS",
    "ULYSSES_FLASH_VARLEN",
    "ULYSSES_SDPA_SEGMENTS",
    "AttentionChoice",
    "choose_attention",
    "flash_attn_available",
    "register_attention",
    "segment_kwargs",
]

log = logging.getLogger("apollo_es.train.attention")

# No "flash" in the names: transformers takes any implementation whose name contains it for a
# hub kernel to download, and refuses to build the model when there is none.
FLASH_VARLEN = "apollo_varlen"
SDPA_SEGMENTS = "apollo_sdpa_segments"
ULYSSES_FLASH_VARLEN = "apollo_ulysses_varlen"
ULYSSES_SDPA_SEGMENTS = "apollo_ulysses_sdpa_segments"
_ULYSSES = {SDPA_SEGMENTS: ULYSSES_SDPA_SEGMENTS, FLASH_VARLEN: ULYSSES_FLASH_VARLEN}


@dataclass(frozen=True)
class AttentionChoice:
    implementation: str  # the name registered with transformers
    path: str  # what the metrics and logs call it


@cache
def flash_attn_available() -> bool:
    """flash-attn imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:  # ImportError, or a build that does not match this torch/CUDA
        return False
    return True


def choose_attention(requested: str, device: torch.device, *, sequence: int = 1) -> AttentionChoice:
    """The attention path for `requested` (auto, flash, sdpa) on `device`, over `sequence`
    sequence-parallel ranks; logs the choice."""
    register_attention()
    flash_ok = device.type == "cuda" and flash_attn_available()
    if requested == "flash" and not flash_ok:
        raise TrainConfigError("model.attention = \"flash\" needs flash-attn and a CUDA device; use \"auto\" or \"sdpa\"")
    if requested in ("flash", "auto") and flash_ok:
        choice = AttentionChoice(FLASH_VARLEN, "flash_attention_2 (flash_attn_varlen_func)")
    else:
        choice = AttentionChoice(SDPA_SEGMENTS, "sdpa per sample segment")
    if sequence > 1:
        choice = AttentionChoice(_ULYSSES[choice.implementation], f"{choice.path}, Ulysses over {sequence} ranks")
    log.info("attention path: %s", choice.path)
    return choice


def segment_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int, sequence_group: torch.distributed.ProcessGroup | None = None) -> dict[str, object]:
    """The forward kwargs that carry a packed row's sample boundaries to the attention layers
    and, under sequence parallelism, the group the row is spread over."""
    kwargs: dict[str, object] = {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": max_seqlen,
                                 "max_length_k": max_seqlen}
    if sequence_group is not None:
        kwargs[SEQUENCE_GROUP_KWARG] = sequence_group
    return kwargs


def register_attention() -> None:
    """Register the four functions with transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SDPA_SEGMENTS, sdpa_segments_attention)
    AttentionInterface.register(FLASH_VARLEN, flash_varlen_attention)
    AttentionInterface.register(ULYSSES_SDPA_SEGMENTS, ulysses(sdpa_segments_attention))
    AttentionInterface.register(ULYSSES_FLASH_VARLEN, ulysses(flash_varlen_attention))


def _boundaries(query: torch.Tensor, kwargs: dict) -> list[int]:
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # not packed (e.g. generation after training): one sequence
        return [0, query.shape[2]]
    if query.shape[0] != 1:
        raise ValueError("packed attention expects a batch of one packed row")
    return cu.tolist()


def sdpa_segments_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, T, head_dim)
    key: torch.Tensor,  # (1, kv_heads, T, head_dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each sample's slice; returns (1, T, heads, head_dim) like transformers' own."""
    if attention_mask is not None:
        raise ValueError("sdpa per segment takes no attention mask: the sample boundaries come from cu_seq_lens_q")
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise ValueError("sdpa per segment supports neither attention logit soft-capping nor sliding windows; use flash-attn")
    groups = query.shape[1] // key.shape[1]
    bounds = _boundaries(query, kwargs)
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=groups > 1,
            )
        )
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def flash_varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, T, head_dim)
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:  # pragma: no cover - needs flash-attn and a GPU
    """flash-attn's variable-length kernel over the packed row; returns (1, T, heads, head_dim)."""
    from flash_attn import flash_attn_varlen_func

    if attention_mask is not None:
        raise ValueError("the flash varlen path takes no attention mask: the sample boundaries come from cu_seq_lens_q")
    bounds = kwargs.get("cu_seq_lens_q")
    length = query.shape[2]
    if bounds is None:
        bounds = torch.tensor([0, length], dtype=torch.int32, device=query.device)
        max_length = length
    else:
        bounds = bounds.to(device=query.device, dtype=torch.int32)
        max_length = int(kwargs.get("max_length_q") or length)
    # (1, heads, T, d) -> (T, heads, d); flash-attn handles grouped KV heads itself
    q, k, v = (t.squeeze(0).transpose(0, 1) for t in (query, key, value))
    dtype = q.dtype
    if dtype not in (torch.float16, torch.bfloat16):  # fp32 activations (no autocast): flash needs half precision
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    window = kwargs.get("sliding_window")
    out = flash_attn_varlen_func(
        q, k, v, bounds, bounds, max_length, max_length,
        dropout_p=dropout, softmax_scale=scaling, causal=True, softcap=kwargs.get("softcap") or 0.0,
        window_size=(window - 1, 0) if window else (-1, -1),
    )
    return out.to(dtype).unsqueeze(0), None
