"""Model-API fidelity: answers sent back exactly as received, prompt caching and what it does to
token counts, GLM-on-vLLM safe requests, answers thrown away and what they cost, deadlines."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest

from apollo_es import EventStore
from apollo_es.agent import Agent
from apollo_es.console.runs import RunsIndex
from apollo_es.models import AnthropicClient, ModelError, OpenAIClient, RetryPolicy
from apollo_es.models.prices import DEFAULT_PRICES, cost_usd, load_prices
from apollo_es.errors import ApolloError
from apollo_es.tasks import ModelSettings, Task, TaskError, load_task, prepare_workspace, reconfiguration, run_started, sampling_of
from apollo_es.tools import Workspace
from events import AgentActed, ContextSummarized, HumanIntervened, RunStarted, ToolObserved, Usage
from projections.context import fold
from projections.requests import digest
from projections.samples import to_chat
from tests.scripted import ScriptedAnthropic, snapshot_reply, text_reply, tool_use


def start(store: EventStore, tmp_path: Path, *, provider: str = "anthropic", **task_fields: Any) -> Workspace:
    task = Task(id="t", description="Do the thing.", **task_fields)
    root = prepare_workspace(task, tmp_path / "ws")
    store.append("run-1", [run_started(task, model="claude-test", provider=provider, workspace=root)], actor="system")
    return Workspace(root)


def drive(store: EventStore, client: Any, workspace: Workspace, **kwargs: Any):
    async def go():
        try:
            return await Agent(store, "run-1", client, workspace, **kwargs).run()
        finally:
            await client.aclose()

    return anyio.run(go)


def actions(store: EventStore) -> list[AgentActed]:
    return [e.event for e in store.read("run-1") if isinstance(e.event, AgentActed)]


# -- Anthropic: every block back exactly as received -------------------------------------------


def test_thinking_redacted_text_and_tool_use_go_back_exactly_as_received(tmp_path: Path) -> None:
    content = [
        {"type": "thinking", "thinking": "First, look.", "signature": "sig-one=="},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw=="},
        {"type": "thinking", "thinking": "Then decide.", "signature": "sig-two=="},
        {"type": "text", "text": "Noting it."},
        {"type": "tool_use", "id": "toolu_x1", "name": "think", "input": {"thought": "plan", "n": [1, 2.5]}},
    ]
    first = {**tool_use("think", {}), "content": content}
    server = ScriptedAnthropic([first, tool_use("finish", {"answer": "ok"})])
    with EventStore(tmp_path / "a.db") as store:
        drive(store, server.client(), start(store, tmp_path))
        [acted, _] = actions(store)
        chat, _ = to_chat(fold(store.read("run-1")))
    assert server.requests[1]["messages"][1] == {"role": "assistant", "content": content}
    # training sees the visible thinking as the turn's reasoning, never the encrypted block
    assert next(m for m in chat if m["role"] == "assistant")["reasoning_content"] == "First, look.\n\nThen decide." and "EmwKAhgB" not in json.dumps(chat)
    assert acted.reasoning == "First, look.\n\nThen decide."  # the visible thinking is what training sees
    assert "[redacted thinking]" not in json.dumps(server.requests[1]) and acted.text == "Noting it."


# -- prompt caching -----------------------------------------------------------------------------


def test_requests_carry_cache_breakpoints_and_their_digest_is_of_the_body_sent(tmp_path: Path) -> None:
    server = ScriptedAnthropic([tool_use("think", {"thought": f"step {i}"}) for i in range(3)] + [tool_use("finish", {"answer": "ok"})])
    with EventStore(tmp_path / "a.db") as store:
        drive(store, server.client(), start(store, tmp_path))
        recorded = actions(store)
    for body, acted in zip(server.requests, recorded):
        assert acted.context_digest == digest(body)
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
        marked = [block for turn in body["messages"] for block in turn["content"] if "cache_control" in block]
        assert 1 <= len(marked) <= 2 and len(marked) + 1 <= 4  # the API allows four breakpoints
        assert "cache_control" in body["messages"][-1]["content"][-1]
        assert all(turn["role"] == "user" for turn in body["messages"] if any("cache_control" in b for b in turn["content"]))


def test_caching_can_be_turned_off_and_old_runs_render_as_they_were_recorded(tmp_path: Path) -> None:
    server = ScriptedAnthropic([tool_use("finish", {"answer": "ok"})])
    with EventStore(tmp_path / "a.db") as store:
        drive(store, server.client(), start(store, tmp_path, model=ModelSettings(prompt_caching=False)))
    assert isinstance(server.requests[0]["system"], str) and "cache_control" not in json.dumps(server.requests[0])


def cached_step(thought: str, *, read: int) -> dict:
    reply = tool_use("think", {"thought": thought}, input_tokens=40, output_tokens=20)
    reply["usage"]["cache_read_input_tokens"] = read
    return reply


def test_summarization_counts_the_cached_prompt(tmp_path: Path) -> None:
    """With caching, Anthropic's input_tokens is only the uncached tail: the trigger must add the
    cache reads, or summarization would never fire."""
    replies = [cached_step(f"step {i}", read=1_000 * i) for i in range(1, 5)]
    replies += [snapshot_reply("Steps 1-2 done."), tool_use("finish", {"answer": "ok"})]
    server = ScriptedAnthropic(replies)
    with EventStore(tmp_path / "a.db") as store:
        drive(store, server.client(), start(store, tmp_path, summary_threshold=3_500))
        kinds = [e.kind for e in store.read("run-1")]
    # after step 4 (40 + 4,000 cached prompt tokens > 3,500) and not before (3,040 after step 3)
    assert kinds.count("AgentActed") == 5 and kinds.count("ContextSummarized") == 1
    assert kinds.index("ContextSummarized") > [i for i, k in enumerate(kinds) if k == "AgentActed"][3]


def test_token_budget_counts_cached_prompt_tokens(tmp_path: Path) -> None:
    server = ScriptedAnthropic([cached_step("a", read=5_000), tool_use("finish", {"answer": "never"})])
    with EventStore(tmp_path / "a.db") as store:
        finished = drive(store, server.client(), start(store, tmp_path, token_budget=4_000))
    assert finished.status == "budget_exhausted" and "spent 5060 tokens" in finished.error


# -- thinking from the task file and the CLI ----------------------------------------------------


def test_thinking_from_the_task_file(tmp_path: Path) -> None:
    path = tmp_path / "task.toml"
    path.write_text('id = "t"\ndescription = "d"\nmax_output_tokens = 16000\n[model]\nthinking_budget = 4096\ntemperature = 1.0\n')
    task = load_task(path)
    assert sampling_of(task, "anthropic") == {"temperature": 1.0, "thinking": {"type": "enabled", "budget_tokens": 4096}}
    with pytest.raises(TaskError, match="thinking_budget is for the anthropic provider"):
        sampling_of(task, "openai")
    path.write_text('id = "t"\ndescription = "d"\nmax_output_tokens = 4096\n[model]\nthinking_budget = 4096\n')
    with pytest.raises(TaskError, match=r"max_output_tokens \(4096\) must exceed"):
        sampling_of(load_task(path), "anthropic")


def test_run_thinking_budget_reaches_the_request(tmp_path: Path) -> None:
    server = ScriptedAnthropic([tool_use("finish", {"answer": "ok"})])
    with EventStore(tmp_path / "a.db") as store:
        drive(store, server.client(), start(store, tmp_path, model=ModelSettings(thinking_budget=2048)))
    assert server.requests[0]["thinking"] == {"type": "enabled", "budget_tokens": 2048}


# -- GLM-4.5 on vLLM ----------------------------------------------------------------------------


class StrictVLLM:
    """Answers like vLLM: every earlier assistant tool call's arguments must parse as JSON, or
    the request is a 400. The replies carry no tool-call ids."""

    def __init__(self, replies: list[dict]) -> None:
        self.replies, self.bodies = replies, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        for message in body["messages"]:
            for call in message.get("tool_calls") or []:
                try:
                    json.loads(call["function"]["arguments"])
                except ValueError:
                    return httpx.Response(400, json={"object": "error", "message": "Expecting value: line 1"})
        message = self.replies.pop(0)
        return httpx.Response(200, json={"model": "glm-4.5", "choices": [{"message": message, "finish_reason": "tool_calls"}],
                                         "usage": {"prompt_tokens": 100, "completion_tokens": 10}})


def call_without_id(name: str, arguments: str) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def test_malformed_glm_arguments_never_break_later_requests_and_ids_are_unique(tmp_path: Path) -> None:
    replies = [call_without_id("write_file", '{"path": "a.txt", "content": "unterminated')]
    replies += [call_without_id("think", json.dumps({"thought": f"step {i}"})) for i in range(48)]
    replies += [call_without_id("finish", '{"answer": "done"}')]
    server = StrictVLLM(replies)
    client = OpenAIClient("glm-4.5", base_url="http://vllm.test/v1", http_client=httpx.AsyncClient(transport=httpx.MockTransport(server)))
    with EventStore(tmp_path / "a.db") as store:
        finished = drive(store, client, start(store, tmp_path, provider="openai"))
        recorded = actions(store)
        observed = [e.event for e in store.read("run-1") if isinstance(e.event, ToolObserved)]
    assert finished.status == "finished" and len(server.bodies) == 50
    ids = [call.id for acted in recorded for call in acted.tool_calls]
    assert len(ids) == 50 and len(set(ids)) == 50
    assert recorded[0].tool_calls[0].raw_arguments == '{"path": "a.txt", "content": "unterminated'  # recorded as written
    assert observed[0].is_error and "not a JSON object" in observed[0].output
    sent = server.bodies[-1]["messages"][2]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(sent) == {"_raw": '{"path": "a.txt", "content": "unterminated'}


# -- answers thrown away, and cost --------------------------------------------------------------


def test_an_answer_dropped_for_guidance_is_recorded_with_its_usage_and_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[prices."claude-test"]\ninput = 3.0\noutput = 15.0\ncache_write = 3.75\ncache_read = 0.3\n')
    monkeypatch.setenv("APOLLO_ES_PRICES", str(prices))
    store = EventStore(tmp_path / "a.db")

    def guidance() -> None:
        store.append("run-1", [HumanIntervened(annotator="ana", kind="guidance", message="Check X first.")], actor="human:ana")

    server = ScriptedAnthropic(
        [tool_use("think", {"thought": "dropped"}, input_tokens=1_000, output_tokens=100), tool_use("finish", {"answer": "ok"})],
        hooks={1: guidance},
    )
    drive(store, server.client(), start(store, tmp_path), summarizer=None)
    [acted] = actions(store)
    [dropped] = acted.discarded
    assert dropped.usage == Usage(input_tokens=1_000, output_tokens=100) and dropped.request_digest == digest(server.requests[0])
    assert dropped.cost_usd == pytest.approx((1_000 * 3.0 + 100 * 15.0) / 1e6)
    assert acted.cost_usd == pytest.approx((1_000 * 3.0 + 50 * 15.0) / 1e6)
    # and every surface adds the dropped answer to the run's cost
    assert store.stats()["cost_usd"] == pytest.approx(acted.cost_usd + dropped.cost_usd)
    index = RunsIndex(store)
    [summary] = index.apply(store.read_all())
    assert summary.cost_usd == pytest.approx(acted.cost_usd + dropped.cost_usd)
    store.close()


def test_prices() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_write_tokens=1_000_000, cache_read_tokens=1_000_000)
    assert cost_usd("claude-sonnet-4-5-20250929", usage) == pytest.approx(3 + 15 + 3.75 + 0.3)
    assert cost_usd("claude-opus-4-5", usage) == pytest.approx(5 + 25 + 6.25 + 0.5)  # the longest prefix wins
    assert cost_usd("zai-org/GLM-4.5", usage) is None  # self-hosted: unknown, not free
    assert load_prices() is DEFAULT_PRICES


# -- deadlines ----------------------------------------------------------------------------------


async def _drip(http_module: Any):
    for _ in range(600):
        await anyio.sleep(0.05)
        yield b" "


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_dripping_server_is_cut_at_the_deadline(provider: str) -> None:
    """One byte every 50 ms never trips a per-read timeout; the deadline covers the whole answer."""
    if provider == "anthropic":
        transport = httpx2.MockTransport(lambda request: httpx2.Response(200, headers={"content-type": "application/json"}, content=_drip(httpx2)))
        client = AnthropicClient("claude-test", api_key="sk-test-key-123", http_client=httpx2.AsyncClient(transport=transport),
                                 policy=RetryPolicy(max_attempts=1), timeout=0.5)
        request = {"model": "claude-test", "max_tokens": 5, "messages": []}
    else:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, headers={"content-type": "application/json"}, content=_drip(httpx)))
        client = OpenAIClient("glm", base_url="http://vllm.test/v1", http_client=httpx.AsyncClient(transport=transport),
                              policy=RetryPolicy(max_attempts=1), timeout=0.5)
        request = {"model": "glm", "max_tokens": 5, "messages": []}
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"no answer within 0\.5 s"):
        anyio.run(client.complete, request)
    assert time.monotonic() - started < 3


# -- a stop interrupts what is running ----------------------------------------------------------


def stop_after(db: Path, seconds: float) -> threading.Timer:
    """A person's stop, appended from another connection `seconds` from now."""
    def stop() -> None:
        with EventStore(db) as other:
            other.append("run-1", [HumanIntervened(annotator="ana", kind="stop", message="Stop now.")], actor="human:ana")

    timer = threading.Timer(seconds, stop)
    timer.start()
    return timer


