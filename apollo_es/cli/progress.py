"""One line per step while a run works: what the agent did, how it ended, what it cost.

`apollo-es run` can work for hours; a transient status line alone leaves nothing to scroll
back through. After each recorded event the agent reports, `StepLines` reads what is new
in the log and prints a line for every step whose results are all in (or that the next
step or the run's end closed): version, tool calls with their first argument, exit codes,
tokens and cost.
"""

from __future__ import annotations

from collections.abc import Callable

from apollo_es.store import EventStore, RecordedEvent
from events import AgentActed, ToolCall, ToolObserved

__all__ = ["StepLines", "step_line"]


class StepLines:
    """Prints each finished step of `run_id` once, through `echo`."""

    def __init__(self, store: EventStore, run_id: str, echo: Callable[[str], None]) -> None:
        self._store, self._run_id, self._echo = store, run_id, echo
        self._position = store.last_position()
        self._action: RecordedEvent | None = None
        self._observations: list[ToolObserved] = []

    def __call__(self, *_: object) -> None:
        new = [r for r in self._store.read_all(after=self._position) if r.stream_id == self._run_id]
        for recorded in new:
            self._position = recorded.position
            if isinstance(recorded.event, AgentActed):
                self.flush()
                self._action = recorded
            elif isinstance(recorded.event, ToolObserved) and self._action is not None:
                self._observations.append(recorded.event)
                if len(self._observations) >= max(1, len(self._action.event.tool_calls)):
                    self.flush()

    def flush(self) -> None:
        """Print the step in progress, if any (at the run's end, with what it has)."""
        if self._action is not None:
            self._echo(step_line(self._action, self._observations))
        self._action, self._observations = None, []


def step_line(action: RecordedEvent, observations: list[ToolObserved]) -> str:
    event: AgentActed = action.event
    calls = ", ".join(_call(call) for call in event.tool_calls) or "(answer without a tool call)"
    exits = " ".join(_outcome(o) for o in observations)
    usage = f"{event.usage.prompt_tokens:,}→{event.usage.output_tokens:,} tokens"
    cost = f"${event.cost_usd:.4f}" if event.cost_usd is not None else ""
    return f"v{action.version:<5} " + "  ".join(part for part in (calls, exits, usage, cost) if part)


def _call(call: ToolCall) -> str:
    first = next(iter(call.arguments.values()), "") if call.arguments else ""
    text = " ".join(str(first).split())
    return f"{call.name}({text[:60] + '…' if len(text) > 60 else text})"


def _outcome(observation: ToolObserved) -> str:
    if observation.exit_code is not None:
        return f"exit {observation.exit_code}"
    return "error" if observation.is_error else "ok"
