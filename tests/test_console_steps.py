"""The run page for annotators in headless Chromium: steps as compact rows, search and
filters, jump to a step, edits as diffs and writes as files, the context the model saw,
tokens, cost and latency per step, auto-follow, the runs page's columns, and the time a
5,000-event run takes to render."""

from __future__ import annotations

import pytest

from apollo_es import EventStore
from events import (
    AgentActed,
    ContextSummarized,
    HumanIntervened,
    RunFinished,
    RunStarted,
    ToolCall,
    ToolObserved,
    Usage,
)
from replay import state_at
from tests.console_support import TOKEN, ConsoleServer, browser, page, shot  # noqa: F401 (fixtures)

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

BIG_STEPS = 2_499  # RunStarted + 2,499 steps of two events + RunFinished = 5,000 events


def act(i: int, name: str, arguments: dict, text: str = "") -> AgentActed:
    return AgentActed(model="m", text=text, tool_calls=[ToolCall(id=f"c{i}", name=name, arguments=arguments)],
                      usage=Usage(input_tokens=1_000 + i, output_tokens=50), latency_ms=900.0, cost_usd=0.003)


def observe(i: int, name: str, output: str, exit_code: int | None = None) -> ToolObserved:
    return ToolObserved(tool_call_id=f"c{i}", tool_name=name, output=output, exit_code=exit_code,
                        is_error=bool(exit_code), duration_ms=120.0)


@pytest.fixture
def store(tmp_path):
    """A finished run: a write, an edit, a failing command, a summary, a person's guidance, two more steps."""
    store = EventStore(tmp_path / "a.db")
    store.append("run-1", [RunStarted(task_id="t", task="Fix add().", model="claude-test", summary_threshold=5_000)], actor="system")
    store.append("run-1", [
        act(1, "write_file", {"path": "calc.py", "content": "def add(a, b):\n    return a - b\n"}, "Writing the module."),
        observe(1, "write_file", "Wrote 2 lines to calc.py"),
        act(2, "run_command", {"command": "python -m pytest -q"}),
        observe(2, "run_command", "FAILED test_add - assert -1 == 3\n[exit code 1]", exit_code=1),
        act(3, "edit_file", {"path": "calc.py", "old": "    return a - b\n", "new": "    return a + b\n"}),
        observe(3, "edit_file", "Edited calc.py"),
    ], actor="agent")  # v2..v7
    store.append("run-1", [ContextSummarized(summary="Wrote calc.py; the test failed; fixed the sign.", replaces_from=2, replaces_to=7,
                                             tokens_before=4_000, tokens_after=300)], actor="agent")  # v8
    store.append("run-1", [HumanIntervened(annotator="ana", kind="guidance", message="Run the tests once more, the needle is here.")],
                 actor="human:ana")  # v9
    store.append("run-1", [act(4, "run_command", {"command": "python -m pytest -q"}), observe(4, "run_command", "1 passed", exit_code=0),
                           act(5, "finish", {"answer": "fixed"}), observe(5, "finish", "Submitted.")], actor="agent")  # v10..v13
    store.append("run-1", [RunFinished(status="finished", score=0.75, final_answer="fixed")], actor="system")  # v14
    yield store
    store.close()


def test_steps_are_compact_rows_with_usage_that_expand_on_demand(store, page):
    with ConsoleServer(store) as server:
        page.goto(f"{server.url}/run?id=run-1")
        steps = page.locator("article[data-step]")
        expect(steps).to_have_count(5)
        expect(page.locator("#timeline article")).to_have_count(9)  # start, 5 steps, summary, guidance, end
        first = page.locator("article[data-step='1']")
        expect(first).to_have_attribute("data-versions", "2 3")
        expect(first).to_contain_text("write_file calc.py")
        expect(first.locator(".tokens")).to_have_text("1.0k→50 tok")
        expect(first.locator(".cost")).to_have_text("$0.0030")
        expect(first.locator(".latency")).to_have_text("900 ms")
        expect(first.locator(".duration")).to_have_text("⚙ 120 ms")
        expect(page.locator("article[data-step='2'] .outcome")).to_have_text("exit 1")
        expect(page.locator("article[data-step='2']")).to_have_attribute("data-status", "error")
        expect(page.locator("article[data-kind='RunFinished']")).to_contain_text("finished · score 0.75")
        assert page.locator(".detail").count() == 0  # nothing expanded, nothing built

        height = first.evaluate("row => row.getBoundingClientRect().height")
        assert height < 40, f"a step row is {height}px tall"

        # write_file as a file with line numbers, not an escaped JSON string
        toggle = first.locator("button.toggle")
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(first.locator(".file-body .code")).to_have_text("def add(a, b):\n    return a - b")
        expect(first.locator(".file-body .gutter")).to_have_text("1\n2")
        expect(first.locator("section[data-version='3']")).to_contain_text("Wrote 2 lines to calc.py")
        toggle.click()
        expect(first.locator(".detail")).to_have_count(0)

        # edit_file as a diff
        edit = page.locator("article[data-step='3']")
        edit.locator("button.toggle").click()
        expect(edit.locator(".diff .del")).to_have_text("-     return a - b")
        expect(edit.locator(".diff .add")).to_have_text("+     return a + b")
        expect(edit.locator(".diff figcaption")).to_contain_text("calc.py · +1 −1 lines")
        shot(page, "6-steps.png")
        page.goto("about:blank")


