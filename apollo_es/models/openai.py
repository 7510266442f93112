"""OpenAI-compatible chat completions over plain httpx (vLLM, SGLang, OpenAI itself).

No SDK: a local server needs no key, and the few fields read here differ between servers
in ways an SDK's models would hide. What servers disagree on:
- reasoning comes as `reasoning_content` (vLLM/SGLang reasoning parsers) or `reasoning`;
  a model served without a reasoning parser (GLM-4.5) leaves `<think>...</think>` at the
  start of `content`, which is split off here;
- tool-call `arguments` is a JSON string the model wrote, so it can be broken; it is then
  kept verbatim in `raw_arguments` with `arguments={}`, never dropped and never fatal.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import msgspec

from apollo_es.models.base import (
    ModelError,
    ModelOutputError,
    ModelResponse,
    decode_body,
    prepare_request,
    redact,
)
from apollo_es.models.retry import Failure, RetryPolicy, call_with_retries
from events import ToolCall, Usage

__all__ = ["OpenAIClient", "parse_arguments", "parse_completion", "split_think"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class OpenAIClient:
    """A `ModelClient` for `POST {base_url}/chat/completions`.

    `base_url` is taken as given and includes the API prefix, e.g.
    `http://localhost:8000/v1`. `timeout` bounds each attempt as a whole (connect, every
    read), so a server that drips a byte at a time fails at the deadline. The key (argument or `OPENAI_API_KEY`) is optional: local
    servers usually need none.

    Example:
        client = OpenAIClient("zai-org/GLM-4.5-Air", base_url="http://localhost:8000/v1")
        response = await client.complete(openai_request(context))
    """

    provider = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str,
        api_key: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        policy: RetryPolicy = RetryPolicy(),
        timeout: float = 600.0,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ModelError(f"the base URL must start with http:// or https://, e.g. http://localhost:8000/v1, not {base_url!r}")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.policy = policy
        self.timeout = timeout
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        self._headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._sleep = sleep
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient()

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        """Send a chat-completions body as it is (model filled in if it has none) and parse the answer."""
        body = prepare_request(request, self.model)

        async def attempt() -> ModelResponse:
            started = time.perf_counter()
            with anyio.fail_after(self.timeout):  # the whole answer, not each read: a drip cannot hold us
                response = await self._http.post(self.url, json=body, headers=self._headers, timeout=self.timeout)
            response.raise_for_status()
            latency_ms = (time.perf_counter() - started) * 1000
            return parse_completion(response.content, latency_ms=latency_ms, default_model=body["model"])

        return await call_with_retries(attempt, self.policy, classify=self._classify, sleep=self._sleep)

    async def aclose(self) -> None:
        """Close the HTTP client, unless the caller passed it in (then it is theirs)."""
        if self._owns_http:
            await self._http.aclose()

    def _classify(self, exc: Exception) -> Failure | None:
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            return Failure.http(
                redact(f"{self.url}: HTTP {status}: {_server_message(exc.response)}", self.api_key), status,
                exc.response.headers.get("retry-after"),
            )
        if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
            return Failure(message=f"{self.url}: no answer within {self.timeout:g} s", retryable=True)
        if isinstance(exc, httpx.TransportError):
            return Failure(message=redact(f"{self.url}: connection failed: {exc!r}", self.api_key), retryable=True)
        if isinstance(exc, ModelOutputError):
            return Failure(message=redact(str(exc), self.api_key), retryable=True, error=ModelOutputError)
        return None


def _server_message(response: httpx.Response) -> str:
    """The error message of an error body, in the shapes OpenAI, vLLM, SGLang and FastAPI use."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        for candidate in (error.get("message") if isinstance(error, dict) else error, data.get("message"), data.get("detail")):
            if isinstance(candidate, str) and candidate:
                return candidate[:500]
    return response.text[:500] or response.reason_phrase


# -- the response -------------------------------------------------------------------------


class _Function(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    function: _Function
    id: str | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    model: str = ""
    usage: _Usage | None = None


def parse_completion(body: bytes, *, latency_ms: float = 0.0, default_model: str = "") -> ModelResponse:
    """A chat-completions response body as a `ModelResponse`; `ModelOutputError` if it is not one."""
    completion = decode_body(body, _Completion, "chat completions")
    if not completion.choices:
        raise ModelOutputError(f"chat completions answered 200 with no choices: {body[:200]!r}")
    choice = completion.choices[0]
    message = choice.message
    text = message.content or ""
    reasoning = message.reasoning_content or message.reasoning or ""
    if not reasoning:
        reasoning, text = split_think(text)
    calls = []
    for call in message.tool_calls or []:
        arguments, raw = parse_arguments(call.function.arguments)
        # Servers that send no id get one unique in the whole run, not call_0 on every turn.
        calls.append(ToolCall(id=call.id or f"call_{uuid.uuid4().hex[:24]}", name=call.function.name,
                              arguments=arguments, raw_arguments=raw))
    usage = completion.usage or _Usage()
    details = usage.prompt_tokens_details or _PromptDetails()
    cached = min(details.cached_tokens or 0, usage.prompt_tokens)
    return ModelResponse(
        text=text,
        reasoning=reasoning,
        tool_calls=calls,
        stop_reason=choice.finish_reason or "",
        usage=Usage(
            input_tokens=usage.prompt_tokens - cached,  # prompt_tokens counts the cached ones too
            output_tokens=usage.completion_tokens,
            cache_read_tokens=cached,
        ),
        model=completion.model or default_model,
        latency_ms=latency_ms,
    )


def split_think(content: str) -> tuple[str, str]:
    """(reasoning, text) of content that opens with `<think>...</think>`; ("", content) otherwise.

    An unclosed `<think>` (the answer hit max_tokens while thinking) is all reasoning.
    """
    stripped = content.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return "", content
    reasoning, closed, text = stripped[len(THINK_OPEN):].partition(THINK_CLOSE)
    return reasoning.strip(), (text.lstrip() if closed else "")


def parse_arguments(arguments: str | dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """(arguments, raw_arguments) of a tool call: the parsed object, or {} and the text as sent.

    Blank or missing arguments mean a call without arguments. Some servers send an
    object instead of a string; it is taken as it is.
    """
    if isinstance(arguments, dict):
        return arguments, None
    if arguments is None or not arguments.strip():
        return {}, None
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return {}, arguments
    return (value, None) if isinstance(value, dict) else ({}, arguments)
