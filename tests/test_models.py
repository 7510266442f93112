"""Model clients: parsing, retries, errors and replay, against scripted HTTP servers.

No network: the Anthropic SDK runs over `httpx2.MockTransport` (the SDK's HTTP library),
the OpenAI client over `httpx.MockTransport`. Backoff sleeps are recorded, not slept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from apollo_es import EventStore
from apollo_es.models import (
    AnthropicClient,
    ModelClient,
    ModelError,
    ModelOutputError,
    ModelRequestError,
    ModelResponse,
    ModelUnavailableError,
    OpenAIClient,
    RecordedClient,
    RetryPolicy,
    call_with_retries,
    load_recording,
    make_client,
    save_recording,
)
from apollo_es.models.openai import parse_arguments, split_think
from apollo_es.models.retry import Failure, parse_retry_after
from events import AgentActed, ContentBlock, RunStarted, ToolCall, ToolObserved, ToolSpec, Usage
from projections.context import fold
from projections.requests import render_request

API_KEY = "sk-ant-test-5eCr3t-0123456789abcdef"
BASE_URL = "http://llm.local:8000/v1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the environment they set themselves."""
    for name in (
        "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS",
        "ANTHROPIC_PROFILE", "OPENAI_API_KEY", "OPENAI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


# -- scripted servers ---------------------------------------------------------------------


class Server:
    """Answers requests with the scripted replies in order, repeating the last; records requests.

    A reply is `(status, body)` or `(status, body, headers)`, where body is a dict (sent as
    JSON) or a str (sent as is), or an exception class to raise as a transport failure.
    """

    def __init__(self, http: Any, *replies: Any) -> None:
        self.http = http
        self.replies = list(replies)
        self.requests: list[Any] = []

    def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, type):
            raise reply("scripted failure", request=request)
        status, body, headers = reply if len(reply) == 3 else (*reply, {})
        if isinstance(body, dict):
            return self.http.Response(status, json=body, headers=headers)
        return self.http.Response(status, text=body, headers={"content-type": "text/html", **headers})

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]


class Sleeps(list):
    """An injectable `sleep` that records the delays instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def anthropic_client(server: Server, sleeps: Sleeps | None = None, **kwargs: Any) -> AnthropicClient:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(server))
    kwargs.setdefault("api_key", API_KEY)
    return AnthropicClient(http_client=http, sleep=sleeps if sleeps is not None else Sleeps(), **kwargs)


def openai_client(server: Server, sleeps: Sleeps | None = None, **kwargs: Any) -> OpenAIClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    kwargs.setdefault("base_url", BASE_URL)
    return OpenAIClient(http_client=http, sleep=sleeps if sleeps is not None else Sleeps(), **kwargs)


def message(*content: dict[str, Any], stop_reason: str = "end_turn", **usage: int) -> dict[str, Any]:
    """An Anthropic Messages API response body."""
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-1",
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def completion(content: str | None = "", **fields: Any) -> dict[str, Any]:
    """A chat-completions response body; `fields` go into the message."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "glm-4.5-air",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **fields}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


