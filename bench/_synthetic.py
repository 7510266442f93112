"""Synthetic long runs for the benchmarks: realistic sizes, deterministic content."""

from __future__ import annotations

import random

from events import AgentActed, ContextSummarized, Event, HumanIntervened, RunStarted, ToolCall, ToolObserved, ToolSpec, Usage
from apollo_es.tools import TOOL_SPECS

_WORDS = (
    "loss accuracy epoch checkpoint learning rate warmup batch size gradient norm tokenizer dataset "
    "validation split baseline ablation seed config training job session output log metric eval "
    "the model diverged after step so we lower the rate and resume from the last checkpoint"
).split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def synthetic_run(steps: int = 2_500, *, summaries: int = 3, seed: int = 0, reasoning: bool = False,
                  guidance: int = 0) -> list[Event]:
    """A ReAct run of `steps` actions, each with a 1-4 KB observation, and evenly spaced summaries.

    Each summary replaces the older half of what the context holds at that point, as the
    live summarizer does. `reasoning` gives every action a 40-120-word thought; `guidance`
    spreads that many human guidance messages evenly over the run (offset from the
    summaries by half a spacing).
    """
    rng = random.Random(seed)
    tools = [ToolSpec(**spec) for spec in TOOL_SPECS]
    events: list[Event] = [
        RunStarted(task_id="synthetic", task=_text(rng, 200), system_prompt=_text(rng, 150), tools=tools,
                   model="synthetic-model", provider="anthropic")
    ]
    every = steps // (summaries + 1) if summaries else steps + 1
    guide_every = steps // guidance if guidance else steps + 1
    covered_to = 1  # versions 2..covered_to are already summarized away
    for step in range(1, steps + 1):
        if step % guide_every == guide_every // 2:
            events.append(HumanIntervened(annotator="bench", kind="guidance", message=_text(rng, 30)))
        call = ToolCall(id=f"call_{step}", name="run_command", arguments={"command": f"python3 train.py --step {step}"})
        thought = _text(rng, rng.randint(40, 120)) if reasoning else ""
        events.append(AgentActed(model="synthetic-model", text=_text(rng, rng.randint(10, 60)), reasoning=thought,
                                 tool_calls=[call], stop_reason="tool_use",
                                 usage=Usage(input_tokens=1_000 + 40 * step, output_tokens=80)))
        events.append(ToolObserved(tool_call_id=call.id, tool_name="run_command", exit_code=0,
                                   output=_text(rng, rng.randint(150, 600))))
        if step % every == 0 and step // every <= summaries:
            version = len(events)
            middle = covered_to + (version - covered_to) // 2
            while not isinstance(events[middle - 1], ToolObserved):  # end on an observation: a call keeps its result
                middle -= 1
            events.append(ContextSummarized(summary=_text(rng, 400), replaces_from=2, replaces_to=middle,
                                            tokens_before=90_000, tokens_after=45_000, model="synthetic-model"))
            covered_to = middle
    return events
