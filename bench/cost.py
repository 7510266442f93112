"""Benchmark of what a long APOLLO run costs on Anthropic's API, with prompt caching and without.

    python bench/cost.py [--smoke] [--out DIR]

The run has the shape the paper reports: 2,500 steps over 48 hours (a step every ~69 s), the
context growing by ~80 tokens a step from a ~5k-token start to the 100k summary threshold,
where the older half is summarized (3 summaries). Every request is rendered by the real
renderer (`projections.requests`) from the real fold, once with `prompt_caching` on and once
off, and billed as Anthropic documents: a breakpoint writes its prefix to the cache for 5
minutes (refreshed when read); a request reads the longest cached prefix ending at one of its
breakpoints or up to 20 blocks before one; the tokens after the last breakpoint are plain
input. Tokens are estimated at 4 characters each (the fold's own estimate); prices are
Anthropic's published ones for Claude Sonnet 4.5 (`apollo_es.models.prices`). Summarization
calls (3) are left out of both columns.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apollo_es.models.prices import DEFAULT_PRICES, cost_usd
from apollo_es.store import RecordedEvent
from apollo_es.tools import TOOL_SPECS
from bench._common import Row, Target, environment, log, parse_args, report
from events import AgentActed, ContextSummarized, RunStarted, ToolCall, ToolObserved, ToolSpec, Usage
from projections.context import CHARS_PER_TOKEN, Folder, estimate_tokens
from projections.requests import render_request
from projections.summarization import choose_cut

MODEL = "claude-sonnet-4-5"
STEP_SECONDS = 48 * 3600 / 2_500
TTL_SECONDS = 300
LOOKBACK_BLOCKS = 20
WORDS = "loss accuracy epoch checkpoint learning rate warmup batch gradient tokenizer dataset split seed eval".split()


def _text(rng: random.Random, tokens: int) -> str:
    words, chars = [], 0
    while chars < tokens * CHARS_PER_TOKEN:
        words.append(rng.choice(WORDS))
        chars += len(words[-1]) + 1
    return " ".join(words)


def requests(steps: int, threshold: int, caching: bool, seed: int = 0) -> list[tuple[dict, int]]:
    """(request body, output tokens) of every action of the run, as the agent would send them."""
    rng = random.Random(seed)
    folder = Folder()
    version = 0

    def add(event) -> None:
        nonlocal version
        version += 1
        folder.add(RecordedEvent(position=version, stream_id="run", version=version, event_id=f"e{version}", kind=type(event).__name__,
                                 schema=1, recorded_at="", actor="agent", causation_id=None, event=event, prev_hash="", hash=""))

    add(RunStarted(task_id="t", task=_text(rng, 1_500), system_prompt=_text(rng, 1_500), tools=[ToolSpec(**s) for s in TOOL_SPECS],
                   model=MODEL, provider="anthropic", summary_threshold=threshold, prompt_caching=caching))
    out = []
    for step in range(1, steps + 1):
        context = folder.context()
        cut = choose_cut(context) if estimate_tokens(context) > threshold else None
        if cut is not None:  # as the agent does: the older half, by its own cut rule
            add(ContextSummarized(summary=_text(rng, 2_000), replaces_from=cut[0], replaces_to=cut[1]))
            context = folder.context()
        body = render_request(context)
        prompt = _tokens(body)
        call = ToolCall(id=f"toolu_{step}", name="run_command", arguments={"command": f"python3 train.py --step {step}"})
        output = rng.randint(20, 50)
        add(AgentActed(model=MODEL, text=_text(rng, output), tool_calls=[call], usage=Usage(input_tokens=prompt, output_tokens=output)))
        add(ToolObserved(tool_call_id=call.id, tool_name="run_command", output=_text(rng, rng.randint(20, 70))))
        out.append((body, output))
    return out


def _tokens(body: dict) -> int:
    return len(json.dumps(body)) // CHARS_PER_TOKEN


def _blocks(body: dict) -> tuple[list[str], list[int], list[int]]:
    """The prompt as Anthropic caches it (tools, system, then each message's blocks): the hash of
    each prefix, its length in tokens, and the indexes of the blocks that carry a breakpoint."""
    system = body.get("system", "")
    parts = [json.dumps(body.get("tools", []), sort_keys=True)]
    marks = []
    for block in system if isinstance(system, list) else [{"type": "text", "text": system}]:
        marks += [len(parts)] if "cache_control" in block else []
        parts.append(json.dumps({k: v for k, v in block.items() if k != "cache_control"}, sort_keys=True))
    for turn in body["messages"]:
        for block in turn["content"]:
            marks += [len(parts)] if "cache_control" in block else []
            parts.append(turn["role"] + json.dumps({k: v for k, v in block.items() if k != "cache_control"}, sort_keys=True))
    digest, hashes, lengths, chars = hashlib.sha256(), [], [], 0
    for part in parts:
        digest.update(part.encode())
        hashes.append(digest.copy().hexdigest())
        chars += len(part)
        lengths.append(chars // CHARS_PER_TOKEN)
    return hashes, lengths, marks


def bill(bodies: list[tuple[dict, int]]) -> Usage:
    """The run's usage as Anthropic would bill it, cache writes and reads included."""
    cache: dict[str, float] = {}
    total = Usage()
    for step, (body, output) in enumerate(bodies):
        now = step * STEP_SECONDS
        hashes, lengths, marks = _blocks(body)
        prompt = lengths[-1]
        hit = -1
        for mark in marks:
            for index in range(mark, max(-1, mark - LOOKBACK_BLOCKS), -1):
                if cache.get(hashes[index], -1) >= now:
                    hit = max(hit, index)
                    break
        read = lengths[hit] if hit >= 0 else 0
        if hit >= 0:
            cache[hashes[hit]] = now + TTL_SECONDS
        written = lengths[max(marks)] - read if marks and max(marks) > hit else 0
        for mark in marks:
            cache[hashes[mark]] = now + TTL_SECONDS
        total += Usage(input_tokens=prompt - read - written, output_tokens=output, cache_read_tokens=read, cache_write_tokens=written)
    return total


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    steps, threshold = (150, 20_000) if args.smoke else (2_500, 100_000)
    log(f"rendering {steps:,} requests with and without caching ...")
    plain, cached = bill(requests(steps, threshold, caching=False)), bill(requests(steps, threshold, caching=True))
    base_cost, our_cost = cost_usd(MODEL, plain), cost_usd(MODEL, cached)
    price = DEFAULT_PRICES["claude-sonnet-4"]
    rows = [
        Row(key="full_price_prompt_tokens", name="prompt tokens billed at the full input price",
            baseline_label="no prompt caching", ours_label="cache_control breakpoints (default)",
            conditions=f"{steps:,} steps, summary threshold {threshold:,}", unit="M tokens",
            baseline=plain.input_tokens / 1e6, ours=max(cached.input_tokens, 1) / 1e6,
            details={"prompt_tokens": plain.prompt_tokens, "cache_read_tokens": cached.cache_read_tokens,
                     "cache_write_tokens": cached.cache_write_tokens}),
        Row(key="cost", name=f"dollar cost of the run's actions ({MODEL})",
            baseline_label="no prompt caching", ours_label="cache_control breakpoints (default)",
            conditions=f"${price.input:g}/M input, ${price.cache_write:g}/M cache write, ${price.cache_read:g}/M cache read, "
                       f"${price.output:g}/M output; a step every {STEP_SECONDS:.0f} s, 5-minute cache",
            unit="USD", baseline=base_cost, ours=our_cost, target=Target("<=", 0.2),
            details={"cheaper_by": base_cost / our_cost, "output_tokens": plain.output_tokens}),
    ]
    path = report("cost", "apollo-es prompt caching: cost of a long run", rows, environment(["apollo-es", "anthropic"]),
                  out_dir=args.out, parameters={"smoke": args.smoke, "steps": steps, "summary_threshold": threshold, "model": MODEL})
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