def test_a_stop_interrupts_a_30_s_model_call(tmp_path: Path) -> None:
    async def slow(request: httpx2.Request) -> httpx2.Response:
        await anyio.sleep(30)
        return httpx2.Response(200, json=tool_use("finish", {"answer": "too late"}))

    client = AnthropicClient("claude-test", api_key="sk-test-key-123", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(slow)))
    with EventStore(tmp_path / "a.db") as store:
        workspace = start(store, tmp_path)
        timer = stop_after(tmp_path / "a.db", 0.5)
        started = time.monotonic()
        finished = drive(store, client, workspace)
        timer.join()
        assert finished.status == "stopped" and time.monotonic() - started < 0.5 + 2
        assert not actions(store)  # the interrupted answer never came


def test_a_stop_interrupts_a_30_s_command(tmp_path: Path) -> None:
    server = ScriptedAnthropic([tool_use("run_command", {"command": "echo started; sleep 30", "timeout": 60}),
                                tool_use("finish", {"answer": "never asked"})])
    with EventStore(tmp_path / "a.db") as store:
        workspace = start(store, tmp_path)
        timer = stop_after(tmp_path / "a.db", 1.0)
        started = time.monotonic()
        finished = drive(store, server.client(), workspace)
        timer.join()
        observed = [e.event for e in store.read("run-1") if isinstance(e.event, ToolObserved)]
    assert finished.status == "stopped" and time.monotonic() - started < 1.0 + 2
    assert observed[0].is_error and observed[0].output.startswith("started\n") and "interrupted: a person stopped the run" in observed[0].output
    assert len(server.requests) == 1


