"""The ReAct loop: fold, summarize if needed, ask the model, act, observe, repeat.

The log is the only state. Every step starts by folding the stream, so a human message
appended by another process appears in the very next request, and a process that was
killed resumes exactly where the log ends:

- `AgentActed` is appended with `expected_version` = the version the request was built
  from. If a person intervened while the model was thinking, the append fails, the answer is
  dropped and the model is asked again with the new context. So the context recorded for an
  action (its `context_digest`) is always exactly what the model saw. Events that do not
  change the request (a verdict, a reject or approve) do not cost the answer.
- An action whose observation was never recorded (the process died while the tool ran) is
  handled one way: read-only tools (and finish) are run again; tools with side effects are
  not, and get an error observation saying the result was lost, so the agent checks for
  itself. This comes first on every pass, so no run ends with a call left unobserved.
- A `finish` whose observation was recorded without a `RunFinished` after it (the process
  died during the eval command) ends the run on resume: evaluate, then `RunFinished`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import msgspec

from apollo_es.errors import ApolloError, ConcurrencyError, PayloadTooLarge
from apollo_es.lease import LEASE_SECONDS, Hold, holding
from apollo_es.models import ModelClient, ModelError, ModelResponse
from apollo_es.models.prices import cost_usd
from apollo_es.redaction import Redactor
from apollo_es.store import ANY, EventStore, ExpectedVersion, NewEvent, RecordedEvent
from apollo_es.tools import Observation, Workspace
from events import (
    AgentActed,
    BranchCreated,
    ContextSummarized,
    DiscardedAnswer,
    HumanIntervened,
    RunFinished,
    RunReconfigured,
    RunStarted,
    ToolCall,
    ToolObserved,
)
from projections.context import Context, estimate_tokens, fold, with_summary
from projections.requests import digest, render_request
from projections.summarization import PROMPT_ID, choose_cut, summarization_context, summary_problem

__all__ = ["Agent", "READ_ONLY_TOOLS", "SAFE_TO_REPEAT", "StepReport"]

log = logging.getLogger("apollo_es.agent")

READ_ONLY_TOOLS = frozenset(
    {"read_file", "list_files", "search", "think", "get_session_output", "check_session_idle"}
)
"""Tools without side effects."""

SAFE_TO_REPEAT = READ_ONLY_TOOLS | {"finish"}
"""Tools run again when their result was lost in a crash: the read-only ones, and finish,
whose only effect is the `RunFinished` recorded after it."""

STOP_POLL_S = 0.2
"""How often a running model call or tool looks for a person's stop."""

T = TypeVar("T")

ANSWER_TOO_LARGE = "the model's answer cannot be recorded"

SUMMARY_ATTEMPTS = 3
"""Tries for a usable summary before the run fails (see `_summarize`)."""

NO_TOOL_FEEDBACK = "No tool was called. Call exactly one tool; call finish(answer) when the task is done."
NOT_RUN_AFTER_FINISH = "Not run: finish() in the same turn ended the task."


class StepReport(msgspec.Struct, frozen=True):
    """What the live display shows after each recorded event."""

    stream_id: str
    steps: int
    tokens: int
    last: str


