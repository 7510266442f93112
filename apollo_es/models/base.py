"""What every model client shares: the response type, the protocol and the errors.

A client takes a request body already rendered by `projections.requests.render_request`
(for its `provider`) and sends it as it is, so the digest recorded in `AgentActed` is the
digest of what the model was really sent. It answers with a provider-neutral
`ModelResponse`, the fields of an `AgentActed` minus the context digest.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from apollo_es.errors import ApolloError
from events import AgentActed, ContentBlock, ToolCall, Usage

__all__ = [
    "ModelClient",
    "ModelError",
    "ModelOutputError",
    "ModelRequestError",
    "ModelResponse",
    "ModelUnavailableError",
    "decode_body",
    "prepare_request",
    "redact",
]

T = TypeVar("T")


class ModelError(ApolloError):
    """A model call failed; the message says why and never holds a credential.

    `status` is the HTTP status of the last answer, when there was one, so a caller can
    tell a context overflow (400) from an authentication problem (401) without parsing text.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ModelUnavailableError(ModelError):
    """Every attempt failed in a way that usually passes (rate limit, overload, 5xx, timeout)."""


class ModelRequestError(ModelError):
    """The server refused the request (400, 401, 404...): sending it again would not help."""


class ModelOutputError(ModelError):
    """The server answered 200 with something that is not a model response."""


class ModelResponse(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One model answer in provider-neutral form.

    `latency_ms` is the duration of the attempt that succeeded; time spent in earlier,
    failed attempts and backoff is not a property of the model's answer.
    """

    text: str = ""
    reasoning: str = ""
    reasoning_signature: str = ""
    blocks: list[ContentBlock] = msgspec.field(default_factory=list)
    """Anthropic answers: every content block as received (see `AgentActed.blocks`)."""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    stop_reason: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""
    latency_ms: float = 0.0

    @classmethod
    def from_event(cls, event: AgentActed) -> ModelResponse:
        """The response an `AgentActed` recorded, for replaying a run's model."""
        return cls(
            text=event.text,
            reasoning=event.reasoning,
            reasoning_signature=event.reasoning_signature,
            blocks=list(event.blocks),
            tool_calls=list(event.tool_calls),
            stop_reason=event.stop_reason,
            usage=event.usage,
            model=event.model,
            latency_ms=event.latency_ms,
        )


@runtime_checkable
class ModelClient(Protocol):
    """A model behind one call. `provider` ("anthropic" or "openai") picks the request format."""

    provider: str

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        """Send one rendered request body and return the model's answer, or raise `ModelError`."""
        ...

    async def aclose(self) -> None:
        """Release connections the client opened itself."""
        ...


def prepare_request(request: dict[str, Any], model: str | None) -> dict[str, Any]:
    """The body to send: the request as it is, with `model` filled in when it names none.

    A model named in the request wins: it came from the run's `RunStarted`, and the body
    must be sent exactly as rendered. The caller's dict is never modified. Streaming is
    refused because a client reads one whole response.
    """
    if request.get("stream"):
        raise ModelRequestError("streaming requests are not supported: leave `stream` out of the request")
    if request.get("model"):
        return request
    if not model:
        raise ModelRequestError("the request names no model and the client was given none")
    return {**request, "model": model}


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced, for messages built from server text."""
    return text.replace(secret, "[redacted]") if secret else text


def decode_body(body: bytes, shape: type[T], source: str) -> T:
    """Decode a 200 response body into the Structs describing the provider's answer.

    Decoding into exact shapes (rather than poking at dicts) turns every kind of garbage,
    from an HTML error page to a content block of an unknown type, into one
    `ModelOutputError` that names the offending path.
    """
    try:
        return msgspec.json.decode(body, type=shape)
    except msgspec.DecodeError as exc:
        raise ModelOutputError(f"{source} answered 200 with an unreadable body ({exc}): {body[:200]!r}") from exc
