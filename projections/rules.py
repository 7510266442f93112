"""Symbolic filter rules: pure functions over a run's events that flag unreliable actions.

APOLLO keeps every action in the record but masks the unreliable ones out of training, so
their errors do not propagate. A rule looks at one stream's events (its lineage, in version
order, optionally followed by annotations of its actions recorded elsewhere, such as
verdicts) and returns a `RuleHit` per action it flags, each with a reason a person can read.

Rules (name: what it flags; parameters with their defaults in `examples/rules.toml`):
- `malformed_tool_call`: arguments that are not a JSON object, a call without a name, a
  repeated call id, and (with `check_schema`) arguments that break the tool's input schema.
- `unknown_tool`: a call to a tool the run did not offer (`RunStarted.tools`).
- `empty_response`: no text and no tool call (reasoning alone does not count by default).
- `error_observation`: the action an error observation speaks about: an exit code that is a
  failure for that command (`grep` exiting 1 is not), a call apollo-es refused
  (`ToolObserved.origin`), or an error's shape in a process's output (a Python traceback).
  A session's output speaks about the action that started the session or last fed it, not
  the one that read it (`projections.evidence`).
- `repeated_action`: a loop: `n` or more consecutive actions with identical tool calls.
- `after_stop`: actions recorded after a human `stop` (until a branch starts a new attempt).
- `human_rejected`: an action a person rejected (`HumanIntervened` of kind `reject`).
- `timeout`: the action whose command timed out (`origin`, or another harness's message).
- `truncated_response`: a response cut off at the output limit (`stop_reason`).

A `RuleSet` is a TOML file that turns rules on or off, sets their parameters and the
decision policy (`projections.policy`). Its `fingerprint` hashes the normalized
configuration and `RULES_VERSION`, so a dataset built under other rules is detected.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from apollo_es.errors import ApolloError
from apollo_es.store import RecordedEvent
from events import AgentActed, BranchCreated, HumanIntervened, RunStarted, ToolCall, ToolSpec
from projections.evidence import Evidence, evidence, last_command, observations_by_action

__all__ = [
    "RULES",
    "RULES_VERSION",
    "PolicyConfig",
    "Rule",
    "RuleConfig",
    "RuleHit",
    "RuleSet",
    "RuleSetError",
    "observations_by_action",
]

RULES_VERSION = "2"
"""Bump when a rule's behaviour changes for the same parameters: it changes every fingerprint."""


class RuleSetError(ApolloError):
    """A rule set file that cannot be read or names an unknown rule or a bad parameter."""


class RuleHit(msgspec.Struct, frozen=True, kw_only=True):
    """One action a rule flags, and why."""

    rule: str
    action_event_id: str
    action_version: int
    reason: str
    stream_id: str = ""
    """The stream that recorded the action (an ancestor's, for an inherited action)."""
    evidence_version: int | None = None
    """The version of the event that shows the problem (an observation, a human's stop), if not the action."""


# -- parameters ---------------------------------------------------------------------------