class Agent:
    """Runs one stream of the log to its end with a model client and a tool workspace.

    Example:
        agent = Agent(store, "run-1", client, Workspace("ws"))
        finished = anyio.run(agent.run)
    """

    def __init__(
        self,
        store: EventStore,
        stream_id: str,
        client: ModelClient,
        workspace: Workspace,
        *,
        summarizer: ModelClient | None = None,
        on_step: Callable[[StepReport], None] | None = None,
        redact: Callable[[str], str] | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        """`redact` cleans every tool output and error before it is recorded; by default it
        replaces the secrets of this process's environment and the clients' API keys."""
        self.store = store
        self.stream_id = stream_id
        self.client = client
        self.summarizer = summarizer or client
        self.workspace = workspace
        self.on_step = on_step
        self.lease_seconds = lease_seconds
        self._discarded: list[DiscardedAnswer] = []  # paid for, recorded with the next action
        self._hold: Hold | None = None  # the run's lease while `run` works
        self.redact = redact or Redactor.from_environ(
            extra={"model API key": getattr(client, "api_key", None), "summarizer API key": getattr(summarizer, "api_key", None)}
        )

    async def run(self, *, resume: bool = False, reconfigured: RunReconfigured | None = None) -> RunFinished:
        """Step until the run finishes, is stopped, fails or exhausts a budget.

        With `resume`, a run that ended `failed` or `budget_exhausted` continues; one that
        finished or was stopped by a person does not (branch it instead). The agent holds the
        run's lease meanwhile (`apollo_es.lease`): a second agent on the run is refused.
        `reconfigured` (new settings for the rest of the run) is recorded first, under the lease.
        """
        async with holding(self.store, self.stream_id, self.lease_seconds) as self._hold:
            if reconfigured is not None:
                self._append([reconfigured], actor="system")  # a person's command, not the agent
            return await self._run(resume)

    async def _run(self, resume: bool) -> RunFinished:
        context = self._fold()
        if context.run is None:
            raise ApolloError(f"stream {self.stream_id!r} has no RunStarted; start runs with apollo-es run")
        if context.finished is not None:
            if not resume:
                return context.finished
            if context.finished.status in ("finished", "stopped"):
                raise ApolloError(f"run {self.stream_id!r} already {context.finished.status}; branch it to continue")
            if context.finished.status == "budget_exhausted" and (still := _end_reason(context, self.store.read(self.stream_id))):
                # Resuming would only record the same end again.
                raise ApolloError(f"run {self.stream_id!r} is still over its budget ({still[1]}); resume it with a higher "
                                  "--max-steps, --time-limit or --token-budget")
            if context.finished.error.startswith(ANSWER_TOO_LARGE) and not _output_limit_changed_since_end(self.store.read(self.stream_id)):
                # Asking the same request with the same limit would most likely buy the same answer.
                raise ApolloError(f"run {self.stream_id!r} failed on an answer too large to record; resume it with a "
                                  f"lower --max-output-tokens (now {context.run.max_output_tokens})")
        while True:
            recorded = self.store.read(self.stream_id)
            context = fold(recorded)
            if context.pending_calls:
                await self._recover_lost_observations(context, recorded)
                continue
            answer = _submitted_answer(recorded)
            if answer is not None:
                return await self._complete(answer)
            ended = _end_reason(context, recorded)
            if ended is not None:
                return self._finish(*ended)
            if _should_summarize(context):
                failed = await self._summarize(context)
                if failed is not None:
                    return failed
                continue
            request = render_request(context)
            try:
                response, stopped = await self._unless_stopped(lambda: self.client.complete(request))
            except ModelError as exc:
                log.error("model call failed for %s: %s", self.stream_id, exc)
                return self._finish("failed", error=str(exc))
            if stopped:
                continue  # the fold sees the stop: the run ends without waiting for the answer
            try:
                acted = self._record_action(context, request, response)
            except PayloadTooLarge as exc:
                # Asking again would most likely pay for the same answer: the run ends, and says why.
                return self._finish("failed", error=f"{ANSWER_TOO_LARGE}: {exc}. "
                                                    "Lower max_output_tokens (resume --max-output-tokens N), or raise the store's max_payload_bytes")
            if acted is None:
                log.info("%s changed while the model was answering; asking again", self.stream_id)
                self._discarded.append(DiscardedAnswer(
                    model=response.model, usage=response.usage, cost_usd=cost_usd(response.model, response.usage),
                    latency_ms=response.latency_ms, request_digest=digest(request),
                ))
                continue
            self._report(acted)
            finished = await self._act(acted)
            if finished is not None:
                return finished

    # -- steps -----------------------------------------------------------------------

    async def _act(self, acted: RecordedEvent) -> RunFinished | None:
        """Run the action's tool calls in order and record each observation."""
        action: AgentActed = acted.event
        if not action.tool_calls:
            self._observe(acted.event_id, ToolObserved(tool_call_id="", output=NO_TOOL_FEEDBACK, is_error=True, origin="harness"))
            return None
        for index, call in enumerate(action.tool_calls):
            observation = await self._execute(call)
            self._observe(acted.event_id, _observed(call, observation))
            if observation.finished:
                for skipped in action.tool_calls[index + 1 :]:
                    self._observe(acted.event_id, _observed(skipped, Observation(output=NOT_RUN_AFTER_FINISH, is_error=True, origin="notice")))
                return await self._complete(str(call.arguments.get("answer", "")))
        return None

    async def _complete(self, answer: str) -> RunFinished:
        """The agent called finish(answer): score the workspace with the eval command and end."""
        score = await anyio.to_thread.run_sync(self._evaluate)
        return self._finish("finished", answer=answer, score=score)

    async def _execute(self, call: ToolCall) -> Observation:
        if call.raw_arguments is not None:
            return Observation(
                output=f"The arguments of {call.name} are not a JSON object: {call.raw_arguments[:500]!r}",
                is_error=True,
                origin="harness",
            )
        observation, _ = await self._unless_stopped(
            lambda: anyio.to_thread.run_sync(self.workspace.execute, call.name, call.arguments),
            on_stop=lambda: anyio.to_thread.run_sync(self.workspace.interrupt),
        )
        return observation

    async def _unless_stopped(
        self, work: Callable[[], Awaitable[T]], on_stop: Callable[[], Awaitable[object]] | None = None
    ) -> tuple[T | None, bool]:
        """`await work()` while watching the log for a person's stop; (result, whether one came).

        A stop cancels `work` (a model call: nothing to wait for), or, given `on_stop`, calls it
        and lets `work` finish (a tool: its process is killed, and its output is still recorded).
        """
        seen = self.store.head(self.stream_id)
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as group:
            async def watch() -> None:
                nonlocal seen
                while True:
                    await anyio.sleep(STOP_POLL_S)
                    head = self.store.head(self.stream_id)
                    if any(_is_stop(self.store.event(self.stream_id, v).event) for v in range(seen + 1, head + 1)):
                        outcome["stopped"] = True
                        if on_stop is None:
                            group.cancel_scope.cancel()
                        else:
                            await on_stop()
                        return
                    seen = head

            group.start_soon(watch)
            try:
                outcome["result"] = await work()
            except Exception as exc:  # raised below, outside the group, so not wrapped in an ExceptionGroup
                outcome["error"] = exc
            group.cancel_scope.cancel()
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result"), outcome.get("stopped", False)

    async def _recover_lost_observations(self, context: Context, recorded: list[RecordedEvent]) -> None:
        finished = _submitted_answer(recorded) is not None  # as in _act: nothing runs after a finish
        for call in context.pending_calls:
            if finished:
                observation = Observation(output=NOT_RUN_AFTER_FINISH, is_error=True, origin="notice")
            elif call.name in SAFE_TO_REPEAT:
                observation = await self._execute(call)
            else:
                observation = Observation(
                    output=(
                        f"The result of this {call.name} call was lost: the agent process stopped while it ran. "
                        "It may or may not have taken effect; check the workspace before repeating it."
                    ),
                    is_error=True,
                    origin="notice",
                )
            finished = finished or observation.finished
            self._observe(context.pending_action_id, _observed(call, observation))

    async def _summarize(self, context: Context) -> RunFinished | None:
        """Record a `ContextSummarized`; if the summarizer fails, end the run as failed.

        A summary replaces half the history for good, so an empty, cut-off or structureless one
        (`summary_problem`) is asked for again, and after SUMMARY_ATTEMPTS the run fails rather
        than continue on it. The rejected answers' cost goes with the next action's `discarded`.
        """
        replaces_from, replaces_to = choose_cut(context)
        request = render_request(summarization_context(context, replaces_from, replaces_to))
        for _ in range(SUMMARY_ATTEMPTS):
            try:
                response, stopped = await self._unless_stopped(lambda: self.summarizer.complete(request))
            except ModelError as exc:
                return self._finish("failed", error=f"summarization failed: {exc}")
            if stopped:
                return None  # the fold sees the stop
            problem = summary_problem(response.text, response.stop_reason)
            if problem is None:
                break
            log.warning("%s: summary rejected: %s", self.stream_id, problem)
            self._discarded.append(DiscardedAnswer(
                model=response.model, usage=response.usage, cost_usd=cost_usd(response.model, response.usage),
                latency_ms=response.latency_ms, request_digest=digest(request),
            ))
        else:
            return self._finish("failed", error=f"summarization failed: {problem}, {SUMMARY_ATTEMPTS} times")
        summary = ContextSummarized(
            summary=response.text,
            replaces_from=replaces_from,
            replaces_to=replaces_to,
            tokens_before=estimate_tokens(context),
            model=response.model,
            usage=response.usage,
            request_digest=digest(request),
            prompt_id=PROMPT_ID,
            cost_usd=cost_usd(response.model, response.usage),
        )
        summary = msgspec.structs.replace(summary, tokens_after=estimate_tokens(with_summary(context, summary)))
        try:
            [recorded] = self._append([summary], expected_version=context.version)
        except ConcurrencyError:
            return None  # someone wrote meanwhile; fold again and decide again
        log.info("%s summarized v%d..v%d: ~%d -> ~%d tokens", self.stream_id, replaces_from, replaces_to,
                 summary.tokens_before, summary.tokens_after)
        self._report(recorded)
        return None

    def _observe(self, action_id: str, observed: ToolObserved) -> None:
        observed = msgspec.structs.replace(observed, output=self.redact(observed.output))
        [recorded] = self._append([NewEvent(event=observed, causation_id=action_id)])
        self._report(recorded)

    def _evaluate(self) -> float | None:
        command = self._fold().run.eval_command
        if not command:
            return None
        result = self.workspace.execute("run_command", {"command": command, "timeout": 3600})
        lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("[exit code")]
        try:
            return float(lines[-1].split()[-1])
        except (IndexError, ValueError):
            log.warning("eval command printed no score on its last line: %r", result.output[-200:])
            return None

    # -- ending ----------------------------------------------------------------------

    def _finish(self, status: str, error: str = "", answer: str = "", score: float | None = None) -> RunFinished:
        finished = RunFinished(status=status, final_answer=answer, score=score, error=self.redact(error))
        [recorded] = self._append([finished])
        self._report(recorded)
        return finished

    # -- helpers ---------------------------------------------------------------------

    def _record_action(self, context: Context, request: dict, response: ModelResponse) -> RecordedEvent | None:
        """Append the answer if the request it answers is still what the log says the model sees.

        Events that change nothing the model sees (a judge's verdict, a person's reject or
        approve) may land while it thinks; the answer still fits and is kept. A human message
        changes the request: the answer is dropped (None) and the model is asked again.
        """
        request_digest = digest(request)
        expected = context.version
        while True:
            try:
                event = _acted(response, request_digest, self._discarded)
                [acted] = self._append([event], expected_version=expected)
                self._discarded = []
                return acted
            except ConcurrencyError:
                now = self._fold()
                if now.finished is not None or digest(render_request(now)) != request_digest:
                    return None
                expected = now.version

    def _append(self, new_events: list, expected_version: int | ExpectedVersion = ANY, actor: str = "agent") -> list[RecordedEvent]:
        """Every write of the agent goes through here: none once its lease is lost."""
        if self._hold is not None:
            self._hold.check()
        return self.store.append(self.stream_id, new_events, expected_version=expected_version, actor=actor)

    def _fold(self) -> Context:
        return fold(self.store.read(self.stream_id))

    def _report(self, recorded: RecordedEvent) -> None:
        if self.on_step is None:
            return
        context = self._fold()
        self.on_step(StepReport(self.stream_id, context.steps, estimate_tokens(context), _describe(recorded)))


