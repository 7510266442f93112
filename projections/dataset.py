"""The training projection runner: runs → masked token sequences → dataset files.

    OUT/native/          the trainer's format (projections.native_format), repeats stored once
    OUT/hf.parquet       format `hf`: columns id, type, input_ids, labels (-100 where masked)
    OUT/hf.jsonl         format `hf-jsonl`: the same columns, one JSON object per line
    OUT/slime.jsonl      {"messages" (each with its "step_loss_mask"), "tools", "metadata"} per line
    OUT/projection.json  what was built: fingerprint, position, counts, skipped runs
    OUT/.cache/          each stream's rendered samples, for incremental builds

Repeats (ReAct 7x, summaries 10x) are written out as rows in `hf`, `hf-jsonl` and `slime`,
because TRL and slime read every row once per epoch; the native format stores each sample
once with its count. A conversation that needs several token sequences (a template that
rewrites history, see projections.chat_template) gives one row per sequence, ids suffixed
`.1`, `.2`, ...; its slime row is the conversation up to that sequence's last trained turn.

A run that cannot be rendered is skipped and reported (`ProjectionReport.skipped`: run,
version, reason); the rest of the dataset is written.

Incremental: the store keeps a checkpoint (position, fingerprint) per output directory. A
stream is rendered again only when it has events past the checkpoint; everything else
comes from the cache. The fingerprint covers the rule set, the tokenizer, the length policy
and the repeats, so changing any of them renders everything again. Outputs are assembled
from the cache in stream order, so incremental, `rebuild` and a fresh build write the same
bytes. A new OUT is written beside the old one and swapped in: never half a dataset.

Length policy for samples over `max_tokens`: `drop` (default) leaves them out; `truncate`
keeps their first `max_tokens` tokens (and drops them if nothing trained is left). Either way
the manifest counts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from apollo_es.errors import ApolloError
from apollo_es.store import EventStore
from projections.chat_template import RenderError, Rendered, load_tokenizer, render_masked, render_masked_many, tokenizer_info
from projections.native_format import Manifest, SampleMeta, staging_directory, write_native
from projections.policy import annotations_for, decide
from projections.rules import RuleSet
from projections.samples import SampleSpec, stream_samples

__all__ = ["DEFAULT_FORMATS", "FORMATS", "ProjectionError", "ProjectionReport", "SkippedRun", "project"]

PROJECTION_VERSION = 2
FORMATS = ("native", "hf", "hf-jsonl", "slime")
DEFAULT_FORMATS = ("native", "hf", "slime")
_PARQUET_ROWS = 256
LengthPolicy = Literal["drop", "truncate"]


class ProjectionError(ApolloError):
    """A projection that cannot be built; nothing was written."""


class SkippedRun(msgspec.Struct, frozen=True):
    """A run left out because one of its samples cannot be rendered."""

    stream_id: str
    version: int | None
    """The event the failing message comes from, where known."""
    sample_id: str
    reason: str


class _Cached(msgspec.Struct, frozen=True):
    """One rendered token sequence as kept in the cache."""

    spec: SampleSpec
    messages: int
    """It renders spec.messages[:messages] ..."""
    turns: list[int]
    """... and trains these assistant messages of it."""
    meta: SampleMeta
    ids: bytes
    mask: bytes


class _StreamCache(msgspec.Struct, frozen=True):
    stream_id: str
    position: int
    samples: list[_Cached]
    dropped: int
    truncated: int
    masked_actions: int
    kept_actions: int


class ProjectionReport(msgspec.Struct, frozen=True):
    out_dir: str
    fingerprint: str
    position: int
    rendered_streams: int
    cached_streams: int
    manifest: Manifest
    skipped: list[SkippedRun] = msgspec.field(default_factory=list)


def project(
    store: EventStore,
    out_dir: str | Path,
    *,
    tokenizer_path: str | Path,
    ruleset: RuleSet,
    formats: Sequence[str] = DEFAULT_FORMATS,
    runs: Sequence[str] | None = None,
    rebuild: bool = False,
    max_tokens: int = 131_072,
    length_policy: LengthPolicy = "drop",
    react_repeat: int = 7,
    summary_repeat: int = 10,
    progress: Callable[[int, int], None] | None = None,
) -> ProjectionReport:
    """Project runs (default: every stream) into datasets under `out_dir`."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ProjectionError(f"unknown format(s) {', '.join(unknown) or '(none)'}: use {', '.join(FORMATS)}")
    if length_policy not in ("drop", "truncate"):
        raise ProjectionError(f"length policy must be drop or truncate, not {length_policy!r}")
    if max_tokens < 1 or react_repeat < 1 or summary_repeat < 1:
        raise ProjectionError("max_tokens and the repeats must be at least 1")
    out_dir = Path(out_dir).resolve()
    _check_writable(out_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    tokenizer_source = tokenizer_info(tokenizer_path)
    tok_hash = tokenizer_source.hash
    settings = {"rules": ruleset.fingerprint, "tokenizer": tok_hash, "max_tokens": max_tokens, "length_policy": length_policy,
                "react_repeat": react_repeat, "summary_repeat": summary_repeat, "version": PROJECTION_VERSION}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    name = f"project:{out_dir}"

    positions = store.stream_positions()
    selected = sorted(positions) if runs is None else list(runs)
    for run in selected:
        store.head(run)  # unknown runs fail before anything is written
    checkpoint = None if rebuild else store.checkpoint(name)
    since = checkpoint[0] if checkpoint and checkpoint[1] == fingerprint else None
    cache_dir = out_dir / ".cache"
    head = store.last_position()
    dirty = _annotated_elsewhere(store, since) if since is not None else set()

    staging = staging_directory(out_dir)
    try:
        (staging / ".cache").mkdir()
        rendered = cached = 0
        skipped: list[SkippedRun] = []
        written: list[str] = []
        for done, stream_id in enumerate(selected, 1):
            fresh = since is not None and positions[stream_id] <= since and stream_id not in dirty
            entry = _load_cache(cache_dir, stream_id) if fresh else None
            if entry is None:
                entry = _render_stream(store, stream_id, tokenizer, ruleset, max_tokens, length_policy,
                                       {"react": react_repeat, "summary": summary_repeat})
                rendered += 1
            else:
                cached += 1
            if isinstance(entry, SkippedRun):
                skipped.append(entry)
                continue
            if runs is not None and not entry.samples:
                raise ProjectionError(
                    f"run {stream_id!r} has no kept action to train on "
                    f"({entry.masked_actions} masked, {entry.kept_actions} kept but already trained elsewhere or over length)"
                )
            (staging / ".cache" / _cache_name(stream_id)).write_bytes(msgspec.msgpack.encode(entry))
            written.append(stream_id)
            if progress is not None:
                progress(done, len(selected))
        entries = [(stream_id, staging / ".cache" / _cache_name(stream_id)) for stream_id in written]
        manifest = _write_outputs(staging, entries, formats, tok_hash, ruleset.fingerprint, max_tokens, length_policy,
                                  msgspec.to_builtins(tokenizer_source))
        if manifest.trained_tokens == 0:
            because = "".join(f"\n  skipped {s.stream_id} (v{s.version}): {s.reason}" for s in skipped)
            raise ProjectionError(
                f"no kept action to train on in {len(selected)} run(s): every action was masked, there were none, "
                f"or their runs were skipped{because}"
            )
        report = ProjectionReport(out_dir=str(out_dir), fingerprint=fingerprint, position=head,
                                  rendered_streams=rendered, cached_streams=cached, manifest=manifest, skipped=skipped)
        summary = {"fingerprint": fingerprint, "settings": settings, "formats": sorted(formats), "runs": written,
                   "position": head, "manifest": msgspec.to_builtins(manifest),
                   "skipped": msgspec.to_builtins(skipped)}
        (staging / "projection.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    store.save_checkpoint(name, head, fingerprint)
    return report


def _render_stream(store, stream_id, tokenizer, ruleset, max_tokens, length_policy, repeats) -> _StreamCache | SkippedRun:
    recorded = store.read(stream_id)
    decisions = decide(recorded, ruleset, extra=annotations_for(store, recorded))
    own = [d for d in decisions.values() if d.stream_id == stream_id]
    specs = stream_samples(stream_id, recorded, lambda event_id: decisions[event_id].keep if event_id in decisions else True)
    try:
        results = render_masked_many(tokenizer, [(spec.messages, spec.tools, spec.train) for spec in specs])
    except RenderError:
        return _skipped(tokenizer, stream_id, specs)
    samples, dropped, truncated = [], 0, 0
    for spec, pieces in zip(specs, results):
        for number, piece in enumerate(pieces, 1):
            sample_id = spec.sample_id if len(pieces) == 1 else f"{spec.sample_id}.{number}"
            cached = _sample(spec, sample_id, piece, repeats[spec.type], max_tokens, length_policy)
            if cached is None:
                dropped += 1
                continue
            truncated += cached.meta.truncated
            samples.append(cached)
    return _StreamCache(stream_id=stream_id, position=max(r.position for r in recorded if r.stream_id == stream_id),
                        samples=samples, dropped=dropped, truncated=truncated,
                        masked_actions=sum(not d.keep for d in own), kept_actions=sum(d.keep for d in own))


def _sample(spec: SampleSpec, sample_id: str, piece: Rendered, repeat: int, max_tokens: int,
            length_policy: LengthPolicy) -> _Cached | None:
    """One token sequence under the length policy (None: dropped)."""
    ids, mask, cut = piece.ids, piece.mask, False
    if len(ids) > max_tokens:
        if length_policy == "drop":
            return None
        ids, mask, cut = ids[:max_tokens], mask[:max_tokens], True
        if not mask.any():
            return None
    meta = SampleMeta(sample_id=sample_id, stream_id=spec.stream_id, type=spec.type, repeat=repeat,
                      tokens=len(ids), trained_tokens=int(mask.sum()), truncated=cut)
    return _Cached(spec=spec, messages=piece.messages, turns=list(piece.turns), meta=meta,
                   ids=ids.astype(np.int32).tobytes(), mask=mask.astype(np.uint8).tobytes())


def _skipped(tokenizer, stream_id: str, specs: Sequence[SampleSpec]) -> SkippedRun:
    """Which sample of a stream that failed to render fails, and where (rendered one by one)."""
    for spec in specs:
        try:
            render_masked(tokenizer, spec.messages, spec.tools, spec.train)
        except RenderError as exc:
            index = exc.message_index
            version = spec.versions[index] if index is not None and index < len(spec.versions) else None
            return SkippedRun(stream_id=stream_id, version=version, sample_id=spec.sample_id, reason=str(exc))
    raise AssertionError("rendering failed together but not one by one")


def _write_outputs(staging: Path, entries, formats, tok_hash, rule_fingerprint, max_tokens, length_policy, tokenizer: dict) -> Manifest:
    """Write every requested format from the cached streams, one stream in memory at a time."""
    totals = {"dropped": 0, "truncated": 0, "masked_actions": 0, "kept_actions": 0}

    def samples() -> Iterator[tuple[_Cached, np.ndarray, np.ndarray]]:
        for _stream_id, path in entries:
            entry = msgspec.msgpack.decode(path.read_bytes(), type=_StreamCache)
            for key in totals:
                totals[key] += getattr(entry, key)
            for cached in entry.samples:
                yield cached, np.frombuffer(cached.ids, dtype=np.int32), np.frombuffer(cached.mask, dtype=np.uint8)

    extra = {"tokenizer_path": tokenizer["path"], "tokenizer": tokenizer}
    hf = _ParquetRows(staging / "hf.parquet") if "hf" in formats else None
    hf_jsonl = open(staging / "hf.jsonl", "wb") if "hf-jsonl" in formats else None
    slime = open(staging / "slime.jsonl", "wb") if "slime" in formats else None
    try:
        def native_samples():
            for cached, ids, mask in samples():
                row = {"id": cached.meta.sample_id, "type": cached.meta.type, "input_ids": ids,
                       "labels": np.where(mask == 1, ids, -100).astype(np.int32)}
                if hf:
                    hf.add(row, cached.meta.repeat)
                if hf_jsonl:
                    line = msgspec.json.encode({**row, "input_ids": ids.tolist(), "labels": row["labels"].tolist()})
                    hf_jsonl.write((line + b"\n") * cached.meta.repeat)
                if slime:
                    slime.write((msgspec.json.encode(_slime_row(cached)) + b"\n") * cached.meta.repeat)
                yield cached.meta, ids, mask

        manifest = write_native(
            staging / "native", native_samples(), tokenizer_hash=tok_hash, rule_fingerprint=rule_fingerprint,
            max_tokens=max_tokens, length_policy=length_policy, shard_tokens=4 * 1024 * 1024,
            extra={**extra, **totals},
        )
    finally:
        for f in (hf, hf_jsonl, slime):
            if f:
                f.close()
    if "native" not in formats:
        shutil.rmtree(staging / "native")
    manifest = msgspec.structs.replace(manifest, dropped_over_length=totals["dropped"], truncated_over_length=totals["truncated"],
                                       extra={**extra, **totals})
    if "native" in formats:
        (staging / "native" / "manifest.json").write_bytes(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
    return manifest


class _ParquetRows:
    """`hf.parquet`, written a row group at a time."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._schema = pa.schema([("id", pa.string()), ("type", pa.string()), ("input_ids", pa.list_(pa.int32())),
                                  ("labels", pa.list_(pa.int32()))])
        self._writer = pq.ParquetWriter(path, self._schema)
        self._rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any], repeat: int) -> None:
        self._rows.extend([row] * repeat)
        if len(self._rows) >= _PARQUET_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = {name: [row[name] for row in self._rows] for name in self._schema.names}
            self._writer.write_table(self._pa.table(columns, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def _slime_row(cached: _Cached) -> dict[str, Any]:
    """A row as slime's loader reads it (slime/utils/data.py, slime/utils/mask_utils.py): the loss
    flag on each message (`message.get("step_loss_mask", 1)`: absent means trained, so every
    message carries it), the tools under the default `--tool-key tools` and in `metadata.tools`.
    The conversation ends with the sequence's last trained turn, and only its turns are trained."""
    spec, trained = cached.spec, set(cached.turns)
    messages = [{**m, "step_loss_mask": int(i in trained)} for i, m in enumerate(spec.messages[:cached.messages])]
    sample_id = cached.meta.sample_id
    return {"id": sample_id, "messages": messages, "tools": spec.tools, "metadata": {"tools": spec.tools, "sample_id": sample_id}}


def _annotated_elsewhere(store: EventStore, since: int) -> set[str]:
    """Streams whose actions got a verdict or a human reject recorded in another stream since `since`."""
    targets = {
        r.event.target_event_id
        for r in store.read_all(after=since)
        if r.kind in ("ActionJudged", "HumanIntervened") and getattr(r.event, "target_event_id", None)
    }
    if not targets:
        return set()
    return {recorded.stream_id for recorded in store.events_by_ids(targets).values()}


def _cache_name(stream_id: str) -> str:
    return hashlib.sha256(stream_id.encode()).hexdigest()[:32] + ".msgpack"


def _load_cache(cache_dir: Path, stream_id: str) -> _StreamCache | None:
    path = cache_dir / _cache_name(stream_id)
    try:
        return msgspec.msgpack.decode(path.read_bytes(), type=_StreamCache)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None  # missing or unreadable: render the stream again


def _check_writable(out_dir: Path) -> None:
    parent = out_dir.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise ProjectionError(f"{out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "projection.json").exists():
        raise ProjectionError(f"{out_dir} is not empty and holds no projection; pick another --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProjectionError(f"cannot create {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK) or (out_dir.exists() and not os.access(out_dir, os.W_OK)):
        raise ProjectionError(f"cannot write to {out_dir}: permission denied")


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `staging` with renames: there is always a whole one at `out_dir`'s path or none."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
