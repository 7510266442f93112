"""Render a `Context` as a provider's request body, and digest it.

The body holds everything the model is sent except credentials, so its digest identifies
what the model saw: `AgentActed.context_digest` records it and replay recomputes it.
Sampling settings from `RunStarted.sampling` (temperature, top_p, Anthropic's `thinking`...)
are passed into the body as they are.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from events import ToolCall
from projections.context import Context, Message

__all__ = ["EMPTY_TURN", "anthropic_request", "digest", "openai_request", "render_request"]

EMPTY_TURN = "(empty response)"
"""Stands in for an assistant turn with no text and no tool call, which the APIs refuse."""

_EPHEMERAL = {"type": "ephemeral"}

_encoder = msgspec.json.Encoder(order="sorted")


def digest(request: dict[str, Any]) -> str:
    """A stable SHA-256 of a request body (keys sorted, compact JSON)."""
    return hashlib.sha256(_encoder.encode(request)).hexdigest()


def render_request(context: Context, provider: str | None = None) -> dict[str, Any]:
    """The request body for the run's provider (`anthropic` or `openai`)."""
    provider = provider or (context.run.provider if context.run else "") or "anthropic"
    if provider == "anthropic":
        return anthropic_request(context)
    if provider == "openai":
        return openai_request(context)
    raise ValueError(f"unknown provider {provider!r}: use anthropic or openai")


def anthropic_request(context: Context) -> dict[str, Any]:
    """The Messages API body: alternating user/assistant turns with content blocks."""
    run = context.run
    turns: list[dict[str, Any]] = []
    for message in context.messages:
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _anthropic_blocks(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": run.model if run else "",
        "max_tokens": run.max_output_tokens if run else 8192,
        "messages": turns,
    }
    caching = run is not None and run.prompt_caching
    if context.system:
        body["system"] = [{"type": "text", "text": context.system, "cache_control": _EPHEMERAL}] if caching else context.system
    if context.tools:
        body["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in context.tools]
    if caching:
        _mark_cache_breakpoints(turns)
    if run:
        body.update(run.sampling)
    return body


def _mark_cache_breakpoints(turns: list[dict[str, Any]]) -> None:
    """Anthropic prompt caching: a breakpoint on the last block of the last two user turns.

    The system prompt's breakpoint caches tools and system; the newest user turn's writes the
    whole conversation so far, which the next request reads back (its own prefix is this one);
    the one before is where this request reads from, should the newest have been cut short of
    the cache's minimum. Three breakpoints in all, within the API's four. Only user turns are
    marked: thinking blocks may not carry `cache_control`.
    """
    user_turns = [turn for turn in turns if turn["role"] == "user"][-2:]
    for turn in user_turns:
        turn["content"][-1] = {**turn["content"][-1], "cache_control": _EPHEMERAL}


def _anthropic_blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content, "is_error": message.is_error}]
    if message.role == "user":
        return [{"type": "text", "text": message.content}]
    if message.blocks:
        return _received_blocks(message)
    blocks: list[dict[str, Any]] = []
    if message.reasoning and message.reasoning_signature:
        blocks.append({"type": "thinking", "thinking": message.reasoning, "signature": message.reasoning_signature})
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
    if not message.content and not message.tool_calls:
        blocks.append({"type": "text", "text": EMPTY_TURN})
    return blocks


def _received_blocks(message: Message) -> list[dict[str, Any]]:
    """An Anthropic answer's blocks, in the order and with the content they were received."""
    calls = {call.id: call for call in message.tool_calls}
    out: list[dict[str, Any]] = []
    for block in message.blocks:
        if block.type == "thinking":
            out.append({"type": "thinking", "thinking": block.text, "signature": block.signature})
        elif block.type == "redacted_thinking":
            out.append({"type": "redacted_thinking", "data": block.data})
        elif block.type == "text":
            out.append({"type": "text", "text": block.text})
        else:
            call = calls[block.id]
            out.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
    return out


def openai_request(context: Context) -> dict[str, Any]:
    """The chat-completions body (vLLM and SGLang serving GLM-4.5 and others)."""
    run = context.run
    messages: list[dict[str, Any]] = []
    if context.system:
        messages.append({"role": "system", "content": context.system})
    for message in context.messages:
        messages.append(_openai_message(message))
    body: dict[str, Any] = {
        "model": run.model if run else "",
        "max_tokens": run.max_output_tokens if run else 8192,
        "messages": messages,
    }
    if context.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
            for t in context.tools
        ]
    if run:
        body.update(run.sampling)
    return body


def _openai_message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "user":
        return {"role": "user", "content": message.content}
    out: dict[str, Any] = {"role": "assistant", "content": message.content or (None if message.tool_calls else EMPTY_TURN)}
    if message.reasoning:
        out["reasoning_content"] = message.reasoning
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _openai_arguments(call)},
            }
            for call in message.tool_calls
        ]
    return out


def _openai_arguments(call: ToolCall) -> str:
    """A call's arguments as the JSON text servers expect. Arguments the model wrote as invalid
    JSON are recorded raw, but sent back wrapped as `{"_raw": "..."}`: vLLM parses every earlier
    call's arguments, so one broken string would fail every later request of the run. The
    model still sees what it wrote, and the error observation that answered it."""
    arguments = {"_raw": call.raw_arguments} if call.raw_arguments is not None else call.arguments
    return msgspec.json.encode(arguments).decode()
