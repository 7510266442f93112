"""The event vocabulary of apollo-es: kinds, encoding, schema versions and upcasters."""

from events.codec import decode, encode, encode_checked, from_dict, kind_of, to_builtins
from events.errors import EventError, InvalidEventError, UnknownKindError
from events.kinds import (
    KINDS,
    ActionJudged,
    AgentActed,
    BranchCreated,
    ContentBlock,
    ContextSummarized,
    DiscardedAnswer,
    Event,
    HumanIntervened,
    RunFinished,
    RunStarted,
    SandboxSpec,
    ToolCall,
    ToolObserved,
    ToolSpec,
    Usage,
)
from events.upcasting import CURRENT_SCHEMA, upcast, upcaster

__all__ = [
    "KINDS",
    "CURRENT_SCHEMA",
    "ActionJudged",
    "AgentActed",
    "BranchCreated",
    "ContentBlock",
    "ContextSummarized",
    "DiscardedAnswer",
    "Event",
    "EventError",
    "HumanIntervened",
    "InvalidEventError",
    "RunFinished",
    "RunStarted",
    "SandboxSpec",
    "ToolCall",
    "ToolObserved",
    "ToolSpec",
    "UnknownKindError",
    "Usage",
    "decode",
    "encode",
    "encode_checked",
    "from_dict",
    "kind_of",
    "to_builtins",
    "upcast",
    "upcaster",
]
