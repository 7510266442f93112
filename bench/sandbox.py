"""Benchmark of the sandbox's cost per tool call: bubblewrap vs `--sandbox none`.

    python bench/sandbox.py [--smoke] [--out DIR]

1. `run_command("true")`: a whole command, process start to observation, in the default
   sandbox (new namespaces, mounts, clean environment) vs unconfined on the host.
2. The added time per command against the issue's budget of 30 ms (a model call takes seconds).
3. A loop of 100 `write_file` calls (the file tools run in the agent's process; both open
   beneath the root with openat2, so this shows the sandbox adds nothing there).
Calls alternate between the two workspaces, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apollo_es.tools import Workspace
from bench._common import Row, Target, compare_seconds, environment, log, parse_args, report
from events import SandboxSpec

BUDGET_MS = 30.0


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    commands, loops = (5, 2) if args.smoke else (200, 20)
    with tempfile.TemporaryDirectory(prefix="apollo-bench-") as tmp:
        workspaces = {}
        for kind in ("none", "bwrap"):
            (Path(tmp) / kind).mkdir()
            workspaces[kind] = Workspace(Path(tmp) / kind, sandbox=SandboxSpec(kind=kind))

        def command(kind: str):
            def go() -> None:
                observation = workspaces[kind].execute("run_command", {"command": "true"})
                assert not observation.is_error, observation.output
            return go

        def writes(kind: str):
            def go() -> None:
                for i in range(100):
                    assert not workspaces[kind].execute("write_file", {"path": f"out/{i}.txt", "content": "x" * 200}).is_error
            return go

        log(f"1. run_command('true'), {commands} times each ...")
        base_s, ours_s = compare_seconds(command("none"), command("bwrap"), repeat=commands, warmup=2)
        added_ms = (ours_s - base_s) * 1000
        log(f"2. 100 write_file calls, {loops} loops each ...")
        write_base, write_ours = compare_seconds(writes("none"), writes("bwrap"), repeat=loops, warmup=1)

    rows = [
        Row(key="run_command", name="run_command('true'), start to observation",
            baseline_label="--sandbox none (bash on the host, clean environment)", ours_label="bubblewrap sandbox (default)",
            conditions=f"median of {commands}, alternating", unit="ms", baseline=base_s * 1000, ours=ours_s * 1000,
            details={"added_ms": added_ms}),
        Row(key="added_per_command", name="time the sandbox adds to one command, against the budget",
            baseline_label=f"budget: {BUDGET_MS:g} ms", ours_label="sandboxed minus unconfined",
            conditions=f"median of {commands}", unit="ms", baseline=BUDGET_MS, ours=max(added_ms, 1e-3),
            target=Target("<=", 1.0)),
        Row(key="write_file_loop", name="100 write_file calls of 200 bytes",
            baseline_label="--sandbox none", ours_label="bubblewrap sandbox (default)",
            conditions=f"median of {loops} loops, alternating; same file tools", unit="ms",
            baseline=write_base * 1000, ours=write_ours * 1000),
    ]
    path = report("sandbox", "apollo-es sandbox benchmark", rows, environment(["apollo-es"]), out_dir=args.out,
                  parameters={"smoke": args.smoke, "commands": commands, "write_loops": loops, "budget_ms": BUDGET_MS})
    log(f"wrote {path}")
    return 0 if all(row.passed is not False for row in rows) or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
