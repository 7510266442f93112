"""The training projection: masks through real chat templates, samples, outputs, incremental builds."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from apollo_es import EventStore, NewEvent
from apollo_es.cli import cli
from events import (
    AgentActed,
    ContextSummarized,
    HumanIntervened,
    RunFinished,
    RunStarted,
    ToolCall,
    ToolObserved,
    ToolSpec,
)
from projections.chat_template import RenderError, load_tokenizer
from projections.dataset import ProjectionError, project
from projections.native_format import NativeDataset
from projections.rules import RuleSet
from projections.samples import stream_samples
from projections.tiny_tokenizer import build_tiny_tokenizer


def test_a_tokenizer_without_a_chat_template_is_refused(tmp_path, tokenizer_dirs):
    plain = tmp_path / "plain"
    shutil.copytree(tokenizer_dirs["chatml"], plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(RenderError, match="no chat template"):
        load_tokenizer(plain)


# -- samples from runs -------------------------------------------------------------------------


def _run(store: EventStore, stream: str = "run-1", steps: int = 4, *, summary_after: int | None = None, error_at: int | None = None):
    tools = [ToolSpec(name="run_command", input_schema={"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]})]
    events = [RunStarted(task_id="t", task="Count the files.", system_prompt="Be careful.", tools=tools, model="m", provider="anthropic")]
    for step in range(steps):
        call = ToolCall(id=f"{stream}-c{step}", name="run_command", arguments={"command": f"ls {step}"})
        events.append(AgentActed(model="m", text=f"step {step}", reasoning=f"why {step}", tool_calls=[call]))
        failed = step == error_at
        events.append(ToolObserved(tool_call_id=call.id, tool_name="run_command", output="boom" if failed else f"{step} files",
                                   exit_code=1 if failed else 0, is_error=failed))
        if summary_after is not None and step == summary_after:
            events.append(ContextSummarized(summary=f"Summary after step {step}.", replaces_from=2, replaces_to=len(events) - 2))
    events.append(RunFinished(status="finished", final_answer="done"))
    store.append(stream, events)


def test_samples_per_segment_summaries_and_branches(tmp_path):
    store = EventStore(tmp_path / "a.db")
    _run(store, steps=5, summary_after=2)
    recorded = store.read("run-1")
    samples = stream_samples("run-1", recorded, lambda _: True)
    assert [s.type for s in samples] == ["react", "summary", "react"]
    first, summary, second = samples
    assert sum(first.train) == 3  # steps 0-2
    assert sum(second.train) == 2 and len(second.train) > 2  # steps 3-4 trained; step 2 kept verbatim, not again
    assert summary.messages[-1] == {"role": "assistant", "content": "Summary after step 2."}
    child = store.branch("run-1", 12)
    store.append(child, [AgentActed(model="m", text="branch step")])
    child_samples = stream_samples(child, store.read(child), lambda _: True)
    assert [s.type for s in child_samples] == ["react"]  # the parent's summary is the parent's to train
    assert sum(child_samples[0].train) == 1


def test_project_masks_actions_the_policy_masks_and_upsamples(tmp_path, tokenizer_dirs):
    store = EventStore(tmp_path / "a.db")
    _run(store, steps=4, error_at=1, summary_after=2)
    report = project(store, tmp_path / "out", tokenizer_path=tokenizer_dirs["glm45"], ruleset=RuleSet.default(),
                     formats=["native", "hf", "hf-jsonl", "slime"])
    m = report.manifest
    assert m.samples_by_type == {"react": 2, "summary": 1}
    assert m.upsampled_by_type == {"react": 14, "summary": 10}
    assert m.extra["masked_actions"] == 1 and m.extra["kept_actions"] == 3
    data = NativeDataset(tmp_path / "out" / "native")
    assert data.verify() and len(data) == 3
    tokenizer = load_tokenizer(tokenizer_dirs["glm45"])
    first_meta, ids, mask = data[0]
    trained = tokenizer.decode(ids[mask == 1].tolist(), skip_special_tokens=False)
    assert "ls 0" in trained and "ls 1" not in trained  # step 1 failed: masked, but still in the context
    assert "ls 1" in tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    hf = [json.loads(line) for line in (tmp_path / "out" / "hf.jsonl").read_text().splitlines()]
    assert len(hf) == 24 and all(len(r["input_ids"]) == len(r["labels"]) for r in hf)
    assert all(l == -100 or l == i for r in hf for i, l in zip(r["input_ids"], r["labels"]))
    slime = [json.loads(line) for line in (tmp_path / "out" / "slime.jsonl").read_text().splitlines()]
    assert len(slime) == 24
    row = slime[0]
    assert row["tools"][0]["function"]["name"] == "run_command" and row["metadata"]["tools"] == row["tools"]
    # slime trains an assistant message unless `message.get("step_loss_mask", 1) != 1` (slime/utils/mask_utils.py)
    assert all("step_loss_mask" in m for m in row["messages"])
    assert [m.get("step_loss_mask", 1) == 1 for m in row["messages"] if m["role"] == "assistant"] == [True, False, True]
    assert all(m["step_loss_mask"] == 0 for m in row["messages"] if m["role"] != "assistant")


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file() and ".cache" not in p.parts}


def test_incremental_equals_rebuild_equals_fresh_build(tmp_path, tokenizer_dirs):
    store = EventStore(tmp_path / "a.db")
    for i in range(3):
        _run(store, f"run-{i}", steps=3)
    tok, rules = tokenizer_dirs["chatml"], RuleSet.default()
    first = project(store, tmp_path / "inc", tokenizer_path=tok, ruleset=rules)
    assert first.rendered_streams == 3

    _run(store, "run-3", steps=2)
    action = next(r for r in store.read("run-0") if r.kind == "AgentActed")
    store.append("run-0", [NewEvent(event=HumanIntervened(annotator="ana", kind="reject", message="wrong", target_event_id=action.event_id))],
                 actor="human:ana")
    again = project(store, tmp_path / "inc", tokenizer_path=tok, ruleset=rules)
    assert (again.rendered_streams, again.cached_streams) == (2, 2)
    assert again.manifest.extra["masked_actions"] == 1

    rebuilt = project(store, tmp_path / "inc", tokenizer_path=tok, ruleset=rules, rebuild=True)
    assert rebuilt.rendered_streams == 4
    fresh = project(store, tmp_path / "fresh", tokenizer_path=tok, ruleset=rules)
    assert _files(tmp_path / "inc") == _files(tmp_path / "fresh")
    assert again.manifest.content_hash == rebuilt.manifest.content_hash == fresh.manifest.content_hash

    changed = RuleSet.loads("[rules.repeated_action]\nenabled = true\nn = 2\n")
    assert changed.fingerprint != rules.fingerprint
    assert project(store, tmp_path / "inc", tokenizer_path=tok, ruleset=changed).rendered_streams == 4


def test_length_policy_drops_or_truncates_and_counts(tmp_path, tokenizer_dirs):
    store = EventStore(tmp_path / "a.db")
    _run(store, steps=4)
    tok = tokenizer_dirs["glm45"]
    full = project(store, tmp_path / "full", tokenizer_path=tok, ruleset=RuleSet.default()).manifest.total_tokens
    cut = project(store, tmp_path / "cut", tokenizer_path=tok, ruleset=RuleSet.default(), max_tokens=full - 5, length_policy="truncate")
    assert cut.manifest.truncated_over_length == 1 and cut.manifest.total_tokens == full - 5
    with pytest.raises(ProjectionError, match="no kept action"):
        project(store, tmp_path / "drop", tokenizer_path=tok, ruleset=RuleSet.default(), max_tokens=10)
    assert not (tmp_path / "drop").exists()


def test_bad_input_leaves_no_partial_dataset(tmp_path, tokenizer_dirs):
    store = EventStore(tmp_path / "a.db")
    _run(store, steps=1, error_at=0)
    tok = tokenizer_dirs["glm45"]
    with pytest.raises(ProjectionError, match="run 'run-1' has no kept action"):
        project(store, tmp_path / "out", tokenizer_path=tok, ruleset=RuleSet.default(), runs=["run-1"])
    assert not (tmp_path / "out").exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _run(store, "run-2", steps=2)
    with pytest.raises(ProjectionError, match="cannot create"):
        project(store, blocker / "out", tokenizer_path=tok, ruleset=RuleSet.default())
    with pytest.raises(ProjectionError, match="not a directory"):
        project(store, blocker, tokenizer_path=tok, ruleset=RuleSet.default())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "a.db-shm", "a.db-wal", "file"]


def test_project_and_inspect_cli(tmp_path, tokenizer_dirs):
    store = EventStore(tmp_path / "a.db")
    _run(store, steps=2)
    runner = CliRunner()
    db = str(tmp_path / "a.db")
    made = runner.invoke(cli, ["project", "--db", db, "--tokenizer", str(tokenizer_dirs["chatml"]), "--out", str(tmp_path / "ds"), "--format", "native,hf"])
    assert made.exit_code == 0, made.output
    assert "1 samples (1 react)" in made.output
    assert not (tmp_path / "ds" / "slime.jsonl").exists() and (tmp_path / "ds" / "hf.parquet").exists()
    shown = runner.invoke(cli, ["dataset", "inspect", str(tmp_path / "ds"), "--json"])
    data = json.loads(shown.output)
    assert data["manifest"]["samples"] == 1 and any(t["trained"] for t in data["tokens"])
    assert "".join(t["text"] for t in data["tokens"] if t["trained"]).endswith("<|im_end|>")
    for args, message in [
        (["project", "--db", db, "--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path / "x")], "does not exist"),
        (["project", "--db", db, "--tokenizer", str(tokenizer_dirs["chatml"]), "--out", str(tmp_path / "x"), "--format", "csv"], "unknown format"),
        (["project", "ghost", "--db", db, "--tokenizer", str(tokenizer_dirs["chatml"]), "--out", str(tmp_path / "x")], "no stream 'ghost'"),
        (["dataset", "inspect", str(tmp_path / "ds"), "--sample", "5"], "outside 0..0"),
        (["dataset", "inspect", str(tmp_path)], "not a native dataset"),
    ]:
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and result.output.startswith("Error:") and message in result.output, (args, result.output)
    assert not (tmp_path / "x").exists()


def _guided_run(store: EventStore, stream: str, *, reasoning: bool = True, text: bool = True, output: str = "ok") -> None:
    """Three steps with reasoning, a person's guidance after the second, as the agent records them."""
    tools = [ToolSpec(name="run_command", input_schema={"type": "object", "properties": {"command": {"type": "string"}}})]
    events = [RunStarted(task_id="t", task="Train it.", system_prompt="Be careful.", tools=tools, model="m", provider="openai")]
    for step in range(3):
        if step == 2:
            events.append(HumanIntervened(annotator="ana", kind="guidance", message="Use a smaller learning rate."))
        call = ToolCall(id=f"{stream}-c{step}", name="run_command", arguments={"command": f"python train.py --step {step}"})
        events.append(AgentActed(model="m", text=f"Running step {step}." if text else "", reasoning=f"THOUGHT-{step}" if reasoning else "",
                                 tool_calls=[call]))
        events.append(ToolObserved(tool_call_id=call.id, tool_name="run_command", output=output, exit_code=0))
    store.append(stream, events)


