"""Small datasets, tokenizers and configs for tests, the benchmark and trying the trainer out.

Nothing here is used by training itself. A "tokenizer" here is a directory with a
`tokenizer.json`: enough for the tokenizer hash, which is all the trainer reads of it.
`torchrun` launches gloo processes on CPU the way the distributed tests and benchmarks do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from projections.native_format import SampleMeta, write_native
from train.tokenizer import tokenizer_hash

__all__ = ["TINY_MODEL", "fake_tokenizer", "random_dataset", "tiny_config", "tiny_config_file", "torchrun"]

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def fake_tokenizer(directory: str | Path, name: str = "tiny") -> Path:
    """A directory whose tokenizer hash depends on `name`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps({"name": name, "model": {"type": "test"}}))
    return directory


def random_dataset(
    directory: str | Path,
    lengths: Sequence[int],
    *,
    tokenizer_dir: str | Path,
    vocab_size: int = 256,
    trained_fraction: float = 0.5,
    repeats: Sequence[int] | None = None,
    max_tokens: int = 131_072,
    seed: int = 0,
) -> Path:
    """A native dataset of random samples of the given lengths (ids, masks, repeats)."""
    rng = np.random.default_rng(seed)
    repeats = list(repeats) if repeats is not None else [7 if i % 4 else 10 for i in range(len(lengths))]
    samples = []
    for i, (length, repeat) in enumerate(zip(lengths, repeats)):
        ids = rng.integers(0, vocab_size, length).astype(np.int32)
        mask = (rng.random(length) < trained_fraction).astype(np.uint8)
        kind = "summary" if repeat == 10 else "react"
        samples.append((SampleMeta(sample_id=f"sample-{i}", stream_id=f"run-{i % 3}", type=kind, repeat=repeat), ids, mask))
    write_native(directory, samples, tokenizer_hash=tokenizer_hash(tokenizer_dir), rule_fingerprint="test",
                 max_tokens=max_tokens, length_policy="drop")
    return Path(directory)


def tiny_config(run_dir: str | Path, dataset: str | Path, tokenizer_dir: str | Path, **sections: dict[str, Any]) -> Any:
    """A validated TrainConfig for the tiny model; `sections` update the defaults per section."""
    from train.config import from_dict

    return from_dict(_tiny_raw(run_dir, dataset, tokenizer_dir, sections), source="tiny_config")


def tiny_config_file(path: str | Path, run_dir: str | Path, dataset: str | Path, tokenizer_dir: str | Path,
                     **sections: dict[str, Any]) -> Path:
    """`tiny_config`'s config written as a TOML file, for `python -m train` under torchrun."""
    raw = _tiny_raw(run_dir, dataset, tokenizer_dir, sections)
    lines = [f"{key} = {json.dumps(value)}" for key, value in raw.items() if not isinstance(value, dict)]
    tables = [(name, value) for name, value in raw.items() if isinstance(value, dict)]
    while tables:  # JSON's strings, numbers, booleans and lists are TOML's too
        name, table = tables.pop(0)
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items() if not isinstance(value, dict)]
        tables += [(f"{name}.{key}", value) for key, value in table.items() if isinstance(value, dict)]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _tiny_raw(run_dir: str | Path, dataset: str | Path, tokenizer_dir: str | Path, sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": {"config": dict(TINY_MODEL), "tokenizer": str(tokenizer_dir), "dtype": "fp32"},
        "data": {"path": str(dataset), "max_tokens": 512, "seed": 0},
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 1},
        "train": {"global_batch": 8, "loss_chunk_tokens": 64},
        "checkpoint": {"every_steps": 0, "keep_last": 0},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def torchrun(args: Sequence[str], *, nproc: int, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node NPROC ARGS` from the
    repository root, one thread per process; returns the finished launch (check returncode).

    Once in about 40 launches under load, a rank aborts inside torch ("terminate called
    without an active exception", exit -6); a launch that fails that way is run once more,
    any other failure is returned as it is.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    done = _launch(command, env, timeout)
    if done.returncode != 0 and "terminate called without an active exception" in done.stderr:
        done = _launch(command, env, timeout)
    return done


def _launch(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run in its own session, so a launch that times out is killed whole, torchrun's workers
    included (then TimeoutError)."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the session this launch started
        _, stderr = process.communicate()
        raise TimeoutError(f"{' '.join(command[2:])} timed out after {timeout:.0f} s; stderr:\n{stderr[-4000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
