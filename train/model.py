"""The model: loaded from a local directory or built from a config, wrapped with the loss.

`load_model` never downloads (local files only). Master weights are fp32; bf16 comes from
autocast (one process) or FSDP2's mixed precision (several).

`empty_model` builds the same model on the meta device (no memory) so FSDP2 can shard it
before any weight exists; `materialize` then allocates each rank's shards and recomputes
the non-persistent buffers (rotary frequencies), which no checkpoint holds.

`PackedCausalLM` is the module the recipe trains: its forward takes a `PackedBatch` and
returns the summed loss over the batch's labelled tokens. The decoder runs on the packed
row with the sample boundaries in its kwargs; the chunked cross-entropy then reads the
lm_head weight directly, so the full logits are never made. Keeping the loss inside this
module's forward means FSDP2 (wrapping it as the root) has the lm_head weight gathered
when the loss needs it. Under sequence parallelism the batch is this rank's slice of the
row and the loss that of the slice's labels; the group goes to the attention layers with
the sample boundaries.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.attention import segment_kwargs
from train.data import PackedBatch
from train.errors import TrainConfigError
from train.loss import chunked_cross_entropy, token_losses

__all__ = ["PackedCausalLM", "build_model", "empty_model", "load_model", "materialize", "model_config"]


def load_model(path: str | None, config: dict[str, Any] | None, *, attention: str, init_seed: int = 0) -> nn.Module:
    """A causal LM from a local Hugging Face directory, or freshly initialised from `config`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if path is not None:
        if not (Path(path) / "config.json").is_file():
            raise TrainConfigError(f"model.path {path} is not a local model directory (no config.json); nothing is downloaded")
        try:
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TrainConfigError(f"cannot load the model in {path}: {exc}") from exc
    return build_model(config or {}, attention=attention, init_seed=init_seed)


def build_model(config: dict[str, Any], *, attention: str, init_seed: int = 0) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)  # the same initial weights on every rank
        return AutoModelForCausalLM.from_config(model_config(None, config), dtype=torch.float32, attn_implementation=attention)


def model_config(path: str | Path | None, config: dict[str, Any] | None) -> Any:
    """The Hugging Face config of a model directory (or checkpoint), or one built from `config`."""
    from transformers import AutoConfig

    if path is not None:
        try:
            return AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TrainConfigError(f"cannot read the model config in {path}: {exc}") from exc
    settings = dict(config or {})
    model_type = settings.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **settings)
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainConfigError(f"model.config: cannot build a {model_type!r} config: {exc}") from exc


def empty_model(hf_config: Any, *, attention: str) -> nn.Module:
    """The model with every tensor on the meta device: its structure, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32, attn_implementation=attention)


@torch.no_grad()
def materialize(module: nn.Module, hf_model: nn.Module, *, params_device: torch.device, device: torch.device) -> None:
    """Allocate a meta model's (sharded) parameters on `params_device`, uninitialised, and its
    buffers on `device`. Weights come next from a checkpoint or a broadcast; the
    non-persistent buffers are in neither, so they are recomputed here by transformers' own
    initialiser, as `from_pretrained` does after building on meta."""
    module.to_empty(device=params_device)
    hf_model.tie_weights()  # to_empty gives tied parameters separate storage unless FSDP2 swapped them in place
    for owner in hf_model.modules():
        if owner._non_persistent_buffers_set:
            hf_model._init_weights(owner)
        for name, buffer in owner.named_buffers(recurse=False):
            owner._buffers[name] = buffer.to(device)


class PackedCausalLM(nn.Module):
    """A causal LM that takes packed batches and returns the summed chunked loss."""

    def __init__(self, model: nn.Module, *, chunk_tokens: int = 1024, offload_activations: bool = False,
                 sequence_group: torch.distributed.ProcessGroup | None = None) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.offload_activations = offload_activations
        self.sequence_group = sequence_group
        head = model.get_output_embeddings()
        if head is None or getattr(head, "bias", None) is not None:
            raise TrainConfigError(f"{type(model).__name__}: the chunked loss needs an lm_head without bias")
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(model.config, name, None):
                raise TrainConfigError(f"{type(model).__name__} sets {name}, which the chunked loss does not apply")

    def hidden_states(self, batch: PackedBatch) -> torch.Tensor:
        """The decoder's last hidden states for the packed row (or this rank's slice), (1, T, hidden)."""
        offload = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) if self.offload_activations else contextlib.nullcontext()
        with offload:  # with checkpointing on, what is saved is each layer's input
            out = self.model.get_decoder()(
                input_ids=batch.input_ids,
                position_ids=batch.position_ids,
                use_cache=False,
                **segment_kwargs(batch.cu_seqlens, batch.max_seqlen, self.sequence_group),
            )
        return out.last_hidden_state

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        hidden = self.hidden_states(batch)
        return chunked_cross_entropy(hidden, self.model.get_output_embeddings().weight, batch.labels, chunk_tokens=self.chunk_tokens)

    @torch.no_grad()
    def token_losses(self, batch: PackedBatch) -> torch.Tensor:
        """Per-token loss of the packed row (0 where unlabelled), for checks."""
        return token_losses(self.hidden_states(batch), self.model.get_output_embeddings().weight, batch.labels, chunk_tokens=self.chunk_tokens)
