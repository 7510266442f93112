"""The decision policy: keep or mask each action, from rule hits, verdicts and people.

This is the one place where an action's training fate is decided; the training projection
calls `decide` and masks the actions it returns with `keep=False`. Nothing in the log is
rewritten: change the rule set (and so its fingerprint) and the same events decide anew.

Precedence, from strongest:
1. A person: the latest word of a person on an action decides. A reject masks it (the
   `human_rejected` rule), even when the policy ignores rule hits (`rules = "ignore"`) or a
   judge said keep; an approve keeps it, and the rule hits and verdicts that would have
   masked it are listed as overruled.
2. Rule hits of enabled rules mask the action (unless `rules = "ignore"`). With
   `judge_overrules_rules`, a counted judge's keep (a score at least `min_score`) overrules
   them the way an approve does, listing them as overruled; a person's reject stays.
3. Verdicts of the judges the policy counts (`judge_ids`): `mask`, or a score below
   `min_score`, masks; a judge error does what `judge_error` says.
4. No counted verdict at all: `unjudged` says.
An action is kept when no reason masks it. Every decision lists all its reasons, those that
keep it (a judge's `keep`) as well as those that mask it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from apollo_es.store import EventStore, RecordedEvent
from events import ActionJudged, AgentActed, HumanIntervened
from projections.rules import RuleHit, RuleSet

__all__ = ["Decision", "Reason", "annotations_for", "decide", "verdicts_by_action"]

HUMAN_RULES = frozenset({"human_rejected"})
"""Rules that carry a person's word: they mask whatever the policy says about rule hits."""


