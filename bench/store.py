"""Benchmark of the event store: appends, branching and reading, each against a baseline.

    python bench/store.py [--smoke] [--out DIR]

1. Batched appends of realistic events (1-4 KB), hash chain on, against the eventsourcing
   library's SQLite application recorder appending the same payloads in batches of the same
   size; the baseline's timing includes msgspec-encoding each event, as ours does. Both on
   WAL with synchronous=NORMAL (set on eventsourcing's connections, read back from both).
   Ours checkpoints the WAL on a background thread (apollo_es/wal.py), eventsourcing inside
   the commit that crosses SQLite's threshold; each of our timed windows ends by waiting for
   the checkpoints its appends asked for. Target: ours/baseline >= 1 (events/s).
2. Single-event appends, one transaction each, both stores, at synchronous=NORMAL and FULL.
   No target.
3. `branch()` at version 10 vs at version 100,000 of one stream. Target: ratio <= 2.
4. `read()` of a 2,500-event stream (rows decoded into events) vs a raw SELECT + fetchall of
   the same rows and columns. Target: time ratio <= 3.

Every store is a file in a fresh temporary directory. Times are medians (perf_counter) of
several repetitions after a warm-up; baseline and ours alternate within a repetition loop.
`--smoke` shrinks every size so the script runs in seconds; its timings mean nothing.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import statistics
import string
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
)

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apollo_es import NO_STREAM, EventStore
from bench._common import (
    Row,
    Target,
    compare_seconds,
    environment,
    filesystem_of,
    log,
    parse_args,
    report,
    timed,
)
from events import AgentActed, Event, ToolCall, ToolObserved, Usage

# -- sizes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    batch: int  # events per append transaction (1.)
    batched_events: int  # events appended per timed repetition (1.)
    batched_repeat: int
    single_events: int  # one-event transactions per timed repetition, synchronous=NORMAL (2.)
    single_events_full: int  # the same at synchronous=FULL, where every commit waits for fsync
    single_repeat: int
    long_stream: int  # length of the stream branched from (3.)
    early_fork: int
    branch_calls: int  # branch() calls timed at each fork point
    read_stream: int  # length of the stream read back (4.)
    read_repeat: int


FULL_SIZES = Sizes(
    batch=100,
    batched_events=5_000,
    batched_repeat=21,  # one repetition takes 0.2 s; this machine varies 20% between two of them
    single_events=1_000,
    single_events_full=300,
    single_repeat=5,
    long_stream=100_000,
    early_fork=10,
    branch_calls=300,
    read_stream=2_500,
    read_repeat=15,
)
SMOKE_SIZES = Sizes(
    batch=20,
    batched_events=100,
    batched_repeat=2,
    single_events=20,
    single_events_full=10,
    single_repeat=2,
    long_stream=300,
    early_fork=10,
    branch_calls=10,
    read_stream=100,
    read_repeat=3,
)
SEED = 20251031


# -- realistic events -------------------------------------------------------------------

_WORDS = (
    "the test fails because the fixture opens the database before the migration runs so we "
    "need to move the call into setup and check that the schema version matches what the "
    "code expects then rerun the suite with verbose output to confirm nothing else broke "
    "look at the traceback which points at line in module handler where a None value reaches "
    "the parser I will read the file first and then patch the function signature"
).split()
_TOOLS = ("bash", "str_replace_based_edit_tool", "read_file", "search")
_COMMANDS = ("pytest -x -q tests/", "git diff --stat", "ls -la src/", "grep -rn 'def parse' src/", "python -m build")


def realistic_events(count: int, seed: int = SEED) -> list[Event]:
    """A run's worth of alternating `AgentActed` / `ToolObserved` events, 1-4 KB encoded each."""
    rng = random.Random(seed)
    made: list[Event] = []
    for i in range(count):
        size = rng.randint(1024, 4096)
        made.append(_agent_acted(rng, size) if i % 2 == 0 else _tool_observed(rng, size, made[-1]))
    return made


