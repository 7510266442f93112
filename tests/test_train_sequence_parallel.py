"""Ulysses sequence parallelism trains what one process trains, alone and with FSDP2 on a 2-D grid.

Unit checks in this process: slicing a packed row, the head checks, the config. Then gloo
processes on CPU (tiny Llama, 4 query / 2 KV heads, fp32):

- one optimizer step's global batch on 4 processes, as a 2 data x 2 sequence grid and as
  one group of 4 (KV heads repeated twice), against one process on the same batch
  (`train.equivalence`): loss within 1e-6 relative, every gradient within 1e-5 of its
  largest reference entry (fp32; only summation order differs: measured ~3e-8 and ~4e-7).
  The packed rows hold several samples, some cut by a slice boundary; changing one
  sample leaves every other sample's hidden states bit for bit the same on every slice;
- the recipe under torchrun on 4 processes as 2 data x 2 sequence stops after step 2 with
  a sharded checkpoint, and one process without sequence parallelism resumes it; the loss
  curve is that of one process (rtol 1e-5).

The 2-process one-step equivalence (sequence 2, and FSDP2 alone) is the smoke run of
bench/train_parallel.py, tests/test_train_parallel_smoke.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

from train.attention import ULYSSES_SDPA_SEGMENTS, choose_attention  # noqa: E402
from train.data import IGNORE_INDEX, collate, slice_sequence  # noqa: E402
from train.equivalence import check  # noqa: E402
from train.errors import TrainConfigError  # noqa: E402
from train.metrics import read_metrics  # noqa: E402
from train.recipe import run  # noqa: E402
from train.sequence_parallel import check_heads, kv_repeats  # noqa: E402
from train.testing import fake_tokenizer, random_dataset, tiny_config, tiny_config_file, torchrun  # noqa: E402

LENGTHS = [30, 90, 12, 50, 41, 7, 64, 25, 33, 18, 60, 9]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    tok = fake_tokenizer(tmp_path / "tok")
    return random_dataset(tmp_path / "ds", LENGTHS, tokenizer_dir=tok, repeats=[2, 3] * 6, max_tokens=96), tok  # 30 samples


# -- in this process ------------------------------------------------------------------------


def test_the_slices_of_a_row_are_the_row_padded_with_a_segment_of_its_own() -> None:
    rng = np.random.default_rng(0)
    row = collate([(rng.integers(0, 256, n).astype(np.int32), np.ones(n, dtype=np.uint8)) for n in (5, 9, 3)])  # 17 tokens
    parts = [slice_sequence(row, rank, 4) for rank in range(4)]
    assert [p.input_ids.shape[1] for p in parts] == [5, 5, 5, 5]
    joined = {name: torch.cat([getattr(p, name) for p in parts], dim=1) for name in ("input_ids", "position_ids", "labels")}
    assert torch.equal(joined["input_ids"][:, :17], row.input_ids) and torch.equal(joined["labels"][:, :17], row.labels)
    assert torch.equal(joined["position_ids"][0], torch.tensor([*range(5), *range(9), *range(3), 0, 1, 2]))
    assert (joined["labels"][:, 17:] == IGNORE_INDEX).all()  # the padding is never trained
    for part in parts:  # every slice carries the whole row's boundaries, padding segment included
        assert part.cu_seqlens.tolist() == [0, 5, 14, 17, 20] and part.max_seqlen == 9
    assert slice_sequence(row, 0, 1).cu_seqlens.tolist() == [0, 5, 14, 17]  # no padding when it divides


def test_heads_must_split_over_the_sequence_group() -> None:
    assert kv_repeats(32, 8, 8) == 1 and kv_repeats(32, 8, 4) == 1
    assert kv_repeats(32, 2, 8) == 4  # fewer KV heads than ranks: each is repeated
    with pytest.raises(TrainConfigError, match="must divide the model's 12 attention heads"):
        kv_repeats(12, 4, 8)
    with pytest.raises(TrainConfigError, match="and the model's 6 key/value heads: one must divide the other"):
        check_heads(SimpleNamespace(num_attention_heads=24, num_key_value_heads=6), 4)
    check_heads(SimpleNamespace(num_attention_heads=8, num_key_value_heads=None), 8)  # no GQA: KV heads = heads


def test_sequence_parallel_config_is_checked(dataset, tmp_path: Path) -> None:
    data, tok = dataset
    with pytest.raises(TrainConfigError, match="parallel.sequence must be >= 1"):
        tiny_config(tmp_path / "run", data, tok, parallel={"sequence": 0})
    with pytest.raises(TrainConfigError, match="parallel.sequence = 2 must divide the number of processes, 1"):
        run(tiny_config(tmp_path / "run", data, tok, data={"max_tokens": 96}, parallel={"sequence": 2}), progress=False)
    assert choose_attention("auto", torch.device("cpu"), sequence=2).implementation == ULYSSES_SDPA_SEGMENTS


# -- gloo processes -------------------------------------------------------------------------


def test_one_step_on_a_2d_grid_and_on_one_group_of_4_equals_one_process(dataset, tmp_path: Path) -> None:
    data, tok = dataset
    config = tiny_config_file(tmp_path / "c.toml", tmp_path / "run", data, tok, data={"max_tokens": 96},
                              train={"global_batch": 12, "loss_chunk_tokens": 64})
    grid, group = check(config, tmp_path / "out", nproc=4, sequences=[2, 4])
    for reports, (data_size, sequence) in ((grid, (2, 2)), (group, (1, 4))):
        assert {(r["data"], r["sequence"]) for r in reports} == {(data_size, sequence)}
        assert {r["attention"] for r in reports} == {f"sdpa per sample segment, Ulysses over {sequence} ranks"}
        for r in reports:
            assert r["loss_error"] < 1e-6 and r["max_grad_error"] < 1e-5, r
            assert max(r["slice_tokens"]) <= -(-96 // sequence)  # each rank holds its 1/sequence of a bin
            assert r["isolation"]["others_unchanged"] and r["isolation"]["changed_sample_changed"] is not False
        isolation = [r["isolation"] for r in reports]
        assert any(i["samples"] >= 2 and i["samples_across_slices"] >= 1 for i in isolation)
        assert any(i["changed_sample_changed"] for i in isolation)  # the check could fail


def test_a_2d_grid_run_resumes_in_one_process_with_the_same_curve(dataset, tmp_path: Path) -> None:
    data, tok = dataset
    settings = {"data": {"max_tokens": 96}, "train": {"max_steps": 4, "loss_chunk_tokens": 64}}
    one = run(tiny_config(tmp_path / "one", data, tok, **settings), progress=False)
    config = tiny_config_file(tmp_path / "grid.toml", tmp_path / "grid", data, tok, parallel={"sequence": 2}, **settings)
    done = torchrun(["-m", "train", str(config), "--stop-at", "2", "--no-progress"], nproc=4)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    step2 = tmp_path / "grid/checkpoints/step-2"
    assert len(list((step2 / "state").glob("*.distcp"))) == 4  # each rank wrote its own shards
    records = read_metrics(tmp_path / "grid")
    assert [(r["world_size"], r["sequence_parallel"]) for r in records] == [(4, 2), (4, 2)]
    assert all(r["attention"] == "sdpa per sample segment, Ulysses over 2 ranks" for r in records)

    resumed = run(tiny_config(tmp_path / "grid", data, tok, **settings), resume=str(step2), progress=False)  # 1 process, no SP
    assert [r["trained_tokens"] for r in records] == [r["trained_tokens"] for r in read_metrics(tmp_path / "one")][:2]
    assert [r["loss"] for r in records] + resumed.losses == pytest.approx(one.losses, rel=1e-5)