def test_search_filter_and_jump_to_a_step(store, page):
    with ConsoleServer(store) as server:
        page.goto(f"{server.url}/run?id=run-1")
        rows = page.locator("#timeline article:not([hidden])")
        expect(rows).to_have_count(9)

        page.fill("#search", "NEEDLE")  # case-insensitive, over every event's text
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-kind", "HumanIntervened")
        expect(page.locator("#shown")).to_have_text("1 of 9 rows")
        page.fill("#search", "")

        page.select_option("#kind-filter", "step")
        expect(rows).to_have_count(5)
        page.select_option("#tool-filter", "run_command")
        expect(rows).to_have_count(2)
        page.select_option("#state-filter", "error")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-step", "2")
        page.select_option("#state-filter", "masked")  # the rules mask the failed command once annotations arrive
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-step", "2")
        page.select_option("#kind-filter", "summary")
        expect(rows).to_have_count(0)

        # Jumping to a step the filters hide clears them, opens the step and pauses following.
        page.fill("#jump", "4")
        page.press("#jump", "Enter")
        expect(rows).to_have_count(9)
        expect(page.locator("article[data-step='4'] .detail")).to_contain_text("1 passed")
        expect(page.locator("article[data-step='4'] button.toggle")).to_be_focused()
        assert not page.is_checked("#follow")
        expect(page.locator("#follow-note")).to_contain_text("Paused following (showing step #4)")

        page.fill("#jump", "9")
        page.press("#jump", "Enter")
        expect(page.locator("#message")).to_contain_text("No step 9: this run has 5 steps so far.")
        page.goto("about:blank")


def test_the_context_the_model_saw_is_the_fold_after_the_summary(store, page):
    with ConsoleServer(store) as server:
        page.goto(f"{server.url}/run?id=run-1")
        step = page.locator("article[data-step='4']")  # the first action after the summary and the guidance
        step.locator("button.toggle").click()
        step.locator("button.context").click()
        dialog = page.locator("#context-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#context-title")).to_have_text("Context the model saw for step #4 (after v9)")
        messages = dialog.locator(".msg")
        expected = state_at(store, "run-1", 9).context.messages
        expect(messages).to_have_count(len(expected))
        assert messages.evaluate_all("ms => ms.map(m => Number(m.dataset.version))") == [m.version for m in expected]
        expect(dialog.locator(".msg.source-summary")).to_contain_text("the test failed; fixed the sign")
        expect(dialog.locator(".msg.source-human")).to_contain_text("the needle is here")
        expect(dialog).not_to_contain_text("Writing the module.")  # replaced by the summary
        expect(page.locator("#context-meta")).to_contain_text("earlier steps replaced by 1 summary")
        shot(page, "7-context.png")
        page.click("#context-close")
        expect(dialog).to_be_hidden()

        page.click("#context-now")  # the next request: after the end, everything since the summary
        expect(messages).to_have_count(len(state_at(store, "run-1").context.messages))
        page.goto("about:blank")


