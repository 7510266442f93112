"""The annotator console end to end in headless Chromium (Debian's, driven by Playwright).

A scripted agent runs live through the real rollout engine; the test decides when each of
its model answers lands. Screenshots go to test-artifacts/console/ (APOLLO_ES_ARTIFACTS).
"""

from __future__ import annotations

import time

import pytest

from apollo_es import EventStore
from events import AgentActed, HumanIntervened, RunFinished, ToolCall, ToolObserved
from tests.console_support import TOKEN, ConsoleServer, PacedAgent, browser, page, shot, start_run  # noqa: F401 (fixtures)
from tests.scripted import texts, tool_use

playwright = pytest.importorskip("playwright.sync_api")

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
GUIDANCE = "Stop exploring; write hello.py and run it."


def test_annotator_watches_a_live_run_guides_it_and_branches_it(tmp_path, page):
    store = EventStore(tmp_path / "a.db")
    workspace = start_run(store, tmp_path)
    agent = PacedAgent(store, workspace, [
        tool_use("list_files", {"path": "."}, "Let me look around first."),
        tool_use("run_command", {"command": f"echo '{HOSTILE}'"}, "<b>Not bold</b>: checking how output is shown."),
        tool_use("think", {"thought": "this answer is dropped: guidance arrived while the model was thinking"}),
        tool_use("write_file", {"path": "hello.py", "content": "print(2 + 3)\n"}, "Following the guidance."),
        tool_use("finish", {"answer": "hello.py prints 5"}),
    ]).start()
    try:
        with ConsoleServer(store) as server:
            agent.release(1)
            agent.wait_for_request(2)  # step 1 recorded; the agent waits for its second answer

            # The runs page lists the live run.
            page.goto(f"{server.url}/#token={TOKEN}")
            page.fill("#annotator", "ana")
            page.dispatch_event("#annotator", "change")
            row = page.locator("tr[data-stream='run-1']")
            playwright.expect(row).to_contain_text("running")
            playwright.expect(row.locator("td.steps")).to_have_text("1")
            playwright.expect(row.locator("td.model")).to_have_text("claude-test")
            playwright.expect(row.locator("[data-agent]")).to_have_attribute("data-agent", "yes")  # the agent holds the run
            assert page.url == f"{server.url}/"  # the token left the address bar
            shot(page, "1-runs.png")

            # The run page shows the timeline, a step (action and observation) per row, and grows without a reload.
            row.locator("a").click()
            page.wait_for_selector("article[data-versions='2 3']")
            page.evaluate("window.__sameDocument = true")
            agent.release(2)
            step2 = page.locator("article[data-step='2']")
            playwright.expect(step2).to_have_attribute("data-versions", "4 5")
            step2.locator("button.toggle").click()  # expand on demand
            output = step2.locator("section[data-version='5']")
            playwright.expect(output).to_contain_text("<script>window.__pwned=2</script>")
            assert page.evaluate("window.__sameDocument") is True
            # Agent output is shown as text, never run or parsed as HTML.
            assert page.evaluate("window.__pwned") is None
            assert page.locator("article img, article script, article b").count() == 0
            playwright.expect(step2.locator("section[data-version='4']")).to_contain_text("<b>Not bold</b>")

            # Guidance sent while the model is thinking reaches its next request.
            agent.wait_for_request(3)
            page.fill("#guidance", GUIDANCE)
            page.click("#send-guidance")
            playwright.expect(page.locator("#message")).to_contain_text("guidance recorded as v6")
            guidance = page.locator("article[data-kind='HumanIntervened']")
            playwright.expect(guidance).to_contain_text(GUIDANCE)
            playwright.expect(guidance).to_contain_text("guidance from ana (saw v5)")
            recorded = store.event("run-1", 6)
            assert isinstance(recorded.event, HumanIntervened) and recorded.actor == "human:ana"
            assert recorded.event.seen_version == 5
            agent.release(3)  # answered from the old context: dropped, the model is asked again
            fourth = agent.wait_for_request(4)
            assert GUIDANCE not in "\n".join(texts(agent.requests[2]))
            assert GUIDANCE in "\n".join(texts(fourth))
            agent.release(4)
            page.wait_for_selector("article[data-versions~='8']")
            playwright.expect(page.locator("#gauge-label")).to_contain_text("step 3")
            shot(page, "2-run-guided.png")

            # Approve an action for training; the decision shows beside it.
            page.locator("article[data-step='2'] button.select").click()
            page.fill("#step-message", "Checking the rendering is a fine step.")
            page.click("#approve-step")
            playwright.expect(page.locator("#message")).to_contain_text("approve of v4 recorded as v9")
            playwright.expect(page.locator("article[data-step='2'] .annotations")).to_contain_text("approved by ana")

            # Branch from the first action with other guidance; the branch shows in the tree.
            page.locator("article[data-step='1'] button.select").click()
            page.fill("#step-message", "Read the task again before listing files.")
            page.click("#branch-here")
            # v2 is an action: the branch forks after its result, never inventing a lost one
            playwright.expect(page.locator("#message")).to_contain_text("Branch run-1~b1 created at v3 (after the results of v2)")
            node = page.locator("#tree li[data-stream='run-1~b1']")
            playwright.expect(node).to_contain_text("@v3")
            shot(page, "3-branch-in-tree.png")

            page.locator("#message a").click()
            page.wait_for_selector("article[data-kind='BranchCreated']")
            inherited = page.locator("article.inherited")
            playwright.expect(inherited).to_have_count(2)  # v1, and step 1 (v2-v3), come from run-1
            assert inherited.evaluate_all("rows => rows.map(r => r.dataset.versions)") == ["1", "2 3"]
            playwright.expect(page.locator("article[data-version='5']")).to_contain_text("Read the task again")
            playwright.expect(page.locator("#tree li.current")).to_contain_text("run-1~b1")
            shot(page, "4-branch.png")

            agent.release_all()
            assert agent.join().status == "finished"
            page.goto(f"{server.url}/run?id=run-1")
            playwright.expect(page.locator("#run-status")).to_have_text("finished")
            page.goto("about:blank")  # close the page's streams before the server goes
    finally:
        agent.release_all()
    [branch_created, branch_guidance] = store.read("run-1~b1")[3:]
    assert branch_created.actor == branch_guidance.actor == "human:ana"
    assert branch_guidance.event.message == "Read the task again before listing files."
    assert isinstance(store.read("run-1")[-1].event, RunFinished)


