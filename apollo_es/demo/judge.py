"""The demo's judge model: a scripted stand-in for an LLM judge, so the demo shows verdicts offline.

It answers every judge request with a verdict in the format `projections.judging` asks for,
decided from the request's last message (the action and what it produced): `mask` when the
result shows a failure or was lost, `keep` otherwise. It is not a real judge: it exists so a
newcomer sees verdicts next to rule hits and masks in `audit` and the console.
"""

from __future__ import annotations

import json
import re
from typing import Any

from apollo_es.models import ModelResponse
from events import Usage

__all__ = ["DemoJudge"]

_FAILURE = re.compile(r"Traceback \(most recent call last\)|exited with code [1-9]|exit code [1-9]|was lost|diverged")


class DemoJudge:
    """A `ModelClient` that judges by pattern instead of by model."""

    provider = "anthropic"
    model = "demo-scripted-judge"

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        last = request["messages"][-1]["content"]
        text = last if isinstance(last, str) else "\n".join(b.get("text", "") for b in last if isinstance(b, dict))
        if _FAILURE.search(text):
            verdict = {"verdict": "mask", "score": 0.2, "reason": "scripted demo judge: the result shows a failure"}
        else:
            verdict = {"verdict": "keep", "score": 0.85, "reason": "scripted demo judge: the result is clean"}
        return ModelResponse(text=json.dumps(verdict), model=self.model, stop_reason="end_turn",
                             usage=Usage(input_tokens=len(text) // 4, output_tokens=30))

    async def aclose(self) -> None:
        return None
