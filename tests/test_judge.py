"""The LLM judge: verdicts, idempotency, the concurrency bound, the budget, malformed output, resume.

The model is an OpenAI-compatible or Anthropic server scripted through `httpx.MockTransport`
(`httpx2` for the Anthropic SDK); the resume test runs the judge CLI in a subprocess against
a small HTTP server on 127.0.0.1 and SIGKILLs it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest

from apollo_es import EventStore, NewEvent
from apollo_es.errors import ApolloError
from apollo_es.judge import Judge, judge_event_id, judge_id_for
from apollo_es.models import AnthropicClient, OpenAIClient, RetryPolicy
from events import ActionJudged, AgentActed, HumanIntervened, RunFinished, RunStarted, ToolCall, ToolObserved
from projections.judging import JUDGE_SYSTEM, PROMPT_VERSION, VerdictError, judge_context, parse_verdict
from projections.requests import render_request

MODEL = "judge-model"
JUDGE_ID = f"{MODEL}@{PROMPT_VERSION}"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- a scripted model ---------------------------------------------------------------------


def completion(text: str, *, prompt_tokens: int = 80, completion_tokens: int = 20, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def good(verdict: str = "keep", score: float = 0.9, reason: str = "a sensible step") -> str:
    return json.dumps({"verdict": verdict, "score": score, "reason": reason})


class Model:
    """An OpenAI-compatible chat-completions endpoint: `answer(body, n)` gives the reply text (or a full response)."""

    def __init__(self, answer: Callable[[dict, int], Any] | None = None, delay: float = 0.0) -> None:
        self.answer = answer or (lambda body, n: good())
        self.delay = delay
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.delay)
            reply = self.answer(body, len(self.bodies))
        finally:
            self.in_flight -= 1
        if isinstance(reply, httpx.Response):
            return reply
        return httpx.Response(200, json=reply if isinstance(reply, dict) else completion(reply))

    def client(self, attempts: int = 1) -> OpenAIClient:
        return OpenAIClient(
            MODEL, base_url="http://judge.test/v1", http_client=httpx.AsyncClient(transport=httpx.MockTransport(self)),
            policy=RetryPolicy(max_attempts=attempts, base_delay=0, max_delay=0),
        )

    def prompt(self, index: int = -1) -> str:
        return self.bodies[index]["messages"][1]["content"]


def action_of(body: dict) -> str:
    """The command of the judged action, read back from the request."""
    prompt = body["messages"][1]["content"]
    section = prompt.split("<action", 1)[1]
    return section.split('"command":"', 1)[1].split('"', 1)[0]


# -- a crafted log ------------------------------------------------------------------------


def make_run(store: EventStore, stream_id: str, steps: int, *, finish: bool = True) -> list[str]:
    store.append(stream_id, [RunStarted(task_id="t", task=f"Task of {stream_id}: train a tiny model")])
    actions = []
    for i in range(steps):
        call = ToolCall(id=f"{stream_id}-c{i}", name="run_command", arguments={"command": f"{stream_id}-step-{i}"})
        [acted] = store.append(stream_id, [AgentActed(model="agent", text=f"step {i}", tool_calls=[call])], actor="agent")
        observed = ToolObserved(tool_call_id=call.id, tool_name="run_command", output=f"output of step {i}", exit_code=0)
        store.append(stream_id, [NewEvent(event=observed, causation_id=acted.event_id)], actor="agent")
        actions.append(acted.event_id)
    if finish:
        store.append(stream_id, [RunFinished(status="finished")], actor="agent")
    return actions


def verdicts(store: EventStore) -> list:
    return [r for r in store.read_all() if isinstance(r.event, ActionJudged)]


@pytest.fixture
def store(tmp_path):
    with EventStore(tmp_path / "apollo.db") as s:
        yield s


def judge_run(store: EventStore, model: Model, streams: list[str] | None = None, **kwargs: Any):
    judge = Judge(store, model.client(), **kwargs)
    return anyio.run(judge.run, streams), judge


# -- verdicts -----------------------------------------------------------------------------


def test_parse_verdict_accepts_json_with_or_without_a_fence():
    assert parse_verdict(good("mask", 0.25, " off track ")).reason == "off track"
    fenced = f"Here is my verdict:\n```json\n{good('keep', 1)}\n```\n"
    assert parse_verdict(fenced).verdict == "keep"
    assert parse_verdict("```\n" + good() + "\n```").score == 0.9
    assert parse_verdict("Verdict: " + good("mask", 0) + " -- done").verdict == "mask"
    assert parse_verdict('{"verdict": "keep", "score": 1}').reason == ""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the answer is empty"),
        ("I think it is fine.", "no JSON object in the answer"),
        ('{"verdict": "keep", "score": 0.9, "reason": "cut', "not valid JSON"),
        ('{"verdict": "maybe", "score": 0.5}', "not a verdict"),
        ('{"verdict": "keep", "score": 1.5}', "not a verdict: Expected `float` <= 1.0"),
        ('{"verdict": "keep"}', "missing required field `score`"),
        ('["keep", 0.9]', "no JSON object"),
    ],
)
def test_parse_verdict_rejects_what_is_not_a_verdict(text, problem):
    with pytest.raises(VerdictError, match=problem.replace("(", r"\(").replace("[", r"\[")):
        parse_verdict(text)


def test_verdict_ids_are_deterministic_and_distinct():
    assert judge_event_id("a@v1", "x") == judge_event_id("a@v1", "x")
    assert len({judge_event_id("a@v1", "x"), judge_event_id("a@v2", "x"), judge_event_id("a@v1", "y")}) == 3
    assert judge_id_for("claude-x") == f"claude-x@{PROMPT_VERSION}"


def test_judge_appends_one_verdict_per_action_to_the_actions_stream(store):
    actions = make_run(store, "run-1", 3)
    model = Model(lambda body, n: good("mask", 0.2, "wrong command") if "step-1" in action_of(body) else good())
    report, _ = judge_run(store, model)
    assert (report.actions, report.judged, report.errors, report.skipped, report.remaining) == (3, 3, 0, 0, 0)
    assert report.tokens == 300 and report.requests == 3
    found = {r.event.target_event_id: r for r in verdicts(store)}
    assert set(found) == set(actions)
    for action in actions:
        recorded = found[action]
        assert recorded.stream_id == "run-1"
        assert recorded.causation_id == action
        assert recorded.event_id == judge_event_id(JUDGE_ID, action)
        assert recorded.actor == f"judge:{JUDGE_ID}"
        assert recorded.event.judge_id == JUDGE_ID
    assert found[actions[1]].event.verdict == "mask" and found[actions[1]].event.score == 0.2
    assert found[actions[1]].event.reason == "wrong command"
    assert found[actions[0]].event.verdict == "keep"
    # each verdict records the calls it took (cost: None, the test model has no price)
    assert [v.event.usage.prompt_tokens + v.event.usage.output_tokens for v in verdicts(store)] == [100, 100, 100]
    assert all(v.event.cost_usd is None for v in verdicts(store))


def test_the_request_holds_the_task_the_folded_context_the_action_and_its_observation(store):
    actions = make_run(store, "run-1", 2, finish=False)
    store.append("run-1", [HumanIntervened(annotator="ana", kind="guidance", message="use the GPU")], actor="human:ana")
    call = ToolCall(id="last", name="run_command", arguments={"command": "nvidia-smi"})
    [acted] = store.append("run-1", [AgentActed(model="agent", text="checking", tool_calls=[call])], actor="agent")
    store.append("run-1", [NewEvent(event=ToolObserved(tool_call_id="last", output="no GPU found", is_error=True, exit_code=1), causation_id=acted.event_id)])
    store.append("run-1", [RunFinished(status="finished")])
    model = Model()
    judge_run(store, model, ["run-1"])
    body = next(b for b in model.bodies if "nvidia-smi" in b["messages"][1]["content"])
    assert body["model"] == MODEL and body["temperature"] == 0 and body["max_tokens"] == 1024
    assert body["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM}
    prompt = body["messages"][1]["content"]
    task, rest = prompt.split("</task>")
    assert "Task of run-1" in task
    context, rest = rest.split("</context>")
    assert "output of step 1" in context and "<real_user_message>\nuse the GPU" in context  # as the fold shows it
    action, observation = rest.split("</action>")
    assert "checking" in action and "nvidia-smi" in action and 'step="3"' in action
    assert "no GPU found" in observation and 'error="true"' in observation
    assert "nvidia-smi" not in context
    assert len(actions) == 2


def test_every_request_equals_the_context_folded_from_scratch(store):
    """The judge folds each stream once, incrementally; its requests must be what a fresh fold gives."""
    make_run(store, "run-1", 6, finish=False)
    store.append("run-1", [HumanIntervened(annotator="ana", kind="guidance", message="try the other data")], actor="human:ana")
    make_run(store, "run-2", 3)
    child = store.branch("run-1", 9, actor="human:ben")
    call = ToolCall(id="b1", name="run_command", arguments={"command": "branch-step"})
    [acted] = store.append(child, [AgentActed(model="agent", text="on the branch", tool_calls=[call])], actor="agent")
    store.append(child, [NewEvent(event=ToolObserved(tool_call_id="b1", output="done"), causation_id=acted.event_id)])
    model = Model()
    _, judge = judge_run(store, model, concurrency=3)

    expected = {}
    for stream_id in ("run-1", "run-2", child):
        events = store.read(stream_id)
        for index, recorded in enumerate(events):
            if isinstance(recorded.event, AgentActed) and recorded.stream_id == stream_id:
                expected[recorded.event_id] = render_request(judge_context(
                    events, index, model=MODEL, sampling=judge.sampling, max_output_tokens=judge.max_output_tokens), "openai")
    assert len(model.bodies) == len(expected) == 10
    sent = sorted(json.dumps(b, sort_keys=True) for b in model.bodies)
    assert sent == sorted(json.dumps(b, sort_keys=True) for b in expected.values())


def test_judge_context_keeps_the_newest_messages_within_its_budget(store):
    make_run(store, "run-1", 30)
    events = store.read("run-1")
    index = max(i for i, r in enumerate(events) if isinstance(r.event, AgentActed))
    prompt = judge_context(events, index, context_chars=600).messages[0].content
    assert "earlier messages omitted" in prompt
    assert "output of step 28" in prompt and "output of step 2\n" not in prompt
    full = judge_context(events, index).messages[0].content
    assert "omitted" not in full and "output of step 0" in full
    request = render_request(judge_context(events, index, model="claude-x"), "anthropic")
    assert request["system"] == JUDGE_SYSTEM and request["model"] == "claude-x"


# -- idempotency, concurrency, budget --------------------------------------------------------


def test_running_the_judge_twice_judges_nothing_twice(store):
    make_run(store, "run-1", 4)
    make_run(store, "run-2", 3)
    first, _ = judge_run(store, Model())
    assert (first.judged, first.skipped) == (7, 0)
    second_model = Model()
    second, _ = judge_run(store, second_model)
    assert (second.judged, second.skipped, second.requests) == (0, 7, 0)
    assert second_model.bodies == []
    assert len(verdicts(store)) == 7
    # A new prompt version or model is another judge: it judges everything again, next to the old verdicts.
    third, _ = judge_run(store, Model(), judge_id=f"{MODEL}@judge-v2")
    assert third.judged == 7 and len(verdicts(store)) == 14


def test_two_judges_at_once_record_each_verdict_once(store):
    make_run(store, "run-1", 6)

    async def both() -> list:
        reports = []

        async def one() -> None:
            reports.append(await Judge(store, Model(delay=0.01).client(), concurrency=3).run(None))

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            group.start_soon(one)
        return reports

    anyio.run(both)
    assert len(verdicts(store)) == 6
    assert len({r.event.target_event_id for r in verdicts(store)}) == 6


def test_never_more_requests_in_flight_than_the_bound(store):
    make_run(store, "run-1", 12)
    model = Model(delay=0.05)
    report, judge = judge_run(store, model, concurrency=3)
    assert report.judged == 12
    assert model.max_in_flight == 3  # concurrent, and bounded
    assert judge.max_in_flight == 3
    serial = Model(delay=0.001)
    make_run(store, "run-2", 4)
    judge_run(store, serial, ["run-2"], concurrency=1)
    assert serial.max_in_flight == 1


def test_the_budget_stops_new_requests_cleanly_and_a_rerun_continues(store):
    """Each request reserves the most it can cost (its estimated prompt and the output limit)
    before it is sent, so the budget is never exceeded; what is left waits for the next run."""
    make_run(store, "run-1", 8)
    report, _ = judge_run(store, Model(), concurrency=1, budget_tokens=2_000)  # 100 tokens a verdict
    assert report.budget_exhausted and 1 <= report.judged < 8 and report.errors == 0
    assert report.tokens == 100 * report.judged <= 2_000
    assert report.remaining == 8 - report.judged == 8 - len(verdicts(store))
    rest, _ = judge_run(store, Model())
    assert (rest.judged, rest.skipped, rest.budget_exhausted) == (8 - report.judged, report.judged, False)
    assert len(verdicts(store)) == 8


def test_concurrent_requests_never_overshoot_the_budget(store):
    make_run(store, "run-1", 10)
    report, judge = judge_run(store, Model(delay=0.02), concurrency=4, budget_tokens=2_000)
    # One request's reservation (about 1,000 output tokens and the prompt) leaves no room for
    # a second: they go one at a time, and the spend stays within the budget.
    assert judge.max_in_flight == 1 and report.tokens <= 2_000 and report.budget_exhausted


# -- malformed output, refusals, outages ------------------------------------------------------


def test_malformed_output_is_retried_with_the_problem_explained(store):
    make_run(store, "run-1", 1)
    model = Model(lambda body, n: "Looks fine to me!" if n == 1 else "```json\n" + good("mask", 0.4) + "\n```")
    report, _ = judge_run(store, model)
    assert (report.judged, report.errors, report.requests, report.tokens) == (1, 0, 2, 200)
    retry = model.bodies[1]["messages"]
    assert retry[2] == {"role": "assistant", "content": "Looks fine to me!"}
    assert retry[3]["role"] == "user" and "no JSON object in the answer" in retry[3]["content"]
    assert verdicts(store)[0].event.verdict == "mask"


def test_output_that_stays_malformed_is_recorded_as_a_judge_error(store):
    make_run(store, "run-1", 2)
    answers = ['{"verdict": "keep", "score": 7}', '{"verdict": "perhaps"', "no idea"]
    model = Model(lambda body, n: answers[(n - 1) % 3])
    report, _ = judge_run(store, model, concurrency=1, max_attempts=3)
    assert (report.judged, report.errors, report.requests) == (0, 2, 6)
    for recorded in verdicts(store):
        assert recorded.event.verdict == "error" and recorded.event.score is None
        assert recorded.event.reason.startswith("malformed judge output after 3 attempts: no JSON object")
    # an error verdict still records the three calls it cost
    assert sum(v.event.usage.prompt_tokens + v.event.usage.output_tokens for v in verdicts(store)) == report.tokens
    # An error is not a verdict to keep: the next run asks again, and the errors stay recorded.
    again, _ = judge_run(store, Model())
    assert (again.judged, again.skipped) == (2, 0)
    assert sorted(v.event.verdict for v in verdicts(store)) == ["error", "error", "keep", "keep"]


def test_a_cut_off_answer_is_malformed(store):
    make_run(store, "run-1", 1)
    model = Model(lambda body, n: completion('{"verdict": "keep", "sc', finish_reason="length"))
    report, _ = judge_run(store, model, max_attempts=2)
    assert report.errors == 1
    assert "cut off at the output limit" in verdicts(store)[0].event.reason


def test_a_response_that_is_not_a_completion_is_a_judge_error(store):
    make_run(store, "run-1", 1)
    model = Model(lambda body, n: httpx.Response(200, text="<html>proxy error</html>"))
    report, _ = judge_run(store, model)
    assert report.errors == 1 and report.judged == 0
    assert "not a model response" in verdicts(store)[0].event.reason


def test_a_refused_request_stops_the_judge_and_records_nothing(store):
    make_run(store, "run-1", 5)
    model = Model(lambda body, n: httpx.Response(401, json={"error": {"message": "bad key"}}))
    report, _ = judge_run(store, model, concurrency=1)
    assert "bad key" in report.stopped
    assert len(model.bodies) == 1 and verdicts(store) == []
    assert report.remaining == 5


def test_an_unavailable_model_leaves_actions_for_the_next_run(store):
    make_run(store, "run-1", 3)
    model = Model(lambda body, n: httpx.Response(503, json={"error": {"message": "overloaded"}}) if n == 2 else good())
    report, _ = judge_run(store, model, concurrency=1)
    assert (report.judged, report.failed, report.remaining) == (2, 1, 0)
    assert "overloaded" in report.last_error
    rest, _ = judge_run(store, Model())
    assert (rest.judged, rest.skipped) == (1, 2)


# -- which actions ------------------------------------------------------------------------


def test_an_action_waiting_for_its_observation_is_left_for_later(store):
    actions = make_run(store, "run-1", 2, finish=False)
    call = ToolCall(id="late", name="run_command", arguments={"command": "train.py"})
    [acted] = store.append("run-1", [AgentActed(model="agent", tool_calls=[call])], actor="agent")
    report, _ = judge_run(store, Model())
    assert (report.judged, report.pending) == (2, 1)
    store.append("run-1", [NewEvent(event=ToolObserved(tool_call_id="late", output="done"), causation_id=acted.event_id)])
    later, _ = judge_run(store, Model())
    assert (later.judged, later.skipped, later.pending) == (1, 2, 0)
    assert len(actions) == 2


def test_inherited_actions_are_judged_once_in_the_stream_that_recorded_them(store):
    actions = make_run(store, "run-1", 3)
    child = store.branch("run-1", at_version=4, new_stream_id="run-1~b1")  # shares actions 1 and 2
    call = ToolCall(id="b", name="run_command", arguments={"command": "branch-step"})
    [own] = store.append(child, [AgentActed(model="agent", tool_calls=[call])], actor="agent")
    store.append(child, [NewEvent(event=ToolObserved(tool_call_id="b", output="ok"), causation_id=own.event_id)])
    store.append(child, [RunFinished(status="finished")])
    model = Model()
    report, _ = judge_run(store, model, [child])
    assert (report.actions, report.judged) == (3, 3)
    by_target = {r.event.target_event_id: r.stream_id for r in verdicts(store)}
    assert by_target == {actions[0]: "run-1", actions[1]: "run-1", own.event_id: child}
    everything, _ = judge_run(store, Model())
    assert (everything.actions, everything.judged, everything.skipped) == (4, 1, 3)


def test_unknown_stream_and_bad_settings_are_errors(store):
    make_run(store, "run-1", 1)
    with pytest.raises(ApolloError, match="no stream 'nope'"):
        judge_run(store, Model(), ["nope"])
    with pytest.raises(ApolloError, match="concurrency"):
        Judge(store, Model().client(), concurrency=0)
    with pytest.raises(ApolloError, match="budget"):
        Judge(store, Model().client(), budget_tokens=0)


# -- Anthropic ----------------------------------------------------------------------------


def test_the_judge_works_with_the_anthropic_client(store):
    actions = make_run(store, "run-1", 2)
    seen: list[dict] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json={
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-judge",
            "content": [{"type": "text", "text": good("mask", 0.3, "pointless")}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 500, "output_tokens": 30},
        })

    client = AnthropicClient(
        "claude-judge", api_key="sk-ant-test", base_url="http://anthropic.test",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)), policy=RetryPolicy(max_attempts=1),
    )
    report = anyio.run(Judge(store, client).run, ["run-1"])
    assert (report.judged, report.tokens) == (2, 1060)
    assert seen[0]["system"] == JUDGE_SYSTEM and seen[0]["model"] == "claude-judge"
    assert seen[0]["messages"][0]["role"] == "user" and "<action" in seen[0]["messages"][0]["content"][0]["text"]
    assert {r.event.judge_id for r in verdicts(store)} == {f"claude-judge@{PROMPT_VERSION}"}
    assert {r.event.target_event_id for r in verdicts(store)} == set(actions)


# -- resume after SIGKILL -----------------------------------------------------------------


class SlowServer:
    """A chat-completions server on 127.0.0.1 that answers after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append(action_of(body))
                time.sleep(outer.delay)
                data = json.dumps(completion(good())).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client was killed

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _judge_process(db: Path, url: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    command = [
        sys.executable, "-c", "from apollo_es.cli import main; main()", "judge", "--all", "--db", str(db),
        "--model", MODEL, "--provider", "openai", "--base-url", url, "--concurrency", "2", "--json",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count_verdicts(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE kind = 'ActionJudged'").fetchone()[0]


def test_a_killed_judge_resumes_with_the_rest_and_judges_nothing_twice(tmp_path):
    db = tmp_path / "apollo.db"
    with EventStore(db) as store:
        actions = make_run(store, "run-1", 6) + make_run(store, "run-2", 4)
    server = SlowServer(delay=0.15)
    try:
        process = _judge_process(db, server.url)
        deadline = time.monotonic() + 30
        while _count_verdicts(db) < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL
        judged_before = _count_verdicts(db)
        assert 3 <= judged_before < len(actions)
        asked_before = len(server.requests)
        while True:  # let requests the killed process had already sent reach the server's list
            time.sleep(0.3)
            if len(server.requests) == asked_before:
                break
            asked_before = len(server.requests)

        server.delay = 0.0
        process = _judge_process(db, server.url)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        report = json.loads(out)
    finally:
        server.close()
    assert report["skipped"] == judged_before
    assert report["judged"] == len(actions) - judged_before and report["remaining"] == 0
    with EventStore(db) as store:
        found = [r.event.target_event_id for r in verdicts(store)]
    assert sorted(found) == sorted(actions)  # every action exactly once
    # The second run asked only about actions without a verdict (those in flight at the kill included).
    resumed = server.requests[asked_before:]
    assert len(resumed) == len(actions) - judged_before
    assert len(set(resumed)) == len(resumed)


def test_an_unreachable_model_stops_the_judge_after_a_few_failures_in_a_row(store):
    make_run(store, "run-1", 30)
    calls = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("connection refused")

    from apollo_es.models import OpenAIClient, RetryPolicy

    client = OpenAIClient("jm", base_url="http://judge.invalid/v1", api_key="k",
                          http_client=httpx.AsyncClient(transport=httpx.MockTransport(unreachable)),
                          policy=RetryPolicy(max_attempts=1))
    judge = Judge(store, client, concurrency=1, failures_to_stop=3)
    report = anyio.run(judge.run)
    assert report.failed == 3 and len(calls) == 3 and "3 model calls failed in a row" in report.stopped
    assert report.remaining == 27 and verdicts(store) == []  # resumable: nothing recorded for them
