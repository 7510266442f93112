"""Filter rules on crafted events, rule sets and their fingerprints, and the decision policy."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import projections.rules as rules_module
from apollo_es import EventStore, NewEvent
from events import (
    ActionJudged,
    AgentActed,
    BranchCreated,
    HumanIntervened,
    RunFinished,
    RunStarted,
    ToolCall,
    ToolObserved,
    ToolSpec,
)
from projections.context import fold
from projections.policy import annotations_for, decide
from projections.rules import RULES, RULES_VERSION, RuleSet, RuleSetError, observations_by_action

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rules.toml"

TOOLS = [
    ToolSpec(
        name="run_command",
        input_schema={
            "type": "object",
            "properties": {"command": {"type": "string"}, "timeout": {"type": ["number", "null"]}},
            "required": ["command"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(name="finish", input_schema={"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}),
]


class Run:
    """Appends a crafted run to a store: actions with their observations, human events, ..."""

    def __init__(self, store: EventStore, stream_id: str = "run-1", tools: list[ToolSpec] | None = TOOLS) -> None:
        self.store, self.stream_id, self.calls = store, stream_id, 0
        if tools is not None:
            store.append(stream_id, [RunStarted(task_id="t", task="Train a tiny model", tools=tools)])

    def act(self, *calls: tuple[str, dict] | ToolCall, text: str = "", observe: str | None = "ok", **fields) -> str:
        tool_calls = []
        for call in calls:
            if isinstance(call, tuple):
                self.calls += 1
                call = ToolCall(id=f"c{self.calls}", name=call[0], arguments=call[1])
            tool_calls.append(call)
        [action] = self.store.append(self.stream_id, [AgentActed(model="m", text=text, tool_calls=tool_calls, **fields)], actor="agent")
        if observe is not None:
            for call in tool_calls:
                self.observe(call.id, observe, cause=action.event_id, tool_name=call.name, exit_code=0)
        return action.event_id

    def observe(self, call_id: str, output: str, *, cause: str | None = None, **fields) -> None:
        event = ToolObserved(tool_call_id=call_id, output=output, **fields)
        self.store.append(self.stream_id, [NewEvent(event=event, causation_id=cause)], actor="agent")

    def human(self, kind: str, message: str = "hm", target: str | None = None) -> None:
        event = HumanIntervened(annotator="ana", kind=kind, message=message, target_event_id=target)
        self.store.append(self.stream_id, [event], actor="human:ana")

    @property
    def events(self):
        return self.store.read(self.stream_id)

    def version(self, event_id: str) -> int:
        return next(r.version for r in self.events if r.event_id == event_id)


@pytest.fixture
def store():
    with EventStore(":memory:") as s:
        yield s


@pytest.fixture
def run(store) -> Run:
    return Run(store)


def hits(rule: str, events, **params):
    spec = RULES[rule]
    return spec.fn(list(events), spec.params(**params))


def hit_ids(rule: str, events, **params) -> list[str]:
    return [h.action_event_id for h in hits(rule, events, **params)]


CMD = ("run_command", {"command": "ls"})


# -- each rule ----------------------------------------------------------------------------


def test_malformed_tool_call(run):
    good = run.act(CMD)
    raw = run.act(ToolCall(id="r1", name="run_command", raw_arguments='{"command": "ls"'))
    nameless = run.act(ToolCall(id="n1", name=" ", arguments={}))
    missing = run.act(("run_command", {"timeout": 5}))
    wrong_type = run.act(("run_command", {"command": 42}))
    extra = run.act(("run_command", {"command": "ls", "cwd": "/"}))
    nullable = run.act(("run_command", {"command": "ls", "timeout": None}))
    twice = run.act(ToolCall(id="d", name="run_command", arguments={"command": "a"}), ToolCall(id="d", name="run_command", arguments={"command": "b"}))
    found = {h.action_event_id: h.reason for h in hits("malformed_tool_call", run.events)}
    assert set(found) == {raw, nameless, missing, wrong_type, extra, twice}
    assert good not in found and nullable not in found
    assert "not a JSON object" in found[raw] and "missing required argument(s) command" in found[missing]
    assert "'command' must be string" in found[wrong_type] and "unexpected argument(s) cwd" in found[extra]
    assert "used twice" in found[twice]
    assert set(hit_ids("malformed_tool_call", run.events, check_schema=False)) == {raw, nameless, twice}


def test_unknown_tool(store, run):
    known = run.act(CMD)
    unknown = run.act(("browse", {"url": "x"}))
    mixed = run.act(CMD, ("teleport", {}))
    assert hit_ids("unknown_tool", run.events) == [unknown, mixed]
    assert "'teleport'" in hits("unknown_tool", run.events)[1].reason
    assert hit_ids("unknown_tool", run.events, allow=frozenset({"browse", "teleport"})) == []
    assert known
    # A run that lists no tools (an import without specs) cannot be checked.
    bare = Run(store, "bare", tools=[])
    bare.act(("anything", {}))
    assert hit_ids("unknown_tool", bare.events) == []


def test_empty_response(run):
    run.act(CMD)
    empty = run.act(observe=None)
    blank = run.act(text="  \n", observe=None)
    thinking = run.act(observe=None, reasoning="let me think")
    run.act(text="The answer is 4.", observe=None)
    assert hit_ids("empty_response", run.events) == [empty, blank, thinking]
    assert "reasoning only" in hits("empty_response", run.events)[2].reason
    assert hit_ids("empty_response", run.events, count_reasoning=True) == [empty, blank]


def test_error_observation_flags_the_action_that_caused_it(run):
    clean = run.act(CMD)
    flagged = run.act(CMD, observe=None)
    run.observe("c2", "No such file", cause=flagged, is_error=True, tool_name="run_command")
    exited = run.act(CMD, observe=None)
    run.observe("c3", "boom\n[exit code 2]", cause=exited, exit_code=2)
    traceback = run.act(("run_command", {"command": "python t.py | tee log"}), observe=None)
    run.observe("c4", 'Traceback (most recent call last):\n  File "t.py", line 1\nZeroDivisionError: division by zero\n', cause=traceback, exit_code=0)
    # No causation_id (an import): matched through the tool call id.
    by_call_id = run.act(CMD, observe=None)
    run.observe("c5", "bash: foo: command not found", exit_code=127)
    bare_line = run.act(CMD, observe=None)  # an exception's name without a traceback may be a file's text
    run.observe("c6", "training...\nRuntimeError: CUDA out of memory\n", cause=bare_line)
    mentions = run.act(CMD, observe=None)
    run.observe("c7", "the word Error: inside a line is fine; so is a ValueError mentioned mid-sentence", cause=mentions)
    found = {h.action_event_id: h for h in hits("error_observation", run.events)}
    assert list(found) == [flagged, exited, traceback, by_call_id]
    assert clean not in found and mentions not in found and bare_line not in found
    assert found[exited].reason == "run_command: exit code 2: boom"
    assert found[traceback].reason == "run_command: error in output: ZeroDivisionError: division by zero"
    assert found[flagged].evidence_version == run.version(flagged) + 1
    only_flags = hit_ids("error_observation", run.events, patterns=frozenset())
    assert only_flags == [flagged, exited, by_call_id]
    assert hit_ids("error_observation", run.events, error_flag=False, nonzero_exit=False) == [traceback]
    assert hit_ids("error_observation", run.events, patterns=frozenset({r"^RuntimeError: "})) == [flagged, exited, by_call_id, bare_line]


def test_error_observation_ignores_listed_tools_and_counts_each_action_once(run):
    tests = run.act(("run_tests", {}), observe=None)
    run.observe("c1", "1 failed", cause=tests, tool_name="run_tests", exit_code=1)
    two = run.act(CMD, CMD, observe=None)
    run.observe("c2", "x", cause=two, is_error=True)
    run.observe("c3", "y", cause=two, is_error=True)
    assert hit_ids("error_observation", run.events) == [tests, two]
    assert hit_ids("error_observation", run.events, ignore_tools=frozenset({"run_tests"})) == [two]


def test_error_observation_skips_the_harness_notices_by_origin(run):
    lost_text = "The result of this run_command call was lost: the agent process stopped while it ran. It may or may not have taken effect."
    lost = run.act(CMD, observe=None)
    run.observe("c1", lost_text, cause=lost, is_error=True, origin="notice")
    after_finish = run.act(("finish", {"answer": "42"}), CMD, observe=None)
    run.observe("c2", "Final answer submitted.", cause=after_finish)
    run.observe("c3", "Not run: finish() in the same turn ended the task.", cause=after_finish, is_error=True, origin="notice")
    assert hit_ids("error_observation", run.events) == []
    # Recorded before `origin` existed, the same notices read as the tool's errors, unless listed.
    legacy = run.act(CMD, observe=None)
    run.observe("c5", lost_text, cause=legacy, is_error=True)
    assert hit_ids("error_observation", run.events) == [legacy]
    listed = frozenset({r"^The result of this \w+ call was lost"})
    assert hit_ids("error_observation", run.events, ignore_patterns=listed) == []


def test_feedback_without_a_tool_call_belongs_to_the_action_before_it(run):
    silent = run.act(text="I think we are done", observe=None)
    run.observe("", "No tool was called. Call exactly one tool.", is_error=True)
    assert observations_by_action(run.events)[silent][0].event.output.startswith("No tool")
    assert hit_ids("error_observation", run.events) == [silent]


def test_repeated_action_flags_loops(run):
    first = run.act(("run_command", {"command": "ls", "timeout": 5}))
    loop = [run.act(("run_command", {"timeout": 5, "command": "ls"})) for _ in range(3)]  # same arguments, other key order
    other = run.act(("run_command", {"command": "pwd"}))
    pair = [run.act(CMD), run.act(CMD)]
    run.act(observe=None)  # an action without a tool call ends a streak
    after = [run.act(CMD) for _ in range(2)]
    assert hit_ids("repeated_action", run.events) == loop
    assert hit_ids("repeated_action", run.events, mark="all") == [first, *loop]
    assert hit_ids("repeated_action", run.events, n=2) == [*loop, pair[1], after[1]]
    assert hit_ids("repeated_action", run.events, n=5) == []
    assert "4 identical consecutive calls of run_command" in hits("repeated_action", run.events)[0].reason
    assert other


def test_repeated_action_sees_through_human_messages(run):
    actions = [run.act(CMD)]
    run.human("guidance", "stop listing files")
    actions += [run.act(CMD), run.act(CMD)]
    assert hit_ids("repeated_action", run.events) == actions[1:]


def test_after_stop_until_a_branch(store, run):
    before = run.act(CMD)
    run.human("stop", "drifting")
    late = [run.act(CMD), run.act(("run_command", {"command": "pwd"}))]
    assert hit_ids("after_stop", run.events) == late
    assert "after a stop by ana" in hits("after_stop", run.events)[0].reason
    child = store.branch("run-1", at_version=run.version(before) + 2, new_stream_id="run-1~b")  # after the stop
    branch = Run(store, child, tools=None)
    fresh = branch.act(CMD)
    assert hit_ids("after_stop", branch.events) == []
    assert fresh


def test_human_rejected(run):
    kept = run.act(CMD)
    rejected = run.act(CMD)
    run.human("reject", "wrong file", target=rejected)
    run.human("reject", "again", target=rejected)
    run.human("reject", "no target")
    found = hits("human_rejected", run.events)
    assert [h.action_event_id for h in found] == [rejected]
    assert found[0].reason == "rejected by ana: wrong file"
    assert kept


def test_timeout(run):
    ours = run.act(("run_command", {"command": "sleep 99", "timeout": 1}), observe=None)
    run.observe("c1", "partial\n[command timed out after 1 s; its process group was killed]", cause=ours, is_error=True, exit_code=-9, origin="timeout")
    swe = run.act(CMD, observe=None)
    run.observe("c2", "The command 'sleep 99' was cancelled because it took more than 300 seconds. Please try a different command.", cause=swe)
    openhands = run.act(CMD, observe=None)
    run.observe("c3", "[The command timed out after 120 seconds.]", cause=openhands)
    coreutils = run.act(CMD, observe=None)
    run.observe("c4", "", cause=coreutils, exit_code=124)
    python = run.act(CMD, observe=None)
    run.observe("c5", 'Traceback (most recent call last):\n  File "x.py", line 1\nsubprocess.TimeoutExpired: Command \'make\' timed out after 5 seconds', cause=python, exit_code=1)
    mentions = run.act(("run_command", {"command": "cat NOTES.md"}), observe=None)
    run.observe("c6", "the eval hit a TimeoutExpired; [command timed out after 9 s] is what apollo-es prints", cause=mentions, exit_code=0)
    read = run.act(("read_file", {"path": "NOTES.md"}), observe=None)
    run.observe("c7", "[The command timed out after 120 seconds.]", cause=read, tool_name="read_file")
    run.act(CMD)
    assert hit_ids("timeout", run.events) == [ours, swe, openhands, python]
    assert hit_ids("timeout", run.events, exit_codes=frozenset({124})) == [ours, swe, openhands, coreutils, python]
    assert hits("timeout", run.events)[0].reason == "run_command: timed out: [command timed out after 1 s; its process group was killed]"
    # apollo-es's own timeouts are the timeout rule's case, not error_observation's.
    assert ours not in hit_ids("error_observation", run.events)


def test_truncated_response(run):
    anthropic = run.act(CMD, stop_reason="max_tokens")
    openai = run.act(CMD, stop_reason="length")
    run.act(CMD, stop_reason="tool_use")
    run.act(CMD, stop_reason="end_turn")
    assert hit_ids("truncated_response", run.events) == [anthropic, openai]
    assert hit_ids("truncated_response", run.events, stop_reasons=frozenset({"length"})) == [openai]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(range(8)), max_size=25))
def test_rules_never_fail_on_any_sequence_of_events(kinds):
    """Whatever order events come in (imports are messy), rules answer and only name actions."""
    from conftest import one_of_each_kind

    # The store takes RunStarted only first and BranchCreated only from branch(): any order of the rest.
    samples = [e for e in one_of_each_kind() if not isinstance(e, (RunStarted, BranchCreated))]
    with EventStore(":memory:") as store:
        store.append("s", [one_of_each_kind()[0], *(samples[k % len(samples)] for k in kinds)])
        events = store.read("s")
        ruleset = RuleSet.default()
        found = ruleset.evaluate(events)
        actions = {r.event_id for r in events if isinstance(r.event, AgentActed)}
        assert {h.action_event_id for h in found} <= actions
        assert set(decide(events, ruleset)) == actions


# -- rule sets ----------------------------------------------------------------------------


def test_the_example_rule_set_is_the_documented_default():
    example = RuleSet.load(EXAMPLE)
    assert example.fingerprint == RuleSet.default().fingerprint
    assert example.enabled == list(RULES)


def test_changing_a_parameter_changes_the_fingerprint():
    base = RuleSet.loads("[rules.repeated_action]\nn = 3\n")
    assert base.fingerprint == RuleSet.default().fingerprint  # n = 3 is the default
    changed = {
        RuleSet.loads("[rules.repeated_action]\nn = 4\n").fingerprint,
        RuleSet.loads("[rules.repeated_action]\nenabled = false\n").fingerprint,
        RuleSet.loads("[rules.timeout]\nexit_codes = [124]\n").fingerprint,
        RuleSet.loads("[rules.error_observation]\npatterns = ['^Traceback']\n").fingerprint,
        RuleSet.loads("[policy]\nmin_score = 0.6\n").fingerprint,
        RuleSet.loads("[policy]\njudge_ids = ['claude@judge-v1']\n").fingerprint,
        base.with_rule("empty_response", count_reasoning=True).fingerprint,
        RuleSet.loads("[rules.error_observation.ok_exit_codes]\ngrep = [1]\n").fingerprint,
        RuleSet.loads("[policy]\njudge_overrules_rules = true\n").fingerprint,
    }
    assert base.fingerprint not in changed and len(changed) == 9


def test_the_same_configuration_written_differently_has_the_same_fingerprint():
    one = RuleSet.loads(
        """
        [rules.repeated_action]
        n = 4
        mark = "all"
        [rules.timeout]
        exit_codes = [124, 137]
        [policy]
        min_score = 0.25
        judge_ids = ["a@v1", "b@v1"]
        """
    )
    two = RuleSet.loads(
        """# the same, reordered, with defaults spelled out and another description