def test_an_answer_too_large_to_record_ends_the_run_failed_with_the_reason(tmp_path: Path) -> None:
    server = ScriptedAnthropic([tool_use("think", {"thought": "x" * 50_000})])
    with EventStore(tmp_path / "a.db", max_payload_bytes=20_000) as store:
        finished = drive(store, server.client(), start(store, tmp_path))
        assert finished.status == "failed" and "cannot be recorded" in finished.error and "max_output_tokens" in finished.error
        assert store.read("run-1")[-1].event == finished and store.verify().ok


# -- changing a run's settings on resume and for a continued branch -----------------------------


def cli(*args: object):
    from click.testing import CliRunner

    from apollo_es.cli import cli as apollo

    return CliRunner().invoke(apollo, [str(a) for a in args])


def recorded_run(tmp_path: Path, steps: int, *, max_steps: int) -> Path:
    from apollo_es.models import ModelResponse, save_recording
    from events import ToolCall

    (tmp_path / "task.toml").write_text(f'id = "t"\ndescription = "d"\nmax_steps = {max_steps}\n')
    responses = [ModelResponse(tool_calls=[ToolCall(id=f"c{i}", name="think", arguments={"thought": f"{i}"})], model="m") for i in range(steps)]
    save_recording(tmp_path / "rec.jsonl", [*responses, ModelResponse(tool_calls=[ToolCall(id="done", name="finish", arguments={"answer": "ok"})], model="m")])
    result = cli("run", tmp_path / "task.toml", "--model", "m", "--provider", "recorded", "--recording", tmp_path / "rec.jsonl",
                 "--run-id", "r", "--workspace", tmp_path / "ws", "--db", tmp_path / "a.db")
    assert result.exit_code == 0, result.output
    return tmp_path / "a.db"


