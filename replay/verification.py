"""Proving that the current fold still reproduces what the model saw."""

from __future__ import annotations

import msgspec

from apollo_es.store import EventStore
from events import AgentActed, ContextSummarized
from projections.context import Folder
from projections.requests import digest, render_request
from projections.summarization import summarization_context

__all__ = ["RunVerification", "verify_run"]


class RunVerification(msgspec.Struct, frozen=True):
    stream_id: str
    ok: bool
    chain_ok: bool
    actions_checked: int
    summaries_checked: int = 0
    first_bad_version: int | None = None
    first_bad_position: int | None = None
    reason: str = ""


def verify_run(store: EventStore, stream_id: str) -> RunVerification:
    """Recompute every action's `context_digest` and every summary's `request_digest` with
    today's fold and renderer.

    A mismatch at version V means the request this code builds for that action (or summary)
    differs from the one the model was sent: a change to the fold, the renderer, the
    summarization prompt or the event schema no longer reproduces history. Events recorded
    without a digest (imported ones) are skipped. The store's hash chain is checked too.
    """
    chain = store.verify()
    folder, actions, summaries = Folder(), 0, 0
    for recorded in store.read(stream_id):
        event = recorded.event
        expected = sent = None
        if isinstance(event, AgentActed) and event.context_digest:
            actions += 1
            expected, sent, what = digest(render_request(folder.context())), event.context_digest, "context"
        elif isinstance(event, ContextSummarized) and event.request_digest:
            summaries += 1
            try:
                request = summarization_context(folder.context(), event.replaces_from, event.replaces_to, event.prompt_id)
            except ValueError as exc:  # a prompt this version does not know
                return RunVerification(stream_id, False, chain.ok, actions, summaries, first_bad_version=recorded.version,
                                       first_bad_position=chain.first_bad_position, reason=str(exc))
            expected, sent, what = digest(render_request(request)), event.request_digest, "summarization request"
        if expected != sent:
            return RunVerification(
                stream_id, False, chain.ok, actions, summaries, first_bad_version=recorded.version,
                first_bad_position=chain.first_bad_position,
                reason=f"the {what} rebuilt for v{recorded.version} has digest {expected[:12]}…, the model was sent {sent[:12]}…",
            )
        folder.add(recorded)
    if not chain.ok:
        return RunVerification(
            stream_id, False, False, actions, summaries, first_bad_position=chain.first_bad_position,
            reason=f"hash chain broken at position {chain.first_bad_position}: {chain.reason}",
        )
    return RunVerification(stream_id, True, True, actions, summaries)
