"""The judge's request and the verdict it must answer: pure functions of the log.

Like the summarization prompt (`projections.summarization`), the judge's prompt is built
from events alone, so the same request can be rebuilt, inspected and tested without a model
or a store. `apollo_es.judge` runs it: it asks the model, retries with `correction_context`
when `parse_verdict` refuses the answer, and records `ActionJudged`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from apollo_es.errors import ApolloError
from apollo_es.store import RecordedEvent
from events import AgentActed, RunStarted
from projections.context import Context, Message, fold
from projections.evidence import observations_by_action
from projections.summarization import transcript

__all__ = [
    "JUDGE_SYSTEM",
    "PROMPT_VERSION",
    "Verdict",
    "VerdictError",
    "correction_context",
    "judge_context",
    "parse_verdict",
]

PROMPT_VERSION = "judge-v1"
"""Bump when the prompt or the verdict format changes: it is part of the judge id."""

JUDGE_SYSTEM = """\
You review the actions of an AI research agent that works on a long task in a ReAct loop with tools. \
Your verdicts decide which actions are used to train the next model, so judge strictly.

Keep an action when it is a correct, useful step that a careful expert agent would take at that point. \
Mask it when it is wrong, pointless, a repetition that makes no progress, careless with the workspace, \
ignores what a person told the agent, or is otherwise a mistake the next model should not learn, \
whether or not the environment reported an error.

Judge only the action inside <action>, using the context before it and the observation after it.
Answer with only a JSON object, nothing before or after it:
{"verdict": "keep" or "mask", "score": a number from 0 to 1 (how good a step this is to learn from), \
"reason": "one or two sentences"}"""

_ANSWER_FORMAT = '{"verdict": "keep" | "mask", "score": 0..1, "reason": "..."}'


# -- the verdict --------------------------------------------------------------------------


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What the judge model must answer."""

    verdict: Literal["keep", "mask"]
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    reason: str = ""


