"""Audit views over the log: a run's timeline as plain rows.

The store builds the rows (`Store.timeline`); on SQLite they come from the `timeline` view
(apollo_es/schema.py), so what `apollo-es log` prints is exactly what an auditor gets from
`sqlite-utils apollo.db "select * from timeline"`.
"""

from __future__ import annotations

from collections.abc import Sequence

from apollo_es.stores.base import Store
from events.envelope import TimelineRow

__all__ = ["TimelineRow", "timeline"]


def timeline(
    store: Store,
    run_id: str,
    *,
    kinds: Sequence[str] = (),
    actors: Sequence[str] = (),
    since: str | None = None,
    after_version: int = 0,
    limit: int | None = None,
) -> list[TimelineRow]:
    """A run's events (inherited ones included) in version order, filtered.

    `actors` are glob patterns (`human:*`); `since` is an ISO-8601 UTC timestamp in the
    store's format, compared as text; `limit` keeps the newest rows. Raises `StreamNotFound`.
    """
    return store.timeline(run_id, kinds=kinds, actors=actors, since=since, after_version=after_version, limit=limit)
