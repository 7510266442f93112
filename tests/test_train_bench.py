"""The trainer's benchmarks: the CPU memory benchmark end to end at smoke sizes, and the GPU
check's logic on CPU.

Targets are not asserted: at smoke sizes (a small vocabulary, a few hundred tokens) the
logits do not dominate and the timings are noise. The real figures come from
`python bench/train_memory.py` (see bench/results/train_memory.json). The GPU check needs a
GPU for its real run; here its flash-vs-SDPA comparison runs with SDPA against SDPA (and
against an attention that leaks across samples, which it must catch), its timed step runs
tiny on CPU, and its no-CUDA exit is checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` is not installed; plain `pytest` does not put the root on the path
    sys.path.insert(0, str(ROOT))

from bench.gpu_check import EXIT_NO_CUDA, compare_attention, packed_step  # noqa: E402
from bench.train_memory import IMPLS  # noqa: E402
from train.testing import TINY_MODEL  # noqa: E402

NOT_RUN = {"unavailable", "not runnable on CPU"}


def test_train_memory_benchmark_smoke(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train_memory.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    result = json.loads((tmp_path / "train_memory.json").read_text())
    assert result["benchmark"] == "train_memory" and result["parameters"]["smoke"] is True
    assert result["environment"]["libraries"]["torch"] and result["environment"]["libraries"]["transformers"]
    rows = {row["key"]: row for row in result["rows"]}
    required = {"memory_512_hf_ckpt", "memory_512_hf_ckpt_chunked", "memory_512_ours", "growth_256_512", "throughput_512"}
    peers = {f"memory_512_{impl.key}" for impl in IMPLS if impl.package}  # rows only where the peer is installed and runs
    assert required <= set(rows) <= required | peers
    for key, row in rows.items():
        for field in ("baseline", "ours", "ratio"):
            assert math.isfinite(row[field]) and row[field] > 0, (key, field)
        assert math.isclose(row["ratio"], row["ours"] / row["baseline"]), key
    assert rows["memory_512_ours"]["target"] == {"op": "<=", "value": 0.15}
    assert rows["throughput_512"]["target"] == {"op": ">=", "value": 0.9}
    assert rows["growth_256_512"]["target"] == {"op": "<=", "value": 2.2}

    # the memory table: every implementation at the comparison length, measured or saying why not
    table = {(e["impl"], e["length"]): e for e in result["parameters"]["memory_table"]}
    for impl in IMPLS:
        entry = table[impl.key, 512]
        assert entry["label"] == impl.label
        if impl.package is None:
            assert entry["status"] == "measured", entry
        if entry["status"] == "measured":
            assert entry["peak_gib"] > 0 and entry["ratio_vs_plain_hf"] > 0
        else:
            assert entry["status"] in NOT_RUN and entry["reason"], entry
    assert table["hf", 512]["ratio_vs_plain_hf"] == 1.0


def test_attention_check_passes_for_the_same_attention() -> None:
    import torch

    from train.attention import SDPA_SEGMENTS

    result = compare_attention(SDPA_SEGMENTS, config=TINY_MODEL, lengths=[37, 64, 27], device=torch.device("cpu"), chunk_tokens=32)
    assert result["passed"], result["worst"]
    tensors = result["tensors"]
    assert {"logits", "loss", "grad model.embed_tokens.weight", "grad lm_head.weight"} <= set(tensors)
    assert all(t["candidate_error"] == t["sdpa_bf16_error"] for t in tensors.values())  # the same computation
    assert tensors["logits"]["sdpa_bf16_error"] > 0  # bf16 against the fp32 reference: there is something to bound


def test_attention_check_catches_attention_across_samples() -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AttentionInterface

    def leaky(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        """Causal over the whole packed row: every sample sees the ones before it."""
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("test_leaky_packed", leaky)
    result = compare_attention("test_leaky_packed", config=TINY_MODEL, lengths=[37, 64, 27], device=torch.device("cpu"),
                               chunk_tokens=32)
    assert not result["passed"]
    assert not result["tensors"]["logits"]["passed"]


@pytest.mark.parametrize("offload", [False, True])
def test_packed_step_runs_tiny_on_cpu(offload: bool) -> None:
    import torch

    result = packed_step(TINY_MODEL, [40, 24], device=torch.device("cpu"), attention="auto", offload_activations=offload,
                         chunk_tokens=32, steps=1)
    assert result["tokens"] == 64 and result["offload_activations"] is offload and result["attention"] == "sdpa per sample segment"
    assert result["tokens_per_s"] > 0 and result["flops_per_token"] > result["flops_per_token_without_input_embedding"] > 0
    assert result["mfu"] is None and "no bf16 peak" in result["mfu_note"]  # no peak for a CPU
    assert result["peak_memory_kind"] == "cpu_max_rss" and result["peak_memory_gib"] > 0


@pytest.mark.parametrize("entry", ["py", "sh"])
def test_gpu_check_without_cuda_exits_2(entry: str) -> None:
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py")] if entry == "py" else ["bash", str(ROOT / "bench" / "gpu_check.sh")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == EXIT_NO_CUDA, done.stderr
    assert "no CUDA device" in done.stderr and "Nothing was run" in done.stderr
    assert done.stdout == ""  # nothing installed, nothing measured
