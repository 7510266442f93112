"""The training projection runner: runs → masked token sequences → dataset files.

    OUT/native/          the trainer's format (projections.native_format), repeats stored once
    OUT/hf.jsonl         {"input_ids", "labels"} per line, -100 where masked, repeats written out
    OUT/slime.jsonl      {"messages" (each with its "step_loss_mask"), "tools", "metadata"} per line, repeats written out
    OUT/projection.json  what was built: fingerprint, position, counts
    OUT/.cache/          each stream's rendered samples, for incremental builds

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
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from apollo_es.errors import ApolloError
from apollo_es.store import EventStore
from projections.chat_template import RenderError, load_tokenizer, render_masked_many, tokenizer_hash
from projections.native_format import Manifest, SampleMeta, write_native
from projections.policy import annotations_for, decide
from projections.rules import RuleSet
from projections.samples import SampleSpec, stream_samples

__all__ = ["FORMATS", "ProjectionError", "ProjectionReport", "project"]

PROJECTION_VERSION = 1
FORMATS = ("native", "hf", "slime")
LengthPolicy = Literal["drop", "truncate"]


class ProjectionError(ApolloError):
    """A projection that cannot be built; nothing was written."""


class _Cached(msgspec.Struct, frozen=True):
    """One rendered sample as kept in the cache."""

    spec: SampleSpec
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


def project(
    store: EventStore,
    out_dir: str | Path,
    *,
    tokenizer_path: str | Path,
    ruleset: RuleSet,
    formats: Sequence[str] = FORMATS,
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
    tok_hash = tokenizer_hash(tokenizer_path)
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

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / ".cache").mkdir()
        rendered = cached = 0
        for done, stream_id in enumerate(selected, 1):
            fresh = since is not None and positions[stream_id] <= since and stream_id not in dirty
            entry = _load_cache(cache_dir, stream_id) if fresh else None
            if entry is None:
                entry = _render_stream(store, stream_id, tokenizer, ruleset, max_tokens, length_policy,
                                       {"react": react_repeat, "summary": summary_repeat})
                rendered += 1
            else:
                cached += 1
            if runs is not None and not entry.samples:
                raise ProjectionError(
                    f"run {stream_id!r} has no kept action to train on "
                    f"({entry.masked_actions} masked, {entry.kept_actions} kept but already trained elsewhere or over length)"
                )
            (staging / ".cache" / _cache_name(stream_id)).write_bytes(msgspec.msgpack.encode(entry))
            if progress is not None:
                progress(done, len(selected))
        entries = [(stream_id, staging / ".cache" / _cache_name(stream_id)) for stream_id in selected]
        manifest = _write_outputs(staging, entries, formats, tok_hash, ruleset.fingerprint, max_tokens, length_policy,
                                  str(Path(tokenizer_path).resolve()))
        if manifest.trained_tokens == 0:
            raise ProjectionError(
                f"no kept action to train on in {len(selected)} run(s): every action was masked or there were none"
            )
        report = ProjectionReport(out_dir=str(out_dir), fingerprint=fingerprint, position=head,
                                  rendered_streams=rendered, cached_streams=cached, manifest=manifest)
        summary = {"fingerprint": fingerprint, "settings": settings, "formats": sorted(formats), "runs": selected,
                   "position": head, "manifest": msgspec.to_builtins(manifest)}
        (staging / "projection.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    store.save_checkpoint(name, head, fingerprint)
    return report


def _render_stream(store, stream_id, tokenizer, ruleset, max_tokens, length_policy, repeats) -> _StreamCache:
    recorded = store.read(stream_id)
    decisions = decide(recorded, ruleset, extra=annotations_for(store, recorded))
    own = [d for d in decisions.values() if d.stream_id == stream_id]
    specs = stream_samples(stream_id, recorded, lambda event_id: decisions[event_id].keep if event_id in decisions else True)
    try:
        results = render_masked_many(tokenizer, [(spec.messages, spec.tools, spec.train) for spec in specs])
    except RenderError as exc:
        raise ProjectionError(f"{stream_id}: {exc}") from exc
    samples, dropped, truncated = [], 0, 0
    for spec, result in zip(specs, results):
        ids, mask, cut = result.ids, result.mask, False
        if len(ids) > max_tokens:
            if length_policy == "drop":
                dropped += 1
                continue
            ids, mask, cut = ids[:max_tokens], mask[:max_tokens], True
            if not mask.any():
                dropped += 1
                continue
            truncated += 1
        meta = SampleMeta(sample_id=spec.sample_id, stream_id=stream_id, type=spec.type, repeat=repeats[spec.type],
                          tokens=len(ids), trained_tokens=int(mask.sum()), truncated=cut)
        samples.append(_Cached(spec=spec, meta=meta, ids=ids.astype(np.int32).tobytes(), mask=mask.astype(np.uint8).tobytes()))
    return _StreamCache(stream_id=stream_id, position=max(r.position for r in recorded if r.stream_id == stream_id),
                        samples=samples, dropped=dropped, truncated=truncated,
                        masked_actions=sum(not d.keep for d in own), kept_actions=sum(d.keep for d in own))


def _write_outputs(staging: Path, entries, formats, tok_hash, rule_fingerprint, max_tokens, length_policy, tokenizer_path) -> Manifest:
    """Write every requested format from the cached streams, one stream in memory at a time."""
    totals = {"dropped": 0, "truncated": 0, "masked_actions": 0, "kept_actions": 0}

    def samples() -> Iterator[tuple[_Cached, np.ndarray, np.ndarray]]:
        for _stream_id, path in entries:
            entry = msgspec.msgpack.decode(path.read_bytes(), type=_StreamCache)
            for key in totals:
                totals[key] += getattr(entry, key)
            for cached in entry.samples:
                yield cached, np.frombuffer(cached.ids, dtype=np.int32), np.frombuffer(cached.mask, dtype=np.uint8)

    hf = open(staging / "hf.jsonl", "wb") if "hf" in formats else None
    slime = open(staging / "slime.jsonl", "wb") if "slime" in formats else None
    try:
        def native_samples():
            for cached, ids, mask in samples():
                if hf:
                    labels = np.where(mask == 1, ids, -100)
                    line = msgspec.json.encode({"id": cached.meta.sample_id, "input_ids": ids.tolist(), "labels": labels.tolist()})
                    hf.write((line + b"\n") * cached.meta.repeat)
                if slime:
                    slime.write((msgspec.json.encode(_slime_row(cached.spec)) + b"\n") * cached.meta.repeat)
                yield cached.meta, ids, mask

        manifest = write_native(
            staging / "native", native_samples(), tokenizer_hash=tok_hash, rule_fingerprint=rule_fingerprint,
            max_tokens=max_tokens, length_policy=length_policy, shard_tokens=4 * 1024 * 1024,
            extra={"tokenizer_path": tokenizer_path, **totals},
        )
    finally:
        for f in (hf, slime):
            if f:
                f.close()
    if "native" not in formats:
        shutil.rmtree(staging / "native")
    manifest = msgspec.structs.replace(manifest, dropped_over_length=totals["dropped"], truncated_over_length=totals["truncated"],
                                       extra={"tokenizer_path": tokenizer_path, **totals})
    if "native" in formats:
        (staging / "native" / "manifest.json").write_bytes(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
    return manifest


def _slime_row(spec: SampleSpec) -> dict[str, Any]:
    """A row as slime's loader reads it (slime/utils/data.py, slime/utils/mask_utils.py): the loss
    flag on each message (`message.get("step_loss_mask", 1)`: absent means trained, so every
    message carries it), the tools under the default `--tool-key tools` and in `metadata.tools`."""
    flags = iter(spec.train)
    messages = [{**m, "step_loss_mask": int(next(flags)) if m["role"] == "assistant" else 0} for m in spec.messages]
    return {"id": spec.sample_id, "messages": messages, "tools": spec.tools, "metadata": {"tools": spec.tools, "sample_id": spec.sample_id}}


def _annotated_elsewhere(store: EventStore, since: int) -> set[str]:
    """Streams whose actions got a verdict or a human reject recorded in another stream since `since`."""
    targets = {
        r.event.target_event_id
        for r in store.read_all(after=since)
        if r.kind in ("ActionJudged", "HumanIntervened") and getattr(r.event, "target_event_id", None)
    }
    if not targets:
        return set()
    marks = ", ".join("?" * len(targets))
    return {row[0] for row in store.query(f"SELECT DISTINCT stream_id FROM events WHERE event_id IN ({marks})", list(targets))}


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