def test_resume_raises_a_budget_and_records_it(tmp_path: Path) -> None:
    db = recorded_run(tmp_path, 4, max_steps=2)
    with EventStore(db) as store:
        assert store.read("r")[-1].event.status == "budget_exhausted"
    bad = cli("resume", "r", "--provider", "recorded", "--recording", tmp_path / "rec.jsonl", "--thinking-budget", "9000", "--db", db)
    assert bad.exit_code == 1 and "max_output_tokens (8192) must exceed thinking_budget (9000)" in bad.output
    result = cli("resume", "r", "--provider", "recorded", "--recording", tmp_path / "rec.jsonl", "--max-steps", "10", "--db", db)
    assert result.exit_code == 0, result.output
    with EventStore(db) as store:
        events = store.read("r")
    reconfigured = [e.event for e in events if e.kind == "RunReconfigured"]
    assert [(r.max_steps, r.reason) for r in reconfigured] == [(10, "resume")]  # the refused one wrote nothing
    assert events[-1].event.status == "finished" and fold(events).run.max_steps == 10


def test_settings_changed_mid_run_reach_the_next_request(tmp_path: Path) -> None:
    server = ScriptedAnthropic([tool_use("think", {"thought": "a"}), tool_use("finish", {"answer": "ok"})])
    with EventStore(tmp_path / "a.db") as store:
        workspace = start(store, tmp_path, model=ModelSettings(prompt_caching=False))
        run = fold(store.read("run-1")).run
        store.append("run-1", [reconfiguration(run, thinking_budget=2048, prompt_caching=True, reason="think harder")], actor="system")
        drive(store, server.client(), workspace)
    assert server.requests[0]["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert server.requests[0]["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert reconfiguration(run) is None  # nothing asked, nothing recorded


def test_a_continued_branch_gets_its_own_settings(tmp_path: Path) -> None:
    db = recorded_run(tmp_path, 1, max_steps=5)
    result = cli("replay", "r", "--at", "3", "--branch", "--name", "b", "--continue", "--provider", "recorded",
                 "--recording", tmp_path / "rec.jsonl", "--max-steps", "7", "--workspace", tmp_path / "bws", "--db", db)
    assert result.exit_code == 0, result.output
    with EventStore(db) as store:
        assert fold(store.read("b")).run.max_steps == 7 and fold(store.read("r")).run.max_steps == 5
    refused = cli("replay", "r", "--at", "3", "--branch", "--max-steps", "7", "--db", db)
    assert refused.exit_code == 1 and "go with --branch --continue" in refused.output


def test_resume_after_an_answer_too_large_needs_a_lower_output_limit(tmp_path: Path) -> None:
    server = ScriptedAnthropic([tool_use("think", {"thought": "x" * 50_000})])
    with EventStore(tmp_path / "a.db", max_payload_bytes=20_000) as store:
        workspace = start(store, tmp_path)
        drive(store, server.client(), workspace)
        server = ScriptedAnthropic([tool_use("finish", {"answer": "short"})])
        with pytest.raises(ApolloError, match=r"resume it with a lower --max-output-tokens \(now 8192\)"):
            anyio.run(lambda: Agent(store, "run-1", server.client(), workspace).run(resume=True))
        store.append("run-1", [reconfiguration(fold(store.read("run-1")).run, max_output_tokens=2048)], actor="system")
        finished = anyio.run(lambda: Agent(store, "run-1", server.client(), workspace).run(resume=True))
    assert finished.status == "finished" and server.requests[0]["max_tokens"] == 2048


def test_a_stop_interrupts_a_summarization_call(tmp_path: Path) -> None:
    async def slow(request: httpx2.Request) -> httpx2.Response:
        await anyio.sleep(30)
        return httpx2.Response(200, json=text_reply("too late"))

    summarizer = AnthropicClient("claude-test", api_key="sk-test-key-123", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(slow)))
    server = ScriptedAnthropic([cached_step(f"s{i}", read=2_000 * i) for i in range(1, 4)])
    with EventStore(tmp_path / "a.db") as store:
        workspace = start(store, tmp_path, summary_threshold=3_500)
        timer = stop_after(tmp_path / "a.db", 1.0)
        started = time.monotonic()
        finished = drive(store, server.client(), workspace, summarizer=summarizer)
        timer.join()
        kinds = [e.kind for e in store.read("run-1")]
    assert finished.status == "stopped" and time.monotonic() - started < 1.0 + 2
    assert "ContextSummarized" not in kinds