def test_auto_follow_keeps_the_newest_step_in_view_until_paused(tmp_path, page):
    store = EventStore(tmp_path / "a.db")
    store.append("run-1", [RunStarted(task_id="t", task="Count.")], actor="system")
    in_view = "row => { const r = row.getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; }"
    with ConsoleServer(store) as server:
        page.goto(f"{server.url}/run?id=run-1")
        expect(page.locator("#follow-note")).to_have_text("Following new steps as they land.")
        for i in range(1, 61):
            store.append("run-1", [act(i, "think", {"thought": f"step {i}"}), observe(i, "think", "ok")], actor="agent")
        last = page.locator("article[data-step='60']")
        expect(last).to_be_visible()
        page.wait_for_function(f"step => ({in_view})(document.querySelector(`article[data-step='${{step}}']`))", arg=60)

        page.mouse.move(400, 400)
        page.mouse.wheel(0, -600)  # the annotator scrolls up to read: following pauses
        expect(page.locator("#follow-note")).to_contain_text("Paused following (you scrolled up)")
        assert not page.is_checked("#follow")
        scrolled = page.evaluate("scrollY")
        store.append("run-1", [act(61, "think", {"thought": "step 61"}), observe(61, "think", "ok")], actor="agent")
        newest = page.locator("article[data-step='61']")
        expect(newest).to_have_count(1)
        assert page.evaluate("scrollY") == scrolled
        assert not newest.evaluate(in_view)

        page.check("#follow")  # following again jumps to the newest step
        page.wait_for_function(f"step => ({in_view})(document.querySelector(`article[data-step='${{step}}']`))", arg=61)
        page.goto("about:blank")
    store.close()


def test_runs_page_shows_model_status_agent_score_cost_and_activity(tmp_path, page):
    store = EventStore(tmp_path / "a.db")
    store.append("done", [RunStarted(task_id="t1", task="One.", model="claude-a"), act(1, "think", {"thought": "x"}),
                          observe(1, "think", "ok"), RunFinished(status="finished", score=0.5)], actor="agent")
    store.append("live", [RunStarted(task_id="t2", task="Two.", model="glm-4.5")], actor="system")
    store.acquire_lease("live", "host:1:test", 60)
    with ConsoleServer(store) as server:
        page.goto(f"{server.url}/#token={TOKEN}")
        done, live = page.locator("tr[data-stream='done']"), page.locator("tr[data-stream='live']")
        expect(done.locator("td.model")).to_have_text("claude-a")
        expect(done.locator(".status")).to_have_text("finished")
        expect(done.locator("td.score")).to_have_text("0.5")
        expect(done.locator("td.cost")).to_have_text("$0.0030")
        expect(done.locator("[data-agent]")).to_have_attribute("data-agent", "no")
        expect(done.locator("td.ago")).to_contain_text("ago")
        expect(live.locator(".status")).to_have_text("running")
        expect(live.locator("[data-agent]")).to_have_text("● agent")
        expect(live.locator("td.score")).to_have_text("—")

        page.check("#agent-only")
        expect(page.locator("#runs tbody tr")).to_have_count(1)
        page.uncheck("#agent-only")
        page.click("th[data-sort='score']")
        expect(page.locator("#runs tbody tr").first).to_have_attribute("data-stream", "done")
        shot(page, "8-runs-columns.png")
        page.goto("about:blank")
    store.close()


def test_a_5000_event_run_renders_in_under_two_seconds(tmp_path, page):
    store = EventStore(tmp_path / "a.db")
    store.append("big", [RunStarted(task_id="t", task="A long run.", model="m")], actor="system")
    batch: list = []
    for i in range(1, BIG_STEPS + 1):
        batch += [act(i, "run_command", {"command": f"python step_{i}.py"}, f"Step {i}."), observe(i, "run_command", f"line {i}\n" * 5, 0)]
        if len(batch) >= 500:
            store.append("big", batch, actor="agent")
            batch = []
    store.append("big", [*batch, RunFinished(status="finished", score=1.0)], actor="agent")
    assert store.head("big") == 5_000

    # From navigation start to the frame after the last step's row entered the page (its paint).
    page.add_init_script(f"""
        new MutationObserver((records, observer) => {{
          if (!document.querySelector("article[data-step='{BIG_STEPS}']")) return;
          observer.disconnect();
          requestAnimationFrame(() => {{ window.__lastStepRendered = performance.now(); }});
        }}).observe(document, {{ childList: true, subtree: true }});
    """)
    with ConsoleServer(store) as server:
        page.goto(f"{server.url}/run?id=big")
        page.wait_for_function("() => window.__lastStepRendered !== undefined", timeout=30_000)
        elapsed = page.evaluate("window.__lastStepRendered") / 1000
        print(f"\n5,000-event run page: last step row rendered {elapsed:.3f} s after navigation start")
        expect(page.locator("article[data-step]")).to_have_count(BIG_STEPS)
        height = page.evaluate("document.documentElement.scrollHeight")
        print(f"5,000-event run page height: {height:,} px")
        page.goto("about:blank")
    store.close()
    assert elapsed < 2.0, f"the 5,000-event page took {elapsed:.2f} s"