def tool_call(arguments: Any, name: str = "bash", call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


OK = message({"type": "text", "text": "done"})
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def rendered_request(tmp_path: Path, provider: str) -> dict[str, Any]:
    """A request body as the agent builds it: a real stream folded and rendered."""
    with EventStore(tmp_path / "render.db") as store:
        store.append("run-1", [
            RunStarted(
                task_id="t", task="List the files.", system_prompt="You are careful.", model="claude-test-1",
                provider=provider, tools=[ToolSpec(name="bash", input_schema={"type": "object", "properties": {"cmd": {"type": "string"}}})],
                sampling={"temperature": 1.0, "thinking": {"type": "enabled", "budget_tokens": 1024}} if provider == "anthropic" else {"temperature": 0.6},
            ),
            AgentActed(
                model="claude-test-1", text="Looking.", reasoning="ls is enough.", reasoning_signature="sig-0",
                tool_calls=[ToolCall(id="toolu_0", name="bash", arguments={"cmd": "ls"})],
            ),
            ToolObserved(tool_call_id="toolu_0", output="a.py\nb.py", tool_name="bash"),
        ])
        return render_request(fold(store.read("run-1")))


# -- Anthropic ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_anthropic_parses_thinking_text_and_tool_use(tmp_path: Path) -> None:
    server = Server(httpx2, (200, message(
        {"type": "thinking", "thinking": "Check the tests.", "signature": "sig-abc"},
        {"type": "text", "text": "Running "},
        {"type": "text", "text": "them."},
        {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "pytest", "env": {"A": 1}}},
        stop_reason="tool_use", cache_read_input_tokens=7, cache_creation_input_tokens=3,
    )))
    client = anthropic_client(server)
    request = rendered_request(tmp_path, "anthropic")

    response = await client.complete(request)

    assert response == ModelResponse(
        text="Running them.",
        reasoning="Check the tests.",
        blocks=[
            ContentBlock(type="thinking", text="Check the tests.", signature="sig-abc"),
            ContentBlock(type="text", text="Running "),
            ContentBlock(type="text", text="them."),
            ContentBlock(type="tool_use", id="toolu_1"),
        ],
        tool_calls=[ToolCall(id="toolu_1", name="bash", arguments={"cmd": "pytest", "env": {"A": 1}})],
        stop_reason="tool_use",
        usage=Usage(input_tokens=10, output_tokens=5, cache_read_tokens=7, cache_write_tokens=3),
        model="claude-test-1",
        latency_ms=response.latency_ms,
    )
    assert response.latency_ms > 0
    [sent] = server.requests
    assert sent.url.path == "/v1/messages"
    assert server.bodies == [request]  # sent as rendered, sampling settings included
    assert API_KEY not in sent.content.decode()
    await client.aclose()


@pytest.mark.anyio
async def test_anthropic_redacted_thinking_and_null_cache_usage() -> None:
    body = message({"type": "redacted_thinking", "data": "EmwKAhgB..."}, {"type": "text", "text": "ok"},
                   cache_read_input_tokens=None, cache_creation_input_tokens=None)
    response = await anthropic_client(Server(httpx2, (200, body))).complete({"model": "m", "max_tokens": 5, "messages": []})
    assert (response.reasoning, response.text) == ("", "ok")  # encrypted: never a training target
    assert response.blocks == [ContentBlock(type="redacted_thinking", data="EmwKAhgB..."), ContentBlock(type="text", text="ok")]
    assert response.usage == Usage(input_tokens=10, output_tokens=5)


@pytest.mark.anyio
async def test_anthropic_fills_in_the_model_only_when_the_request_has_none() -> None:
    server = Server(httpx2, (200, OK))
    client = anthropic_client(server, model="claude-default")
    await client.complete({"model": "", "max_tokens": 5, "messages": []})
    await client.complete({"model": "claude-run", "max_tokens": 5, "messages": []})
    assert [body["model"] for body in server.bodies] == ["claude-default", "claude-run"]
    with pytest.raises(ModelRequestError, match="no model"):
        await anthropic_client(server).complete({"max_tokens": 5, "messages": []})
    with pytest.raises(ModelRequestError, match="streaming"):
        await client.complete({"model": "m", "max_tokens": 5, "messages": [], "stream": True})


@pytest.mark.anyio
async def test_anthropic_retries_rate_limit_overload_and_5xx_honouring_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(
        httpx2,
        (429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}, {"retry-after": "2"}),
        (529, OVERLOADED),
        (500, {"type": "error", "error": {"type": "api_error", "message": "boom"}}),
        (200, OK),
    )
    sleeps = Sleeps()
    with caplog.at_level(logging.WARNING, logger="apollo_es.models"):
        response = await anthropic_client(server, sleeps).complete({"model": "m", "max_tokens": 5, "messages": []})

    assert response.text == "done"
    assert len(server.requests) == 4
    assert len(sleeps) == 3
    assert 2 <= sleeps[0] <= 60
    assert 0 <= sleeps[1] <= 2 and 0 <= sleeps[2] <= 4  # full jitter under base * 2**attempt
    warnings = [record.getMessage() for record in caplog.records if record.name == "apollo_es.models"]
    assert len(warnings) == 3
    assert "HTTP 429" in warnings[0] and "retrying in" in warnings[0]
    assert "HTTP 529 overloaded_error" in warnings[1]


