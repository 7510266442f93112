"""Claude through the official SDK's Messages API.

The SDK does the transport (auth headers, API version, base URL); its retries are off
(`max_retries=0`) so `call_with_retries` is the only retry loop. The raw response body is
decoded into the exact shapes below rather than the SDK's models: the SDK accepts
anything without complaint (a `str` for an HTML page, a block of unknown type dressed
as a `TextBlock`), and a recorded trajectory must not be built from that.

The SDK (2.x) talks through `httpx2`, so an injected `http_client` is an
`httpx2.AsyncClient`; an `httpx.AsyncClient` is refused by the SDK with a `TypeError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anthropic
import anyio
import httpx2
import msgspec

from apollo_es.models.base import (
    ModelError,
    ModelOutputError,
    ModelRequestError,
    ModelResponse,
    decode_body,
    prepare_request,
    redact,
)
from apollo_es.models.retry import Failure, RetryPolicy, call_with_retries, is_retryable_status
from events import ContentBlock, ToolCall, Usage

__all__ = ["AnthropicClient", "parse_message"]

_NAMED = ("model", "max_tokens", "messages")
"""The fields `messages.create` requires by name. Everything else travels in `extra_body`,
unchanged: the SDK's named parameters differ between its versions (some become headers),
and the body must be sent exactly as rendered."""


class AnthropicClient:
    """A `ModelClient` for the Anthropic Messages API.

    `timeout` bounds each attempt as a whole (connect, every read, the whole body), so a
    server that drips a byte at a time fails the attempt at the deadline like a silent one.

    Example:
        client = AnthropicClient("claude-sonnet-4-5")
        response = await client.complete(anthropic_request(context))
    """

    provider = "anthropic"

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
        policy: RetryPolicy = RetryPolicy(),
        timeout: float = 600.0,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    ) -> None:
        self.model = model
        self.policy = policy
        self.timeout = timeout
        self.api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not self.api_key:
            raise ModelError("no Anthropic API key: set ANTHROPIC_API_KEY or pass api_key")
        self._sleep = sleep
        self._owns_http = http_client is None
        self._sdk = anthropic.AsyncAnthropic(
            api_key=self.api_key,
            base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL") or None,
            http_client=http_client,
            max_retries=0,
            timeout=timeout,
        )

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        """Send a Messages API body as it is (model filled in if it has none) and parse the answer."""
        body = prepare_request(request, self.model)
        missing = [key for key in _NAMED if key not in body]
        if missing:
            raise ModelRequestError(f"an Anthropic request needs {', '.join(missing)}")
        named = {key: body[key] for key in _NAMED}
        extra = {key: value for key, value in body.items() if key not in _NAMED}

        async def attempt() -> ModelResponse:
            started = time.perf_counter()
            with anyio.fail_after(self.timeout):  # the whole answer, not each read: a drip cannot hold us
                raw = await self._sdk.messages.with_raw_response.create(
                    **named, extra_body=extra or None, timeout=self.timeout
                )
                content = raw.http_response.content
            latency_ms = (time.perf_counter() - started) * 1000
            return parse_message(content, latency_ms=latency_ms, default_model=body["model"])

        return await call_with_retries(attempt, self.policy, classify=self._classify, sleep=self._sleep)

    async def aclose(self) -> None:
        """Close the SDK's HTTP client, unless the caller passed it in (then it is theirs)."""
        if self._owns_http:
            await self._sdk.close()

    def _classify(self, exc: Exception) -> Failure | None:
        if isinstance(exc, anthropic.APIStatusError):
            status, kind = exc.status_code, exc.type or "error"
            detail = exc.api_message or exc.response.text[:500]
            return Failure.http(
                redact(f"anthropic API: HTTP {status} {kind}: {detail}", self.api_key), status,
                exc.response.headers.get("retry-after"),
                retryable=is_retryable_status(status) or kind == "overloaded_error",
            )
        if isinstance(exc, (anthropic.APITimeoutError, TimeoutError)):
            return Failure(message=f"anthropic API: no answer within {self.timeout:g} s", retryable=True)
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__ or exc
            return Failure(message=redact(f"anthropic API: connection failed: {cause!r}", self.api_key), retryable=True)
        if isinstance(exc, ModelOutputError):
            return Failure(message=redact(str(exc), self.api_key), retryable=True, error=ModelOutputError)
        return None


# -- the response, as the Messages API documents it ----------------------------------------


class _Text(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class _Thinking(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str = ""


class _RedactedThinking(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str


class _ToolUse(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Message(msgspec.Struct):
    type: Literal["message"]
    content: list[_Text | _Thinking | _RedactedThinking | _ToolUse]
    model: str = ""
    stop_reason: str | None = None
    usage: _Usage = msgspec.field(default_factory=_Usage)


def parse_message(body: bytes, *, latency_ms: float = 0.0, default_model: str = "") -> ModelResponse:
    """A Messages API response body as a `ModelResponse`; `ModelOutputError` if it is not one.

    Every content block is kept, in order, as received (`blocks`), because thinking blocks
    must go back to the API unmodified. From them: `text` joins the text blocks (consecutive
    pieces of one answer), `reasoning` the visible thinking (blank lines between blocks);
    redacted thinking is encrypted, so it is in `blocks` only and never a training target.
    """
    message = decode_body(body, _Message, "anthropic API")
    blocks: list[ContentBlock] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if isinstance(block, _Text):
            blocks.append(ContentBlock(type="text", text=block.text))
        elif isinstance(block, _Thinking):
            blocks.append(ContentBlock(type="thinking", text=block.thinking, signature=block.signature))
        elif isinstance(block, _RedactedThinking):
            blocks.append(ContentBlock(type="redacted_thinking", data=block.data))
        else:
            blocks.append(ContentBlock(type="tool_use", id=block.id))
            calls.append(ToolCall(id=block.id, name=block.name, arguments=block.input))
    usage = message.usage
    return ModelResponse(
        text="".join(b.text for b in blocks if b.type == "text"),
        reasoning="\n\n".join(b.text for b in blocks if b.type == "thinking"),
        blocks=blocks,
        tool_calls=calls,
        stop_reason=message.stop_reason or "",
        usage=Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_input_tokens or 0,
            cache_write_tokens=usage.cache_creation_input_tokens or 0,
        ),
        model=message.model or default_model,
        latency_ms=latency_ms,
    )
