"""Malformed trajectories: every one is `Error: <file>: <place>: <what>`, never a traceback.

Hypothesis mutates the bundled real files (examples/trajectories) and the OpenHands V1
conversation fixture (as a single-file export) structurally: a node replaced
by another JSON type, deep nesting, a lone surrogate, huge or non-finite numbers, a key
removed. Whatever comes out, importing it either works or raises `TrajectoryImportError`, and
an import that fails writes nothing. The budget is fixed (derandomized, a few dozen examples
per file; `APOLLO_ES_FUZZ_EXAMPLES` raises it) so the test takes seconds in CI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apollo_es import EventStore
from apollo_es.cli import cli
from apollo_es.importers import TrajectoryImportError, import_paths

EXAMPLES = Path(__file__).parent.parent / "examples" / "trajectories"
V1_CONVERSATION = Path(__file__).parent / "data" / "importers" / "openhands-v1" / "5f3c2a1b9d8e4f60a7b1c2d3e4f5a6b7"
FILES = sorted([*EXAMPLES.glob("swe-agent/*.traj"), *EXAMPLES.glob("openhands/*.json")]) + [V1_CONVERSATION]
FORMATS = {".traj": "swe-agent", ".json": "openhands", "": "openhands-v1"}
EXAMPLES_PER_FILE = int(os.environ.get("APOLLO_ES_FUZZ_EXAMPLES", "40"))
"""Raise it for a longer local campaign; CI keeps the fixed budget."""
NESTED = "\x00nested\x00"
"""Stands for a deeply nested value, spliced in after encoding (json.dumps would recurse)."""

REPLACEMENTS = st.one_of(
    st.sampled_from([None, True, 0, -1, 2**70, 1e308, float("inf"), float("nan"), "", "\ud800", [], {}, [[]], {"": {}},
                     NESTED, "x" * 300]),
    st.text(max_size=20),
    st.integers(),
)


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value, as a tuple of keys and indexes (the root is `()`)."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(paths_of(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.extend(paths_of(item, (*prefix, index)))
    return out


def mutate(value: Any, path: tuple, replacement: Any, delete: bool) -> Any:
    if not path:
        return replacement
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if delete and not rest:
            copy.pop(head, None)
        else:
            copy[head] = mutate(value[head], rest, replacement, delete)
        return copy
    copy = list(value)
    if delete and not rest:
        del copy[head]
    else:
        copy[head] = mutate(value[head], rest, replacement, delete)
    return copy


def load(source: Path) -> Any:
    """A file's JSON; a V1 conversation folder's events as the JSON array of an export."""
    if source.is_dir():
        return [json.loads(p.read_text()) for p in sorted((source / "events").glob("event-*.json"))]
    return json.loads(source.read_text())


def encode(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=True)
    return text.replace(json.dumps(NESTED), "[" * 5_000 + "]" * 5_000).encode()


@pytest.mark.parametrize("source", FILES, ids=lambda p: p.name)
def test_mutated_real_files_import_or_fail_cleanly(source, tmp_path_factory):
    original = load(source)
    places = paths_of(original)
    fmt = FORMATS[source.suffix]

    @settings(max_examples=EXAMPLES_PER_FILE, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(index=st.integers(0, len(places) - 1), replacement=REPLACEMENTS, delete=st.booleans())
    @example(index=0, replacement=NESTED, delete=False)  # the cases a longer campaign found, always
    @example(index=len(places) - 1, replacement="\ud800", delete=False)
    @example(index=len(places) - 1, replacement=float("nan"), delete=False)
    @example(index=len(places) // 2, replacement=2**70, delete=False)
    def check(index: int, replacement: Any, delete: bool) -> None:
        place = places[index]
        mutated = mutate(original, place, replacement, delete and bool(place))
        directory = tmp_path_factory.mktemp("fuzz")
        path = directory / f"{source.stem}.json" if source.is_dir() else directory / source.name
        path.write_bytes(encode(mutated))
        with EventStore(directory / "apollo.db") as store:
            try:
                import_paths(store, fmt, [path])
            except TrajectoryImportError as exc:
                assert exc.file == str(path) and exc.reason
                assert store.stats()["events"] == 0
            else:
                assert store.verify().ok

    check()


def test_cli_names_file_place_and_reason_and_writes_nothing(tmp_path):
    good = EXAMPLES / "swe-agent" / "function_calling_simple.traj"
    data = json.loads(good.read_text())
    data["history"][3]["tool_call_ids"] = [["not", "an", "id"]]
    bad = tmp_path / "bad.traj"
    bad.write_text(json.dumps(data))
    db = tmp_path / "apollo.db"
    result = CliRunner().invoke(cli, ["import", "swe-agent", str(good), str(bad), "--db", str(db)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {bad}: $.history[3].tool_call_ids[0]: expected a string, found an array of 3"
    with EventStore(db) as store:
        assert store.stats()["events"] == 0
