"""The event vocabulary: one msgspec Struct per kind, joined in one tagged union.

Each Struct is the *current* schema of its kind. Older stored rows are brought up to
date by the upcasters in `events.upcasting` before they are decoded into these types,
so the rest of the code only ever sees current events.

The payload of every stored event is its Struct encoded as JSON, tag included
(`"type": "AgentActed"`), so auditors can query any field with `json_extract`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec


class _Event(msgspec.Struct, tag_field="type", tag=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Base of every event kind; `type` is the tag and equals the envelope's `kind`.

    `gc=False` (here and on the structs events hold): events are plain data and never part
    of a reference cycle, so the cycle collector need not track them. Reading a 2,500-event
    run made the collector run ~15 times and took a fifth of the read's time; untracked, it
    runs less than half as often (bench/store.py, read row).
    """


class ToolSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A tool offered to the model, in provider-neutral form (JSON Schema for the input)."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One tool call as the model emitted it.

    `raw_arguments` keeps the model's text when it was not a JSON object, so a malformed
    call is recorded faithfully (and a rule can flag it) instead of being lost.
    """

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    raw_arguments: str | None = None


class Usage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Tokens of one model call. `input_tokens` are the prompt tokens billed at the full price:
    with prompt caching they exclude the tokens written to (`cache_write_tokens`) and read from
    (`cache_read_tokens`) the cache, as Anthropic reports them; OpenAI-compatible servers'
    `cached_tokens` are moved out of `input_tokens` the same way."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every token of the prompt, cached or not: what the context really holds."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: Usage) -> Usage:
        """Both calls' tokens, field by field (a judge's retries, a run's bill)."""
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in self.__struct_fields__})


