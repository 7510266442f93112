"""The LLM judge: a processor that reads actions without a verdict and appends `ActionJudged`.

For each `AgentActed` that lacks a verdict from this judge id (model + prompt version), the
judge builds a request from the log (the task, the recent context as the fold shows it
just before the action, the action and its observations), asks the model for a verdict as
JSON (`{"verdict": "keep"|"mask", "score": 0..1, "reason": "..."}`), validates it and
appends `ActionJudged` to the stream that recorded the action, with `causation_id` = the action.

Guarantees:
- Idempotent, also across processes: a verdict's event id is derived from (judge id,
  action id), so the store records at most one verdict per pair; running the judge twice
  judges nothing twice.
- Resumable: a verdict is one atomic append, so a killed judge leaves every action either
  judged or not; the next run judges the rest.
- Bounded: at most `concurrency` requests in flight (that many workers pull from one
  queue), and no new request once `budget_tokens` (input + output, from the usage the
  server reports) are spent; requests in flight finish and are recorded.
- Malformed output (not JSON, wrong fields, a score outside 0..1, cut off) is retried,
  telling the model what was wrong, up to `max_attempts`; then an `ActionJudged` with
  verdict `error` records why. It never crashes the run.
- A refused request (HTTP 400/401/404...) stops the judge: it is a configuration problem,
  and recording error verdicts for it would hide the actions from the next, fixed, run.
  A model that stays unavailable (429/5xx after the client's retries) leaves that action
  for the next run.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Literal

import anyio
import msgspec

from apollo_es.errors import ApolloError
from apollo_es.models import ModelClient, ModelError, ModelOutputError, ModelRequestError
from apollo_es.models.prices import cost_usd
from apollo_es.store import EventStore, NewEvent, RecordedEvent
from events import ActionJudged, AgentActed, RunFinished, RunStarted, Usage
from projections.context import Context, Folder, Message, fold
from projections.requests import render_request
from projections.rules import observations_by_action
from projections.summarization import transcript

__all__ = [
    "JUDGE_SYSTEM",
    "PROMPT_VERSION",
    "Judge",
    "JudgeReport",
    "Verdict",
    "VerdictError",
    "judge_context",
    "judge_event_id",
    "judge_id_for",
    "parse_verdict",
]

log = logging.getLogger("apollo_es.judge")

PROMPT_VERSION = "judge-v1"
"""Bump when the prompt or the verdict format changes: it is part of the judge id."""

_NAMESPACE = uuid.UUID("6f0d3c1e-4a57-5b8e-9c2d-a1b2c3d4e5f6")

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


def judge_id_for(model: str, prompt_version: str = PROMPT_VERSION) -> str:
    """A judge's id: the model and the prompt version (`claude-sonnet-4-5@judge-v1`)."""
    return f"{model}@{prompt_version}"


def judge_event_id(judge_id: str, action_event_id: str) -> str:
    """The event id of the verdict of `judge_id` on an action: the same in every process and run."""
    return str(uuid.uuid5(_NAMESPACE, f"{judge_id}\n{action_event_id}"))


# -- the verdict --------------------------------------------------------------------------


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What the judge model must answer."""

    verdict: Literal["keep", "mask"]
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    reason: str = ""


class VerdictError(ValueError):
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


def _with_correction(context: Context, answer: str, problem: str) -> Context:
    """The request again, with the bad answer and what was wrong with it, for the retry."""
    version = context.version
    bad = Message(role="assistant", source="agent", version=version, event_id="", content=_clip(answer, 2000))
    fix = Message(
        role="user", source="task", version=version, event_id="",
        content=f"Your answer could not be used: {problem}. Answer again with only the JSON object {_ANSWER_FORMAT}.",
    )
    return msgspec.structs.replace(context, messages=(*context.messages, bad, fix))


# -- the processor ------------------------------------------------------------------------


class JudgeReport(msgspec.Struct, kw_only=True):
    """What a judge run did. Counts are of actions; `tokens` and `requests` of model calls."""

    judge_id: str
    actions: int = 0
    """Actions in the streams asked for."""
    judged: int = 0
    """Verdicts `keep` or `mask` appended by this run."""
    errors: int = 0
    """Verdicts `error` appended by this run (malformed output after every attempt)."""
    skipped: int = 0
    """Actions that already had a verdict from this judge id."""
    pending: int = 0
    """Actions still waiting for their observation (a live run); judged by a later run."""
    failed: int = 0
    """Actions whose requests failed (model unavailable); left for the next run."""
    remaining: int = 0
    """Actions not judged because the budget ran out or the judge stopped."""
    tokens: int = 0
    requests: int = 0
    budget_exhausted: bool = False
    stopped: str = ""
    """Why the judge stopped early (a refused request), or ''."""
    last_error: str = ""


class _Work(msgspec.Struct):
    owner: str
    index: int
    action_id: str


class Judge:
    """Judges the actions of some streams with one model and appends the verdicts.

    Example:
        client = make_client("anthropic", "claude-sonnet-4-5")
        judge = Judge(store, client, concurrency=8, budget_tokens=2_000_000)
        report = anyio.run(judge.run, ["run-1"])

    `run(None)` judges every stream. `on_progress(done, total, report)` is called after
    each action this run takes on.
    """

    def __init__(
        self,
        store: EventStore,
        client: ModelClient,
        *,
        model: str | None = None,
        judge_id: str | None = None,
        concurrency: int = 4,
        budget_tokens: int | None = None,
        max_attempts: int = 3,
        context_chars: int = 24_000,
        item_chars: int = 8_000,
        max_output_tokens: int = 1024,
        sampling: dict[str, Any] | None = None,
        on_progress: Callable[[int, int, JudgeReport], None] | None = None,
    ) -> None:
        model = model or getattr(client, "model", None) or ""
        if not model and not judge_id:
            raise ApolloError("the judge needs a model name (or an explicit judge_id)")
        if concurrency < 1:
            raise ApolloError(f"concurrency must be at least 1, got {concurrency}")
        if max_attempts < 1:
            raise ApolloError(f"max_attempts must be at least 1, got {max_attempts}")
        if budget_tokens is not None and budget_tokens < 1:
            raise ApolloError(f"the token budget must be positive, got {budget_tokens}")
        self.store = store
        self.client = client
        self.model = model
        self.judge_id = judge_id or judge_id_for(model)
        if not re.fullmatch(r"[^\s](?:[^\n]{0,190})", self.judge_id):
            raise ApolloError(f"invalid judge id {self.judge_id!r}: 1 to 191 characters on one line, not starting with a space")
        self.actor = f"judge:{self.judge_id}"
        self.concurrency = concurrency
        self.budget_tokens = budget_tokens
        self.max_attempts = max_attempts
        self.context_chars = context_chars
        self.item_chars = item_chars
        self.max_output_tokens = max_output_tokens
        self.sampling = {"temperature": 0} if sampling is None else dict(sampling)
        self.on_progress = on_progress
        self.in_flight = 0
        self.max_in_flight = 0
        self._observations: dict[str, dict[str, list[RecordedEvent]]] = {}

    # -- planning ---------------------------------------------------------------------

    def _plan(self, stream_ids: Iterable[str] | None = None) -> tuple[list[_Work], dict[str, list[RecordedEvent]], JudgeReport]:
        """The actions to judge (by owning stream), the events of those streams, and the counts so far."""
        report = JudgeReport(judge_id=self.judge_id)
        if stream_ids is None:
            stream_ids = [info.stream_id for info in self.store.streams()]
        cache: dict[str, list[RecordedEvent]] = {}

        def lineage(stream_id: str) -> list[RecordedEvent]:
            if stream_id not in cache:
                cache[stream_id] = self.store.read(stream_id)
            return cache[stream_id]

        owners: dict[str, str] = {}  # action id -> the stream that recorded it
        for stream_id in dict.fromkeys(stream_ids):
            self.store.head(stream_id)  # StreamNotFound for a typo
            for recorded in lineage(stream_id):
                if isinstance(recorded.event, AgentActed):
                    owners.setdefault(recorded.event_id, recorded.stream_id)
        report.actions = len(owners)
        done = self._already_judged(list(owners))
        report.skipped = len(done)

        work: list[_Work] = []
        for owner in dict.fromkeys(owners.values()):
            events = lineage(owner)
            for index, recorded in enumerate(events):
                if recorded.stream_id != owner or not isinstance(recorded.event, AgentActed):
                    continue
                if recorded.event_id not in owners or recorded.event_id in done:
                    continue
                if _is_pending(events, index):
                    report.pending += 1
                    continue
                work.append(_Work(owner, index, recorded.event_id))
        # Keep only the lineages the work needs.
        needed = {w.owner for w in work}
        self._observations = {sid: observations_by_action(cache[sid]) for sid in needed}
        return work, {sid: events for sid, events in cache.items() if sid in needed}, report

    def _already_judged(self, action_ids: list[str]) -> set[str]:
        by_verdict = {judge_event_id(self.judge_id, action_id): action_id for action_id in action_ids}
        found: set[str] = set()
        ids = list(by_verdict)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self.store.query(f"SELECT event_id FROM events WHERE event_id IN ({', '.join('?' * len(chunk))})", chunk)
            found.update(by_verdict[row[0]] for row in rows)
        return found

    # -- running ----------------------------------------------------------------------

    async def run(self, stream_ids: Iterable[str] | None = None) -> JudgeReport:
        """Judge every action of these streams (all streams for None) that lacks a verdict."""
        work, lineages, report = await anyio.to_thread.run_sync(self._plan, None if stream_ids is None else list(stream_ids))
        self._report = report
        queue = iter(work)
        total, done = len(work), 0
        # The work is in event order per stream, so one incremental fold per stream gives
        # every action's prefix context: linear in the run's length, not quadratic.
        folders: dict[str, tuple[Folder, list[int]]] = {owner: (Folder(), [0]) for owner in lineages}

        def context_for(item: _Work) -> Context:
            folder, folded = folders[item.owner]
            events = lineages[item.owner]
            for recorded in events[folded[0] : item.index]:
                folder.add(recorded)
            folded[0] = max(folded[0], item.index)
            return self._context(events, item.index, folder.context())

        def progress() -> None:
            if self.on_progress is not None:
                self.on_progress(done, total, report)

        progress()

        async def worker() -> None:
            nonlocal done
            while not report.stopped:
                if self._budget_spent():
                    report.budget_exhausted = True
                    return
                item = next(queue, None)
                if item is None:
                    return
                await self._judge(item, context_for(item), report)
                done += 1
                progress()

        async with anyio.create_task_group() as group:
            for _ in range(min(self.concurrency, max(total, 1))):
                group.start_soon(worker)
        report.remaining = total - report.judged - report.errors - report.failed
        if report.remaining and not report.stopped and self._budget_spent():
            report.budget_exhausted = True
        log.info("judge %s: %s", self.judge_id, msgspec.json.encode(report).decode())
        return report

    def _budget_spent(self) -> bool:
        return self.budget_tokens is not None and self._report.tokens >= self.budget_tokens

    async def _judge(self, item: _Work, context: Context, report: JudgeReport) -> None:
        problem = ""
        spent, model = Usage(), ""  # over every attempt: a retried verdict costs each call
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1 and (self._budget_spent() or report.stopped):
                return  # left unjudged: the next run (with budget) judges it afresh
            request = render_request(context, self.client.provider)
            try:
                response = await self._complete(request)
            except ModelRequestError as exc:
                report.stopped = f"the model refused the request: {exc}"
                report.last_error = str(exc)
                log.error("judge %s stops: %s", self.judge_id, exc)
                return
            except ModelOutputError as exc:
                problem = f"the server's answer is not a model response: {exc}"
                break
            except ModelError as exc:
                report.failed += 1
                report.last_error = str(exc)
                log.warning("judge %s: no verdict for %s: %s", self.judge_id, item.action_id, exc)
                return
            report.requests += 1
            report.tokens += response.usage.prompt_tokens + response.usage.output_tokens
            model = response.model
            spent += response.usage
            try:
                verdict = parse_verdict(response.text, response.stop_reason)
            except VerdictError as exc:
                problem = str(exc)
                log.info("judge %s: malformed verdict for %s (attempt %d of %d): %s", self.judge_id, item.action_id, attempt, self.max_attempts, problem)
                context = _with_correction(context, response.text, problem)
                continue
            judged = ActionJudged(
                target_event_id=item.action_id, verdict=verdict.verdict, judge_id=self.judge_id,
                score=verdict.score, reason=verdict.reason, usage=spent, cost_usd=cost_usd(model, spent),
            )
            await self._append(item, judged)
            report.judged += 1
            return
        attempts = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
        error = ActionJudged(
            target_event_id=item.action_id, verdict="error", judge_id=self.judge_id,
            reason=f"malformed judge output {attempts}: {problem}"[:2000], usage=spent, cost_usd=cost_usd(model, spent),
        )
        await self._append(item, error)
        report.errors += 1
        report.last_error = problem

    async def _complete(self, request: dict[str, Any]) -> Any:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.client.complete(request)
        finally:
            self.in_flight -= 1

    def _context(self, events: list[RecordedEvent], index: int, before: Context) -> Context:
        return judge_context(
            events, index, model=self.model, observations=self._observations[events[index].stream_id].get(events[index].event_id, []),
            context_chars=self.context_chars, item_chars=self.item_chars, max_output_tokens=self.max_output_tokens,
            sampling=self.sampling, before=before,
        )

    async def _append(self, item: _Work, verdict: ActionJudged) -> None:
        new = NewEvent(event=verdict, event_id=judge_event_id(self.judge_id, item.action_id), causation_id=item.action_id)
        await anyio.to_thread.run_sync(lambda: self.store.append(item.owner, [new], actor=self.actor))


def _is_pending(events: Sequence[RecordedEvent], index: int) -> bool:
    """Whether the action still waits for its observation: calls without results and nothing after it that ends the step."""
    for position in range(index + 1, len(events)):
        if isinstance(events[position].event, (AgentActed, RunFinished)):
            return False
    action: AgentActed = events[index].event
    observed = observations_by_action(events[index:])[events[index].event_id]  # the tail after the last action: short
    if not action.tool_calls:
        return not observed and len(events) == index + 1
    answered = {o.event.tool_call_id for o in observed}
    return any(call.id not in answered for call in action.tool_calls)