def test_history_rewriting_templates_give_one_sequence_per_unchanged_prefix(tmp_path, tokenizer_dirs):
    """GLM-4.5 drops reasoning before the last user message: the turns before the guidance are
    trained in their own sequence, with their reasoning, and slime gets the same split."""
    store = EventStore(tmp_path / "a.db")
    _guided_run(store, "run-g", output="cat tokenizer_config.json: <|assistant|> <|user|> <|im_end|>")
    report = project(store, tmp_path / "out", tokenizer_path=tokenizer_dirs["glm45"], ruleset=RuleSet.default())
    data = NativeDataset(tmp_path / "out" / "native")
    assert [data[i][0].sample_id for i in range(len(data))] == ["run-g#react-0.1", "run-g#react-0.2"]
    tokenizer = load_tokenizer(tokenizer_dirs["glm45"])
    trained = [tokenizer.decode(ids[mask == 1].tolist(), skip_special_tokens=False) for _, ids, mask in (data[0], data[1])]
    assert "<think>THOUGHT-0</think>" in trained[0] and "<think>THOUGHT-1</think>" in trained[0]
    assert "<think>THOUGHT-2</think>" in trained[1] and "THOUGHT-0" not in trained[1]
    assert report.manifest.extra["tokenizer"]["hash"] == report.manifest.tokenizer_hash
    slime = [json.loads(line) for line in (tmp_path / "out" / "slime.jsonl").read_text().splitlines()]
    assert len(slime) == 14
    first, second = slime[0], slime[7]
    assert first["messages"][-1]["role"] == "assistant" and first["messages"][-1]["content"] == "Running step 1."
    assert [m["step_loss_mask"] for m in first["messages"] if m["role"] == "assistant"] == [1, 1]
    assert [m["step_loss_mask"] for m in second["messages"] if m["role"] == "assistant"] == [0, 0, 1]