class _Params(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every rule's parameters (each rule declares its own fields and defaults)."""


class MalformedToolCallParams(_Params):
    check_schema: bool = True
    """Also check arguments against the tool's input schema: required, types, extra keys."""


class UnknownToolParams(_Params):
    allow: frozenset[str] = frozenset()
    """Tool names accepted even though the run does not offer them."""


class EmptyResponseParams(_Params):
    count_reasoning: bool = False
    """Whether reasoning alone (no text, no tool call) counts as a response."""


_TRACEBACK = (
    r'^Traceback \(most recent call last\):\n[ \t]+File "[^\n]*\n(?:[ \t][^\n]*\n|\n)*'
    r"(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?::[^\n]*)?$"
)
"""A Python traceback: the header, its frames (indented), and the exception line at the margin."""

_SYNTAX_ERROR = (
    r'^[ \t]+File "[^\n]*\n(?:[ \t][^\n]*\n)*'
    r"(?:[A-Za-z_]\w*\.)*(?:SyntaxError|IndentationError|TabError): [^\n]*$"
)
"""Python's report of a script that does not compile: a frame, the line and caret, the error (no header)."""

_OK_EXIT_CODES = {
    **dict.fromkeys(("grep", "egrep", "fgrep", "zgrep", "rg", "ag"), frozenset({1})),  # no match
    **dict.fromkeys(("diff", "cmp"), frozenset({1})),  # the inputs differ
    **dict.fromkeys(("test", "[", "[["), frozenset({1})),  # the condition is false
    **dict.fromkeys(("which", "pgrep", "pidof"), frozenset({1})),  # nothing found
}


class ErrorObservationParams(_Params):
    error_flag: bool = True
    """Flag observations marked `is_error` that carry no exit code: a tool's failure, or a call
    apollo-es refused or could not carry out (`origin = "harness"`). A command's flag only
    repeats its exit code, so the exit code decides for commands."""
    nonzero_exit: bool = True
    """Flag commands whose exit code is a failure: not 0, and not listed for the command in `ok_exit_codes`."""
    ok_exit_codes: dict[str, frozenset[int]] = msgspec.field(default_factory=lambda: dict(_OK_EXIT_CODES))
    """Exit codes besides 0 that are answers, not failures, by command name (`grep`: 1, no
    match). The name is that of the last simple command of the shell line, whose status the
    line returns (`cd x && grep y f` is judged as `grep`); for a session, of its command."""
    patterns: frozenset[str] = frozenset({_TRACEBACK, _SYNTAX_ERROR, r"^Your proposed edit has introduced new syntax error"})
    """Regular expressions (multi-line mode: ^ and $ match at each line) that mark an error in
    what a process printed. Stdout and stderr are recorded interleaved, so the defaults match
    only the shape of an error (a whole traceback, SWE-agent's edit linter), never a word a
    file may contain; file tools' output (`read_file`, `search`, `list_files`) is never matched."""
    ignore_tools: frozenset[str] = frozenset()
    """Tools whose observations are never taken as errors (a test runner whose failures are expected)."""
    ignore_patterns: frozenset[str] = frozenset()
    """Observations matching these are never taken as errors (another harness's own notices in
    imported runs). apollo-es marks its own in `origin`; runs recorded before it did can list
    `^The result of this \\w+ call was lost` and `^Not run: finish\\(\\) in the same turn`."""


class RepeatedActionParams(_Params):
    n: Annotated[int, msgspec.Meta(ge=2)] = 3
    """How many consecutive identical actions make a loop."""
    mark: Literal["repeats", "all"] = "repeats"
    """`repeats`: every action of the loop but the first; `all`: the first too."""


class AfterStopParams(_Params):
    pass


class HumanRejectedParams(_Params):
    pass


class TimeoutParams(_Params):
    patterns: frozenset[str] = frozenset(
        {
            r"(?i)^\[the command timed out after ",  # OpenHands
            r"was cancelled because it took more than \d+ seconds",  # SWE-agent
            r"^(?:[A-Za-z_]\w*\.)*TimeoutExpired\b",  # Python's subprocess, as an exception line
        }
    )
    """Regular expressions (multi-line mode) that mark a timeout in what a process printed
    (apollo-es's own timeouts are marked `origin = "timeout"`, and need none)."""
    exit_codes: frozenset[int] = frozenset()
    """Exit codes that mean a timeout (124 is what coreutils `timeout` returns)."""


class TruncatedResponseParams(_Params):
    stop_reasons: frozenset[str] = frozenset({"max_tokens", "length", "model_context_window_exceeded"})
    """Stop reasons that mean the response hit the output limit."""


# -- helpers ------------------------------------------------------------------------------


def _actions(events: Sequence[RecordedEvent]) -> list[RecordedEvent]:
    return [r for r in events if isinstance(r.event, AgentActed)]


def _hit(rule: str, action: RecordedEvent, reason: str, evidence: RecordedEvent | None = None) -> RuleHit:
    return RuleHit(
        rule=rule,
        action_event_id=action.event_id,
        action_version=action.version,
        reason=reason,
        stream_id=action.stream_id,
        evidence_version=evidence.version if evidence is not None else None,
    )


def _run_started(events: Sequence[RecordedEvent]) -> RunStarted | None:
    for recorded in events:
        if isinstance(recorded.event, RunStarted):
            return recorded.event
    return None


def _compile(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.MULTILINE) for p in sorted(patterns)]