class ContentBlock(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One content block of an Anthropic answer, kept exactly as received so it can be sent back
    unmodified (the API checks thinking blocks' signatures). A `tool_use` block names its call
    by `id`; the call itself is in `AgentActed.tool_calls`."""

    type: Literal["text", "thinking", "redacted_thinking", "tool_use"]
    text: str = ""
    """A text block's text, or a thinking block's thinking."""
    signature: str = ""
    data: str = ""
    """A redacted_thinking block's encrypted content."""
    id: str = ""


class DiscardedAnswer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """An answer the agent received and threw away because a person wrote meanwhile: paid for,
    never shown to the model again, never trained on."""

    model: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float | None = None
    latency_ms: float = 0.0
    request_digest: str = ""


class SandboxSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Where the run's tool processes ran: a task's `[sandbox]` table and `[env]`, as recorded.

    `kind = "none"` means unconfined on the host; auditors find it here. Memory and process
    limits apply per sandbox; `None` leaves the kernel's defaults.
    """

    kind: Literal["bwrap", "none"] = "bwrap"
    network: bool = False
    memory_mb: Annotated[int, msgspec.Meta(gt=0)] | None = None
    max_processes: Annotated[int, msgspec.Meta(gt=0)] | None = None
    python: Literal["agent", "system"] = "agent"
    """"agent": the interpreter running apollo-es (its packages too) is visible read-only and
    first on PATH; "system": only the system's /usr."""
    read_only: list[str] = msgspec.field(default_factory=list)
    """Extra host paths visible read-only at the same path (datasets, model weights)."""
    devices: list[str] = msgspec.field(default_factory=list)
    """Device paths or globs passed through, e.g. "/dev/nvidia*" for GPU tasks."""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """The task's own environment variables, on top of the sandbox's allowlist."""


class ObservationWindow(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """How an imported agent elided old observations from its prompts (SWE-agent's
    `last_n_observations` history processor), so the fold shows what that agent saw.

    Observations are the task message and every tool result or environment message, in
    order; the first is never elided; of the others, all but the last `keep_last` (counted
    after rounding the total down to a multiple of `polling`) read `placeholder`, with
    `{lines}` replaced by the number of lines they had."""

    keep_last: Annotated[int, msgspec.Meta(gt=0)]
    polling: Annotated[int, msgspec.Meta(gt=0)] = 1
    placeholder: str = "Old environment output: ({lines} lines omitted)"


class RunStarted(_Event):
    task_id: str
    task: str
    system_prompt: str = ""
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    model: str = ""
    provider: str = ""
    sampling: dict[str, Any] = msgspec.field(default_factory=dict)
    summary_threshold: int = 100_000
    context_limit: int = 128_000
    max_output_tokens: int = 8_192
    environment: str = ""
    workspace: str = ""
    """Absolute path of the tool workspace, so `resume` finds it."""
    max_steps: int | None = None
    time_limit: float | None = None
    """Seconds of wall clock from this event's recorded_at."""
    token_budget: int | None = None
    """Input plus output tokens over all model calls of the run."""
    eval_command: str = ""
    tags: list[str] = msgspec.field(default_factory=list)
    prompt_caching: bool = False
    """Whether requests carry Anthropic `cache_control` breakpoints (new runs: on unless the task
    turns it off; False for runs recorded before, so their digests still verify)."""
    sandbox: SandboxSpec | None = None
    """How tool processes were confined; None on runs recorded before sandboxes (and imports)."""
    demonstrations: list[str] = msgspec.field(default_factory=list)
    """User messages shown before the task (an imported SWE-agent's demonstrations)."""
    observation_window: ObservationWindow | None = None
    """Old observations elided from the context as the imported agent did; None for live runs."""
    import_notes: list[str] = msgspec.field(default_factory=list)
    """What an imported run's context does not reproduce of the source's prompts, and why."""


class AgentActed(_Event):
    model: str
    text: str = ""
    reasoning: str = ""
    reasoning_signature: str = ""
    """Anthropic's signature of the thinking block, needed to send the reasoning back."""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    stop_reason: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    latency_ms: float = 0.0
    context_digest: str = ""
    blocks: list[ContentBlock] = msgspec.field(default_factory=list)
    """An Anthropic answer's content blocks, in order, as received; `text`, `reasoning` (the
    visible thinking only) and `tool_calls` are derived from them. Empty for other providers."""
    cost_usd: float | None = None
    """What the call cost, from the price table (None: the model has no price there)."""
    discarded: list[DiscardedAnswer] = msgspec.field(default_factory=list)
    """Answers to earlier requests dropped because a person wrote while the model thought."""


ObservationOrigin = Literal["tool", "harness", "timeout", "notice"]
"""Who decided an observation's outcome (`ToolObserved.origin`)."""


class ToolObserved(_Event):
    tool_call_id: str
    output: str
    tool_name: str = ""
    is_error: bool = False
    exit_code: int | None = None
    duration_ms: float = 0.0
    truncated: bool = False
    original_chars: int | None = None
    origin: ObservationOrigin = "tool"
    """Who decided the outcome, so rules read it here instead of recognizing apollo-es's own
    messages (which a tool's output may quote): "tool", the tool itself (its output and exit
    code; also every observation recorded before this field, and imported ones); "harness",
    apollo-es refused or could not carry out the call (bad arguments, an unknown tool or
    session, a path outside the workspace, a missing file) or a person's stop killed it;
    "timeout", apollo-es killed the command at its time limit (the output is what it printed
    until then); "notice", apollo-es did not run the call or lost its result (finish came first
    in the turn, the agent process died while it ran): it says nothing about the action."""


class HumanIntervened(_Event):
    """A person's word. `guidance` and `stop` are messages to the agent; `reject` and
    `approve` judge the action named by `target_event_id` for training (masked, or kept
    whatever rules and judges say) and are never shown to the agent."""

    annotator: str
    kind: Literal["guidance", "stop", "reject", "approve"]
    message: str = ""
    seen_version: int | None = None
    target_event_id: str | None = None
    verbatim: bool = False
    """Shown to the agent as written, without the real-user tags: an imported agent saw people's
    messages as plain user turns."""


class ContextSummarized(_Event):
    summary: str
    replaces_from: int
    replaces_to: int
    tokens_before: int = 0
    tokens_after: int = 0
    model: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    request_digest: str = ""
    prompt_id: str = ""
    """Which summarization prompt built the request, so it can be re-derived from the log."""
    cost_usd: float | None = None


class ActionJudged(_Event):
    target_event_id: str
    verdict: Literal["keep", "mask", "error"]
    judge_id: str
    score: float | None = None
    reason: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    """Every judge call for this verdict, retries for malformed answers included."""
    cost_usd: float | None = None


class BranchCreated(_Event):
    parent_stream: str
    fork_version: int
    reason: str = ""
    created_by: str = ""


class RunReconfigured(_Event):
    """New settings for the rest of a run, given at `resume` or when a branch is continued: the
    run's `RunStarted` stays as it was, and the fold applies these on top from here on. A
    field left None keeps its value."""

    sampling: dict[str, Any] | None = None
    """Replaces `RunStarted.sampling` (temperature, Anthropic's `thinking`...) as a whole."""
    prompt_caching: bool | None = None
    max_output_tokens: int | None = None
    max_steps: int | None = None
    time_limit: float | None = None
    token_budget: int | None = None
    reason: str = ""


class RunFinished(_Event):
    status: Literal["finished", "stopped", "failed", "budget_exhausted", "imported"]
    """"imported": the source trajectory ends without saying how the run ended."""
    final_answer: str = ""
    score: float | None = None
    error: str = ""


Event = Union[
    RunStarted,
    AgentActed,
    ToolObserved,
    HumanIntervened,
    ContextSummarized,
    ActionJudged,
    BranchCreated,
    RunReconfigured,
    RunFinished,
]
"""The tagged union of every kind; decoding JSON with `type=Event` dispatches on `type`."""

KINDS: dict[str, type[_Event]] = {cls.__name__: cls for cls in Event.__args__}