def test_hf_parquet_and_jsonl_load_with_datasets(tmp_path, tokenizer_dirs):
    from datasets import load_dataset

    store = EventStore(tmp_path / "a.db")
    _run(store, steps=4, summary_after=2)
    project(store, tmp_path / "out", tokenizer_path=tokenizer_dirs["chatml"], ruleset=RuleSet.default(),
            formats=["native", "hf", "hf-jsonl"])
    parquet = load_dataset("parquet", data_files=str(tmp_path / "out" / "hf.parquet"), split="train",
                           cache_dir=str(tmp_path / "hf-cache"))
    jsonl = load_dataset("json", data_files=str(tmp_path / "out" / "hf.jsonl"), split="train", cache_dir=str(tmp_path / "hf-cache"))
    data = NativeDataset(tmp_path / "out" / "native")
    expected = [(meta.sample_id, ids.tolist(), np.where(mask == 1, ids, -100).tolist())
                for meta, ids, mask in (data[i] for i in range(len(data))) for _ in range(meta.repeat)]
    assert len(parquet) == len(jsonl) == len(expected) == 2 * 7 + 10
    for rows in (parquet, jsonl):
        assert [(r["id"], r["input_ids"], r["labels"]) for r in rows] == expected
        assert set(rows["type"]) == {"react", "summary"}


