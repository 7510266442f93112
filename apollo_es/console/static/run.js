"use strict";
// The run page: the timeline as compact step rows (timeline.js) that grows live, with search,
// filters, jump to a step and auto-follow; annotations beside actions, the context gauge and
// the context at any step; interventions, branching and the branch tree.
(async () => {
  const { el, api, stream, config, fmt, runLink, syncClock, showConnection, annotator } = Console;
  const runId = new URLSearchParams(location.search).get("id") || "";

  const follow = document.getElementById("follow");
  const timeline = Timeline.create({
    container: document.getElementById("timeline"),
    runId,
    onSelect: (e, row) => select(e, row),
    onContext: (version, step) => ContextView.show(runId, version, `Context the model saw for step #${step} (after v${version})`),
    onRendered: () => refreshAnnotations(),
  });
  let head = 0, selected = null;

  document.getElementById("run-title").textContent = runId;
  document.title = `apollo-es · ${runId}`;

  function say(text, isError) {
    const message = document.getElementById("message");
    message.textContent = text;
    message.className = isError ? "message error" : "message ok";
  }

  // -- events onto the page -------------------------------------------------------------------

  // Events are put on the page once per frame, however many arrive: a long run's backlog
  // then costs one layout per frame, not one per event.
  const incoming = [];
  function add(e) {
    incoming.push(e);
    if (incoming.length === 1) requestAnimationFrame(flush);
  }

  function flush() {
    const batch = incoming.splice(0);
    if (!timeline.add(batch)) return;
    head = Math.max(head, ...batch.map((e) => e.version));
    document.getElementById("seen-note").textContent = `You are looking at v${head}; what you send is recorded as seen there.`;
    offerTools();
    if (filtering()) applyFilter();
    if (follow.checked) timeline.last().scrollIntoView({ block: "end" });
  }

  // -- search, filters, jump, follow ----------------------------------------------------------------

  const search = document.getElementById("search");
  const filters = ["kind-filter", "tool-filter", "state-filter"].map((id) => document.getElementById(id));
  const [kindFilter, toolFilter, stateFilter] = filters;

  function filtering() { return Boolean(search.value.trim() || filters.some((f) => f.value)); }

  function applyFilter() {
    const shown = timeline.setFilter({ text: search.value, group: kindFilter.value, tool: toolFilter.value, state: stateFilter.value });
    document.getElementById("shown").textContent = filtering() ? `${fmt(shown)} of ${fmt(timeline.size)} rows` : "";
  }

  function offerTools() {
    const known = [...toolFilter.options].slice(1).map((o) => o.value);
    const tools = timeline.tools;
    if (tools.length === known.length) return;
    const chosen = toolFilter.value;
    toolFilter.replaceChildren(el("option", { value: "" }, "any"), ...tools.map((name) => el("option", { value: name }, name)));
    toolFilter.value = chosen;
  }

  let searchTimer = null;
  search.addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(applyFilter, 150); });
  for (const f of filters) f.addEventListener("change", applyFilter);
  document.getElementById("find").addEventListener("submit", (event) => { event.preventDefault(); applyFilter(); });

  function setFollow(on, why) {
    follow.checked = on;
    document.getElementById("follow-note").textContent = on ? "Following new steps as they land." : `Paused following${why ? ` (${why})` : ""}.`;
  }
  follow.addEventListener("change", () => {
    setFollow(follow.checked);
    if (follow.checked && timeline.last()) timeline.last().scrollIntoView({ block: "end" });
  });
  // Scrolling up to read is the annotator taking over: stop pulling the page down.
  window.addEventListener("wheel", (event) => { if (event.deltaY < 0 && follow.checked) setFollow(false, "you scrolled up"); }, { passive: true });
  window.addEventListener("keydown", (event) => {
    if (["PageUp", "Home", "ArrowUp"].includes(event.key) && !event.target.closest("input, textarea, select") && follow.checked) {
      setFollow(false, "you scrolled up");
    }
  });

  document.getElementById("jump-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const n = Number(document.getElementById("jump").value);
    const row = Number.isInteger(n) ? timeline.stepRow(n) : null;
    if (!row) { say(`No step ${document.getElementById("jump").value}: this run has ${timeline.steps} steps so far.`, true); return; }
    if (row.el.hidden) {
      search.value = "";
      for (const f of filters) f.value = "";
      applyFilter();
    }
    setFollow(false, `showing step #${n}`);
    timeline.open(row);
  });

  setFollow(follow.checked);
  document.getElementById("context-now").addEventListener("click",
    () => ContextView.show(runId, 0, "Context of the model's next request"));

  // -- annotations beside actions -----------------------------------------------------------

  let annotationTimer = null;
  function refreshAnnotations() {
    clearTimeout(annotationTimer);
    annotationTimer = setTimeout(async () => {
      try {
        const data = await api("/api/annotations?run=" + encodeURIComponent(runId));
        timeline.annotate(data.decisions);
        if (filtering()) applyFilter();
      } catch (error) { /* annotations are advisory; the next event retries */ }
    }, 500);
  }

  // -- the run's row: status and context gauge; the branch tree ---------------------------------

  const tree = new Map();
  function showSummary(run) {
    const status = document.getElementById("run-status");
    status.textContent = run.status;
    status.className = `status ${run.status}`;
    // An ended run takes no more messages (the server would refuse them): branch it instead.
    const ended = !["running", "idle", "stopping"].includes(run.status);
    document.getElementById("send-guidance").disabled = ended;
    document.getElementById("stop-run").disabled = ended;
    document.getElementById("guidance").placeholder = ended
      ? "This run has ended: select a step and branch from it to steer it."
      : run.status === "idle"
        ? "No agent is working on this run: guidance is delivered when it resumes."
        : "Guidance for the agent's next step…";
    const share = run.summary_threshold ? Math.min(1, run.tokens / run.summary_threshold) : 0;
    const fill = document.getElementById("gauge-fill");
    fill.style.width = `${Math.round(share * 100)}%`;
    fill.classList.toggle("hot", share > 0.9);
    document.getElementById("gauge-label").textContent =
      `context ~${fmt(run.tokens)} of ${fmt(run.summary_threshold)} tokens before a summary · step ${run.steps}` +
      (run.cost_usd != null ? ` · $${run.cost_usd.toFixed(2)} spent` : "") +
      (run.open_interventions ? ` · ${run.open_interventions} message(s) not yet seen by the agent` : "");
  }

  function renderTree() {
    const children = new Map();
    let root = null;
    for (const run of tree.values()) {
      if (run.parent_id && tree.has(run.parent_id)) {
        if (!children.has(run.parent_id)) children.set(run.parent_id, []);
        children.get(run.parent_id).push(run);
      } else if (!root || run.stream_id === run.root_id) root = run;
    }
    const list = document.getElementById("tree");
    const nodes = [];
    const walk = (run, depth) => {
      nodes.push(el("li", { class: run.stream_id === runId ? "current" : "", dataset: { stream: run.stream_id }, style: { paddingLeft: `${depth * 1.2}em` } },
        depth ? "└ " : "", el("a", { href: runLink(run.stream_id) }, run.stream_id),
        run.fork_version ? el("span", { class: "muted" }, ` @v${run.fork_version}`) : null,
        " ", el("span", { class: `status ${run.status}` }, run.status),
        el("span", { class: "muted" }, ` ${run.steps} step${run.steps === 1 ? "" : "s"}`)));
      for (const child of (children.get(run.stream_id) || []).sort((a, b) => a.fork_version - b.fork_version)) walk(child, depth + 1);
    };
    if (root) walk(root, 0);
    list.replaceChildren(...nodes);
  }

  function onRuns(message, replace) {
    const data = JSON.parse(message.data);
    syncClock(data.server_time);
    if (replace) tree.clear();
    for (const run of data.runs) {
      tree.set(run.stream_id, run);
      if (run.stream_id === runId) showSummary(run);
    }
    renderTree();
  }

  // -- writes ---------------------------------------------------------------------------------

  function who() {
    const name = annotator();
    if (!name) { say("Enter your annotator name at the top first.", true); document.getElementById("annotator").focus(); }
    return name;
  }

  async function send(kind) {
    const box = document.getElementById("guidance");
    const name = who();
    if (!name) return;
    const message = kind === "stop" ? (box.value.trim() || "Stopped by an annotator.") : box.value;
    if (!message.trim()) { say("Write the guidance first.", true); return; }
    try {
      const result = await api("/api/interventions", { method: "POST", body: { run: runId, kind, message, annotator: name, seen_version: head || null } });
      box.value = "";
      say(result.warning ? `${kind} recorded as v${result.version}; ${result.warning}` : `${kind} recorded as v${result.version}`,
          Boolean(result.warning));
    } catch (error) { say(`Not sent — ${error.message}`, true); }
  }

  function select(e, row) {
    selected = e;
    for (const item of document.querySelectorAll("#timeline .selected")) item.classList.remove("selected");
    row.classList.add("selected");
    document.getElementById("selected-note").textContent =
      `v${e.version} (${e.kind}). A branch keeps v1–v${e.version} and starts with your guidance.`;
    document.getElementById("step-message").disabled = false;
    document.getElementById("branch-here").disabled = false;
    document.getElementById("branch-here").textContent = `Branch from v${e.version}`;
    document.getElementById("reject-step").disabled = e.kind !== "AgentActed";
    document.getElementById("approve-step").disabled = e.kind !== "AgentActed";
  }

  async function branchHere() {
    const name = who();
    if (!name || !selected) return;
    const box = document.getElementById("step-message");
    if (!box.value.trim()) { say("Write the guidance the branch starts with.", true); return; }
    const live = document.getElementById("branch-live").checked;
    try {
      const result = await api("/api/branches", { method: "POST", body: { run: runId, at: selected.version, message: box.value, annotator: name, live } });
      box.value = "";
      const link = el("a", { href: runLink(result.stream_id) }, result.stream_id);
      say("");
      const moved = result.fork_version !== result.requested_version
        ? ` (after the results of v${result.requested_version})` : "";
      document.getElementById("message").append("Branch ", link, ` created at v${result.fork_version}${moved}${live ? ", continuing live" : ""}.`);
    } catch (error) { say(`No branch — ${error.message}`, true); }
  }

  // Reject masks the selected action from training; approve keeps it whatever rules and judges say.
  async function judge(kind) {
    const name = who();
    if (!name || !selected) return;
    const box = document.getElementById("step-message");
    if (!box.value.trim()) { say(kind === "reject" ? "Say why the action is wrong." : "Say why the action is fine.", true); return; }
    try {
      const result = await api("/api/interventions", { method: "POST", body: { run: runId, kind, target: selected.version, message: box.value, annotator: name, seen_version: head || null } });
      box.value = "";
      say(`${kind} of v${selected.version} recorded as v${result.version}`);
    } catch (error) { say(`Not recorded — ${error.message}`, true); }
  }

  document.getElementById("send-guidance").addEventListener("click", () => send("guidance"));
  document.getElementById("stop-run").addEventListener("click", () => send("stop"));
  document.getElementById("branch-here").addEventListener("click", branchHere);
  document.getElementById("reject-step").addEventListener("click", () => judge("reject"));
  document.getElementById("approve-step").addEventListener("click", () => judge("approve"));

  // -- start ------------------------------------------------------------------------------------

  if (!runId) { say("No run given: open a run from the runs page.", true); return; }
  const settings = await config;
  document.getElementById("live-label").hidden = !settings.can_continue;
  document.getElementById("live-model").textContent = settings.model || "the configured model";
  if (settings.can_continue) {
    // A branch this server continues live: say how its agent is doing (errors only show here and in the server log).
    const showLive = async () => {
      const { branches } = await api("/api/live");
      const state = branches[runId];
      const line = document.getElementById("live-status");
      line.hidden = !state;
      if (!state) return;
      line.textContent = `Continued live by this console: ${state}`;
      line.className = state.startsWith("error") ? "message error" : "muted";
    };
    showLive().catch(() => {});
    setInterval(() => showLive().catch(() => {}), 3000);
  }

  const events = await stream("/api/events/stream?run=" + encodeURIComponent(runId));
  showConnection(events);
  events.addEventListener("event", (message) => add(JSON.parse(message.data)));
  events.addEventListener("error", () => {
    // A refused stream (unknown run, no token off loopback) is not retried by the browser: say why.
    if (events.readyState === EventSource.CLOSED) api("/api/runs?tree=" + encodeURIComponent(runId)).catch((error) => say(error.message, true));
  });
  const runs = await stream("/api/runs/stream?tree=" + encodeURIComponent(runId));
  runs.addEventListener("runs", (message) => onRuns(message, true));
  runs.addEventListener("changed", (message) => onRuns(message, false));
})();
