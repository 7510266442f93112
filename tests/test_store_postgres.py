"""PostgreSQL-only guarantees: positions gapless and in commit order under concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from apollo_es.stores.base import Store

from conftest import make_events


@pytest.fixture
def backend() -> str:
    return "postgres"


def test_concurrent_appends_and_branches_keep_positions_contiguous(store_factory: Callable[..., Store]) -> None:
    store = store_factory(pool_size=8)
    store.append("root", make_events(3))
    seen: list[int] = []
    tail = threading.Thread(target=lambda: seen.extend(r.position for r in store.subscribe(idle_timeout=1.0)))
    tail.start()

    def write(n: int) -> None:
        for i in range(10):
            store.append(f"run-{n}", make_events(3, start=i * 3))
            store.branch("root", 2)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    tail.join()
    total = 3 + 8 * 10 * (3 + 1)
    assert [r.position for r in store.read_all()] == list(range(1, total + 1))
    assert seen == list(range(1, total + 1))  # the tailing reader skipped nothing
    assert len({s.stream_id for s in store.streams()}) == 1 + 8 + 80
    assert store.verify().ok
