"""Benchmark of the training projection: throughput, and memory as the number of runs grows.

    python bench/projection.py [--smoke] [--out DIR]

1. Projection throughput in tokens/s (read the runs, decide masks, render through the chat
   template, tokenize, check and write the native, HF and slime outputs) vs the raw batch
   encoding of the same rendered texts by the same fast tokenizer. Target: >= 0.5.
2. Peak memory (peak RSS of a fresh process) projecting 100 and 1,000 synthetic runs: the
   projection streams one run at a time, so it should stay flat.
3. The cost of per-turn fidelity on the 2,500-step run shape (every action with reasoning,
   a summary about every 150 steps, 10 human guidance messages; GLM-4.5's template, which
   drops reasoning before the last user message): tokens written vs today's single
   rendering of each segment (target <= 1.5x), and rendering throughput vs the raw
   tokenizer encoding the same texts (target >= 0.5x).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apollo_es import NO_STREAM, EventStore
from bench._common import Row, Target, compare_seconds, environment, log, median_seconds, parse_args, report
from bench._synthetic import synthetic_run
from projections.chat_template import load_tokenizer, render_masked, render_masked_many
from projections.dataset import project
from projections.rules import RuleSet
from projections.samples import stream_samples
from projections.tiny_tokenizer import build_tiny_tokenizer


def fill(db: Path, runs: int, steps: int) -> None:
    store = EventStore(db)
    for i in range(runs):
        store.append(f"run-{i:05d}", synthetic_run(steps, summaries=1, seed=i), expected_version=NO_STREAM, actor="agent")
    store.close()


def throughput(tmp: Path, runs: int, steps: int, tokenizer_dir: Path) -> Row:
    db = tmp / "throughput.db"
    fill(db, runs, steps)
    store = EventStore(db)
    load_tokenizer(tokenizer_dir)  # import transformers before the clock starts, as for the baseline
    started = time.perf_counter()
    result = project(store, tmp / "out", tokenizer_path=tokenizer_dir, ruleset=RuleSet.default(), max_tokens=10_000_000)
    ours_s = time.perf_counter() - started
    tokens = result.manifest.total_tokens

    tokenizer = load_tokenizer(tokenizer_dir)
    texts = []
    for stream in sorted(store.stream_positions()):
        for spec in stream_samples(stream, store.read(stream), lambda _: True):
            texts.extend(piece.text for piece in render_masked(tokenizer, spec.messages, spec.tools, spec.train))
    started = time.perf_counter()
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    raw_s = time.perf_counter() - started
    assert sum(len(ids) for ids in encoded) == tokens
    store.close()
    return Row(
        key="throughput", name="Projection throughput",
        baseline_label="raw batch encoding of the same rendered texts (fast tokenizer)",
        ours_label="project(): read, decide, render per turn, tokenize, mask, check, write 3 formats",
        conditions=f"{runs} runs x {steps} steps, {tokens:,} tokens; byte-level BPE tokenizer (GLM-4.5 template); no length limit",
        unit="tokens/s", baseline=tokens / raw_s, ours=tokens / ours_s, target=Target(">=", 0.5),
        details={"tokens": tokens, "samples": result.manifest.samples},
    )


def fidelity(tmp: Path, steps: int, summaries: int, guidance: int, tokenizer_dir: Path) -> list[Row]:
    store = EventStore(tmp / "fidelity.db")
    store.append("run", synthetic_run(steps, summaries=summaries, reasoning=True, guidance=guidance), expected_version=NO_STREAM,
                 actor="agent")
    specs = stream_samples("run", store.read("run"), lambda _: True)
    store.close()
    tokenizer = load_tokenizer(tokenizer_dir)
    conversations = [(spec.messages, spec.tools, spec.train) for spec in specs]

    def single():  # today's way: each sample rendered once as a whole and tokenized once
        texts = [tokenizer.apply_chat_template(spec.messages, tools=spec.tools, tokenize=False) for spec in specs]
        return tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)

    single_s, ours_s = compare_seconds(single, lambda: render_masked_many(tokenizer, conversations), repeat=3)
    single_tokens = sum(len(e.ids) for e in single())
    pieces = [piece for conversation in render_masked_many(tokenizer, conversations) for piece in conversation]
    ours_tokens = sum(len(piece.ids) for piece in pieces)
    texts = [piece.text for piece in pieces]
    raw_s = median_seconds(lambda: tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False), repeat=3)
    conditions = (f"1 run x {steps} steps with reasoning, {summaries} summaries, {guidance} guidance messages; "
                  f"{len(specs)} samples -> {len(pieces)} sequences; GLM-4.5 template")
    details = {"samples": len(specs), "sequences": len(pieces), "single_rendering_s": single_s, "per_turn_s": ours_s,
               "raw_encoding_s": raw_s}
    return [
        Row(key="fidelity_tokens", name="Per-turn fidelity: tokens written",
            baseline_label="single rendering of each sample (reasoning before a human message lost)",
            ours_label="per-turn rendering (a sequence per unchanged prefix)", conditions=conditions, unit="tokens",
            baseline=single_tokens, ours=ours_tokens, target=Target("<=", 1.5), details=details),
        Row(key="fidelity_throughput", name="Per-turn fidelity: rendering throughput",
            baseline_label="raw batch encoding of the same texts (fast tokenizer)",
            ours_label="render_masked_many: pieces, prompt checks, escaping, tokenize, masks, decode checks",
            conditions=conditions, unit="tokens/s", baseline=ours_tokens / raw_s, ours=ours_tokens / ours_s,
            target=Target(">=", 0.5), details=details),
    ]


def peak_memory_mb(runs: int, steps: int, tokenizer_dir: Path, tmp: Path) -> float:
    """Peak RSS (VmHWM) of a fresh process that projects `runs` runs.

    Not `getrusage`'s ru_maxrss: Linux carries that over from the parent across fork and
    exec, so a child of a big parent reports the parent's peak.
    """
    db = tmp / f"mem-{runs}.db"
    fill(db, runs, steps)
    code = (
        "from apollo_es import EventStore; from projections.dataset import project; "
        "from projections.rules import RuleSet; "
        f"project(EventStore({str(db)!r}), {str(tmp / f'mem-out-{runs}')!r}, tokenizer_path={str(tokenizer_dir)!r}, "
        "ruleset=RuleSet.default(), formats=['native']); "
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    runs, steps, memory_runs, memory_steps = (4, 20, (5, 20), 10) if args.smoke else (40, 200, (100, 1_000), 30)
    shape = (120, 2, 2) if args.smoke else (2_500, 16, 10)  # steps, summaries, guidance messages
    rows = []
    with tempfile.TemporaryDirectory(prefix="apollo-bench-") as name:
        tmp = Path(name)
        tokenizer_dir = build_tiny_tokenizer(tmp / "tokenizer", "glm45")
        log("1. throughput ...")
        rows.append(throughput(tmp, runs, steps, tokenizer_dir))
        small, large = memory_runs
        log(f"2. peak memory at {small} and {large} runs ...")
        small_mb = peak_memory_mb(small, memory_steps, tokenizer_dir, tmp)
        large_mb = peak_memory_mb(large, memory_steps, tokenizer_dir, tmp)
        rows.append(Row(
            key="memory", name="Peak memory (peak RSS, VmHWM) of a projection",
            baseline_label=f"{small} runs", ours_label=f"{large} runs",
            conditions=f"{memory_steps} steps per run; native format; fresh process each", unit="MB",
            baseline=small_mb, ours=large_mb, target=Target("<=", 1.5),
            details={"runs": [small, large]},
        ))
        log(f"3. per-turn fidelity on {shape[0]} steps ...")
        rows.extend(fidelity(tmp, *shape, tokenizer_dir))
    path = report("projection", "apollo-es training projection benchmark", rows,
                  environment(["apollo-es", "transformers", "tokenizers", "numpy"]), out_dir=args.out,
                  parameters={"smoke": args.smoke, "runs": runs, "steps": steps, "memory_runs": memory_runs,
                              "fidelity_shape": shape})
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
