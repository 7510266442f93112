"""The long-context trainer: dataset loading, packing, chunked loss, one readable recipe.

    apollo-es train CONFIG.toml                         one process
    torchrun --nproc-per-node N -m train CONFIG.toml    FSDP2 over N processes
        --set parallel.sequence=S                       ... each packed row over S of them

Modules, each named for what it holds: `config` (the TOML config), `data` (dataset checks,
data order, best-fit-decreasing packing, sharding across ranks, slicing rows), `attention`
(per-sample attention registered with transformers), `sequence_parallel` (Ulysses: the
grid, the all-to-alls around attention), `loss` (chunked cross-entropy), `model` (loading
and the loss wrapper), `sharding` (FSDP2), `checkpoint` (sharded, DCP), `export` (a Hugging Face
directory from a checkpoint), `metrics`, `tokenizer` (the tokenizer hash), `equivalence`
(a parallel layout's step against one process's), `testing` (tiny inputs, the gloo
launcher), and `recipe`, which reads top to bottom. Importing this package does not import
torch.
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