def test_runs_json_shows_each_streams_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[prices."claude-test"]\ninput = 3.0\noutput = 15.0\ncache_write = 3.75\ncache_read = 0.3\n')
    monkeypatch.setenv("APOLLO_ES_PRICES", str(prices))
    server = ScriptedAnthropic([tool_use("finish", {"answer": "ok"}, input_tokens=1_000, output_tokens=100)])
    with EventStore(tmp_path / "a.db") as store:
        drive(store, server.client(), start(store, tmp_path))
    result = cli("runs", "--json", "--db", tmp_path / "a.db")
    assert json.loads(result.output)[0]["cost_usd"] == pytest.approx((1_000 * 3 + 100 * 15) / 1e6)


# -- summaries that may replace the history -----------------------------------------------------


def summarizing_run(tmp_path: Path, summaries: list[dict]) -> tuple[EventStore, Any]:
    replies = [cached_step(f"step {i}", read=1_000 * i) for i in range(1, 5)] + summaries + [tool_use("finish", {"answer": "ok"})]
    server = ScriptedAnthropic(replies)
    store = EventStore(tmp_path / "a.db")
    finished = drive(store, server.client(), start(store, tmp_path, summary_threshold=3_500))
    return store, finished


def test_empty_cut_off_or_structureless_summaries_are_asked_again(tmp_path: Path) -> None:
    cut_off = {**snapshot_reply("half a"), "stop_reason": "max_tokens"}
    store, finished = summarizing_run(tmp_path, [text_reply(""), cut_off, snapshot_reply("Steps 1-3 done.")])
    assert finished.status == "finished"
    [summary] = [e.event for e in store.read("run-1") if e.kind == "ContextSummarized"]
    assert "Steps 1-3 done." in summary.summary
    last = [e.event for e in store.read("run-1") if e.kind == "AgentActed"][-1]
    assert len(last.discarded) == 2  # the rejected summaries were paid for: recorded with the next action
    store.close()


