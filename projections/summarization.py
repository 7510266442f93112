"""Where to cut a long context and the request that summarizes the older part.

Pure functions of a `Context`, so the live summarizer and the training projection build the
very same summarization request from the log: the projection turns each
`ContextSummarized` into a (request, summary) training sample.
"""

from __future__ import annotations

import msgspec

from events import RunStarted
from projections.context import Context, Message, message_chars

__all__ = ["PROMPT_ID", "SUMMARY_SECTIONS", "choose_cut", "summarization_context", "summary_problem"]

PROMPT_ID = "state-snapshot-v1"

SUMMARY_SECTIONS = (
    "Progress so far",
    "Hypotheses and their status",
    "Key knowledge",
    "Reflections on each human message",
    "Files and sessions in use",
    "Recent actions",
    "Experiment history",
)

_SYSTEM = (
    "You maintain the working memory of a research agent whose conversation grew too long. "
    "Write a faithful, specific state snapshot that lets the agent continue without the "
    "messages it replaces. Keep numbers, paths, commands, session ids and error messages exact."
)


def choose_cut(context: Context) -> tuple[int, int] | None:
    """The versions (from, to) whose messages the summary replaces, or None if nothing can go.

    Roughly the older half of the history goes (by characters), never the task message, and
    the kept part starts at an assistant turn so every tool result stays with its call. After
    an earlier summary the context is not in version order (the summary, newest, comes before
    the turns it kept), so the cut is only made where every message before it is older than
    every message after it, and the range is (oldest, newest) of the messages cut.
    """
    messages = context.messages
    if len(messages) < 3:
        return None
    total = sum(message_chars(m) for m in messages[1:])
    newest_before = [0] * len(messages)
    for i in range(2, len(messages)):
        newest_before[i] = max(newest_before[i - 1], messages[i - 1].version)
    oldest_from = [0] * (len(messages) + 1)
    oldest_from[len(messages)] = 1 << 62
    for i in range(len(messages) - 1, 0, -1):
        oldest_from[i] = min(oldest_from[i + 1], messages[i].version)
    seen, best, best_gap = 0, None, None
    for index in range(2, len(messages)):
        seen += message_chars(messages[index - 1])
        if messages[index].role != "assistant" or newest_before[index] >= oldest_from[index]:
            continue
        gap = abs(seen - total / 2)
        if best_gap is None or gap < best_gap:
            best, best_gap = index, gap
    if best is None:
        return None
    return min(m.version for m in messages[1:best]), newest_before[best]


def summarization_context(context: Context, replaces_from: int, replaces_to: int, prompt_id: str = PROMPT_ID) -> Context:
    """The summarization request as a one-message context, rendered like any other request."""
    if prompt_id != PROMPT_ID:
        raise ValueError(f"unknown summarization prompt {prompt_id!r}; this version knows {PROMPT_ID!r}")
    run = context.run or RunStarted(task_id="", task="")
    replaced = [m for m in context.messages if replaces_from <= m.version <= replaces_to]
    sections = "\n".join(f"## {name}" for name in SUMMARY_SECTIONS)
    prompt = (
        f"<task>\n{run.task}\n</task>\n\n<history>\n{transcript(replaced)}\n</history>\n\n"
        "Summarize the history above as a state snapshot with exactly these sections "
        f"(write 'none' where a section is empty):\n{sections}"
    )
    request_run = msgspec.structs.replace(run, system_prompt=_SYSTEM, tools=[], sampling={})
    message = Message(role="user", source="task", version=context.version, event_id="", content=prompt)
    return Context(stream_id=context.stream_id, version=context.version, run=request_run, messages=(message,))


def transcript(messages: list[Message]) -> str:
    """Messages as plain tagged text, the way the summarizer reads them."""
    parts = []
    for m in messages:
        if m.role == "assistant":
            calls = "".join(
                f"\n<tool_call name=\"{c.name}\">{c.raw_arguments or msgspec.json.encode(c.arguments).decode()}</tool_call>"
                for c in m.tool_calls
            )
            thinking = f"<reasoning>{m.reasoning}</reasoning>\n" if m.reasoning else ""
            parts.append(f"<assistant>\n{thinking}{m.content}{calls}\n</assistant>")
        elif m.role == "tool":
            status = " error=\"true\"" if m.is_error else ""
            parts.append(f"<tool_result name=\"{m.tool_name}\"{status}>\n{m.content}\n</tool_result>")
        else:
            parts.append(f"<{m.source}>\n{m.content}\n</{m.source}>")
    return "\n".join(parts)


def summary_problem(summary: str, stop_reason: str = "", prompt_id: str = PROMPT_ID) -> str | None:
    """Why a summary must not replace the history (or be trained on), or None if it may.

    A summary replaces half the context for good: an empty one wipes the history, one cut off at
    the output limit loses its end, and one without the snapshot's sections was not written to
    this prompt. Summaries written to another prompt (imported runs) are only checked for text.
    """
    if not summary.strip():
        return "the summary is empty"
    if stop_reason in ("max_tokens", "length"):
        return "the summary was cut off at the output limit"
    if prompt_id == PROMPT_ID:
        found = [name for name in SUMMARY_SECTIONS if f"## {name.lower()}" in summary.lower()]
        if len(found) * 2 < len(SUMMARY_SECTIONS):
            return f"the summary has {len(found)} of the {len(SUMMARY_SECTIONS)} sections the prompt asks for"
    return None
