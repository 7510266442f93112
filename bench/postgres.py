"""SQLite file vs PostgreSQL on this machine: appends/s and read latency, as ratios from one run.

    .venv/bin/python bench/postgres.py [--smoke] [--out DIR] [--server postgresql://root@127.0.0.1:5432/test]

Same events (the test factories' mix, ~0.3-1 KB), same process: single-event appends,
batches of 64, and `read()` of one stream. A database of its own is created on the server and
dropped afterwards. Writes DIR/postgres.json (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psycopg  # noqa: E402

from apollo_es.store import EventStore, open_store  # noqa: E402
from conftest import make_events  # noqa: E402


def measure(store, singles: int, batches: int, reads: int) -> dict[str, float]:
    events = make_events(singles)
    start = time.perf_counter()
    for event in events:
        store.append("single", [event])
    single_s = time.perf_counter() - start
    batch = make_events(64)
    start = time.perf_counter()
    for i in range(batches):
        store.append(f"batch-{i}", batch)
    batch_s = time.perf_counter() - start
    latencies = []
    for _ in range(reads):
        t = time.perf_counter()
        assert len(store.read("single")) == singles
        latencies.append(time.perf_counter() - t)
    assert store.verify().ok
    return {
        "single_appends_per_s": singles / single_s,
        "batched_events_per_s": batches * 64 / batch_s,
        "read_p50_ms": statistics.median(latencies) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs, timings are noise")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--server", default="postgresql://root@127.0.0.1:5432/test")
    args = parser.parse_args()
    singles, batches, reads = (20, 3, 3) if args.smoke else (2000, 100, 50)
    name = f"apollo_es_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            with tempfile.TemporaryDirectory() as tmp, EventStore(Path(tmp) / "bench.db") as sqlite_store:
                sqlite = measure(sqlite_store, singles, batches, reads)
            with open_store(args.server.rsplit("/", 1)[0] + f"/{name}") as pg_store:
                postgres = measure(pg_store, singles, batches, reads)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    result = {
        "benchmark": "postgres",
        "parameters": {"smoke": args.smoke, "single_appends": singles, "batches_of_64": batches, "reads": reads},
        "sqlite_file": sqlite,
        "postgres": postgres,
        "ratio_postgres_over_sqlite": {key: postgres[key] / sqlite[key] for key in sqlite},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "postgres.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
