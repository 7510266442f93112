"""Two CPU processes (torchrun, gloo, FSDP2) train the same curve as one process.

The global batch is packed once and its bins dealt to the two ranks; each rank divides its
summed loss by the global batch's trained-token count. If the sharding dropped or doubled
a sample, or the normalization were per rank or per micro-batch, the curves would differ.
The 2-process run is also interrupted after step 2 and resumed from its sharded checkpoint,
by 2 processes and, on a different world size, by one. Each rank writes its own shards
(no rank gathers the model), and the exported Hugging Face weights of both runs agree.
Tolerance: losses rtol 1e-6, final weights atol 1e-6 (fp32; only the order of the
gradient reduction differs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

from train.export import export_checkpoint  # noqa: E402
from train.metrics import read_metrics  # noqa: E402
from train.recipe import run  # noqa: E402
from train.testing import fake_tokenizer, random_dataset, tiny_config, tiny_config_file, torchrun  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args: str) -> str:
    done = torchrun(["-m", "train", *args, "--no-progress"], nproc=2)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    return done.stdout


def test_two_gloo_processes_train_the_same_curve_as_one(tmp_path: Path) -> None:
    tok = fake_tokenizer(tmp_path / "tok")
    data = random_dataset(tmp_path / "ds", [30, 90, 12, 50, 41, 7, 64, 25, 33, 18, 60, 9], tokenizer_dir=tok,
                          repeats=[2, 3] * 6, max_tokens=96)  # 30 samples: 4 steps of 8
    one = run(tiny_config(tmp_path / "one", data, tok, data={"max_tokens": 96}, train={"max_steps": 4, "loss_chunk_tokens": 64}),
              progress=False)

    config = tiny_config_file(tmp_path / "two.toml", tmp_path / "two", data, tok, data={"max_tokens": 96},
                              train={"max_steps": 4, "loss_chunk_tokens": 64})
    _torchrun(str(config), "--stop-at", "2")
    step2 = tmp_path / "two/checkpoints/step-2"
    shards = sorted((step2 / "state").glob("*.distcp"))
    assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own
    assert max(p.stat().st_size for p in shards) < 0.6 * sum(p.stat().st_size for p in shards)
    across = run(tiny_config(tmp_path / "across", data, tok, data={"max_tokens": 96}, train={"max_steps": 4, "loss_chunk_tokens": 64}),
                 resume=str(step2), progress=False)  # written by 2 ranks, resumed by 1
    assert across.losses == pytest.approx(one.losses[2:], rel=1e-6)
    _torchrun(str(config), "--resume")

    records = read_metrics(tmp_path / "two")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["world_size"] == 2 for r in records)
    assert any(r["bins"] >= 2 for r in records)  # both ranks had real bins to train
    assert [r["trained_tokens"] for r in records] == [r["trained_tokens"] for r in read_metrics(tmp_path / "one")]
    assert [r["loss"] for r in records] == pytest.approx(one.losses, rel=1e-6)

    from safetensors.torch import load_file

    a = load_file(export_checkpoint(tmp_path / "one/checkpoints/step-4", tmp_path / "one-hf") / "model.safetensors")
    b = load_file(export_checkpoint(tmp_path / "two/checkpoints/step-4", tmp_path / "two-hf") / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