description = "mine"
[policy]
judge_ids = [ "b@v1" , "a@v1", "a@v1" ]
min_score=0.25
   [rules.timeout]
   exit_codes = [137, 124]
   enabled = true
[rules.repeated_action]
mark = 'all'
n = 4
[rules.empty_response]
count_reasoning = false
"""
    )
    assert one.fingerprint == two.fingerprint
    assert one == two
    assert one.canonical_json() == two.canonical_json()


def test_the_rules_version_is_part_of_the_fingerprint(monkeypatch):
    before = RuleSet.default().fingerprint
    monkeypatch.setattr(rules_module, "RULES_VERSION", RULES_VERSION + ".next")
    assert RuleSet.default().fingerprint != before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[rules.nope]\n", "unknown rule 'nope'; known rules: malformed_tool_call"),
        ("[rules.repeated_action]\nn = 1\n", "[rules.repeated_action]: n: Expected `int` >= 2"),
        ("[rules.repeated_action]\nlength = 3\n", "unknown parameter 'length'; accepted: enabled, n, mark"),
        ("[rules.repeated_action]\nenabled = 'yes'\n", "enabled must be true or false"),
        ("[rules.timeout]\npatterns = ['(unclosed']\n", "'(unclosed' is not a valid regular expression"),
        ("[policy]\nmin_score = 2\n", "[policy]: min_score: Expected `float` <= 1.0"),
        ("[policy]\njudge_error = 'explode'\n", "judge_error: Invalid enum value 'explode'"),
        ("[policy]\nstrict = true\n", "unknown parameter 'strict'"),
        ("[policy]\njudge_overrules_rules = 'yes'\n", "judge_overrules_rules: Expected `bool`"),
        ("[rules.error_observation.ok_exit_codes]\ngrep = ['one']\n", "ok_exit_codes[...][0]: Expected `int`, got `str`"),
        ("rules = 3\n", "`rules` must be a table"),
        ("[rule.timeout]\n", "unknown top-level key(s) rule"),
        ("rules_version = '0'\n", "written for rules version 0"),
        ("[rules.timeout\n", "is not valid TOML"),
    ],
)
def test_bad_rule_sets_are_explained(text, message):
    with pytest.raises(RuleSetError) as info:
        RuleSet.loads(text, source="mine.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("mine.toml")


def test_missing_rule_set_file(tmp_path):
    with pytest.raises(RuleSetError, match="cannot read rule set"):
        RuleSet.load(tmp_path / "nope.toml")


def test_disabled_rules_do_not_run(run):
    run.act(observe=None)
    assert {h.rule for h in RuleSet.default().evaluate(run.events)} == {"empty_response"}
    assert RuleSet.loads("[rules.empty_response]\nenabled = false\n").evaluate(run.events) == []


# -- the decision policy ------------------------------------------------------------------


def verdict(store: EventStore, stream: str, action: str, verdict: str, score: float | None = 0.9, judge_id: str = "m@judge-v1"):
    event = ActionJudged(target_event_id=action, verdict=verdict, judge_id=judge_id, score=score, reason=f"{verdict} it")
    store.append(stream, [NewEvent(event=event, causation_id=action)], actor=f"judge:{judge_id}")


def test_decide_combines_rules_verdicts_and_people(store, run):
    clean = run.act(CMD)
    error = run.act(CMD, observe=None)
    run.observe("c2", "x", cause=error, is_error=True)
    judged_mask = run.act(("run_command", {"command": "rm -rf data"}))
    low_score = run.act(("run_command", {"command": "a"}))
    errored = run.act(("run_command", {"command": "b"}))
    rejected = run.act(("run_command", {"command": "c"}))
    run.human("reject", "not what I asked", target=rejected)
    verdict(store, "run-1", clean, "keep")
    verdict(store, "run-1", error, "keep")
    verdict(store, "run-1", judged_mask, "mask", 0.1)
    verdict(store, "run-1", low_score, "keep", 0.3)
    verdict(store, "run-1", errored, "error", None)
    verdict(store, "run-1", rejected, "keep", 0.95)

    decisions = decide(run.events, RuleSet.default())
    assert {a for a, d in decisions.items() if not d.keep} == {error, judged_mask, low_score, rejected}
    assert decisions[clean].keep and [str(r) for r in decisions[clean].reasons] == ["keep by judge m@judge-v1: keep (0.90): keep it"]
    assert [(r.source, r.name, r.masks) for r in decisions[error].reasons] == [("rule", "error_observation", True), ("judge", "m@judge-v1", False)]
    assert "below min_score 0.5" in decisions[low_score].masked_by[0].detail
    assert decisions[errored].keep and decisions[errored].reasons[0].detail.startswith("error")
    # A person's reject beats the judge's keep.
    assert [(r.source, r.masks) for r in decisions[rejected].reasons] == [("human", True), ("judge", False)]
    assert decisions[rejected].action_version == run.version(rejected) and decisions[rejected].stream_id == "run-1"

    strict = RuleSet.loads("[policy]\njudge_error = 'mask'\nmin_score = 0\n")
    decisions = decide(run.events, strict)
    assert not decisions[errored].keep and decisions[low_score].keep

    ignoring = RuleSet.loads("[policy]\nrules = 'ignore'\nmask_on_judge = 'never'\n")
    decisions = decide(run.events, ignoring)
    assert {a for a, d in decisions.items() if not d.keep} == {rejected}  # a person's word still counts
    assert decisions[error].reasons[0].masks is False


def test_a_persons_latest_word_decides_approve_overrules_rules_and_judges(store, run):
    error = run.act(CMD, observe=None)
    run.observe("c1", "x", cause=error, is_error=True)
    verdict(store, "run-1", error, "mask", 0.1)
    changed_mind = run.act(("run_command", {"command": "c"}))
    run.human("approve", "the error is expected here", target=error)
    run.human("approve", "", target=changed_mind)
    run.human("reject", "on second thought, no", target=changed_mind)
    decisions = decide(run.events, RuleSet.default())

    assert decisions[error].keep
    assert [(r.source, r.name, r.masks) for r in decisions[error].reasons] == [
        ("human", "approved", False), ("rule", "error_observation", False), ("judge", "m@judge-v1", False)]
    assert decisions[error].reasons[0].detail == "approved by ana: the error is expected here"
    assert decisions[error].reasons[1].detail.endswith("[overruled: approved by ana]")
    assert not decisions[changed_mind].keep  # the reject came last
    # approve is an annotation, never a message to the agent
    assert "the error is expected here" not in str(fold(run.events).messages)


def test_a_judges_keep_overrules_rule_hits_only_when_the_policy_says_so(store, run):
    error, low, split, rejected = (run.act(("run_command", {"command": f"step {i}"}), observe=None) for i in range(4))
    for index, action in enumerate((error, low, split, rejected), 1):
        run.observe(f"c{index}", "x", cause=action, is_error=True)
    run.human("reject", "no", target=rejected)
    verdict(store, "run-1", error, "keep", 0.9)
    verdict(store, "run-1", low, "keep", 0.3)
    verdict(store, "run-1", split, "keep", 0.9, judge_id="big@judge-v1")
    verdict(store, "run-1", split, "mask", 0.2, judge_id="small@judge-v1")
    verdict(store, "run-1", rejected, "keep", 0.9)

    by_default = decide(run.events, RuleSet.default())
    assert not any(d.keep for d in by_default.values())
    overruling = RuleSet.loads("[policy]\njudge_overrules_rules = true\n")
    decisions = decide(run.events, overruling)
    assert {a for a, d in decisions.items() if d.keep} == {error}
    assert [(r.source, r.masks) for r in decisions[error].reasons] == [("rule", False), ("judge", False)]
    assert decisions[error].reasons[0].detail.endswith("[overruled: kept by judge m@judge-v1]")
    assert [r.source for r in decisions[low].masked_by] == ["rule", "judge"]  # a keep below min_score is no keep
    assert [r.name for r in decisions[split].masked_by] == ["small@judge-v1"]  # the rule is overruled, the other judge is not
    assert [r.source for r in decisions[rejected].masked_by] == ["human"]  # a person's reject stays
    shown_only = RuleSet.loads("[policy]\njudge_overrules_rules = true\nmask_on_judge = 'never'\n")
    assert not decide(run.events, shown_only)[error].keep  # verdicts that are only shown overrule nothing


def test_decide_counts_only_the_listed_judges(store, run):
    action = run.act(CMD)
    unjudged = run.act(("run_command", {"command": "x"}))
    verdict(store, "run-1", action, "mask", 0.1, judge_id="small@judge-v1")
    verdict(store, "run-1", action, "keep", 0.9, judge_id="big@judge-v2")
    assert not decide(run.events, RuleSet.default())[action].keep
    only_big = RuleSet.loads("[policy]\njudge_ids = ['big@*']\n")
    assert decide(run.events, only_big)[action].keep
    require = RuleSet.loads("[policy]\njudge_ids = ['big@*']\nunjudged = 'mask'\n")
    decisions = decide(run.events, require)
    assert decisions[action].keep
    assert not decisions[unjudged].keep and decisions[unjudged].masked_by[0].name == "unjudged"
    none = RuleSet.loads("[policy]\njudge_ids = []\n")
    assert decide(run.events, none)[action].keep


def test_verdicts_on_inherited_actions_are_found_in_the_parent(store, run):
    shared = run.act(CMD)
    child = store.branch("run-1", at_version=run.version(shared) + 1, new_stream_id="run-1~b")
    verdict(store, "run-1", shared, "mask", 0.2)  # after the fork: the branch does not read it
    branch_events = store.read(child)
    assert decide(branch_events, RuleSet.default())[shared].keep
    extra = annotations_for(store, branch_events)
    assert [r.event.verdict for r in extra] == ["mask"]
    assert not decide(branch_events, RuleSet.default(), extra=extra)[shared].keep


def test_decide_covers_every_action_once(store, run):
    actions = [run.act(CMD), run.act(observe=None)]
    store.append("run-1", [RunFinished(status="finished")])
    decisions = decide(run.events, RuleSet.default())
    assert list(decisions) == actions
    assert msgspec.json.decode(msgspec.json.encode(decisions[actions[1]]))["keep"] is False


def test_branch_created_event_itself_is_not_an_action(store, run):
    run.act(CMD)
    child = store.branch("run-1", at_version=2)
    events = store.read(child)
    assert isinstance(events[-1].event, BranchCreated)
    assert len(decide(events, RuleSet.default())) == 1
