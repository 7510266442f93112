"""Metric sinks: the TensorBoard event file holds the same curve as metrics.jsonl, across a resume.

A run stops after step 2 and resumes to step 3; the events are read back with TensorBoard's
own reader. Values are stored as float32 by TensorBoard, hence rtol 1e-6.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tensorboard")

from train.errors import TrainConfigError  # noqa: E402
from train.metrics import read_metrics  # noqa: E402
from train.recipe import run  # noqa: E402
from train.testing import fake_tokenizer, random_dataset, tiny_config  # noqa: E402


def test_tensorboard_events_hold_the_loss_curve_across_a_resume(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tok = fake_tokenizer(tmp_path / "tok")
    data = random_dataset(tmp_path / "ds", [30, 64, 12, 50, 41, 7], tokenizer_dir=tok, repeats=[2, 3] * 3, max_tokens=64)
    config = tiny_config(tmp_path / "run", data, tok, data={"max_tokens": 64}, train={"max_steps": 3, "global_batch": 4},
                         metrics={"sinks": ["jsonl", "tensorboard"]})
    run(config, progress=False, stop_at=2)
    run(config, resume="latest", progress=False)

    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    records = read_metrics(tmp_path / "run")
    assert [e.step for e in loss] == [r["step"] for r in records] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(events.Tags()["scalars"])


def test_a_sink_without_its_package_or_without_jsonl_is_a_config_error(tmp_path: Path) -> None:
    tok = fake_tokenizer(tmp_path / "tok")
    with pytest.raises(TrainConfigError, match="must include \"jsonl\""):
        tiny_config(tmp_path / "run", tmp_path / "ds", tok, metrics={"sinks": ["tensorboard"]})
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(TrainConfigError, match="wandb package is not installed"):
            tiny_config(tmp_path / "run", tmp_path / "ds", tok, metrics={"sinks": ["jsonl", "wandb"]})