def test_a_summarizer_that_never_gives_a_usable_summary_fails_the_run(tmp_path: Path) -> None:
    store, finished = summarizing_run(tmp_path, [text_reply("Just some notes.")] * 3)
    assert finished.status == "failed" and "summarization failed: the summary has 0 of the 7 sections" in finished.error
    assert not [e for e in store.read("run-1") if e.kind == "ContextSummarized"]
    store.close()


def test_verify_checks_summarization_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from projections import summarization
    from replay import verify_run

    store, _ = summarizing_run(tmp_path, [snapshot_reply("done")])
    report = verify_run(store, "run-1")
    assert report.ok and report.summaries_checked == 1 and report.actions_checked == 5
    monkeypatch.setattr(summarization, "_SYSTEM", "A changed summarization prompt.")
    report = verify_run(store, "run-1")
    summary_version = next(e.version for e in store.read("run-1") if e.kind == "ContextSummarized")
    assert not report.ok and report.first_bad_version == summary_version and "summarization request" in report.reason
    store.close()


def test_only_usable_summaries_become_training_samples(tmp_path: Path) -> None:
    from projections.samples import stream_samples

    with EventStore(tmp_path / "a.db") as store:
        store.append("imp", [RunStarted(task_id="t", task="t"), AgentActed(model="m", text="a"), ToolObserved(tool_call_id="", output="o"),
                             ContextSummarized(summary="", replaces_from=2, replaces_to=3),
                             AgentActed(model="m", text="b"), ToolObserved(tool_call_id="", output="o"),
                             ContextSummarized(summary="imported notes, no sections", replaces_from=5, replaces_to=6)])
        samples = stream_samples("imp", store.read("imp"), keep=lambda event_id: True)
    summaries = [s for s in samples if s.type == "summary"]
    assert [s.messages[-1]["content"] for s in summaries] == ["imported notes, no sections"]  # the empty one is not trained
