"""The training projection: masks through real chat templates, samples, outputs, incremental builds."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apollo_es import EventStore, NewEvent
from apollo_es.cli import cli
from events import (
    ActionJudged,
    AgentActed,
    ContextSummarized,
    HumanIntervened,
    RunFinished,
    RunStarted,
    ToolCall,
    ToolObserved,
    ToolSpec,
)
from projections.chat_template import PROFILES, RenderError, _assistant_spans, load_tokenizer, render_masked
from projections.dataset import ProjectionError, project
from projections.native_format import NativeDataset
from projections.rules import RuleSet
from projections.samples import stream_samples
from projections.tiny_tokenizer import build_tiny_tokenizer

FAMILIES = ("glm45", "chatml")


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {family: build_tiny_tokenizer(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def tokenizers(tokenizer_dirs) -> dict:
    return {family: load_tokenizer(path) for family, path in tokenizer_dirs.items()}


# -- masks, as properties over random conversations ---------------------------------------

_text = st.text(alphabet=string.ascii_letters + string.digits + " .,:;!?()[]{}'\"\n_-+=/*#é漢🙂", min_size=0, max_size=40)


@st.composite
def conversations(draw):
    """System, task, then assistant turns with tool calls and results, and human messages anywhere."""
    messages = [{"role": "system", "content": draw(_text)}, {"role": "user", "content": draw(_text.filter(str.strip))}]
    for turn in range(draw(st.integers(min_value=1, max_value=6))):
        assistant = {"role": "assistant", "content": draw(_text)}
        if draw(st.booleans()):
            assistant["reasoning_content"] = draw(_text.filter(str.strip))
        calls = draw(st.integers(min_value=0, max_value=2))
        if calls:
            assistant["tool_calls"] = [
                {"id": f"c{turn}-{i}", "type": "function",
                 "function": {"name": draw(st.sampled_from(["run_command", "read_file", "think"])),
                              "arguments": {"arg": draw(_text), "n": draw(st.integers(0, 99))}}}
                for i in range(calls)
            ]
        elif not assistant["content"].strip():
            assistant["content"] = "done"
        messages.append(assistant)
        if not calls:  # the engine answers a turn without a tool call with feedback
            messages.append({"role": "user", "content": "No tool was called."})
        for i in range(calls):
            messages.append({"role": "tool", "content": draw(_text), "tool_call_id": f"c{turn}-{i}"})
        if draw(st.integers(0, 3)) == 0:
            messages.append({"role": "user", "content": f"<real_user_message>\n{draw(_text)}\n</real_user_message>"})
    train = draw(st.lists(st.booleans(), min_size=sum(m["role"] == "assistant" for m in messages),
                          max_size=sum(m["role"] == "assistant" for m in messages)))
    return messages, train


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conversations())
def test_only_kept_assistant_turns_are_trained(tokenizers, family, case):
    messages, train = case
    tokenizer = tokenizers[family]
    profile = next(p for p in PROFILES if p.name == family)
    tools = [{"type": "function", "function": {"name": "run_command", "description": "run", "parameters": {"type": "object"}}}]
    rendered = render_masked(tokenizer, messages, tools, train)
    spans = _assistant_spans(rendered.text, profile)
    assert len(spans) == len(train)

    encoding = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in encoding["offset_mapping"]]
    assert list(rendered.ids) == encoding["input_ids"]
    kept = [span for span, keep in zip(spans, train) if keep]
    # 1. decoding the trained tokens gives exactly the kept assistant turns as rendered
    trained_text = tokenizer.decode(rendered.ids[rendered.mask == 1].tolist(), skip_special_tokens=False)
    assert trained_text == "".join(rendered.text[b:e] for b, e in kept)
    # 2. no system, user or tool token is ever trained: every trained token starts inside a kept turn
    for start, trained in zip(starts, rendered.mask):
        if trained:
            assert any(b <= start < e for b, e in kept)
    # 3. each kept turn ends with its end-of-turn token, trained
    for b, e in kept:
        last = max(i for i, s in enumerate(starts) if b <= s < e)
        assert rendered.mask[last] == 1
        assert tokenizer.decode([int(rendered.ids[last])], skip_special_tokens=False) in profile.turn_ends + (profile.closing,)


def test_glm_drops_early_reasoning_after_a_late_human_message_and_the_mask_follows(tokenizers):
    tokenizer = tokenizers["glm45"]
    base = [
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": "first", "reasoning_content": "EARLY-THOUGHT",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "think", "arguments": {"thought": "x"}}}]},
        {"role": "tool", "content": "ok", "tool_call_id": "c1"},
        {"role": "assistant", "content": "second", "reasoning_content": "LATE-THOUGHT"},
    ]
    before = render_masked(tokenizer, base, None, [True, True])
    assert "EARLY-THOUGHT" in before.text
    late_human = [*base[:3], {"role": "user", "content": "<real_user_message>\nstop thinking\n</real_user_message>"}, base[3]]
    after = render_masked(tokenizer, late_human, None, [True, True])
    assert "EARLY-THOUGHT" not in after.text and "LATE-THOUGHT" in after.text
    trained = tokenizer.decode(after.ids[after.mask == 1].tolist(), skip_special_tokens=False)
    assert "stop thinking" not in trained and "first" in trained and "LATE-THOUGHT" in trained


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
    _run(store, steps=3, error_at=1, summary_after=1)
    report = project(store, tmp_path / "out", tokenizer_path=tokenizer_dirs["glm45"], ruleset=RuleSet.default())
    m = report.manifest
    assert m.samples_by_type == {"react": 2, "summary": 1}
    assert m.upsampled_by_type == {"react": 14, "summary": 10}
    assert m.extra["masked_actions"] == 1 and m.extra["kept_actions"] == 2
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
    assert [m.get("step_loss_mask", 1) == 1 for m in row["messages"] if m["role"] == "assistant"] == [True, False]
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
    assert not (tmp_path / "ds" / "slime.jsonl").exists() and (tmp_path / "ds" / "hf.jsonl").exists()
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
