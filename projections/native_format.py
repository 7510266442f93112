"""The native dataset format: what the training projection writes and the trainer reads.

A dataset is a directory:

    manifest.json                 # Manifest below: provenance, counts, content hash, shards
    shard-00000.ids.npy           # int32, the token ids of its samples back to back
    shard-00000.mask.npy          # uint8, 1 where the token is trained
    shard-00000.offsets.npy       # int64, n+1 offsets: sample i is ids[offsets[i]:offsets[i+1]]
    samples.jsonl                 # one SampleMeta per line, in order across shards

Each distinct sample is stored once with its `repeat` count (7 for ReAct, 10 for
summarization by default); the trainer expands repeats into its data order, so upsampling
costs no disk. The directory is written under a temporary name and renamed into place, so
a reader never sees half a dataset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

__all__ = ["FORMAT", "FORMAT_VERSION", "Manifest", "NativeDataset", "SampleMeta", "staging_directory", "write_native"]

FORMAT = "apollo-es-native"
FORMAT_VERSION = 1


class SampleMeta(msgspec.Struct, frozen=True, kw_only=True):
    sample_id: str
    stream_id: str
    type: Literal["react", "summary"]
    repeat: int
    tokens: int = 0
    trained_tokens: int = 0
    truncated: bool = False


class ShardInfo(msgspec.Struct, frozen=True):
    name: str
    samples: int
    tokens: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    tokenizer_hash: str
    rule_fingerprint: str
    max_tokens: int
    length_policy: str
    samples: int
    samples_by_type: dict[str, int]
    """Distinct samples per type."""
    upsampled_by_type: dict[str, int]
    """Samples per type after repeats: what one epoch trains on."""
    total_tokens: int
    trained_tokens: int
    """Over distinct samples; multiply by repeats for an epoch."""
    dropped_over_length: int = 0
    truncated_over_length: int = 0
    content_hash: str
    """SHA-256 over every shard file and samples.jsonl, in order."""
    shards: list[ShardInfo]
    extra: dict[str, object] = msgspec.field(default_factory=dict)


Sample = tuple[SampleMeta, np.ndarray, np.ndarray]


def staging_directory(out_dir: Path) -> Path:
    """A new directory beside `out_dir` to build it in, with the mode `mkdir` would give it.

    `mkdtemp` makes it 0700, and the rename keeps that: a dataset only its creator can read.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o777 & ~_umask())
    return staging


def _umask() -> int:
    """The process umask, read without setting it (setting it races with other threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_native(
    out_dir: str | Path,
    samples: Iterable[Sample],
    *,
    tokenizer_hash: str,
    rule_fingerprint: str,
    max_tokens: int,
    length_policy: str,
    shard_tokens: int = 64 * 1024 * 1024,
    dropped_over_length: int = 0,
    truncated_over_length: int = 0,
    extra: dict[str, object] | None = None,
) -> Manifest:
    """Write samples (meta, ids, mask) as a native dataset, replacing `out_dir` atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_directory(out_dir)
    try:
        manifest = _write(staging, samples, tokenizer_hash, rule_fingerprint, max_tokens, length_policy,
                          shard_tokens, dropped_over_length, truncated_over_length, extra or {})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write(staging, samples, tokenizer_hash, rule_fingerprint, max_tokens, length_policy, shard_tokens,
           dropped, truncated, extra) -> Manifest:
    shards: list[ShardInfo] = []
    ids_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray] = []
    by_type: dict[str, int] = {}
    upsampled: dict[str, int] = {}
    total = trained = count = 0
    with open(staging / "samples.jsonl", "wb") as meta_file:
        for meta, ids, mask in samples:
            if len(ids) != len(mask):
                raise ValueError(f"sample {meta.sample_id}: {len(ids)} ids but {len(mask)} mask values")
            meta = msgspec.structs.replace(meta, tokens=len(ids), trained_tokens=int(np.count_nonzero(mask)))
            meta_file.write(msgspec.json.encode(meta) + b"\n")
            # Copies, not views: a view would keep the caller's whole sample (its buffers,
            # its messages) alive until the shard is flushed.
            ids_parts.append(np.array(ids, dtype=np.int32))
            mask_parts.append(np.array(mask, dtype=np.uint8))
            by_type[meta.type] = by_type.get(meta.type, 0) + 1
            upsampled[meta.type] = upsampled.get(meta.type, 0) + meta.repeat
            total, trained, count = total + meta.tokens, trained + meta.trained_tokens, count + 1
            if sum(len(p) for p in ids_parts) >= shard_tokens:
                shards.append(_flush(staging, len(shards), ids_parts, mask_parts))
                ids_parts, mask_parts = [], []
    if ids_parts or not shards:
        shards.append(_flush(staging, len(shards), ids_parts, mask_parts))
    manifest = Manifest(
        tokenizer_hash=tokenizer_hash, rule_fingerprint=rule_fingerprint, max_tokens=max_tokens,
        length_policy=length_policy, samples=count, samples_by_type=dict(sorted(by_type.items())),
        upsampled_by_type=dict(sorted(upsampled.items())), total_tokens=total, trained_tokens=trained,
        dropped_over_length=dropped, truncated_over_length=truncated,
        content_hash=_content_hash(staging, shards), shards=shards, extra=extra,
    )
    (staging / "manifest.json").write_bytes(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
    return manifest


def _flush(staging: Path, index: int, ids_parts: list[np.ndarray], mask_parts: list[np.ndarray]) -> ShardInfo:
    name = f"shard-{index:05d}"
    lengths = [len(p) for p in ids_parts]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32)
    mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, dtype=np.uint8)
    np.save(staging / f"{name}.ids.npy", ids, allow_pickle=False)
    np.save(staging / f"{name}.mask.npy", mask, allow_pickle=False)
    np.save(staging / f"{name}.offsets.npy", offsets, allow_pickle=False)
    return ShardInfo(name=name, samples=len(lengths), tokens=int(offsets[-1]))


def _content_hash(directory: Path, shards: list[ShardInfo]) -> str:
    digest = hashlib.sha256()
    names = [f"{s.name}.{part}.npy" for s in shards for part in ("ids", "mask", "offsets")] + ["samples.jsonl"]
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(directory / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class NativeDataset:
    """Read a native dataset: its manifest, and each sample's ids and mask (memory-mapped)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / "manifest.json"
        try:
            self.manifest = msgspec.json.decode(manifest_path.read_bytes(), type=Manifest)
        except FileNotFoundError:
            raise ValueError(f"{self.directory} is not a native dataset: no manifest.json") from None
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ValueError(f"{manifest_path} is malformed: {exc}") from exc
        if self.manifest.format != FORMAT or self.manifest.format_version != FORMAT_VERSION:
            raise ValueError(f"{self.directory}: format {self.manifest.format} v{self.manifest.format_version}, "
                             f"this code reads {FORMAT} v{FORMAT_VERSION}")
        decoder = msgspec.json.Decoder(SampleMeta)
        with open(self.directory / "samples.jsonl", "rb") as f:
            self.meta = [decoder.decode(line) for line in f if line.strip()]
        self._index: list[tuple[int, int]] = []  # (shard, position within shard) per sample
        self._shards = []
        for number, shard in enumerate(self.manifest.shards):
            arrays = tuple(np.load(self.directory / f"{shard.name}.{part}.npy", mmap_mode="r", allow_pickle=False)
                           for part in ("ids", "mask", "offsets"))
            self._shards.append(arrays)
            self._index.extend((number, i) for i in range(shard.samples))
        if len(self._index) != len(self.meta):
            raise ValueError(f"{self.directory}: {len(self.meta)} samples listed, {len(self._index)} stored")

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, index: int) -> Sample:
        shard, position = self._index[index]
        ids, mask, offsets = self._shards[shard]
        start, end = int(offsets[position]), int(offsets[position + 1])
        return self.meta[index], np.asarray(ids[start:end]), np.asarray(mask[start:end])

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def verify(self) -> bool:
        """Recompute the content hash: True if the files are what the manifest says."""
        return _content_hash(self.directory, self.manifest.shards) == self.manifest.content_hash