class Reason(msgspec.Struct, frozen=True, kw_only=True):
    """One input to a decision: who or what said it, and whether it masks the action."""

    source: Literal["human", "rule", "judge", "policy"]
    name: str
    """The rule's name, the judge's id, or the policy setting."""
    detail: str
    masks: bool

    def __str__(self) -> str:
        return f"{'mask' if self.masks else 'keep'} by {self.source} {self.name}: {self.detail}"


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Keep or mask one action, and why."""

    keep: bool
    reasons: tuple[Reason, ...] = ()
    action_version: int = 0
    stream_id: str = ""
    """The stream that recorded the action."""

    @property
    def masked_by(self) -> list[Reason]:
        return [r for r in self.reasons if r.masks]


def verdicts_by_action(events: Iterable[RecordedEvent], ruleset: RuleSet) -> dict[str, list[RecordedEvent]]:
    """The `ActionJudged` events of the judges the policy counts, by target action id.

    One verdict per (judge, action): when a judge judged an action twice (possible only for
    imported logs), its latest verdict counts.
    """
    patterns = ruleset.policy.judge_ids
    latest: dict[tuple[str, str], RecordedEvent] = {}
    for recorded in events:
        event = recorded.event
        if isinstance(event, ActionJudged) and any(fnmatch.fnmatchcase(event.judge_id, p) for p in patterns):
            key = (event.target_event_id, event.judge_id)
            if key not in latest or latest[key].position < recorded.position:
                latest[key] = recorded
    out: dict[str, list[RecordedEvent]] = {}
    for (target, _judge), recorded in sorted(latest.items(), key=lambda item: item[1].position):
        out.setdefault(target, []).append(recorded)
    return out


def decide(
    events: Sequence[RecordedEvent],
    ruleset: RuleSet,
    *,
    extra: Iterable[RecordedEvent] = (),
    hits: Sequence[RuleHit] | None = None,
) -> dict[str, Decision]:
    """Keep or mask every action in `events` (a stream's lineage, in version order).

    `extra` adds annotations of these actions recorded in other streams (a verdict on an
    inherited action lives in the stream that recorded the action, after the fork); get
    them with `annotations_for`. `hits` reuses rule hits already computed over the same events.
    """
    seen = {r.event_id for r in events}
    combined = [*events, *(r for r in extra if r.event_id not in seen)]
    if hits is None:
        hits = ruleset.evaluate(combined)
    policy = ruleset.policy
    hits_by_action: dict[str, list[RuleHit]] = {}
    for hit in hits:
        hits_by_action.setdefault(hit.action_event_id, []).append(hit)
    verdicts = verdicts_by_action(combined, ruleset)
    last_word = {
        r.event.target_event_id: r.event
        for r in sorted(combined, key=lambda r: r.position)
        if isinstance(r.event, HumanIntervened) and r.event.kind in ("reject", "approve") and r.event.target_event_id
    }

    decisions: dict[str, Decision] = {}
    for action in combined:
        if not isinstance(action.event, AgentActed) or action.event_id in decisions:
            continue
        reasons: list[Reason] = []
        for hit in hits_by_action.get(action.event_id, []):
            if hit.rule in HUMAN_RULES:
                reasons.append(Reason(source="human", name=hit.rule, detail=hit.reason, masks=True))
            else:
                reasons.append(Reason(source="rule", name=hit.rule, detail=hit.reason, masks=policy.rules == "mask"))
        judged = verdicts.get(action.event_id, [])
        keeper = next((r.event for r in judged if _keeps(r.event, ruleset)), None) if policy.judge_overrules_rules else None
        if keeper is not None:
            reasons = [_overruled(r, f"kept by judge {keeper.judge_id}") if r.source == "rule" and r.masks else r for r in reasons]
        reasons.extend(_judge_reason(recorded.event, ruleset) for recorded in judged)
        if not judged and policy.unjudged == "mask":
            reasons.append(Reason(source="policy", name="unjudged", detail="no verdict from a counted judge", masks=True))
        word = last_word.get(action.event_id)
        if word is not None and word.kind == "approve":
            reasons = [_approval(word), *(_overruled(r, f"approved by {word.annotator}") if r.masks else r for r in reasons)]
        decisions[action.event_id] = Decision(
            keep=not any(r.masks for r in reasons),
            reasons=tuple(reasons),
            action_version=action.version,
            stream_id=action.stream_id,
        )
    return decisions


def _approval(word: HumanIntervened) -> Reason:
    message = f": {word.message}" if word.message.strip() else ""
    return Reason(source="human", name="approved", detail=f"approved by {word.annotator}{message}", masks=False)


def _overruled(reason: Reason, by: str) -> Reason:
    return msgspec.structs.replace(reason, masks=False, detail=f"{reason.detail} [overruled: {by}]")


def _keeps(verdict: ActionJudged, ruleset: RuleSet) -> bool:
    """Whether a counted verdict is a keep the policy acts on: verdicts count, and the score passes."""
    policy = ruleset.policy
    passes = verdict.score is None or verdict.score >= policy.min_score
    return policy.mask_on_judge == "mask" and verdict.verdict == "keep" and passes


def _judge_reason(verdict: ActionJudged, ruleset: RuleSet) -> Reason:
    policy = ruleset.policy
    score = f" ({verdict.score:.2f})" if verdict.score is not None else ""
    detail = f"{verdict.verdict}{score}: {verdict.reason}" if verdict.reason else f"{verdict.verdict}{score}"
    if verdict.verdict == "error":
        masks = policy.judge_error == "mask"
    elif policy.mask_on_judge == "never":
        masks = False
    elif verdict.verdict == "mask":
        masks = True
    else:
        masks = verdict.score is not None and verdict.score < policy.min_score
        if masks:
            detail += f" [score below min_score {policy.min_score:g}]"
    return Reason(source="judge", name=verdict.judge_id, detail=detail, masks=masks)


def annotations_for(store: EventStore, events: Sequence[RecordedEvent]) -> list[RecordedEvent]:
    """Verdicts (and other events caused by these actions) recorded outside `events`.

    A branch reads its parent only up to the fork, but the judge appends a verdict to the
    stream that recorded the action, possibly after the fork; this finds it through the
    `causation_id` index. Observations are left out: they belong to the stream they ran in.
    """
    action_ids = [r.event_id for r in events if isinstance(r.event, AgentActed)]
    seen = {r.event_id for r in events}
    found = store.caused_by(action_ids, kinds=("ActionJudged", "HumanIntervened"))
    return [r for r in found if r.event_id not in seen and isinstance(r.event, (ActionJudged, HumanIntervened))]
