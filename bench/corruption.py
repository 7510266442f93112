"""Benchmark of `verify` against damage to the file: one flipped bit in an index page.

    python bench/corruption.py [--smoke] [--out DIR]

A template store (8 runs x 100 events, closed, WAL checkpointed) gets one bit flipped in a
page of one of the `events` table's indexes, per trial, at a random offset of the page's
cell area. A trial is *damaging* when reading some run afterwards returns other rows than
before the flip (or raises). For each damaging trial:
- baseline: the chain walk alone (what `verify` was: hash chain, positions, versions,
  branch records; `EventStore._walk`);
- ours: `verify()` as it is now (SQLite's `integrity_check`, the walk, every stream read
  through its index).
Measured: the share of damaging flips each one reports. Target: ours / baseline >= 1 and
ours = 100%. A flip SQLite cannot notice at all (a torn WAL frame, which it skips) is out of
reach of both: see the README's "What no application can see".
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apollo_es import EventStore
from apollo_es.errors import ApolloError
from bench._common import Row, Target, environment, log, parse_args, report
from bench._synthetic import synthetic_run

RUNS, STEPS = 8, 50


def template(path: Path) -> dict[str, list[str]]:
    """The store, and each run's event ids as read from it."""
    with EventStore(path) as store:
        for i in range(RUNS):
            store.append(f"run-{i}", synthetic_run(STEPS, summaries=0, seed=i), actor="agent")
        store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {f"run-{i}": [r.event_id for r in store.read(f"run-{i}")] for i in range(RUNS)}


def index_pages(path: Path) -> tuple[int, list[int]]:
    """The page size and the numbers of every page of the events table's indexes."""
    with EventStore(path, read_only=True) as store:
        page_size = store.query("PRAGMA page_size")[0][0]
        names = [n for (n,) in store.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")]
        pages = [p for name in names for (p,) in store.query("SELECT pageno FROM dbstat WHERE name = ?", [name])]
    return page_size, sorted(pages)


def trial(original: Path, work: Path, rng: random.Random, page_size: int, pages: list[int],
          expected: dict[str, list[str]]) -> tuple[bool, bool, bool]:
    """(damaging, found by the walk alone, found by verify) for one flipped bit."""
    shutil.copy(original, work)
    data = bytearray(work.read_bytes())
    page = rng.choice(pages)
    offset = (page - 1) * page_size + rng.randrange(12, page_size)
    data[offset] ^= 1 << rng.randrange(8)
    work.write_bytes(bytes(data))
    try:
        with EventStore(work, read_only=True) as store:
            try:
                damaging = any([r.event_id for r in store.read(run)] != ids for run, ids in expected.items())
            except ApolloError:
                damaging = True
            walk = not store._walk(None).ok
            full = not store.verify().ok
    except ApolloError:  # the file no longer opens: everyone notices
        return True, True, True
    return damaging, walk, full


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    trials = 60 if args.smoke else 400
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="apollo-bench-") as name:
        tmp = Path(name)
        original = tmp / "template.db"
        expected = template(original)
        page_size, pages = index_pages(original)
        log(f"{trials} single-bit flips in {len(pages)} index pages ...")
        results = [trial(original, tmp / "work.db", rng, page_size, pages, expected) for _ in range(trials)]
    damaging = [r for r in results if r[0]]
    walk_found = sum(r[1] for r in damaging)
    verify_found = sum(r[2] for r in damaging)
    count = max(len(damaging), 1)
    rows = [Row(
        key="index_flips", name="Damaging index bit flips that verify reports",
        baseline_label="the chain walk alone (verify before)", ours_label="verify: integrity_check, walk, index reads",
        conditions=f"{trials} flips, {len(damaging)} of them change what a read returns; {RUNS} runs x {2 * STEPS + 1} events",
        unit="% of damaging flips", baseline=max(100 * walk_found / count, 1e-9), ours=100 * verify_found / count,
        target=Target(">=", 1.0),
        details={"trials": trials, "damaging": len(damaging), "found_by_walk": walk_found, "found_by_verify": verify_found,
                 "silent_before": len(damaging) - walk_found, "silent_after": len(damaging) - verify_found},
    )]
    path = report("corruption", "apollo-es verify against a damaged file", rows, environment(["apollo-es"]),
                  out_dir=args.out, parameters={"smoke": args.smoke, "trials": trials})
    log(f"wrote {path}")
    return 0 if verify_found == len(damaging) else 1


if __name__ == "__main__":
    sys.exit(main())