@pytest.mark.anyio
async def test_anthropic_persistent_overload_gives_up_after_max_attempts() -> None:
    server = Server(httpx2, (529, OVERLOADED))
    sleeps = Sleeps()
    with pytest.raises(ModelUnavailableError, match="gave up after 6 attempts") as caught:
        await anthropic_client(server, sleeps).complete({"model": "m", "max_tokens": 5, "messages": []})
    assert len(server.requests) == RetryPolicy().max_attempts == 6
    assert len(sleeps) == 5
    assert caught.value.status == 529


@pytest.mark.anyio
async def test_anthropic_bad_request_fails_at_once_with_the_server_message() -> None:
    server = Server(httpx2, (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long"}}))
    sleeps = Sleeps()
    with pytest.raises(ModelRequestError) as caught:
        await anthropic_client(server, sleeps).complete({"model": "m", "max_tokens": 5, "messages": []})
    assert len(server.requests) == 1 and sleeps == []
    assert "400" in str(caught.value) and "prompt is too long" in str(caught.value)
    assert caught.value.status == 400


@pytest.mark.anyio
async def test_anthropic_retries_timeouts_and_connection_errors() -> None:
    server = Server(httpx2, httpx2.ReadTimeout, httpx2.ConnectError, (200, OK))
    response = await anthropic_client(server).complete({"model": "m", "max_tokens": 5, "messages": []})
    assert response.text == "done" and len(server.requests) == 3


@pytest.mark.anyio
async def test_anthropic_garbage_is_retried_then_reported() -> None:
    server = Server(httpx2, (200, "<html>bad gateway</html>"), (200, OK))
    assert (await anthropic_client(server).complete({"model": "m", "max_tokens": 5, "messages": []})).text == "done"

    unknown = Server(httpx2, (200, message({"type": "hologram", "x": 1})))
    with pytest.raises(ModelOutputError, match="hologram|content"):
        await anthropic_client(unknown, policy=RetryPolicy(max_attempts=2)).complete({"model": "m", "max_tokens": 5, "messages": []})
    assert len(unknown.requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        (401, {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key {API_KEY}"}}),
        (529, OVERLOADED),
        (200, f"<html>{API_KEY}</html>"),
        httpx2.ConnectError,
    ],
    ids=["401-echoing-the-key", "529", "garbage-echoing-the-key", "connection"],
)
async def test_anthropic_errors_never_contain_the_api_key(reply: Any) -> None:
    client = anthropic_client(Server(httpx2, reply), policy=RetryPolicy(max_attempts=2))
    with pytest.raises(ModelError) as caught:
        await client.complete({"model": "m", "max_tokens": 5, "messages": []})
    assert API_KEY not in str(caught.value) and API_KEY not in repr(caught.value)


@pytest.mark.anyio
async def test_anthropic_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://gateway.internal:8080")
    server = Server(httpx2, (200, OK))
    await anthropic_client(server).complete({"model": "m", "max_tokens": 5, "messages": []})
    await anthropic_client(server, base_url="http://explicit.internal").complete({"model": "m", "max_tokens": 5, "messages": []})
    assert [(r.url.host, r.url.port, r.url.path) for r in server.requests] == [
        ("gateway.internal", 8080, "/v1/messages"),
        ("explicit.internal", None, "/v1/messages"),
    ]


def test_anthropic_key_comes_from_the_environment_or_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="set ANTHROPIC_API_KEY"):
        AnthropicClient("m")
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    assert isinstance(AnthropicClient("m"), ModelClient)


# -- OpenAI-compatible -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_openai_parses_tool_calls_and_sends_the_body_as_given(tmp_path: Path) -> None:
    body = completion(None, tool_calls=[tool_call('{"cmd": "ls -la"}'), tool_call({"path": "a.py"}, "read_file", "call_2")])
    body["choices"][0]["finish_reason"] = "tool_calls"
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 64}
    server = Server(httpx, (200, body))
    client = openai_client(server, api_key="sk-local")
    request = rendered_request(tmp_path, "openai")

    response = await client.complete(request)

    assert response.tool_calls == [
        ToolCall(id="call_1", name="bash", arguments={"cmd": "ls -la"}),
        ToolCall(id="call_2", name="read_file", arguments={"path": "a.py"}),
    ]
    assert (response.text, response.reasoning, response.stop_reason, response.model) == ("", "", "tool_calls", "glm-4.5-air")
    assert response.usage == Usage(input_tokens=36, output_tokens=20, cache_read_tokens=64)  # 100 prompt tokens, 64 cached
    assert response.usage.prompt_tokens == 100
    [sent] = server.requests
    assert str(sent.url) == "http://llm.local:8000/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-local"
    assert server.bodies == [request]
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("raw", ['{"cmd": "ls"', "[1, 2]", "ls -la"])
async def test_openai_malformed_arguments_are_kept_raw(raw: str) -> None:
    server = Server(httpx, (200, completion("", tool_calls=[tool_call(raw)])))
    response = await openai_client(server).complete({"model": "m", "messages": []})
    assert response.tool_calls == [ToolCall(id="call_1", name="bash", arguments={}, raw_arguments=raw)]


def test_parse_arguments_edge_cases() -> None:
    assert parse_arguments("") == ({}, None)
    assert parse_arguments(None) == ({}, None)
    assert parse_arguments('{"a": [1]}') == ({"a": [1]}, None)
    assert parse_arguments("null") == ({}, "null")


@pytest.mark.anyio
async def test_openai_splits_think_tags_when_the_server_has_no_reasoning_parser() -> None:
    server = Server(httpx, (200, completion("<think>\nThe user wants ls.\n</think>\n\nI will list the files.")))
    response = await openai_client(server).complete({"model": "m", "messages": []})
    assert (response.reasoning, response.text) == ("The user wants ls.", "I will list the files.")


def test_split_think() -> None:
    assert split_think("plain answer") == ("", "plain answer")
    assert split_think("<think>cut off while thinking") == ("cut off while thinking", "")
    assert split_think("text then <think>x</think>") == ("", "text then <think>x</think>")


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_openai_reasoning_fields(field: str) -> None:
    server = Server(httpx, (200, completion("<think>not split</think> answer", **{field: "parsed reasoning"})))
    response = await openai_client(server).complete({"model": "m", "messages": []})
    assert (response.reasoning, response.text) == ("parsed reasoning", "<think>not split</think> answer")


@pytest.mark.anyio
async def test_openai_garbage_then_a_good_answer_succeeds() -> None:
    server = Server(httpx, (200, "not json at all"), (200, {"choices": []}), (200, completion("hello")))
    sleeps = Sleeps()
    response = await openai_client(server, sleeps).complete({"model": "m", "messages": []})
    assert response.text == "hello" and len(server.requests) == 3 and len(sleeps) == 2


@pytest.mark.anyio
async def test_openai_persistent_garbage_is_an_output_error() -> None:
    server = Server(httpx, (200, {"object": "chat.completion", "choices": [{"text": "legacy completion"}]}))
    with pytest.raises(ModelOutputError, match="gave up after 3 attempts"):
        await openai_client(server, policy=RetryPolicy(max_attempts=3)).complete({"model": "m", "messages": []})
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_openai_retries_rate_limits_and_connection_errors() -> None:
    server = Server(httpx, (429, {"error": {"message": "busy"}}, {"retry-after": "3"}), httpx.ConnectError, httpx.ReadTimeout, (200, completion("hi")))
    sleeps = Sleeps()
    response = await openai_client(server, sleeps).complete({"model": "m", "messages": []})
    assert response.text == "hi" and len(server.requests) == 4
    assert sleeps[0] >= 3


@pytest.mark.anyio
async def test_openai_bad_request_carries_the_server_message() -> None:
    vllm_error = {"object": "error", "message": "This model's maximum context length is 8192 tokens", "type": "BadRequestError", "code": 400}
    server = Server(httpx, (400, vllm_error))
    with pytest.raises(ModelRequestError, match="HTTP 400: This model's maximum context length") as caught:
        await openai_client(server, api_key="sk-local").complete({"model": "m", "messages": []})
    assert len(server.requests) == 1 and caught.value.status == 400


@pytest.mark.anyio
async def test_openai_key_is_optional_and_never_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(httpx, (200, completion("hi")))
    await openai_client(server).complete({"model": "m", "messages": []})
    assert "authorization" not in server.requests[0].headers

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    echo = Server(httpx, (401, {"error": {"message": f"bad key {API_KEY}"}}))
    with pytest.raises(ModelRequestError) as caught:
        await openai_client(echo).complete({"model": "m", "messages": []})
    assert echo.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in str(caught.value) and API_KEY not in repr(caught.value)


def test_openai_base_url_must_be_http() -> None:
    with pytest.raises(ModelError, match="http://"):
        OpenAIClient("m", base_url="localhost:8000/v1")


# -- retry policy ---------------------------------------------------------------------------


def test_retry_delay_is_full_jitter_with_retry_after_as_a_floor() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    for attempt in range(8):
        assert 0 <= policy.delay(attempt) <= min(10.0, 2**attempt)
    assert policy.delay(0, retry_after=5) >= 5
    assert policy.delay(0, retry_after=3600) == 10.0  # capped
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


@pytest.mark.anyio
async def test_call_with_retries_lets_unknown_exceptions_through() -> None:
    calls = []

    async def broken() -> None:
        calls.append(1)
        raise KeyError("a bug")

    classify: Callable[[Exception], Failure | None] = lambda exc: None  # noqa: E731
    with pytest.raises(KeyError):
        await call_with_retries(broken, RetryPolicy(), classify=classify, sleep=Sleeps())
    assert calls == [1]


# -- recorded ------------------------------------------------------------------------------


RESPONSES = [
    ModelResponse(text="first", tool_calls=[ToolCall(id="c1", name="bash", arguments={"cmd": "ls"})], model="m"),
    ModelResponse(text="second", reasoning="hmm", reasoning_signature="sig", usage=Usage(input_tokens=3), model="m"),
]


@pytest.mark.anyio
async def test_recorded_client_serves_in_order_then_is_exhausted() -> None:
    client = RecordedClient(RESPONSES, provider="openai")
    assert isinstance(client, ModelClient) and client.provider == "openai"
    assert await client.complete({"n": 1}) == RESPONSES[0]
    assert await client.complete({"n": 2}) == RESPONSES[1]
    assert client.requests == [{"n": 1}, {"n": 2}] and client.remaining == 0
    with pytest.raises(ModelError, match="recording exhausted after 2 responses"):
        await client.complete({"n": 3})


@pytest.mark.anyio
async def test_recorded_client_from_stream(tmp_path: Path) -> None:
    with EventStore(tmp_path / "apollo.db") as store:
        store.append("run-1", [
            RunStarted(task_id="t", task="do it", provider="openai", model="glm"),
            AgentActed(model="glm", text="one", tool_calls=[ToolCall(id="c1", name="bash", raw_arguments="{oops")],
                       usage=Usage(input_tokens=9, output_tokens=2), latency_ms=12.5, context_digest="d1"),
            ToolObserved(tool_call_id="c1", output="x"),
            AgentActed(model="glm", text="two", reasoning="r", stop_reason="stop"),
        ])
        client = RecordedClient.from_stream(store, "run-1")
    assert client.provider == "openai"
    assert client.responses == [
        ModelResponse(text="one", tool_calls=[ToolCall(id="c1", name="bash", raw_arguments="{oops")],
                      usage=Usage(input_tokens=9, output_tokens=2), model="glm", latency_ms=12.5),
        ModelResponse(text="two", reasoning="r", stop_reason="stop", model="glm"),
    ]


def test_recording_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "demo.jsonl"
    save_recording(path, RESPONSES)
    assert len(path.read_text().splitlines()) == 2
    assert load_recording(path) == RESPONSES

    path.write_text(path.read_text() + "\n{\"text\": 5}\n")
    with pytest.raises(ModelError, match="line 4"):
        load_recording(path)
    with pytest.raises(ModelError, match="cannot read"):
        load_recording(tmp_path / "missing.jsonl")


# -- factory -------------------------------------------------------------------------------


def test_make_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    claude = make_client("anthropic", "claude-x")
    assert isinstance(claude, AnthropicClient) and claude.provider == "anthropic" and claude.model == "claude-x"

    local = make_client("openai", "glm", base_url=BASE_URL)
    assert isinstance(local, OpenAIClient) and local.url == BASE_URL + "/chat/completions"
    with pytest.raises(ModelError, match="base-url"):
        make_client("openai", "glm")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://other:9000/v1/")
    assert make_client("openai", "glm").url == "http://other:9000/v1/chat/completions"
    with pytest.raises(ModelError, match="unknown provider"):
        make_client("gemini", "g")
