"""What a tool call gives back, and the one rule for capping long output."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, BinaryIO

from events.kinds import ObservationOrigin

__all__ = ["MAX_READ_BYTES", "Observation", "capped", "read_bounded"]

MAX_READ_BYTES = 32 * 1024 * 1024
"""Memory bound on reading one output or file; what the model sees is capped far lower."""


@dataclass(frozen=True)
class Observation:
    """What one tool call gives back to the agent (and to the trajectory recorder)."""

    output: str  # what the model sees
    is_error: bool = False
    exit_code: int | None = None
    duration_ms: float = 0.0
    truncated: bool = False
    original_chars: int | None = None  # length before truncation, when truncated
    finished: bool = False  # True only for a successful finish()
    origin: ObservationOrigin = "tool"  # recorded as ToolObserved.origin: who decided the outcome


def capped(text: str, cap: int, footer: str = "", **fields: Any) -> Observation:
    """An observation whose text keeps its head and tail (where errors and results usually are)
    within `cap` characters, with a visible marker; `footer` (a status line) is never cut."""
    original = None
    if len(text) > cap:
        head = cap // 2
        marker = f"\n[... {len(text) - cap} characters truncated ...]\n"
        text, original = text[:head] + marker + text[len(text) - (cap - head) :], len(text)
    if footer:
        text += footer if text.endswith("\n") or not text else "\n" + footer
    return Observation(output=text, truncated=original is not None, original_chars=original, **fields)


def read_bounded(f: BinaryIO) -> str:
    """Decode a whole binary file object; past MAX_READ_BYTES only its head and tail are read."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if size <= MAX_READ_BYTES:
        return f.read().decode(errors="replace")
    half = MAX_READ_BYTES // 2
    head = f.read(half).decode(errors="replace")
    f.seek(size - half)
    tail = f.read().decode(errors="replace")
    return f"{head}\n[... {size - 2 * half} bytes not read ...]\n{tail}"