def _acted(response: ModelResponse, context_digest: str, discarded: list[DiscardedAnswer]) -> AgentActed:
    return AgentActed(
        model=response.model,
        text=response.text,
        reasoning=response.reasoning,
        reasoning_signature=response.reasoning_signature,
        blocks=list(response.blocks),
        tool_calls=list(response.tool_calls),
        stop_reason=response.stop_reason,
        usage=response.usage,
        latency_ms=response.latency_ms,
        context_digest=context_digest,
        cost_usd=cost_usd(response.model, response.usage),
        discarded=list(discarded),
    )


def _observed(call: ToolCall, observation: Observation) -> ToolObserved:
    return ToolObserved(
        tool_call_id=call.id,
        tool_name=call.name,
        output=observation.output,
        is_error=observation.is_error,
        exit_code=observation.exit_code,
        duration_ms=observation.duration_ms,
        truncated=observation.truncated,
        original_chars=observation.original_chars,
        origin=observation.origin,
    )


def _describe(recorded: RecordedEvent) -> str:
    event = recorded.event
    if isinstance(event, AgentActed):
        return ", ".join(call.name for call in event.tool_calls) or "(no tool call)"
    if isinstance(event, ToolObserved):
        return ("error: " if event.is_error else "") + event.output[:60].replace("\n", " ")
    return recorded.kind


