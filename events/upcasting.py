"""Schema versions and upcasters.

A kind's schema number rises when its fields change incompatibly. Stored rows keep the
schema they were written with; on read, the upcasters registered for that kind run in
order (1 -> 2 -> ...) on the decoded JSON object until it matches the current Struct.
New optional fields with defaults need no new version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

CURRENT_SCHEMA: dict[str, int] = {
    "RunStarted": 1,
    "AgentActed": 2,
    "ToolObserved": 1,
    "HumanIntervened": 1,
    "ContextSummarized": 1,
    "ActionJudged": 1,
    "BranchCreated": 1,
    "RunReconfigured": 1,
    "RunFinished": 1,
}

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(kind: str, from_schema: int) -> Callable[[Upcaster], Upcaster]:
    """Register `fn` as the step that turns `kind` payloads of `from_schema` into `from_schema + 1`."""

    def register(fn: Upcaster) -> Upcaster:
        key = (kind, from_schema)
        if key in _UPCASTERS:
            raise ValueError(f"an upcaster for {kind} schema {from_schema} is already registered")
        _UPCASTERS[key] = fn
        return fn

    return register


def upcast(kind: str, schema: int, payload: Payload) -> Payload:
    """Bring a decoded payload written at `schema` up to the kind's current schema."""
    current = CURRENT_SCHEMA[kind]
    if schema > current:
        raise ValueError(f"{kind} schema {schema} is newer than this code knows ({current}); upgrade apollo-es")
    for step in range(schema, current):
        try:
            payload = _UPCASTERS[(kind, step)](payload)
        except KeyError:
            raise ValueError(f"no upcaster for {kind} from schema {step}") from None
    return payload


@upcaster("AgentActed", 1)
def _agent_acted_nest_usage(payload: Payload) -> Payload:
    """Schema 1 kept token counts at the top level and latency in seconds.

    Schema 2 groups them in `usage` (room for cache counts) and measures latency in
    milliseconds like every other duration in the log.
    """
    payload = dict(payload)
    usage = {
        "input_tokens": payload.pop("input_tokens", 0),
        "output_tokens": payload.pop("output_tokens", 0),
    }
    payload["usage"] = usage
    if "latency_s" in payload:
        payload["latency_ms"] = payload.pop("latency_s") * 1000.0
    return payload
