"""Moving a log from one store to another (SQLite ↔ PostgreSQL), byte for byte.

Rows are copied as stored: positions, event ids, timestamps, actors and the exact payload
bytes, so every hash stays valid and an anchor taken on the source still holds on the copy.
Both sides are checked. Each source row is checked by the same walk `verify` does (chain,
numbering, branch records, invariants) before it is written, so a damaged source stops the
copy at the first bad row; the destination refuses any batch that does not continue its own
chain, and is verified whole at the end.

A copy is a series of batches, each one transaction: an interrupted copy leaves a sound
prefix of the source, and running it again continues where it stopped (the destination's
last row must be the source's row at that position, hash for hash). Leases and projection
checkpoints are not copied: they are derived state, outside the chain.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from apollo_es.errors import StoreError
from apollo_es.stores.base import GENESIS_HASH, ChainWalk, Store
from events.envelope import StreamInfo, VerifyReport

__all__ = ["CopyReport", "copy_store"]


class CopyReport(msgspec.Struct, frozen=True):
    copied: int  # rows written by this copy
    already_there: int  # rows the destination held before (an interrupted copy's prefix)
    streams: int  # stream records written
    head_hash: str  # the last row's hash, the same on both sides
    destination: VerifyReport


def copy_store(
    source: Store,
    destination: Store,
    *,
    batch_size: int = 2000,
    progress: Callable[[str, int, int], None] | None = None,
) -> CopyReport:
    """Copy every event of `source` (as of the start) to the end of `destination`.

    `destination` must be empty or hold a prefix of `source` (a copy that was interrupted).
    `progress(phase, done, total)` is called per batch with phase "copying", then while the
    destination is verified with phase "verifying". Raises `StoreError` naming the position
    if the source breaks the log's rules or the destination is not a prefix of it.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total = source.last_position()  # first: every stream with a row up to here is in streams()
    infos = {info.stream_id: info for info in source.streams()}
    walk = ChainWalk({sid: (info.parent_id, info.fork_version) for sid, info in infos.items()})
    already = destination.last_position()
    if already > total:
        raise StoreError(f"the destination holds {already} events, the source {total}: it is not a copy of the source")
    expected_head = destination.stored_rows(after=already - 1, limit=1)[0][11] if already else GENESIS_HASH
    present = {info.stream_id for info in destination.streams()}
    copied = streams_written = 0
    while walk.checked < total:
        rows = [row for row in source.stored_rows(after=walk.checked, limit=batch_size) if row[0] <= total]
        if not rows:
            raise StoreError(f"the source ends at position {walk.checked}, before position {total}: rows were deleted")
        for row in rows:
            if problem := walk.check(row):
                raise StoreError(f"the source is damaged at position {row[0]}: {problem}; "
                                 f"the destination holds its first {max(already, walk.checked)} events")
            if walk.checked == already and walk.prev_hash != expected_head:
                raise StoreError(f"the destination's event {already} differs from the source's: "
                                 "it is not a copy of the source")
        new = [row for row in rows if row[0] > already]
        needed: list[StreamInfo] = []
        for row in new:
            if row[1] not in present:
                present.add(row[1])
                needed.append(infos[row[1]])
        destination.append_stored(needed, new)
        copied += len(new)
        streams_written += len(needed)
        if progress is not None:
            progress("copying", walk.checked, total)
    report = destination.verify(progress=None if progress is None else lambda n: progress("verifying", n, total))
    if not report.ok:
        raise StoreError(f"the copy does not verify at position {report.first_bad_position}: {report.reason}")
    return CopyReport(copied=copied, already_there=already, streams=streams_written, head_hash=walk.prev_hash,
                      destination=report)
