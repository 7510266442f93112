"""Imported runs replay what the source agent's model was sent.

Golden comparisons on real SWE-agent files: every prompt the file recorded equals the context
that `apollo-es replay RUN --at V --show context` shows (`replay.state.state_at`, the one fold)
at the version the importer says; the training projection trains a free-text agent's text as
written. OpenHands: observations as its conversation memory rendered them, a person's
rejection as a reject.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from apollo_es import EventStore
from apollo_es.importers import import_paths, read_trajectory
from apollo_es.importers.fidelity import check_stream, context_messages
from events import AgentActed, HumanIntervened, RunFinished, ToolObserved
from projections.context import fold
from projections.samples import stream_samples
from replay.state import state_at

DATA = Path(__file__).parent / "data" / "importers" / "swe-agent"
STEP_MESSAGES = DATA / "marshmallow-1867.step-messages.traj"
DEMO = DATA / "pydicom-1458.demo.traj"


@pytest.fixture()
def store(tmp_path):
    with EventStore(tmp_path / "apollo.db") as s:
        yield s


def replayed_prompts(store: EventStore, path: Path) -> list[tuple[list, list]]:
    """(recorded, replayed) for every prompt the file recorded, after importing it."""
    [report] = import_paths(store, "swe-agent", [path])
    stream_id = report.streams[0].stream_id
    plan = read_trajectory("swe-agent", path)
    return [(p.messages, context_messages(state_at(store, stream_id, p.version).context)) for p in plan.streams[0].prompts]


def test_swe_agent_step_messages_are_replayed_exactly(store):
    pairs = replayed_prompts(store, STEP_MESSAGES)
    assert len(pairs) == 13
    for recorded, replayed in pairs:
        assert replayed == recorded
    started = store.read("swe-agent/marshmallow-1867.step-messages")[0].event
    assert started.observation_window.keep_last == 5
    assert started.import_notes == ["prompt fidelity: 13 of 13 recorded prompts reproduced exactly"]
    last = pairs[-1][0]
    assert sum(len(text) for _, text in last) == 18_085  # the last prompt, old observations elided


def test_without_the_history_processor_eight_prompts_differ():
    stream = read_trajectory("swe-agent", STEP_MESSAGES).streams[0]
    stream.events[0].event = msgspec.structs.replace(stream.events[0].event, observation_window=None)
    result = check_stream(stream)
    assert (result.compared, result.identical) == (13, 5)
    assert result.mismatches[-1].differing == 8 and result.mismatches[-1].recorded == 28


def as_query_file(tmp_path: Path, *, requery_at: int | None = None) -> Path:
    """The step-messages file as SWE-agent >= 1.1 writes it: `query`, the input of each step
    (the `messages` of the step before). With `requery_at`, SWE-agent rejected that step's
    first answer and asked again: a step for the rejected answer comes first, and the
    accepted one's query carries the rejected answer and the error message."""
    data = json.loads(STEP_MESSAGES.read_text())
    steps = data["trajectory"]
    inputs = [steps[0]["messages"][:2]] + [step["messages"] for step in steps[:-1]]
    for step, query in zip(steps, inputs):
        del step["messages"]
        step["query"] = query
    if requery_at is not None:
        step = steps[requery_at]
        rejected = {"role": "assistant", "content": "I will run two commands.", "message_type": "assistant"}
        error = {"role": "user", "content": "Your output could not be parsed properly.", "message_type": "user"}
        steps.insert(requery_at, dict(step, response=rejected["content"], query=step["query"]))
        step["query"] = [*step["query"], rejected, error]
    path = tmp_path / "query.traj"
    path.write_text(json.dumps(data))
    return path


def test_swe_agent_query_prompts_are_replayed_exactly(store, tmp_path):
    pairs = replayed_prompts(store, as_query_file(tmp_path))
    assert len(pairs) == 13 and all(replayed == recorded for recorded, replayed in pairs)


def test_a_requeried_step_is_named_with_its_reason(store, tmp_path):
    path = as_query_file(tmp_path, requery_at=4)
    stream = read_trajectory("swe-agent", path).streams[0]
    assert (stream.fidelity.compared, stream.fidelity.identical) == (13, 12)
    [mismatch] = stream.fidelity.mismatches
    assert mismatch.recorded == mismatch.replayed + 2 and "re-asked the model 1 time" in mismatch.reason
    [note] = stream.events[0].event.import_notes
    assert note.startswith("prompt fidelity: 12 of 13") and "re-asked" in note
    # the durations still belong to the accepted answers
    observed = [p.event for p in stream.events if isinstance(p.event, ToolObserved)]
    assert observed[4].duration_ms == pytest.approx(float(json.loads(STEP_MESSAGES.read_text())["trajectory"][4]["execution_time"]) * 1000)


