"""Benchmark of the annotator console's runs index (what keeps the runs page live).

    python bench/console.py [--smoke] [--out DIR]

1. Start-up: the index folds every event of a store with 40 synthetic 2,500-step runs (3
   summaries each) vs folding each stream from scratch with `fold` once. No target: the work
   is the same; this shows what the index adds.
2. Live update: the runs-page row after one new event of a long run, through the index
   (one incremental fold step) vs re-reading and re-folding that run. Target: ratio <= 0.05.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apollo_es import EventStore
from apollo_es.console.runs import RunsIndex
from bench._common import Row, Target, compare_seconds, environment, log, parse_args, report, timed
from bench._synthetic import synthetic_run
from events import AgentActed, ToolCall, ToolObserved, Usage
from projections.context import estimate_tokens, fold


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    runs, steps, repeat, updates = (3, 60, 3, 20) if args.smoke else (40, 2_500, 5, 200)
    run = synthetic_run(steps, summaries=3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="apollo-bench-") as tmp:
        store = EventStore(Path(tmp) / "console.db")
        for r in range(runs):
            for start in range(0, len(run), 500):
                store.append(f"run-{r:03d}", run[start : start + 500], actor="agent")
        total = store.last_position()
        streams = [info.stream_id for info in store.streams()]

        def index_all() -> None:
            index = RunsIndex(store)
            index_all_pages(store, index)
            assert len(index.summaries()) == runs

        def fold_each() -> None:
            for stream_id in streams:
                estimate_tokens(fold(store.read(stream_id)))

        log(f"1. start-up over {total:,} events in {runs} runs ...")
        base_s, ours_s = compare_seconds(fold_each, index_all, repeat=repeat, warmup=1)
        rows.append(Row(
            key="startup", name=f"runs index over a store of {runs} runs x {steps:,} steps",
            baseline_label="fold(store.read(run)) of every run once", ours_label="RunsIndex.apply over read_all pages",
            conditions=f"{total:,} events; warm page cache; median of {repeat}", unit="s",
            baseline=base_s, ours=ours_s, target=None, details={"events": total, "runs": runs},
        ))

        log(f"2. live update after one new event, {updates} events ...")
        index = RunsIndex(store)
        index_all_pages(store, index)
        refold, incremental = [], []
        for i in range(updates):
            call = ToolCall(id=f"live-{i}", name="think", arguments={"thought": f"live step {i}"})
            event = [AgentActed(model="m", tool_calls=[call], usage=Usage(input_tokens=90_000, output_tokens=80))] if i % 2 == 0 else [ToolObserved(tool_call_id=f"live-{i - 1}", output="ok")]
            [recorded] = store.append("run-000", event, actor="agent")
            incremental.append(timed(lambda: index.apply([recorded])))
            refold.append(timed(lambda: estimate_tokens(fold(store.read("run-000")))))
        rows.append(Row(
            key="live_update", name="runs-page row after one new event of a long run",
            baseline_label="re-read and re-fold the run", ours_label="RunsIndex.apply of the one event",
            conditions=f"run of {store.head('run-000'):,} events; median of {updates} new events", unit="ms",
            baseline=statistics.median(refold) * 1000, ours=statistics.median(incremental) * 1000, target=Target("<=", 0.05),
        ))
        store.close()
    path = report("console", "apollo-es console benchmark", rows, environment(["apollo-es", "msgspec"]),
                  out_dir=args.out, parameters={"smoke": args.smoke, "runs": runs, "steps": steps, "summaries": 3})
    log(f"wrote {path}")
    return 0


def index_all_pages(store: EventStore, index: RunsIndex) -> None:
    after = 0
    while page := store.read_all(after=after, limit=1000):
        index.apply(page)
        after = page[-1].position


if __name__ == "__main__":
    sys.exit(main())