def _output_limit_changed_since_end(recorded: list[RecordedEvent]) -> bool:
    """Whether a `RunReconfigured` changed max_output_tokens after the run's last end."""
    for item in reversed(recorded):
        if isinstance(item.event, RunFinished):
            return False
        if isinstance(item.event, RunReconfigured) and item.event.max_output_tokens is not None:
            return True
    return False


def _is_stop(event: object) -> bool:
    return isinstance(event, HumanIntervened) and event.kind == "stop"


def _submitted_answer(recorded: list[RecordedEvent]) -> str | None:
    """The answer of a successful finish() in the latest action, when no RunFinished followed it.

    That is a run whose process died after the agent finished and before the run's end was
    recorded (the eval command can take long): it must end now, not ask the model again.
    A branch forked after the finish is a new attempt, so it does not count.
    """
    succeeded: set[str] = set()
    for item in reversed(recorded):
        event = item.event
        if isinstance(event, (RunFinished, BranchCreated)):
            return None
        if isinstance(event, ToolObserved) and not event.is_error:
            succeeded.add(event.tool_call_id)
        if isinstance(event, AgentActed):
            finish = next((c for c in event.tool_calls if c.name == "finish" and c.id in succeeded), None)
            return None if finish is None else str(finish.arguments.get("answer", ""))
    return None