def _agent_acted(rng: random.Random, size: int) -> AgentActed:
    calls = [
        ToolCall(
            id=f"toolu_{rng.getrandbits(96):024x}",
            name=rng.choice(_TOOLS),
            arguments={"command": rng.choice(_COMMANDS), "path": f"src/module_{rng.randint(1, 40)}.py"},
        )
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3)))
    ]
    bare = AgentActed(
        model="claude-sonnet-4-5",
        tool_calls=calls,
        stop_reason="tool_use" if calls else "end_turn",
        usage=Usage(input_tokens=rng.randint(2_000, 120_000), output_tokens=rng.randint(50, 2_000)),
        latency_ms=round(rng.uniform(300, 9_000), 1),
        context_digest=f"{rng.getrandbits(256):064x}",
    )
    room = size - _encoded_size(bare)
    split = rng.randint(room // 4, 3 * room // 4)
    return msgspec.structs.replace(bare, reasoning=_prose(rng, split), text=_prose(rng, room - split))


def _tool_observed(rng: random.Random, size: int, previous: Event) -> ToolObserved:
    calls = previous.tool_calls if isinstance(previous, AgentActed) else []
    exit_code = rng.choice((0, 0, 0, 1, 2))
    bare = ToolObserved(
        tool_call_id=calls[0].id if calls else f"toolu_{rng.getrandbits(96):024x}",
        tool_name=calls[0].name if calls else "bash",
        output="",
        is_error=exit_code != 0,
        exit_code=exit_code,
        duration_ms=round(rng.uniform(5, 20_000), 1),
    )
    return msgspec.structs.replace(bare, output=_command_output(rng, size - _encoded_size(bare)))


def _prose(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = -1
    while length < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[: max(chars, 0)]


def _command_output(rng: random.Random, encoded_chars: int) -> str:
    """Lines of log-like output whose JSON encoding (each newline takes 2 bytes) fills `encoded_chars`."""
    lines, used = [], 0
    while used < encoded_chars:
        line = rng.choice(
            (
                f"tests/test_{rng.choice(_WORDS)}.py::test_{rng.choice(_WORDS)} PASSED [{rng.randint(0, 100):3d}%]",
                f"src/module_{rng.randint(1, 40)}.py:{rng.randint(1, 900)}: {' '.join(rng.sample(_WORDS, 6))}",
                f"-rw-r--r-- 1 dev dev {rng.randint(100, 99_999):6d} Oct 31 12:{rng.randint(0, 59):02d} "
                + "".join(rng.choices(string.ascii_lowercase, k=10)),
            )
        )
        lines.append(line)
        used += len(line) + 2
    output = "\n".join(lines)
    while (excess := len(msgspec.json.encode(output)) - 2 - encoded_chars) > 0:
        output = output[:-excess]
    return output


def _encoded_size(event: Event) -> int:
    return len(msgspec.json.encode(event))


# -- the baseline: eventsourcing's SQLite recorder --------------------------------------


class _PragmaPool(SQLiteConnectionPool):
    """eventsourcing's pool sets WAL but leaves `synchronous` at SQLite's default (FULL here);
    this one sets it on every connection it opens, so both stores run at the same durability."""

    def __init__(self, *, db_name: str, synchronous: str) -> None:
        self.synchronous = synchronous
        super().__init__(db_name=db_name)

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA synchronous = {self.synchronous}")
        return connection


class EventsourcingBaseline:
    """`SQLiteApplicationRecorder` (what an eventsourcing Application uses on SQLite: one
    table, per-aggregate versions, a global rowid order), fed the same msgspec payloads."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.datastore = SQLiteDatastore(str(path), originator_id_type="text")
        self.datastore.pool.close()  # never opened a connection; replaced by one that sets the pragma
        self.datastore.pool = _PragmaPool(db_name=str(path), synchronous=synchronous)
        self.recorder = SQLiteApplicationRecorder(self.datastore)
        self.recorder.create_table()

    def append(self, stream_id: str, version: int, new_events: Sequence[Event]) -> None:
        """Append after `version`; the (stream, version) primary key refuses a concurrent writer."""
        self.recorder.insert_events(
            [
                StoredEvent(
                    originator_id=stream_id,
                    originator_version=version + offset,
                    topic=f"events.kinds:{type(event).__name__}",
                    state=msgspec.json.encode(event),
                )
                for offset, event in enumerate(new_events, 1)
            ]
        )

    def durability(self) -> str:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA journal_mode")
            journal = cursor.fetchone()[0]
            cursor.execute("PRAGMA synchronous")
            return _durability(journal, cursor.fetchone()[0])

    def close(self) -> None:
        self.datastore.close()


def our_durability(store: EventStore) -> str:
    journal = store.connection.execute("PRAGMA journal_mode").fetchone()[0]
    return _durability(journal, store.connection.execute("PRAGMA synchronous").fetchone()[0])


def _durability(journal_mode: str, synchronous: int) -> str:
    return f"{journal_mode.upper()}, synchronous={('OFF', 'NORMAL', 'FULL', 'EXTRA')[synchronous]}"


def same_durability(store: EventStore, baseline: EventsourcingBaseline) -> str:
    """The durability both stores run at, read back from their connections; refuse a mismatch."""
    ours, theirs = our_durability(store), baseline.durability()
    if ours != theirs:
        raise SystemExit(f"durability differs: ours {ours}, eventsourcing {theirs}")
    return f"both {ours}"


# -- 1. batched appends -----------------------------------------------------------------


def batched_appends(tmp: Path, sizes: Sizes, payload: list[Event]) -> Row:
    store = EventStore(tmp / "batched-ours.db", synchronous="NORMAL")
    baseline = EventsourcingBaseline(tmp / "batched-eventsourcing.db", synchronous="NORMAL")
    durability = same_durability(store, baseline)
    runs = itertools.count()
    batches = [(start, payload[start : start + sizes.batch]) for start in range(0, len(payload), sizes.batch)]

    def ours() -> None:
        stream = f"run-{next(runs)}"
        for start, batch in batches:
            store.append(stream, batch, expected_version=start or NO_STREAM, actor="agent")
        store.wait_for_checkpoints()  # the WAL checkpoints these appends caused count against us

    def theirs() -> None:
        stream = f"run-{next(runs)}"
        for start, batch in batches:
            baseline.append(stream, start, batch)

    base_s, ours_s = compare_seconds(theirs, ours, repeat=sizes.batched_repeat)
    verified = store.verify()
    if not verified.ok:
        raise SystemExit(f"hash chain broken after the append benchmark: {verified}")
    store.close()
    baseline.close()
    return Row(
        key="batched_append",
        name=f"Batched appends, {sizes.batch} events/transaction",
        baseline_label="eventsourcing SQLiteApplicationRecorder (msgspec-encoded StoredEvents)",
        ours_label="EventStore.append (validated, hash-chained, version-checked)",
        conditions=(
            f"{durability}; {len(payload):,} events of 1-4 KB per repetition, median of {sizes.batched_repeat}; "
            f"our WAL checkpoints on a background thread, waited for inside each repetition"
        ),
        unit="events/s",
        baseline=len(payload) / base_s,
        ours=len(payload) / ours_s,
        target=Target(">=", 1.0),
        details={"events_per_repetition": len(payload), "batch": sizes.batch, "chain_verified": verified.events_checked},
    )


# -- 2. single-event appends ------------------------------------------------------------


def single_appends(tmp: Path, sizes: Sizes, payload: list[Event], synchronous: str) -> Row:
    count = sizes.single_events if synchronous == "NORMAL" else sizes.single_events_full
    store = EventStore(tmp / f"single-{synchronous}-ours.db", synchronous=synchronous)
    baseline = EventsourcingBaseline(tmp / f"single-{synchronous}-eventsourcing.db", synchronous=synchronous)
    durability = same_durability(store, baseline)
    runs = itertools.count()
    events = payload[:count]

    def ours() -> None:
        stream = f"run-{next(runs)}"
        for version, event in enumerate(events):
            store.append(stream, [event], expected_version=version or NO_STREAM, actor="agent")
        store.wait_for_checkpoints()

    def theirs() -> None:
        stream = f"run-{next(runs)}"
        for version, event in enumerate(events):
            baseline.append(stream, version, [event])

    base_s, ours_s = compare_seconds(theirs, ours, repeat=sizes.single_repeat)
    store.close()
    baseline.close()
    return Row(
        key=f"single_append_{synchronous.lower()}",
        name="Single-event appends, one transaction each",
        baseline_label="eventsourcing SQLiteApplicationRecorder",
        ours_label="EventStore.append",
        conditions=(
            f"{durability}; {count:,} appends per repetition, median of {sizes.single_repeat}; "
            f"our background WAL checkpoints waited for inside each repetition"
        ),
        unit="events/s",
        baseline=count / base_s,
        ours=count / ours_s,
        details={"appends_per_repetition": count},
    )


# -- 3. branch() early vs late ----------------------------------------------------------


def branching(tmp: Path, sizes: Sizes, payload: list[Event]) -> Row:
    store = EventStore(tmp / "branch.db", synchronous="NORMAL")
    log(f"  building a {sizes.long_stream:,}-event stream ...")
    build_s = timed(lambda: _fill(store, "long-run", sizes.long_stream, payload))
    late_fork = sizes.long_stream
    samples: dict[int, list[float]] = {sizes.early_fork: [], late_fork: []}
    for _ in range(5):  # warm-up
        for fork in samples:
            store.branch("long-run", fork, reason="warm-up")
    for _ in range(sizes.branch_calls):  # alternate, so both points see the same number of siblings
        for fork, times in samples.items():
            times.append(timed(lambda: store.branch("long-run", fork, reason="try another plan")))
    durability = our_durability(store)
    store.close()
    early_ms = statistics.median(samples[sizes.early_fork]) * 1000
    late_ms = statistics.median(samples[late_fork]) * 1000
    return Row(
        key="branch",
        name="branch() of a long stream",
        baseline_label=f"fork at version {sizes.early_fork}",
        ours_label=f"fork at version {late_fork:,}",
        conditions=f"{durability}; median of {sizes.branch_calls} calls at each point, interleaved",
        unit="ms/call",
        baseline=early_ms,
        ours=late_ms,
        target=Target("<=", 2.0),
        details={"stream_events": sizes.long_stream, "build_seconds": build_s, "calls_per_point": sizes.branch_calls},
    )


def _fill(store: EventStore, stream_id: str, count: int, payload: list[Event], batch: int = 1000) -> None:
    """Append `count` events to a new stream, cycling through `payload`, in big batches."""
    for start in range(0, count, batch):
        chunk = [payload[i % len(payload)] for i in range(start, min(start + batch, count))]
        store.append(stream_id, chunk, expected_version=start or NO_STREAM, actor="agent")


# -- 4. read() vs raw SELECT ------------------------------------------------------------

_ROW_COLUMNS = (
    "position, stream_id, version, event_id, kind, schema, recorded_at, actor, causation_id, payload, prev_hash, hash"
)


def reading(tmp: Path, sizes: Sizes, payload: list[Event]) -> Row:
    path = tmp / "read.db"
    store = EventStore(path, synchronous="NORMAL")
    _fill(store, "run-read", sizes.read_stream, payload)
    raw = sqlite3.connect(path)
    query = f"SELECT {_ROW_COLUMNS} FROM events WHERE stream_id = ? ORDER BY version"

    def ours() -> None:
        assert len(store.read("run-read")) == sizes.read_stream

    def select() -> None:
        assert len(raw.execute(query, ("run-read",)).fetchall()) == sizes.read_stream

    raw_s, ours_s = compare_seconds(select, ours, repeat=sizes.read_repeat, warmup=2)
    durability = our_durability(store)
    raw.close()
    store.close()
    return Row(
        key="read",
        name=f"Reading a {sizes.read_stream:,}-event stream",
        baseline_label="raw SELECT of the same rows and columns, fetchall (sqlite3)",
        ours_label="EventStore.read (decoded into RecordedEvents)",
        conditions=f"{durability}; file in the OS page cache (warm); median of {sizes.read_repeat}",
        unit="ms",
        baseline=raw_s * 1000,
        ours=ours_s * 1000,
        target=Target("<=", 3.0),
        details={"events": sizes.read_stream},
    )


# -- main -------------------------------------------------------------------------------


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    env = environment(["apollo-es", "eventsourcing", "msgspec"])
    payload = realistic_events(sizes.batched_events)
    payload_bytes = [_encoded_size(event) for event in payload]
    parameters = {
        "smoke": args.smoke,
        "seed": SEED,
        **asdict(sizes),
        "payload_bytes": {
            "min": min(payload_bytes),
            "mean": round(statistics.fmean(payload_bytes)),
            "max": max(payload_bytes),
        },
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="apollo-bench-") as tmp_name:
        tmp = Path(tmp_name)
        parameters["tmp_dir"] = tmp_name
        parameters["tmp_filesystem"] = filesystem_of(tmp)
        log("1. batched appends ...")
        rows.append(batched_appends(tmp, sizes, payload))
        for synchronous in ("NORMAL", "FULL"):
            log(f"2. single-event appends, synchronous={synchronous} ...")
            rows.append(single_appends(tmp, sizes, payload, synchronous))
        log("3. branch() early vs late ...")
        rows.append(branching(tmp, sizes, payload))
        log("4. read() vs raw SELECT ...")
        rows.append(reading(tmp, sizes, payload))
    path = report("store", "apollo-es EventStore benchmark", rows, env, out_dir=args.out, parameters=parameters)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
