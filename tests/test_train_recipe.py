"""The recipe end to end on CPU: normalization, resume, bad input, the CLI.

Tiny Llama (train.testing.TINY_MODEL), fp32, random datasets of a few dozen samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from apollo_es.cli import cli  # noqa: E402
from train.attention import SDPA_SEGMENTS, register_attention  # noqa: E402
from train.checkpoint import list_checkpoints  # noqa: E402
from train.data import IGNORE_INDEX, DataOrder, labels_from_mask, open_dataset, plan_step  # noqa: E402
from train.export import export_checkpoint  # noqa: E402
from train.metrics import read_metrics  # noqa: E402
from train.model import PackedCausalLM, build_model  # noqa: E402
from train.recipe import accumulate_gradients, learning_rate, run  # noqa: E402
from train.testing import TINY_MODEL, fake_tokenizer, random_dataset, tiny_config  # noqa: E402

LENGTHS = [30, 64, 12, 50, 41, 7, 64, 25, 33, 18, 60, 9]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    tok = fake_tokenizer(tmp_path / "tok")
    return random_dataset(tmp_path / "ds", LENGTHS, tokenizer_dir=tok, repeats=[2, 3] * 6, max_tokens=64), tok


def test_accumulated_gradient_equals_one_big_batch(dataset) -> None:
    """Bins of 64 tokens (many accumulation steps) vs the mean loss over the whole global batch at once.

    Tolerance: fp32, rtol 1e-4 / atol 1e-6 on every parameter's gradient; loss 1e-6 relative.
    """
    data, _ = dataset
    register_attention()
    ds = open_dataset(data, max_tokens=64)
    indices = DataOrder([m.repeat for m in ds.meta], global_batch=16, seed=0).step(0, 0)

    model = build_model(TINY_MODEL, attention=SDPA_SEGMENTS)
    plan = plan_step(ds, indices, max_tokens=64)
    assert len(plan.micro_batches) >= 5  # really accumulating
    loss_sum = accumulate_gradients(PackedCausalLM(model, chunk_tokens=16), plan, device=torch.device("cpu"))
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    # the reference: every sample of the global batch, right-padded into one (16, 64) batch,
    # one mean cross-entropy over all their trained tokens, one backward
    model.set_attn_implementation("sdpa")
    ids = torch.zeros((len(indices), 64), dtype=torch.long)
    labels = torch.full((len(indices), 64), IGNORE_INDEX)
    attention = torch.zeros((len(indices), 64), dtype=torch.long)
    for row, i in enumerate(indices):
        _, sample_ids, mask = ds[i]
        n = len(sample_ids)
        ids[row, :n] = torch.from_numpy(sample_ids.astype(np.int64))
        labels[row, :n] = torch.from_numpy(labels_from_mask(sample_ids, mask))
        attention[row, :n] = 1
    logits = model(input_ids=ids, attention_mask=attention).logits
    reference = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    reference.backward()

    assert plan.trained_tokens == int((labels != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss_sum.item() / plan.trained_tokens, reference.item(), rtol=1e-6, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(accumulated[name], param.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_bin_size_does_not_change_the_loss_curve(dataset, tmp_path: Path) -> None:
    """Same global batches packed into 64-token bins (many micro-steps) or 1024-token bins (one): same curve."""
    data, tok = dataset
    small = run(tiny_config(tmp_path / "small", data, tok, data={"max_tokens": 64}, train={"max_steps": 3}), progress=False)
    large = run(tiny_config(tmp_path / "large", data, tok, data={"max_tokens": 1024}, train={"max_steps": 3}), progress=False)
    micro = [r["micro_batches"] for r in read_metrics(tmp_path / "small")]
    assert min(micro) > 1 and all(r["micro_batches"] == 1 for r in read_metrics(tmp_path / "large"))
    np.testing.assert_allclose(small.losses, large.losses, rtol=1e-5)


def test_resume_reproduces_the_uninterrupted_loss_curve(dataset, tmp_path: Path) -> None:
    data, tok = dataset
    sections = {"train": {"max_steps": 0}, "data": {"epochs": 2}, "checkpoint": {"every_steps": 0}}
    straight = run(tiny_config(tmp_path / "straight", data, tok, **sections), progress=False)
    assert straight.steps == 8  # 30 samples after repeats, batches of 8: 4 steps an epoch, 2 epochs
    interrupted = tiny_config(tmp_path / "resumed", data, tok, **sections)
    first = run(interrupted, progress=False, stop_at=5)  # stops inside the second epoch
    assert first.steps == 5 and [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step-5"]
    second = run(interrupted, resume="latest", progress=False)
    assert second.steps == straight.steps
    assert first.losses + second.losses == straight.losses  # exactly: same weights, optimizer, schedule, data
    curve = [r["loss"] for r in read_metrics(tmp_path / "resumed")]
    assert curve == straight.losses and [r["step"] for r in read_metrics(tmp_path / "resumed")] == list(range(1, 9))
    lrs = [r["lr"] for r in read_metrics(tmp_path / "resumed")]
    assert lrs == [r["lr"] for r in read_metrics(tmp_path / "straight")]
    from safetensors.torch import load_file

    a = load_file(export_checkpoint(tmp_path / "straight/checkpoints/step-8", tmp_path / "a") / "model.safetensors")
    b = load_file(export_checkpoint(tmp_path / "resumed/checkpoints/step-8", tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_offloaded_checkpoints_and_bf16_autocast_train_the_same_curve(dataset, tmp_path: Path) -> None:
    """Offloading the activation checkpoints to CPU changes nothing (exact); bf16 autocast stays
    within 1e-2 relative of fp32 over a few steps."""
    data, tok = dataset
    base = run(tiny_config(tmp_path / "fp32", data, tok, train={"max_steps": 2}), progress=False)
    offload = run(tiny_config(tmp_path / "offload", data, tok, train={"max_steps": 2, "offload_activations": True}), progress=False)
    bf16 = run(tiny_config(tmp_path / "bf16", data, tok, model={"dtype": "bf16"}, train={"max_steps": 2}), progress=False)
    assert offload.losses == base.losses
    np.testing.assert_allclose(bf16.losses, base.losses, rtol=1e-2)


def test_learning_rate_goes_from_lr_to_min_lr(dataset, tmp_path: Path) -> None:
    data, tok = dataset
    config = tiny_config(tmp_path, data, tok, optim={"lr": 5e-6, "min_lr": 1e-6, "warmup_steps": 0})
    rates = [learning_rate(s, config, 10) for s in range(10)]
    assert rates[0] == pytest.approx(5e-6) and rates[-1] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(rates, rates[1:]))


# -- the command line ---------------------------------------------------------------------


def _write_config(tmp_path: Path, data: Path, tok: Path, **extra: str) -> Path:
    text = f"""