def _should_summarize(context: Context) -> bool:
    """Over the threshold, with something to cut, and an action since the last summary.

    The last condition stops a loop of summaries when the recent turns alone are over the
    threshold: then the request goes out as it is, and the model says if it is too long.
    """
    return (
        context.last_usage is not None
        and estimate_tokens(context) > context.run.summary_threshold
        and choose_cut(context) is not None
    )


def active_seconds(recorded: Sequence[RecordedEvent]) -> float:
    """The time the model and the tools worked in `recorded`: what a time limit counts.

    Not the wall clock since the start, so a crash and the night before `resume` cost
    nothing: each answer's latency (dropped answers included) plus each tool call's duration.
    """
    total_ms = 0.0
    for r in recorded:
        if isinstance(r.event, AgentActed):
            total_ms += r.event.latency_ms + sum(d.latency_ms for d in r.event.discarded)
        elif isinstance(r.event, ToolObserved):
            total_ms += r.event.duration_ms
    return total_ms / 1000


def _end_reason(context: Context, recorded: list[RecordedEvent]) -> tuple[str, str] | None:
    """Why the run must end now, if it must: a person's stop, or a budget.

    Budgets count from the run's start, or from the fork for a branch continued live.
    """
    run: RunStarted = context.run
    if context.stopped:
        return "stopped", ""
    start = max(i for i, r in enumerate(recorded) if isinstance(r.event, (RunStarted, BranchCreated)))
    since = recorded[start:]
    steps = sum(isinstance(r.event, AgentActed) for r in since)
    if run.max_steps is not None and steps >= run.max_steps:
        return "budget_exhausted", f"reached max_steps={run.max_steps}"
    if run.time_limit is not None:
        if active_seconds(since) >= run.time_limit:
            return "budget_exhausted", f"reached time_limit={run.time_limit:g}s of active time"
    if run.token_budget is not None:
        usage = [r.event.usage for r in since if isinstance(r.event, (AgentActed, ContextSummarized))]
        usage += [d.usage for r in since if isinstance(r.event, AgentActed) for d in r.event.discarded]
        spent = sum(u.prompt_tokens + u.output_tokens for u in usage)
        if spent >= run.token_budget:
            return "budget_exhausted", f"spent {spent} tokens of token_budget={run.token_budget}"
    return None
