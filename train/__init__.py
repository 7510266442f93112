"""The long-context trainer: dataset loading, packing, chunked loss, one readable recipe.

    apollo-es train CONFIG.toml                         one process
    torchrun --nproc-per-node N -m train CONFIG.toml    FSDP2 over N processes

Modules, each named for what it holds: `config` (the TOML config), `data` (dataset checks,
data order, best-fit-decreasing packing, sharding across ranks), `attention` (per-sample
attention registered with transformers), `loss` (chunked cross-entropy), `model` (loading
and the loss wrapper), `sharding` (FSDP2), `checkpoint` (sharded, DCP), `export` (a Hugging Face
directory from a checkpoint), `metrics`, `tokenizer` (the tokenizer hash), and
`recipe`, which reads top to bottom. Importing this package does not import torch.
"""

__all__ = ["load_config", "run"]


def __getattr__(name: str):
    if name == "load_config":
        from train.config import load_config

        return load_config
    if name == "run":
        from train.recipe import run

        return run
    raise AttributeError(name)