def test_writes_without_a_token_show_the_refusal(tmp_path, browser):
    store = EventStore(tmp_path / "a.db")
    start_run(store, tmp_path)
    context = browser.new_context()  # a fresh profile: no token stored
    page = context.new_page()
    with ConsoleServer(store) as server:
        page.goto(f"{server.url}/run?id=run-1")
        page.fill("#annotator", "ana")
        page.dispatch_event("#annotator", "change")
        page.wait_for_selector("article[data-version='1']")
        page.fill("#guidance", "hello")
        page.click("#send-guidance")
        playwright.expect(page.locator("#message")).to_contain_text("401: writing needs the console token")
        context.close()
    assert store.head("run-1") == 1


def test_an_unknown_run_says_so(tmp_path, browser):
    store = EventStore(tmp_path / "a.db")
    start_run(store, tmp_path)
    context = browser.new_context()
    page = context.new_page()
    with ConsoleServer(store) as server:
        page.goto(f"{server.url}/run?id=nope")
        playwright.expect(page.locator("#message")).to_contain_text("404: no stream 'nope'")
        context.close()


def test_runs_page_filters_sorts_and_updates_live_with_the_token_off_loopback(tmp_path, page):
    store = EventStore(tmp_path / "a.db")
    for run_id in ("alpha", "beta", "gamma"):
        start_run(store, tmp_path, run_id)
    store.append("gamma", [RunFinished(status="finished")], actor="system")
    store.append("beta", [HumanIntervened(annotator="ana", kind="guidance", message="look at the logs")], actor="human:ana")
    with ConsoleServer(store, open_reads=False, loopback_only=False) as server:
        page.goto(f"{server.url}/#token={TOKEN}")
        rows = page.locator("#runs tbody tr")
        playwright.expect(rows).to_have_count(3)
        playwright.expect(page.locator("tr[data-stream='beta'] td.open")).to_have_text("1")

        page.select_option("#status-filter", "finished")
        playwright.expect(rows).to_have_count(1)
        playwright.expect(rows.first).to_have_attribute("data-stream", "gamma")
        page.select_option("#status-filter", "")
        page.check("#waiting-only")
        playwright.expect(rows).to_have_count(1)
        playwright.expect(rows.first).to_have_attribute("data-stream", "beta")
        page.uncheck("#waiting-only")
        page.fill("#filter", "alp")
        playwright.expect(rows).to_have_count(1)
        page.fill("#filter", "")

        page.click("th[data-sort='stream_id']")  # ascending by name
        playwright.expect(rows.first).to_have_attribute("data-stream", "alpha")
        page.click("th[data-sort='stream_id']")
        playwright.expect(rows.first).to_have_attribute("data-stream", "gamma")

        store.append("alpha", [HumanIntervened(annotator="ben", kind="stop", message="enough")], actor="human:ben")
        playwright.expect(page.locator("tr[data-stream='alpha'] .status")).to_have_text("stopped")  # a stop with no agent left: nothing will record more
        shot(page, "5-runs-filtered.png")
        page.goto("about:blank")


def test_twenty_pages_on_one_run_each_show_every_event_in_order(tmp_path, browser):
    store = EventStore(tmp_path / "a.db")
    start_run(store, tmp_path)
    steps = 15
    with ConsoleServer(store) as server:
        contexts = [browser.new_context() for _ in range(20)]  # one profile each, as 20 annotators
        pages = [context.new_page() for context in contexts]
        for page in pages:
            page.goto(f"{server.url}/run?id=run-1")
        for page in pages:
            page.wait_for_selector("article[data-version='1']")
        for i in range(steps):
            store.append("run-1", [
                AgentActed(model="m", tool_calls=[ToolCall(id=f"c{i}", name="think", arguments={"thought": f"step {i}"})]),
                ToolObserved(tool_call_id=f"c{i}", tool_name="think", output=f"noted {i}"),
            ], actor="agent")
            time.sleep(0.02)
        last = 1 + 2 * steps
        for page in pages:
            page.wait_for_selector(f"article[data-versions~='{last}']")
        shown = [page.eval_on_selector_all("#timeline article", "rows => rows.flatMap(r => r.dataset.versions.split(' ').map(Number))")
                 for page in pages]
        for context in contexts:
            context.close()
    assert all(versions == list(range(1, last + 1)) for versions in shown)
