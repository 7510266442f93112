"""A scripted Anthropic Messages API for agent tests, served through the real SDK.

`ScriptedAnthropic(replies)` answers each request with the next reply (a tool call, an
HTTP error, or a callable that builds the reply from the request), records every request
body, and can run a hook on request N (for example, append an intervention meanwhile).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx2

from apollo_es.models import AnthropicClient, RetryPolicy

API_KEY = "sk-ant-api03-agent-test-SECRET-9f8e7d6c5b4a"
_ids = itertools.count(1)


def tool_use(name: str, arguments: dict[str, Any], text: str = "", *, input_tokens: int = 1000, output_tokens: int = 50) -> dict:
    """A Messages API response that calls one tool."""
    content = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": arguments})
    return {
        "id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": "claude-test",
        "content": content, "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def text_reply(text: str) -> dict:
    return {
        "id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 10},
    }


def snapshot_reply(progress: str) -> dict:
    """A summarizer's answer with every section the state-snapshot prompt asks for."""
    from projections.summarization import SUMMARY_SECTIONS

    sections = [f"## {name}\n{progress if i == 0 else 'none'}" for i, name in enumerate(SUMMARY_SECTIONS)]
    return text_reply("\n".join(sections))


class HTTPError:
    """A scripted error answer."""

    def __init__(self, status: int, kind: str = "api_error", headers: dict[str, str] | None = None) -> None:
        self.status, self.kind, self.headers = status, kind, headers or {}


class ScriptedAnthropic:
    def __init__(self, replies: list[Any], hooks: dict[int, Callable[[], None]] | None = None) -> None:
        self.replies = list(replies)
        self.hooks = hooks or {}
        self.requests: list[dict] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        hook = self.hooks.get(len(self.requests))
        if hook is not None:
            hook()
        if not self.replies:
            return httpx2.Response(500, json={"type": "error", "error": {"type": "api_error", "message": "script exhausted"}})
        reply = self.replies.pop(0)
        if callable(reply):
            reply = reply(body)
        if isinstance(reply, HTTPError):
            error = {"type": "error", "error": {"type": reply.kind, "message": f"scripted {reply.status}"}}
            return httpx2.Response(reply.status, json=error, headers=reply.headers)
        return httpx2.Response(200, json=reply)

    def client(self, *, attempts: int = 4, max_delay: float = 0.05) -> AnthropicClient:
        """The real SDK client against this script; sleeps are recorded, not slept.

        `max_delay` caps backoff and `retry-after` alike: raise it to see a server's
        `retry-after` honoured in `sleeps`.
        """
        async def record_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        return AnthropicClient(
            "claude-test",
            api_key=API_KEY,
            base_url="http://anthropic.test",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self)),
            policy=RetryPolicy(max_attempts=attempts, base_delay=0.01, max_delay=max_delay),
            sleep=record_sleep,
        )


def texts(request: dict) -> list[str]:
    """Every text in a request body: message texts and tool results, in order."""
    out = []
    for message in request["messages"]:
        content = message["content"]
        if isinstance(content, str):
            out.append(content)
            continue
        for block in content:
            if block["type"] == "text":
                out.append(block["text"])
            elif block["type"] == "tool_result":
                out.append(block["content"] if isinstance(block["content"], str) else json.dumps(block["content"]))
    return out
