"""The trainer's configuration: one TOML file, loaded into msgspec Structs and validated.

    [model]       where the model comes from (a local Hugging Face directory, or a config
                  to build a fresh one), its tokenizer, dtype and attention path
    [data]        the native dataset, the packing length, the data-order seed, epochs
    [optim]       AdamW and the learning-rate schedule
    [train]       global batch, steps, loss chunking, activation checkpointing
    [parallel]    sequence parallelism: how many ranks share each packed row
    [checkpoint]  how often to save and how many to keep
    [metrics]     where step metrics go: metrics.jsonl, TensorBoard, W&B (offline)
    run_dir       where metrics.jsonl and checkpoints/ go

Unknown keys are errors (a typo must not silently fall back to a default). Relative paths
are resolved against the current directory. Every error is a `TrainConfigError` naming the
key and what is allowed.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from train.errors import TrainConfigError
from train.metrics import SINKS

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "MetricsConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "TrainConfig",
    "TrainLoopConfig",
    "apply_overrides",
    "load_config",
]


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str | None = None
    """A local Hugging Face model directory (config.json + weights). Nothing is downloaded."""
    config: dict[str, Any] | None = None
    """Build a freshly initialised model from this Hugging Face config (needs `model_type`)."""
    tokenizer: str | None = None
    """The tokenizer directory; defaults to `path`. Its hash must equal the dataset's."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute dtype: `auto` is bf16 on a GPU that supports it and fp32 elsewhere. Master
    weights and optimizer state stay fp32 either way."""
    attention: Literal["auto", "flash", "sdpa"] = "auto"
    """`auto`: flash-attn's varlen kernels when flash-attn imports and CUDA is present, else
    SDPA per sample segment. `flash` fails if flash-attn cannot run."""
    init_seed: int = 0
    """Seed for the initial weights of a model built from `config` (same on every rank)."""


class DataConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str | None = None
    """The native dataset directory (manifest.json + shards)."""
    max_tokens: int = 131_072
    """Tokens per packed bin; no sample may be longer."""
    seed: int = 0
    """Seeds the data order (repeats expanded, then shuffled per epoch)."""
    shuffle: bool = True
    epochs: int = 1


class OptimConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    lr: float = 5e-6
    min_lr: float = 1e-6
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay from `lr` to `min_lr` over the run, after `warmup_steps` of linear warm-up."""
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""


class TrainLoopConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    global_batch: int = 64
    """Samples per optimizer step, over all ranks and accumulation steps (after repeats)."""
    max_steps: int = 0
    """Stop after this many optimizer steps; 0 = run all epochs."""
    loss_chunk_tokens: int = 1024
    """Trained tokens per cross-entropy chunk: the only logits alive at once are
    loss_chunk_tokens x vocab."""
    activation_checkpointing: bool = True
    offload_activations: bool = False
    """Keep the activation checkpoints (each layer's input) in CPU memory until backward."""
    offload_parameters: bool = False
    """FSDP2 only: keep the sharded fp32 parameters, their gradients and AdamW's state in CPU
    memory (FSDP2's CPUOffloadPolicy); the optimizer step then runs on the CPU."""
    seed: int = 0
    fsdp: Literal["auto", "on", "off"] = "auto"
    """`auto`: FSDP2 when launched on more than one process (torchrun)."""


class ParallelConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sequence: int = 1
    """Ulysses sequence parallelism: the ranks that share each packed row, a contiguous
    1/sequence of it each (train/sequence_parallel.py). Must divide the number of processes
    and the model's attention heads; key/value heads must divide it or be divisible by it.
    FSDP2 shards over all processes either way."""


class CheckpointConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    every_steps: int = 0
    """Save every N optimizer steps; 0 = only at the end."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted); 0 keeps all."""
    save_final: bool = True


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sinks: list[Literal["jsonl", "tensorboard", "wandb"]] = msgspec.field(default_factory=lambda: ["jsonl"])
    """Where step metrics go besides metrics.jsonl (always written): "tensorboard" (needs the
    tensorboard package), "wandb" (offline mode; needs wandb)."""


class TrainConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    run_dir: str = "runs/train"
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    optim: OptimConfig = msgspec.field(default_factory=OptimConfig)
    train: TrainLoopConfig = msgspec.field(default_factory=TrainLoopConfig)
    parallel: ParallelConfig = msgspec.field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = msgspec.field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)

    def validate(self) -> TrainConfig:
        """Check values that types alone do not; returns self. Raises TrainConfigError."""
        m, d, o, t, c = self.model, self.data, self.optim, self.train, self.checkpoint
        if (m.path is None) == (m.config is None):
            _fail("model", "set exactly one of model.path (a local model directory) and [model.config] (build from a config)")
        if m.config is not None and not m.config.get("model_type"):
            _fail("model.config.model_type", "is required to build a model from a config (e.g. \"llama\", \"glm4_moe\")")
        if m.path is None and m.tokenizer is None:
            _fail("model.tokenizer", "is required when the model is built from [model.config] (no model directory to take it from)")
        if d.path is None:
            _fail("data.path", "is required: the native dataset directory (or pass --data)")
        _positive("data.max_tokens", d.max_tokens, minimum=2)
        _positive("data.epochs", d.epochs)
        _positive("train.global_batch", t.global_batch)
        _positive("train.loss_chunk_tokens", t.loss_chunk_tokens)
        _positive("parallel.sequence", self.parallel.sequence)
        if t.max_steps < 0:
            _fail("train.max_steps", f"must be >= 0 (0 = all epochs), not {t.max_steps}")
        if not o.lr > 0:
            _fail("optim.lr", f"must be > 0, not {o.lr}")
        if not 0 <= o.min_lr <= o.lr:
            _fail("optim.min_lr", f"must be between 0 and optim.lr ({o.lr}), not {o.min_lr}")
        if o.warmup_steps < 0 or o.weight_decay < 0 or o.grad_clip < 0 or o.eps <= 0:
            _fail("optim", "warmup_steps, weight_decay and grad_clip must be >= 0, eps > 0")
        if not all(0 <= b < 1 for b in o.betas):
            _fail("optim.betas", f"must each be in [0, 1), not {list(o.betas)}")
        if c.every_steps < 0 or c.keep_last < 0:
            _fail("checkpoint", "every_steps and keep_last must be >= 0")
        if "jsonl" not in self.metrics.sinks:
            _fail("metrics.sinks", "must include \"jsonl\": plots and resumes read metrics.jsonl")
        for sink in self.metrics.sinks:
            if SINKS[sink] and importlib.util.find_spec(SINKS[sink]) is None:
                _fail("metrics.sinks", f"has {sink!r}, but the {SINKS[sink]} package is not installed")
        return self

    @property
    def tokenizer_dir(self) -> str:
        return self.model.tokenizer or self.model.path  # type: ignore[return-value]


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a TOML config, apply `section.key=value` overrides, validate."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TrainConfigError(f"no config file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrainConfigError(f"{path} is not valid TOML: {exc}") from exc
    apply_overrides(raw, overrides)
    return from_dict(raw, source=str(path))


def from_dict(raw: dict[str, Any], *, source: str = "config") -> TrainConfig:
    try:
        config = msgspec.convert(raw, TrainConfig)
    except msgspec.ValidationError as exc:
        raise TrainConfigError(f"{source}: {exc}") from exc
    return config.validate()


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `a.b.c=VALUE` strings in place; VALUE is read as TOML (strings may be bare)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise TrainConfigError(f"override {item!r}: use section.key=value, e.g. train.max_steps=10")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare string such as a path
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TrainConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def _positive(key: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        _fail(key, f"must be >= {minimum}, not {value}")


def _fail(key: str, message: str) -> None:
    raise TrainConfigError(f"{key} {message}")