def _last_match(patterns: list[re.Pattern[str]], text: str) -> re.Match[str] | None:
    """The match that starts last in `text` over all patterns: errors are reported at the end.

    For a Python traceback that is the exception line, which says more than its header.
    """
    best: re.Match[str] | None = None
    for pattern in patterns:
        for match in pattern.finditer(text):
            if best is None or match.start() > best.start():
                best = match
    return best


def _excerpt(text: str, match: re.Match[str] | None = None, width: int = 80) -> str:
    """The first line of `text`, or the line where `match` ends (a traceback's exception line)."""
    if match is None:
        line = text.strip().splitlines()[0] if text.strip() else ""
    else:
        end = max(match.start(), match.end() - 1)
        start = text.rfind("\n", 0, end) + 1
        stop = text.find("\n", end)
        line = text[start : stop if stop >= 0 else len(text)]
    return _clip(line.strip(), width)


def _final_line(text: str, width: int = 80) -> str:
    """The last line of `text`: where apollo-es puts its word on a call (after any output)."""
    return _clip(text.strip().splitlines()[-1].strip() if text.strip() else "", width)


def _clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _schema_problem(call: ToolCall, spec: ToolSpec) -> str:
    """What is wrong with the call's arguments under the tool's (top-level) JSON Schema, or ''."""
    schema = spec.input_schema if isinstance(spec.input_schema, dict) else {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    missing = [key for key in required if key not in call.arguments]
    if missing:
        return f"{call.name}: missing required argument(s) {', '.join(map(str, missing))}"
    if schema.get("additionalProperties") is False:
        extra = sorted(key for key in call.arguments if key not in properties)
        if extra:
            return f"{call.name}: unexpected argument(s) {', '.join(extra)}"
    for key, value in call.arguments.items():
        declared = properties.get(key, {}).get("type") if isinstance(properties.get(key), dict) else None
        if declared is None:
            continue
        allowed = [declared] if isinstance(declared, str) else list(declared)
        checks = [_JSON_TYPES[t] for t in allowed if t in _JSON_TYPES]
        if checks and not any(check(value) for check in checks):
            return f"{call.name}: argument {key!r} must be {' or '.join(allowed)}, got {type(value).__name__}"
    return ""


# -- the rules ----------------------------------------------------------------------------


def malformed_tool_call(events: Sequence[RecordedEvent], params: MalformedToolCallParams) -> list[RuleHit]:
    """Calls whose arguments are not a JSON object, that have no name or reuse a call id, or break the schema."""
    run = _run_started(events)
    specs = {spec.name: spec for spec in run.tools} if run else {}
    hits = []
    for action in _actions(events):
        problems = []
        seen_ids: set[str] = set()
        for call in action.event.tool_calls:
            if call.raw_arguments is not None:
                problems.append(f"{call.name or '(no name)'}: arguments are not a JSON object: {call.raw_arguments[:60]!r}")
            elif not call.name.strip():
                problems.append("a tool call without a name")
            elif params.check_schema and call.name in specs:
                problem = _schema_problem(call, specs[call.name])
                if problem:
                    problems.append(problem)
            if call.id in seen_ids:
                problems.append(f"tool call id {call.id!r} used twice")
            seen_ids.add(call.id)
        if problems:
            hits.append(_hit("malformed_tool_call", action, "; ".join(problems)))
    return hits


def unknown_tool(events: Sequence[RecordedEvent], params: UnknownToolParams) -> list[RuleHit]:
    """Calls to tools the run did not offer. A run that lists no tools is not checked."""
    run = _run_started(events)
    if run is None or not run.tools:
        return []
    offered = {spec.name for spec in run.tools} | set(params.allow)
    hits = []
    for action in _actions(events):
        unknown = [call.name for call in action.event.tool_calls if call.name.strip() and call.name not in offered]
        if unknown:
            hits.append(_hit("unknown_tool", action, f"unknown tool(s) {', '.join(repr(n) for n in unknown)}; offered: {', '.join(sorted(offered))}"))
    return hits


def empty_response(events: Sequence[RecordedEvent], params: EmptyResponseParams) -> list[RuleHit]:
    """Responses with no text and no tool call."""
    hits = []
    for action in _actions(events):
        event: AgentActed = action.event
        if event.text.strip() or event.tool_calls:
            continue
        if params.count_reasoning and event.reasoning.strip():
            continue
        detail = " (reasoning only)" if event.reasoning.strip() else ""
        hits.append(_hit("empty_response", action, f"no text and no tool call{detail}"))
    return hits


def error_observation(events: Sequence[RecordedEvent], params: ErrorObservationParams) -> list[RuleHit]:
    """The action an error observation speaks about: a failing exit code, a harness error, an error's shape.

    Per observation, by `origin`: "harness" (apollo-es refused or ended the call) is an error
    of the call; "timeout" is the `timeout` rule's case; "notice" says nothing about the
    action. The tool's own outcome fails when its exit code is a failure for the command
    (`ok_exit_codes`), when it has no exit code and is flagged `is_error`, or when a process
    printed an error's shape (`patterns`). A session's output speaks about the action that
    started the session or last sent it input (`projections.evidence`), not the one that read it.
    """
    patterns = _compile(params.patterns)
    ignored = _compile(params.ignore_patterns)

    def reason(item: Evidence) -> str:
        event = item.event
        if item.tool in params.ignore_tools or any(pattern.search(event.output) for pattern in ignored):
            return ""
        if event.origin == "harness":
            return f"apollo-es refused or ended the call: {_final_line(event.output)}" if params.error_flag else ""
        if event.origin != "tool":
            return ""
        match = _last_match(patterns, event.output) if item.process_output else None
        if event.exit_code is not None:
            if params.nonzero_exit and event.exit_code != 0 and event.exit_code not in params.ok_exit_codes.get(last_command(item.command), ()):
                return f"exit code {event.exit_code}: {_excerpt(event.output, match)}"
        elif params.error_flag and event.is_error:
            return f"error observation: {_excerpt(event.output)}"
        return f"error in output: {_excerpt(event.output, match)}" if match else ""

    return _attributed("error_observation", events, reason)


def _attributed(rule: str, events: Sequence[RecordedEvent], reason_for: Callable[[Evidence], str]) -> list[RuleHit]:
    """One hit per action, on the action each observation's outcome speaks about, with the earliest evidence."""
    hits: dict[str, RuleHit] = {}
    for item in evidence(events):
        if item.cause.event_id in hits:
            continue
        reason = reason_for(item)
        if not reason:
            continue
        where = f"{item.tool}: " if item.tool else ""
        if item.cause is not item.action:
            where = f"session {item.session}, read by {item.tool} at v{item.observation.version}: "
        hits[item.cause.event_id] = _hit(rule, item.cause, where + reason, item.observation)
    return sorted(hits.values(), key=lambda h: h.action_version)


def _call_key(call: ToolCall) -> tuple[str, str]:
    arguments = call.raw_arguments if call.raw_arguments is not None else json.dumps(call.arguments, sort_keys=True)
    return call.name, arguments


def repeated_action(events: Sequence[RecordedEvent], params: RepeatedActionParams) -> list[RuleHit]:
    """Loops: `n` or more consecutive actions with the same tool calls (names and arguments).

    An action without a tool call ends a streak; events other than actions (observations,
    human messages, summaries) do not.
    """
    hits: list[RuleHit] = []
    streak: list[RecordedEvent] = []
    streak_key: tuple | None = None

    def close() -> None:
        if len(streak) >= params.n:
            marked = streak if params.mark == "all" else streak[1:]
            name = ", ".join(call.name for call in streak[0].event.tool_calls)
            for action in marked:
                hits.append(_hit("repeated_action", action, f"{len(streak)} identical consecutive calls of {name} from v{streak[0].version}"))

    for action in _actions(events):
        key = tuple(_call_key(call) for call in action.event.tool_calls) or None
        if key is not None and key == streak_key:
            streak.append(action)
            continue
        close()
        streak, streak_key = ([action], key) if key is not None else ([], None)
    close()
    return hits


def after_stop(events: Sequence[RecordedEvent], params: AfterStopParams) -> list[RuleHit]:
    """Actions recorded after a human `stop`; a `BranchCreated` starts a new attempt and clears it."""
    hits = []
    stop: RecordedEvent | None = None
    for recorded in events:
        event = recorded.event
        if isinstance(event, HumanIntervened) and event.kind == "stop":
            stop = stop or recorded
        elif isinstance(event, BranchCreated):
            stop = None
        elif isinstance(event, AgentActed) and stop is not None:
            hits.append(_hit("after_stop", recorded, f"after a stop by {stop.event.annotator} at v{stop.version}", stop))
    return hits


def human_rejected(events: Sequence[RecordedEvent], params: HumanRejectedParams) -> list[RuleHit]:
    """Actions a person rejected (a `reject` naming the action in `target_event_id`)."""
    actions = {a.event_id: a for a in _actions(events)}
    hits, seen = [], set()
    for recorded in events:
        event = recorded.event
        if isinstance(event, HumanIntervened) and event.kind == "reject" and event.target_event_id in actions:
            if event.target_event_id in seen:
                continue
            seen.add(event.target_event_id)
            message = f": {_excerpt(event.message)}" if event.message.strip() else ""
            hits.append(_hit("human_rejected", actions[event.target_event_id], f"rejected by {event.annotator}{message}", recorded))
    return sorted(hits, key=lambda h: h.action_version)


def timeout(events: Sequence[RecordedEvent], params: TimeoutParams) -> list[RuleHit]:
    """The action whose command timed out: apollo-es killed it (`origin = "timeout"`), or its output says so.

    `patterns` and `exit_codes` judge the tool's own outcome: another harness's timeout
    messages in imported runs, a timeout inside a job; a session's is blamed on its cause.
    """
    patterns = _compile(params.patterns)

    def reason(item: Evidence) -> str:
        event = item.event
        if event.origin == "timeout":
            return f"timed out: {_final_line(event.output)}"
        if event.origin != "tool":
            return ""
        if event.exit_code is not None and event.exit_code in params.exit_codes:
            return f"exit code {event.exit_code} means a timeout"
        match = _last_match(patterns, event.output) if item.process_output else None
        return f"timed out: {_excerpt(event.output, match)}" if match else ""

    return _attributed("timeout", events, reason)


def truncated_response(events: Sequence[RecordedEvent], params: TruncatedResponseParams) -> list[RuleHit]:
    """Responses cut off at the output limit."""
    return [
        _hit("truncated_response", action, f"cut off at the output limit (stop reason {action.event.stop_reason!r})")
        for action in _actions(events)
        if action.event.stop_reason in params.stop_reasons
    ]


# -- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A rule: its function, its parameters' type (whose defaults are the defaults) and what it flags."""

    name: str
    fn: Callable[[Sequence[RecordedEvent], Any], list[RuleHit]]
    params: type[_Params]
    description: str


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("malformed_tool_call", malformed_tool_call, MalformedToolCallParams, "arguments that are not a JSON object or break the tool's schema"),
        Rule("unknown_tool", unknown_tool, UnknownToolParams, "a call to a tool the run did not offer"),
        Rule("empty_response", empty_response, EmptyResponseParams, "no text and no tool call"),
        Rule("error_observation", error_observation, ErrorObservationParams, "an error observation, blamed on its cause (exit code, harness error, traceback)"),
        Rule("repeated_action", repeated_action, RepeatedActionParams, "a loop of identical consecutive tool calls"),
        Rule("after_stop", after_stop, AfterStopParams, "an action after a human stop"),
        Rule("human_rejected", human_rejected, HumanRejectedParams, "an action a person rejected"),
        Rule("timeout", timeout, TimeoutParams, "the command timed out"),
        Rule("truncated_response", truncated_response, TruncatedResponseParams, "the response hit the output limit"),
    )
}
"""Every rule by name, in the order they run and are listed."""