def test_free_text_turns_are_trained_as_the_model_wrote_them(store):
    data = json.loads(DEMO.read_text())
    import_paths(store, "swe-agent", [DEMO])
    recorded = store.read("swe-agent/pydicom-1458.demo")
    started = recorded[0].event
    history = data["history"]
    assert started.demonstrations == [history[1]["content"]] and len(started.demonstrations[0]) > 19_000
    assert started.task == history[2]["content"] and "ISSUE:" in started.task
    [sample] = stream_samples("swe-agent/pydicom-1458.demo", recorded, keep=lambda _: True)
    expected = [{"role": m["role"], "content": m["content"]} for m in history]
    assert sample.messages == expected  # no invented tool calls; results are user messages
    assert all(sample.train)
    actions = [r.event for r in recorded if isinstance(r.event, AgentActed)]
    assert all(not a.tool_calls for a in actions)
    assert actions[-1].cost_usd == pytest.approx(1.26719)
    assert (actions[-1].usage.input_tokens, actions[-1].usage.output_tokens) == (122_612, 1_369)
    assert any("model_stats (12 model calls)" in note for note in started.import_notes)
    assert any("no replay_config" in note for note in started.import_notes)
    assert isinstance(recorded[-1].event, RunFinished) and recorded[-1].event.status == "finished"


def test_openhands_observations_as_the_model_saw_them_and_rejections(store, tmp_path):
    call = {"function_name": "execute_bash", "tool_call_id": "c1"}
    events = [
        {"id": 0, "source": "user", "action": "message", "args": {"content": "Clean up"}},
        {"id": 1, "source": "agent", "action": "run", "args": {"command": "rm -rf /", "thought": "Wipe."}, "tool_call_metadata": call},
        {"id": 2, "source": "user", "observation": "user_rejected", "cause": 1, "content": "Not that!", "tool_call_metadata": call},
        {"id": 3, "source": "environment", "observation": "loop_detection", "content": "Loop detected"},
        {"id": 4, "source": "user", "observation": "run", "content": "ok", "extras": {"metadata": {
            "exit_code": 0, "working_dir": "/w", "prefix": "", "suffix": ""}}},
        {"id": 5, "source": "agent", "action": "run", "args": {"command": "ls", "thought": ""},
         "tool_call_metadata": {**call, "tool_call_id": "c2"}},
        {"id": 6, "source": "agent", "observation": "error", "cause": 5, "content": "boom", "tool_call_metadata": {**call, "tool_call_id": "c2"}},
        {"id": 7, "source": "user", "action": "message", "args": {"content": "Stop there."}},
    ]
    path = tmp_path / "rejected.json"
    path.write_text(json.dumps(events))
    import_paths(store, "openhands", [path])
    recorded = store.read("openhands/rejected")
    [reject] = [r for r in recorded if isinstance(r.event, HumanIntervened) and r.event.kind == "reject"]
    assert reject.causation_id == reject.event.target_event_id == recorded[1].event_id and reject.event.message == "Not that!"
    assert [(m.role, m.content) for m in fold(recorded).messages if m.role != "assistant"] == [
        ("user", "Clean up"),
        ("tool", "OBSERVATION:\nNot that!\n[Last action has been rejected by the user]"),
        ("user", "\nObserved result of command executed by user:\nok\n[Current working directory: /w]\n[Command finished with exit code 0]"),
        ("tool", "boom\n[Error occurred in processing last action]"),
        ("user", "Stop there."),
    ]
    assert recorded[-1].event.status == "imported"


def test_each_turn_of_a_windowed_run_is_trained_after_the_prompt_it_was_given(store):
    """The fold elides old observations as the run goes on, so a segment's final context is not
    what its early turns were given: each turn gets its own sample, after its own prompt."""
    from projections.samples import to_chat

    [report] = import_paths(store, "swe-agent", [STEP_MESSAGES])
    stream_id = report.streams[0].stream_id
    samples = [s for s in stream_samples(stream_id, store.read(stream_id), lambda _: True) if s.type == "react"]
    assert all(s.train == [False] * (len(s.train) - 1) + [True] for s in samples)
    prompts = {json.dumps(s.messages[:-1]) for s in samples}
    answered = {r.version - 1 for r in store.read(stream_id) if isinstance(r.event, AgentActed)}
    plan = read_trajectory("swe-agent", STEP_MESSAGES)
    checked = 0
    for recorded in plan.streams[0].prompts:
        if recorded.version in answered:  # the file's last prompt was never answered
            given, _ = to_chat(state_at(store, stream_id, recorded.version).context)
            assert json.dumps(given) in prompts
            checked += 1
    assert checked == 12
