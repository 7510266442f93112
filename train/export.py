"""Write a Hugging Face model directory from a (sharded) training checkpoint.

    python -m train.export RUN_DIR/checkpoints/step-N OUT_DIR [--dtype bf16]
    apollo-es export-checkpoint RUN_DIR/checkpoints/step-N OUT_DIR

Checkpoints hold the training state as torch.distributed.checkpoint shards, which only
this trainer reads. Export builds the model from the checkpoint's config.json on the meta
device, reads every shard into one process's CPU memory, and writes `save_pretrained`
safetensors plus the tokenizer files, so `AutoModelForCausalLM.from_pretrained(OUT_DIR)`
and inference servers load it. One process, no torchrun: it needs the model's size in
CPU memory once (in the checkpoint's fp32, then cast to `dtype`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from train.checkpoint import TrainerState, load_weights
from train.errors import TrainError
from train.model import empty_model, materialize, model_config
from train.tokenizer import copy_tokenizer

__all__ = ["export_checkpoint"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, dtype: str = "fp32") -> Path:
    """Write OUT_DIR (config, safetensors, tokenizer files) from CHECKPOINT; returns OUT_DIR."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    TrainerState.read(checkpoint)  # refuses an incomplete checkpoint
    if dtype not in DTYPES:
        raise TrainError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    cpu = torch.device("cpu")
    model = empty_model(model_config(checkpoint, None), attention="sdpa")
    materialize(model, model, params_device=cpu, device=cpu)
    load_weights(checkpoint, model)
    model.to(DTYPES[dtype])
    model.config.use_cache = True  # training turned it off; inference wants it
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    copy_tokenizer(checkpoint, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint directory, RUN_DIR/checkpoints/step-N")
    parser.add_argument("out_dir", help="the Hugging Face model directory to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the written weights (default fp32)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out_dir, dtype=args.dtype)
    except TrainError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