# -- rule sets ----------------------------------------------------------------------------


class RuleConfig(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = True
    params: Any = None
    """The rule's parameters Struct (defaults filled in)."""


class PolicyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How `projections.policy.decide` turns hits and verdicts into keep or mask.

    Precedence: a person's word, then rule hits (unless `judge_overrules_rules` lets a
    judge's keep overrule them), then the judges' verdicts, then `unjudged`.
    """

    rules: Literal["mask", "ignore"] = "mask"
    """What a hit of an enabled rule does (`ignore`: show the hits, mask nothing for them)."""
    judge_overrules_rules: bool = False
    """Whether a counted judge's `keep` (score at least `min_score`, `mask_on_judge = "mask"`)
    overrules rule hits, as a person's approve does. Off by default: a rule's hit is a
    checkable fact (an exit code, a traceback) and a judge is a model that can be talked into
    a keep; turn it on where the rules are known to be noisy (imported runs, new tools).
    Never overrules a person's reject."""
    judge_ids: frozenset[str] = frozenset({"*"})
    """Judges whose verdicts count: ids or glob patterns (`claude-*@judge-v1`); empty: none."""
    mask_on_judge: Literal["mask", "never"] = "mask"
    """`mask`: a judge's `mask` verdict masks the action; `never`: verdicts are shown but ignored."""
    min_score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    """A verdict whose score is below this masks the action even when it says keep (0 turns this off)."""
    judge_error: Literal["keep", "mask"] = "keep"
    """What a judge error (malformed output after the retries) does."""
    unjudged: Literal["keep", "mask"] = "keep"
    """What happens to an action no counted judge has judged and nothing else masked."""


_DEFAULT_POLICY = PolicyConfig()


class RuleSet:
    """Which rules run with which parameters, and the decision policy; with a fingerprint.

    Example:
        ruleset = RuleSet.load("examples/rules.toml")
        hits = ruleset.evaluate(store.read("run-1"))
        print(ruleset.fingerprint)

    Rules the file does not mention run with their defaults; `enabled = false` turns one off.
    A top-level `description` is for people and is not part of the fingerprint.
    """

    def __init__(self, rules: dict[str, RuleConfig] | None = None, policy: PolicyConfig = _DEFAULT_POLICY, *, source: str = "<defaults>") -> None:
        given = dict(rules or {})
        unknown = sorted(set(given) - set(RULES))
        if unknown:
            raise RuleSetError(f"{source}: unknown rule(s) {', '.join(unknown)}; known rules: {', '.join(RULES)}")
        self.rules: dict[str, RuleConfig] = {}
        for name, rule in RULES.items():
            config = given.get(name, RuleConfig())
            params = config.params if config.params is not None else rule.params()
            if not isinstance(params, rule.params):
                raise RuleSetError(f"{source}: parameters of {name} must be a {rule.params.__name__}")
            _check_patterns(name, params, source)
            self.rules[name] = RuleConfig(enabled=config.enabled, params=params)
        self.policy = policy
        self.source = source

    # -- construction ---------------------------------------------------------------

    @classmethod
    def default(cls) -> RuleSet:
        """Every rule on with its default parameters, and the default policy."""
        return cls()

    @classmethod
    def load(cls, path: str | Path) -> RuleSet:
        """Read a rule set TOML file; `RuleSetError` says what is wrong and where."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleSetError(f"cannot read rule set {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise RuleSetError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
        return cls.loads(text, source=str(path))

    @classmethod
    def loads(cls, text: str, *, source: str = "<string>") -> RuleSet:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RuleSetError(f"{source} is not valid TOML: {exc}") from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> RuleSet:
        """Build from the TOML's shape: `{"rules": {NAME: {"enabled": ..., param: ...}}, "policy": {...}}`."""
        extra = sorted(set(data) - {"rules", "policy", "rules_version", "description"})
        if extra:
            raise RuleSetError(
                f"{source}: unknown top-level key(s) {', '.join(extra)}; expected description, [rules.NAME] and [policy] tables"
            )
        version = data.get("rules_version")
        if version is not None and str(version) != RULES_VERSION:
            raise RuleSetError(f"{source} was written for rules version {version}, this apollo-es has version {RULES_VERSION}")
        tables = data.get("rules", {})
        if not isinstance(tables, dict):
            raise RuleSetError(f"{source}: `rules` must be a table of [rules.NAME] tables")
        configs: dict[str, RuleConfig] = {}
        for name, table in tables.items():
            if name not in RULES:
                raise RuleSetError(f"{source}: unknown rule {name!r}; known rules: {', '.join(RULES)}")
            if not isinstance(table, dict):
                raise RuleSetError(f"{source}: [rules.{name}] must be a table")
            table = dict(table)
            enabled = table.pop("enabled", True)
            if not isinstance(enabled, bool):
                raise RuleSetError(f"{source}: [rules.{name}] enabled must be true or false, not {enabled!r}")
            params_type = RULES[name].params
            try:
                params = msgspec.convert(table, params_type)
            except msgspec.ValidationError as exc:
                raise RuleSetError(f"{source}: [rules.{name}]: {_explain(exc, params_type)}") from exc
            configs[name] = RuleConfig(enabled=enabled, params=params)
        policy_table = data.get("policy", {})
        if not isinstance(policy_table, dict):
            raise RuleSetError(f"{source}: `policy` must be a table")
        try:
            policy = msgspec.convert(policy_table, PolicyConfig)
        except msgspec.ValidationError as exc:
            raise RuleSetError(f"{source}: [policy]: {_explain(exc, PolicyConfig)}") from exc
        return cls(configs, policy, source=source)

    def with_rule(self, name: str, *, enabled: bool | None = None, **params: Any) -> RuleSet:
        """A copy with one rule switched or re-parametrized (for experiments and tests)."""
        if name not in RULES:
            raise RuleSetError(f"unknown rule {name!r}; known rules: {', '.join(RULES)}")
        data = self.to_dict()
        table = data["rules"][name]
        if enabled is not None:
            table["enabled"] = enabled
        table.update(params)
        return RuleSet.from_dict(data, source=self.source)

    # -- identity ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The normalized configuration: every rule with every parameter, sets sorted."""
        rules = {}
        for name, config in self.rules.items():
            table = {"enabled": config.enabled}
            table.update(_canonical(msgspec.structs.asdict(config.params)))
            rules[name] = table
        return {"rules_version": RULES_VERSION, "rules": rules, "policy": _canonical(msgspec.structs.asdict(self.policy))}

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of the normalized configuration (rules version included)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def enabled(self) -> list[str]:
        return [name for name, config in self.rules.items() if config.enabled]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleSet) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"RuleSet({self.source!r}, enabled={self.enabled}, fingerprint={self.fingerprint[:12]})"

    # -- use --------------------------------------------------------------------------

    def evaluate(self, events: Sequence[RecordedEvent]) -> list[RuleHit]:
        """Every hit of every enabled rule, in rule order then action order."""
        events = list(events)
        hits: list[RuleHit] = []
        for name in self.enabled:
            hits.extend(RULES[name].fn(events, self.rules[name].params))
        return hits


def _canonical(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _check_patterns(name: str, params: _Params, source: str) -> None:
    for field in ("patterns", "ignore_patterns"):
        for pattern in getattr(params, field, None) or ():
            try:
                re.compile(pattern, re.MULTILINE)
            except re.error as exc:
                raise RuleSetError(f"{source}: [rules.{name}] {field}: {pattern!r} is not a valid regular expression: {exc}") from exc


def _explain(exc: msgspec.ValidationError, params_type: type) -> str:
    """msgspec's message, with the accepted parameters when a key is unknown."""
    message = str(exc)
    match = re.match(r"Object contains unknown field `(.+?)`", message)
    if match:
        known = [f for f in params_type.__struct_fields__]
        if params_type is not PolicyConfig:
            known = ["enabled", *known]
        return f"unknown parameter {match[1]!r}; accepted: {', '.join(known)}"
    match = re.fullmatch(r"(.*) - at `\$\.([^`]+)`", message, re.DOTALL)
    if match:
        return f"{match[2]}: {match[1]}"
    return message