run_dir = "{tmp_path / 'run'}"
[model]
tokenizer = "{tok}"
dtype = "fp32"
[model.config]
{chr(10).join(f'{k} = {json.dumps(v)}' for k, v in TINY_MODEL.items())}
[data]
path = "{data}"
max_tokens = {extra.get('max_tokens', 128)}
[optim]
lr = 1e-3
min_lr = 1e-4
[train]
global_batch = 8
max_steps = 3
loss_chunk_tokens = 32
[checkpoint]
every_steps = 2
"""
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_cli_trains_writes_metrics_checkpoints_and_a_plot(dataset, tmp_path: Path) -> None:
    data, tok = dataset
    config = _write_config(tmp_path, data, tok)
    result = CliRunner().invoke(cli, ["train", str(config), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["steps"] == 3 and summary["attention"] == "sdpa per sample segment"
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "lr", "tokens_per_s", "trained_tokens", "peak_memory_bytes", "attention", "grad_norm"):
        assert all(key in r for r in records), key
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-2", "step-3"]
    final = tmp_path / "run/checkpoints/step-3"
    assert (final / "config.json").is_file() and (final / "state/.metadata").is_file() and (final / "tokenizer.json").is_file()
    result = CliRunner().invoke(cli, ["export-checkpoint", str(final), str(tmp_path / "hf"), "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")  # a plain HF model directory
    assert exported.config.vocab_size == 256 and exported.dtype == torch.bfloat16 and exported.config.use_cache
    assert (tmp_path / "hf/tokenizer.json").read_bytes() == (tok / "tokenizer.json").read_bytes()

    result = CliRunner().invoke(cli, ["plot-metrics", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run/metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("problem", ["tokenizer", "empty", "too_long", "vocabulary"])
def test_bad_input_fails_before_any_step(tmp_path: Path, problem: str) -> None:
    tok = fake_tokenizer(tmp_path / "tok")
    lengths, kwargs = [20, 30], {}
    if problem == "empty":
        lengths = []
    elif problem == "too_long":
        lengths = [20, 200]
    elif problem == "vocabulary":
        kwargs = {"vocab_size": 5000}
    data = random_dataset(tmp_path / "ds", lengths, tokenizer_dir=tok, **kwargs)
    model_tok = fake_tokenizer(tmp_path / "other", "another") if problem == "tokenizer" else tok
    result = CliRunner().invoke(cli, ["train", str(_write_config(tmp_path, data, model_tok))])
    assert result.exit_code == 1
    expected = {
        "tokenizer": "was made with another tokenizer",
        "empty": "is empty",
        "too_long": "longer than max_tokens=128",
        "vocabulary": "outside the model's vocabulary",
    }[problem]
    assert "Error: " in result.output and expected in result.output, result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_cli_errors_for_missing_config_and_checkpoint(tmp_path: Path, dataset) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1 and "Error: no config file at" in result.output
    data, tok = dataset
    result = CliRunner().invoke(cli, ["train", str(_write_config(tmp_path, data, tok)), "--resume"])
    assert result.exit_code == 1 and "Error: no checkpoint to resume from" in result.output
    result = CliRunner().invoke(cli, ["plot-metrics", str(tmp_path)])
    assert result.exit_code == 1 and "Error: no metrics.jsonl" in result.output
