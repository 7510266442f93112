"""The store benchmark runs end to end at smoke sizes and writes a complete JSON result.

Targets are not asserted: at smoke sizes on a shared machine the timings are noise.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"batched_append", "single_append_normal", "single_append_full", "branch", "read"}


def run_store_smoke(section: str, out: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "store.py"), "--smoke", "--section", section, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def check_rows(result: dict, keys: set[str]) -> dict[str, dict]:
    """The rows by key, each with finite positive figures, its ratio, and a verdict iff a target."""
    rows = {row["key"]: row for row in result["rows"]}
    assert set(rows) == keys
    for key, row in rows.items():
        for field in ("baseline", "ours", "ratio"):
            value = row[field]
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, field, value)
            assert math.isfinite(value) and value > 0, (key, field, value)
        assert math.isclose(row["ratio"], row["ours"] / row["baseline"]), key
        assert row["unit"] and row["conditions"], key
        if row["target"] is None:
            assert row["passed"] is None, key
        else:
            assert row["target"]["op"] in (">=", "<=") and isinstance(row["passed"], bool), key
    return rows


def test_store_benchmark_smoke(tmp_path: Path) -> None:
    run_store_smoke("sqlite", tmp_path)

    result = json.loads((tmp_path / "store.json").read_text())
    assert result["benchmark"] == "store"
    assert result["parameters"]["smoke"] is True
    env = result["environment"]
    assert env["python"] and env["sqlite"] and env["cpu_count"]
    assert env["libraries"]["eventsourcing"] and env["libraries"]["apollo-es"]

    rows = check_rows(result, ROW_KEYS)
    assert "synchronous=NORMAL" in rows["batched_append"]["conditions"]
    assert "synchronous=FULL" in rows["single_append_full"]["conditions"]
    assert not (tmp_path / "store_postgres.json").exists()


def test_store_postgres_benchmark_smoke(tmp_path: Path) -> None:
    """Section 5 at smoke sizes: writer processes against both PostgreSQL recorders, every
    window checked for lost or extra events, the databases it made dropped again."""
    run_store_smoke("postgres", tmp_path)

    result = json.loads((tmp_path / "store_postgres.json").read_text())
    assert result["benchmark"] == "store_postgres" and result["parameters"]["smoke"] is True
    assert result["environment"]["libraries"]["psycopg"]
    parameters = result["parameters"]
    assert "PostgresApplicationRecorder" in parameters["baseline"]
    assert parameters["server"]["synchronous_commit"]
    keys = {f"pg_append_b{batch}_w{writers}" for batch in parameters["batches"] for writers in parameters["writers"]}
    rows = check_rows(result, keys)
    for key, row in rows.items():
        details = row["details"]
        assert (row["target"] is not None) == (details["writers"] == 4), key
        for quantile in ("p50_ms", "p99_ms"):
            figures = details[quantile]
            assert figures["baseline"] > 0 and figures["ours"] > 0, (key, quantile)
            assert math.isclose(figures["ratio"], figures["ours"] / figures["baseline"]), (key, quantile)
        windows = details["windows"]
        assert [w["store"][0].upper() for w in windows] == list(parameters["order"]), key
        for window in windows:
            check = window["check"]
            assert window["events"] == check["appended"] == check["stored"] > 0, (key, check)
            assert check["problems"] == [] and check["lost"] == check["extra"] == 0, (key, check)
            if window["store"] == "ours":
                assert check["positions_gapless"] and check["verify"] == "ok", (key, check)
    assert result["integrity"]["ok"] and result["integrity"]["problems"] == []
    assert result["all_passed"] == all(row["passed"] is not False for row in rows.values())


def run_smoke(script: str, out: Path) -> dict:
    """Run a benchmark at smoke sizes as a subprocess and return its JSON result."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return json.loads((out / script.replace(".py", ".json")).read_text())


def test_replay_and_projection_benchmarks_smoke(tmp_path: Path) -> None:
    for script, keys in (("replay.py", {"state_at", "branch"}), ("projection.py", {"throughput", "memory", "fidelity_tokens", "fidelity_throughput"})):
        rows = {row["key"]: row for row in run_smoke(script, tmp_path)["rows"]}
        assert set(rows) == keys, script
        for row in rows.values():
            assert row["baseline"] > 0 and row["ours"] > 0 and isinstance(row["passed"], bool)


def test_console_benchmark_smoke(tmp_path: Path) -> None:
    rows = {row["key"]: row for row in run_smoke("console.py", tmp_path)["rows"]}
    assert set(rows) == {"startup", "live_update"}
    assert all(row["baseline"] > 0 and row["ours"] > 0 for row in rows.values())
    assert rows["startup"]["passed"] is None and isinstance(rows["live_update"]["passed"], bool)


def test_sandbox_benchmark_smoke(tmp_path: Path) -> None:
    rows = {row["key"]: row for row in run_smoke("sandbox.py", tmp_path)["rows"]}
    assert set(rows) == {"run_command", "added_per_command", "write_file_loop"}
    assert all(row["baseline"] > 0 and row["ours"] > 0 for row in rows.values())
    assert rows["added_per_command"]["baseline"] == 30.0 and isinstance(rows["added_per_command"]["passed"], bool)


def test_cost_benchmark_smoke(tmp_path: Path) -> None:
    rows = {row["key"]: row for row in run_smoke("cost.py", tmp_path)["rows"]}
    assert set(rows) == {"full_price_prompt_tokens", "cost"}
    assert rows["cost"]["details"]["cheaper_by"] > 1 and isinstance(rows["cost"]["passed"], bool)
    details = rows["full_price_prompt_tokens"]["details"]
    assert details["cache_read_tokens"] > details["cache_write_tokens"] > 0


def test_corruption_benchmark_smoke(tmp_path: Path) -> None:
    [row] = run_smoke("corruption.py", tmp_path)["rows"]
    assert row["key"] == "index_flips" and row["ours"] == 100.0 and row["details"]["silent_after"] == 0


def test_postgres_benchmark_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "postgres.py"), "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    result = json.loads((tmp_path / "postgres.json").read_text())
    assert result["benchmark"] == "postgres" and result["parameters"]["smoke"] is True
    assert all(math.isfinite(v) and v > 0 for v in result["ratio_postgres_over_sqlite"].values())