class VerdictError(ApolloError):
    """The model's answer is not a usable verdict; the message says what is wrong."""


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)\n?\s*```", re.DOTALL)


def parse_verdict(text: str, stop_reason: str = "") -> Verdict:
    """The verdict in a model's answer: a JSON object, possibly inside a ```json fence.

    Text around the object is tolerated; anything else raises `VerdictError`.
    """
    stripped = text.strip()
    if not stripped:
        cut = " (the answer hit the output limit)" if stop_reason in ("max_tokens", "length") else ""
        raise VerdictError(f"the answer is empty{cut}")
    fenced = _FENCE.search(stripped)
    candidate = fenced.group(1).strip() if fenced else stripped
    if not candidate.startswith("{"):
        start, end = candidate.find("{"), candidate.rfind("}")
        if start < 0 or end <= start:
            raise VerdictError(f"no JSON object in the answer: {_clip(stripped, 120)!r}")
        candidate = candidate[start : end + 1]
    try:
        verdict = msgspec.json.decode(candidate.encode(), type=Verdict)
    except msgspec.ValidationError as exc:
        raise VerdictError(f"the JSON object is not a verdict: {exc}") from None
    except msgspec.DecodeError as exc:
        cut = "; the answer was cut off at the output limit" if stop_reason in ("max_tokens", "length") else ""
        raise VerdictError(f"the answer is not valid JSON ({exc}){cut}: {_clip(stripped, 120)!r}") from None
    return msgspec.structs.replace(verdict, reason=verdict.reason.strip())


# -- the request --------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, keeping its head and tail."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - head - tail} characters omitted ...]\n{text[-tail:]}"


def judge_context(
    events: Sequence[RecordedEvent],
    index: int,
    *,
    model: str = "",
    observations: Sequence[RecordedEvent] | None = None,
    context_chars: int = 24_000,
    item_chars: int = 8_000,
    max_output_tokens: int = 1024,
    sampling: dict[str, Any] | None = None,
    before: Context | None = None,
) -> Context:
    """The judge request for the action at `events[index]`, as a one-message `Context`.

    The recent context is what `fold` gives for the events before the action (pass it as
    `before` when you fold incrementally): the newest messages that fit in `context_chars`.
    Each message, the action and each observation is cut to `item_chars` (head and tail
    kept). Render it with `render_request`.
    """
    recorded = events[index]
    action = recorded.event
    if not isinstance(action, AgentActed):
        raise ValueError(f"events[{index}] is a {recorded.kind}, not an AgentActed")
    if before is None:
        before = fold(events[:index])
    run = before.run or RunStarted(task_id="", task="")
    if observations is None:
        observations = observations_by_action(events[: _observation_end(events, index)]).get(recorded.event_id, [])

    history = [m for m in (*before.messages, *before.held_back) if m.source != "task"]
    pieces: list[str] = []
    used = 0
    for message in reversed(history):
        piece = transcript([_clipped(message, item_chars)])
        if used + len(piece) > context_chars and pieces:
            break
        pieces.append(piece)
        used += len(piece)
    omitted = len(history) - len(pieces)
    context_text = ("[" + f"{omitted} earlier messages omitted" + "]\n" if omitted else "") + "\n".join(reversed(pieces))

    action_message = Message(
        role="assistant", source="agent", version=recorded.version, event_id=recorded.event_id,
        content=_clip(action.text, item_chars), reasoning=_clip(action.reasoning, item_chars),
        tool_calls=tuple(action.tool_calls),
    )
    observed = [
        Message(
            role="tool", source="tool", version=o.version, event_id=o.event_id, content=_clip(o.event.output, item_chars),
            tool_call_id=o.event.tool_call_id or None, tool_name=o.event.tool_name, is_error=o.event.is_error,
        )
        for o in observations
    ]
    stop = f"\n(the response stopped with reason {action.stop_reason!r})" if action.stop_reason in ("max_tokens", "length") else ""
    prompt = (
        f"<task>\n{_clip(run.task, item_chars)}\n</task>\n\n"
        f"<context>\n{context_text or '(the action is the first step)'}\n</context>\n\n"
        f"<action step=\"{before.steps + 1}\">\n{transcript([action_message])}{stop}\n</action>\n\n"
        f"<observation>\n{transcript(observed) if observed else '(no observation was recorded)'}\n</observation>\n\n"
        f"Judge the action. Answer with only the JSON object {_ANSWER_FORMAT}."
    )
    request_run = RunStarted(
        task_id=run.task_id, task=run.task, system_prompt=JUDGE_SYSTEM, model=model,
        max_output_tokens=max_output_tokens, sampling=dict(sampling or {}),
    )
    message = Message(role="user", source="task", version=recorded.version, event_id="", content=prompt)
    return Context(stream_id=recorded.stream_id, version=recorded.version, run=request_run, messages=(message,))


def _observation_end(events: Sequence[RecordedEvent], index: int) -> int:
    """Where the action's observations end: before the next action."""
    for position in range(index + 1, len(events)):
        if isinstance(events[position].event, AgentActed):
            return position
    return len(events)


def _clipped(message: Message, limit: int) -> Message:
    if len(message.content) <= limit and len(message.reasoning) <= limit:
        return message
    return msgspec.structs.replace(message, content=_clip(message.content, limit), reasoning=_clip(message.reasoning, limit))


def correction_context(context: Context, answer: str, problem: str) -> Context:
    """The request again, with the bad answer and what was wrong with it, for the retry."""
    version = context.version
    bad = Message(role="assistant", source="agent", version=version, event_id="", content=_clip(answer, 2000))
    fix = Message(
        role="user", source="task", version=version, event_id="",
        content=f"Your answer could not be used: {problem}. Answer again with only the JSON object {_ANSWER_FORMAT}.",
    )
    return msgspec.structs.replace(context, messages=(*context.messages, bad, fix))
