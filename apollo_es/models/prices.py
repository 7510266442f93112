"""What a model call cost: a price table, and the arithmetic over `Usage`.

Prices are US dollars per million tokens, from Anthropic's published list: cache writes cost
1.25x the input price (the 5-minute cache) and cache reads 0.1x. A model is priced by the
longest entry its id starts with ("claude-sonnet-4" prices "claude-sonnet-4-5-20250929").
Self-hosted models (GLM-4.5 on vLLM) have no price unless you give one: their cost is None,
not zero. Override or extend the table with a TOML file named by `APOLLO_ES_PRICES`:

    [prices."claude-sonnet-4"]
    input = 3.0
    output = 15.0
    cache_write = 3.75
    cache_read = 0.30
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path

import msgspec

from apollo_es.errors import ApolloError
from events import ActionJudged, AgentActed, ContextSummarized, Event, Usage

__all__ = ["DEFAULT_PRICES", "Price", "cost_usd", "load_prices", "spent_usd"]


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: float
    output: float
    cache_write: float
    cache_read: float


def _anthropic(input: float, output: float) -> Price:
    return Price(input=input, output=output, cache_write=input * 1.25, cache_read=input * 0.1)


DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-5": _anthropic(5.0, 25.0),
    "claude-opus-4": _anthropic(15.0, 75.0),
    "claude-sonnet-4": _anthropic(3.0, 15.0),
    "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-3-5-haiku": _anthropic(0.8, 4.0),
}


def load_prices(path: str | None = None) -> dict[str, Price]:
    """The default table, updated from the TOML file at `path` (default: $APOLLO_ES_PRICES)."""
    path = path or os.environ.get("APOLLO_ES_PRICES")
    return _load(path) if path else DEFAULT_PRICES


@functools.cache
def _load(path: str) -> dict[str, Price]:
    try:
        data = tomllib.loads(Path(path).read_text())
        extra = msgspec.convert(data.get("prices", {}), dict[str, Price])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ApolloError(f"price table {path}: {exc}") from exc
    return {**DEFAULT_PRICES, **extra}


def cost_usd(model: str, usage: Usage, prices: dict[str, Price] | None = None) -> float | None:
    """Dollars `usage` cost on `model`, or None when the table has no price for it."""
    prices = load_prices() if prices is None else prices
    matches = [prefix for prefix in prices if model.startswith(prefix)]
    if not matches:
        return None
    price = prices[max(matches, key=len)]
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_write_tokens * price.cache_write
        + usage.cache_read_tokens * price.cache_read
    ) / 1_000_000


def spent_usd(event: Event) -> float | None:
    """The recorded cost of the model calls behind one event (an action with the answers it
    dropped, a summary, a judge's verdict); None when nothing priced is in it."""
    costs = [event.cost_usd] if isinstance(event, (AgentActed, ContextSummarized, ActionJudged)) else []
    costs += [d.cost_usd for d in event.discarded] if isinstance(event, AgentActed) else []
    known = [c for c in costs if c is not None]
    return sum(known) if known else None
