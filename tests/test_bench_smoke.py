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


def test_store_benchmark_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "store.py"), "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    result = json.loads((tmp_path / "store.json").read_text())
    assert result["benchmark"] == "store"
    assert result["parameters"]["smoke"] is True
    env = result["environment"]
    assert env["python"] and env["sqlite"] and env["cpu_count"]
    assert env["libraries"]["eventsourcing"] and env["libraries"]["apollo-es"]

    rows = {row["key"]: row for row in result["rows"]}
    assert set(rows) == ROW_KEYS
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
    assert "synchronous=NORMAL" in rows["batched_append"]["conditions"]
    assert "synchronous=FULL" in rows["single_append_full"]["conditions"]


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