def test_a_run_that_cannot_be_rendered_is_skipped_named_and_the_rest_written(tmp_path):
    """Llama 3.1's template has no place for reasoning: that run is skipped, the other one written."""
    tokenizer = build_tiny_tokenizer(tmp_path / "llama3", "llama3")
    store = EventStore(tmp_path / "a.db")
    _guided_run(store, "run-plain", reasoning=False, text=False)  # Llama 3.1 writes a tool-call turn as the call alone
    _guided_run(store, "run-thinking", reasoning=True, text=False)
    report = project(store, tmp_path / "out", tokenizer_path=tokenizer, ruleset=RuleSet.default())
    assert [(s.stream_id, s.version) for s in report.skipped] == [("run-thinking", 2)]
    assert "reasoning" in report.skipped[0].reason
    assert report.manifest.samples == 1 and json.loads((tmp_path / "out" / "projection.json").read_text())["runs"] == ["run-plain"]
    result = CliRunner().invoke(cli, ["project", "--db", str(tmp_path / "a.db"), "--tokenizer", str(tokenizer), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 1
    assert "Error: skipped run run-thinking (v2, run-thinking#react-0)" in result.output
    assert (tmp_path / "cli" / "native" / "manifest.json").exists()


def test_datasets_get_the_users_umask(tmp_path, tokenizer_dirs):
    store = EventStore(tmp_path / "a.db")
    _run(store, steps=2)
    old = os.umask(0o022)
    try:
        project(store, tmp_path / "out", tokenizer_path=tokenizer_dirs["chatml"], ruleset=RuleSet.default())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "native").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "native" / "manifest.json").stat().st_mode) == 0o644
