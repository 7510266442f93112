"""Checkpoints: sharded training state (torch.distributed.checkpoint) plus what it takes to resume.

    RUN_DIR/checkpoints/step-N/
        state/                 DCP: model weights (fp32 masters) and AdamW state, each rank
                               writing its own shards (__R_0.distcp) plus one .metadata
        config.json            the model's Hugging Face config (resume and export build from it)
        tokenizer files        copied byte for byte (same tokenizer hash)
        scheduler.pt           the LR scheduler's state_dict
        rng/rank-R.pt          each rank's torch (and CUDA) RNG state
        trainer_state.json     step, data order position, world size, dataset hash

No rank ever gathers the whole model: each writes the shards it holds. DCP records every
tensor's global shape, so a checkpoint loads into any world size (2 ranks -> 1, 4 -> 8):
each rank reads the pieces overlapping its new shards. The data position is the step
number, and the plan of a step does not depend on the world size, so a resumed run
continues the same loss curve on another number of processes.

A checkpoint is written into `step-N.partial/` and renamed when complete, and
`trainer_state.json` is written last, so a directory named `step-N` is always whole. It is
not a Hugging Face model directory: `python -m train.export CHECKPOINT OUT_DIR` writes one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from train.errors import TrainError
from train.tokenizer import copy_tokenizer

__all__ = ["TrainerState", "find_checkpoint", "list_checkpoints", "load_training_state", "load_weights", "save_checkpoint"]

STATE_FILE = "trainer_state.json"
STATE_DIR = "state"


@dataclass
class TrainerState:
    step: int  # optimizer steps done
    epoch: int  # epoch of the next step
    step_in_epoch: int  # index of the next step within its epoch
    data_seed: int
    shuffle: bool
    global_batch: int
    world_size: int
    dataset_content_hash: str
    tokenizer_hash: str
    config: dict[str, Any]

    @classmethod
    def read(cls, checkpoint: Path) -> TrainerState:
        try:
            return cls(**json.loads((checkpoint / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise TrainError(f"{checkpoint} is not a complete checkpoint: {exc}") from exc


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def find_checkpoint(run_dir: str | Path, resume: str | None) -> Path | None:
    """`resume`: None (start fresh), "auto"/"latest" (the newest in RUN_DIR, if any), or a path."""
    if resume is None:
        return None
    if resume in ("auto", "latest"):
        found = list_checkpoints(run_dir)
        if not found and resume == "latest":
            raise TrainError(f"no checkpoint to resume from in {Path(run_dir) / 'checkpoints'}")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise TrainError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    run_dir: str | Path,
    state: TrainerState,
    *,
    hf_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    tokenizer_dir: str | Path,
    keep_last: int = 0,
) -> Path:
    """Write checkpoint step-N (every rank calls this); returns its path."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world = _rank()
    final = Path(run_dir) / "checkpoints" / f"step-{state.step}"
    partial = final.with_name(final.name + ".partial")
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "rng").mkdir(parents=True)
    _barrier()
    model_state, optimizer_state = get_state_dict(hf_model, optimizer)
    with _one_process_is_meant():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(partial / STATE_DIR), no_dist=world == 1)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, partial / "rng" / f"rank-{rank}.pt")
    _barrier()
    if rank == 0:
        hf_model.config.save_pretrained(partial)
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        copy_tokenizer(tokenizer_dir, partial)
        (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if keep_last:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_training_state(checkpoint: Path, *, hf_model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Restore weights and AdamW state (into this world size's shards), scheduler and RNG."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rank, world = _rank()
    model_state, optimizer_state = get_state_dict(hf_model, optimizer)
    target = {"model": model_state, "optimizer": optimizer_state}
    with _one_process_is_meant():
        dcp.load(target, checkpoint_id=str(checkpoint / STATE_DIR), no_dist=world == 1)
    set_state_dict(hf_model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    rng_file = checkpoint / "rng" / f"rank-{rank}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than wrote the checkpoint
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])


def load_weights(checkpoint: Path, hf_model: nn.Module) -> None:
    """Load only the model weights of a checkpoint into `hf_model` (sharded or not)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    target = {"model": get_model_state_dict(hf_model)}
    with _one_process_is_meant():
        dcp.load(target, checkpoint_id=str(checkpoint / STATE_DIR), no_dist=_rank()[1] == 1)
    set_model_state_dict(hf_model, target["model"])


@contextlib.contextmanager
def _one_process_is_meant() -> Iterator[None]:
    """torch.distributed.checkpoint warns that it assumes one process when no process group
    exists; for a single-process run that is exactly the intent, so the warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield
