"""The LLM judge: a processor that reads actions without a verdict and appends `ActionJudged`.

For each `AgentActed` that lacks a verdict from this judge id (model + prompt version), the
judge builds a request from the log (`projections.judging.judge_context`: the task, the
recent context as the fold shows it just before the action, the action and its
observations), asks the model for a verdict as JSON (`{"verdict": "keep"|"mask", "score":
0..1, "reason": "..."}`), validates it (`parse_verdict`) and appends `ActionJudged` to the
stream that recorded the action, with `causation_id` = the action.

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
from typing import Any

import anyio
import msgspec

from apollo_es.errors import ApolloError
from apollo_es.models import ModelClient, ModelError, ModelOutputError, ModelRequestError
from apollo_es.models.prices import cost_usd
from apollo_es.store import EventStore, NewEvent, RecordedEvent
from events import ActionJudged, AgentActed, RunFinished, Usage
from projections.context import Context, Folder, estimate_tokens
from projections.evidence import observations_by_action
from projections.judging import PROMPT_VERSION, VerdictError, correction_context, judge_context, parse_verdict
from projections.requests import render_request

__all__ = ["Judge", "JudgeReport", "judge_event_id", "judge_id_for"]

log = logging.getLogger("apollo_es.judge")

_NAMESPACE = uuid.UUID("6f0d3c1e-4a57-5b8e-9c2d-a1b2c3d4e5f6")


def judge_id_for(model: str, prompt_version: str = PROMPT_VERSION) -> str:
    """A judge's id: the model and the prompt version (`claude-sonnet-4-5@judge-v1`)."""
    return f"{model}@{prompt_version}"


def judge_event_id(judge_id: str, action_event_id: str) -> str:
    """The event id of the verdict of `judge_id` on an action: the same in every process and run."""
    return str(uuid.uuid5(_NAMESPACE, f"{judge_id}\n{action_event_id}"))


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
    """Why the judge stopped early (a refused request, model calls failing in a row), or ''."""
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
        failures_to_stop: int = 5,
    ) -> None:
        """`failures_to_stop`: consecutive failed model calls (unreachable, overloaded after the
        retries) that stop the run instead of spending a timeout on every remaining action."""
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
        self.failures_to_stop = failures_to_stop
        self._failures_in_a_row = 0
        self._reserved = 0
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
        return {by_verdict[event_id] for event_id in self.store.events_by_ids(by_verdict)}

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
        return self.budget_tokens is not None and self._report.tokens + self._reserved >= self.budget_tokens

    def _reserve(self, context: Context) -> int | None:
        """Tokens set aside for one request before it is sent (None: the budget cannot cover it).

        The most the call can cost: its prompt, estimated, and the output limit. Checking and
        reserving happen with no await between them, so concurrent workers never overshoot.
        """
        need = estimate_tokens(context) + self.max_output_tokens
        if self.budget_tokens is not None and self._report.tokens + self._reserved + need > self.budget_tokens:
            return None
        self._reserved += need
        return need

    async def _judge(self, item: _Work, context: Context, report: JudgeReport) -> None:
        problem = ""
        spent, model = Usage(), ""  # over every attempt: a retried verdict costs each call
        for attempt in range(1, self.max_attempts + 1):
            if report.stopped:
                return
            reserved = self._reserve(context)
            if reserved is None:
                report.budget_exhausted = True
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
                self._failures_in_a_row += 1
                if self._failures_in_a_row >= self.failures_to_stop and not report.stopped:
                    report.stopped = (f"{self._failures_in_a_row} model calls failed in a row (last: {exc}); the rest is "
                                      "left unjudged: run the judge again once the model is reachable")
                    log.error("judge %s stops: %s", self.judge_id, report.stopped)
                return
            finally:
                self._reserved -= reserved
            self._failures_in_a_row = 0
            report.requests += 1
            report.tokens += response.usage.prompt_tokens + response.usage.output_tokens
            model = response.model
            spent += response.usage
            try:
                verdict = parse_verdict(response.text, response.stop_reason)
            except VerdictError as exc:
                problem = str(exc)
                log.info("judge %s: malformed verdict for %s (attempt %d of %d): %s", self.judge_id, item.action_id, attempt, self.max_attempts, problem)
                context = correction_context(context, response.text, problem)
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
        await self._append(item, error, final=False)
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

    async def _append(self, item: _Work, verdict: ActionJudged, *, final: bool = True) -> None:
        """A final verdict (keep or mask) takes the deterministic event id, so the action is never
        judged twice by this judge; an `error` takes a fresh one, so the next run tries again."""
        event_id = judge_event_id(self.judge_id, item.action_id) if final else None
        new = NewEvent(event=verdict, event_id=event_id, causation_id=item.action_id)
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
