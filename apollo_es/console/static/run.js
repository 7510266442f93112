"use strict";
// The run page: the timeline as it grows, annotations beside actions, the context gauge,
// interventions, branching and the branch tree.
(async () => {
  const { el, api, stream, config, fmt, runLink, syncClock, showConnection, annotator } = Console;
  const runId = new URLSearchParams(location.search).get("id") || "";
  const LONG_CHARS = 1500, LONG_LINES = 20;

  const timeline = document.getElementById("timeline");
  const items = new Map();        // version -> element
  const actions = new Map();      // event_id -> action element
  let head = 0, selected = null;

  document.getElementById("run-title").textContent = runId;
  document.title = `apollo-es · ${runId}`;

  function say(text, isError) {
    const message = document.getElementById("message");
    message.textContent = text;
    message.className = isError ? "message error" : "message ok";
  }

  // -- rendering one event --------------------------------------------------------------

  function block(text, label) {
    // Long text starts collapsed; short text is shown whole.
    const lines = text.split("\n").length;
    const pre = el("pre", {}, text);
    if (text.length <= LONG_CHARS && lines <= LONG_LINES) return pre;
    return el("details", {}, el("summary", {}, `${label}: ${fmt(lines)} lines, ${fmt(text.length)} characters`), pre);
  }

  function toolCall(call) {
    const args = call.raw_arguments !== null && call.raw_arguments !== undefined
      ? call.raw_arguments : JSON.stringify(call.arguments, null, 2);
    return el("div", { class: "tool-call" }, el("span", { class: "tool-name" }, call.name), block(args, "arguments"));
  }

  function body(e) {
    const ev = e.event;
    switch (e.kind) {
      case "RunStarted":
        return [el("div", { class: "muted" }, `task ${ev.task_id} · model ${ev.model || "?"} · summary at ${fmt(ev.summary_threshold)} tokens`),
                block(ev.task, "task")];
      case "AgentActed":
        return [
          ev.reasoning ? el("details", { class: "reasoning" }, el("summary", {}, "reasoning"), el("pre", {}, ev.reasoning)) : null,
          ev.text ? el("div", { class: "text" }, block(ev.text, "text")) : null,
          ...ev.tool_calls.map(toolCall),
          el("div", { class: "annotations" }),
        ];
      case "ToolObserved":
        return [el("div", { class: "muted" },
                   `${ev.tool_name || "feedback"}${ev.exit_code !== null && ev.exit_code !== undefined ? ` · exit ${ev.exit_code}` : ""}` +
                   `${ev.truncated ? " · truncated" : ""} · ${fmt(Math.round(ev.duration_ms))} ms`),
                block(ev.output, "output")];
      case "HumanIntervened":
        return [el("div", {}, el("b", {}, `${ev.kind} from ${ev.annotator}`),
                   ev.seen_version ? el("span", { class: "muted" }, ` (saw v${ev.seen_version})`) : null),
                el("pre", {}, ev.message)];
      case "ContextSummarized":
        return [el("div", { class: "muted" },
                   `replaces v${ev.replaces_from}–v${ev.replaces_to} · ${fmt(ev.tokens_before)} → ${fmt(ev.tokens_after)} tokens`),
                block(ev.summary, "summary")];
      case "ActionJudged":
        return [el("div", {}, `${ev.verdict}${ev.score !== null && ev.score !== undefined ? ` (${ev.score})` : ""} by ${ev.judge_id}`),
                ev.reason ? el("pre", {}, ev.reason) : null];
      case "BranchCreated":
        return [el("div", {}, `branched from `, el("a", { href: runLink(ev.parent_stream) }, ev.parent_stream),
                   ` at v${ev.fork_version}`, ev.reason ? ` — ${ev.reason}` : "")];
      case "RunReconfigured": {
        const changed = Object.entries(ev).filter(([key, value]) => key !== "type" && key !== "reason" && value !== null)
          .map(([key, value]) => `${key} = ${JSON.stringify(value)}`);
        return [el("div", {}, el("b", {}, "settings changed"), ev.reason ? ` — ${ev.reason}` : ""),
                el("div", { class: "muted" }, changed.join(" · "))];
      }
      case "RunFinished":
        return [el("div", {}, el("b", {}, ev.status), ev.score !== null && ev.score !== undefined ? ` · score ${ev.score}` : "",
                   ev.error ? ` · ${ev.error}` : ""),
                ev.final_answer ? block(ev.final_answer, "final answer") : null];
      default:
        return [el("pre", {}, JSON.stringify(ev, null, 2))];
    }
  }

  function render(e) {
    const inherited = e.stream_id !== runId;
    const item = el("article", { class: `event kind-${e.kind}${inherited ? " inherited" : ""}`, dataset: { version: e.version, kind: e.kind } },
      el("header", {},
        el("span", { class: "version" }, `v${e.version}`),
        el("span", { class: "kind" }, e.kind),
        el("span", { class: "actor" }, e.actor),
        inherited ? el("span", { class: "muted" }, `from ${e.stream_id}`) : null,
        el("time", { title: e.recorded_at, dataset: { at: e.recorded_at } }, e.recorded_at.slice(11, 19)),
        e.kind === "AgentActed" || e.kind === "ToolObserved" || e.kind === "RunStarted" || e.kind === "HumanIntervened"
          ? el("button", { type: "button", class: "select", onclick: () => select(e) }, "select") : null),
      ...body(e));
    if (e.kind === "AgentActed") actions.set(e.event_id, item);
    return item;
  }

  // Events are put on the page once per frame, however many arrive: a long run's backlog
  // then costs one layout, not one per event.
  const incoming = [];
  function add(e) {
    incoming.push(e);
    if (incoming.length === 1) requestAnimationFrame(flush);
  }

  function flush() {
    const stick = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    const fragment = document.createDocumentFragment();
    let last = null, annotate = false;
    for (const e of incoming.splice(0)) {
      if (items.has(e.version)) continue;
      last = render(e);
      items.set(e.version, last);
      fragment.append(last);
      head = Math.max(head, e.version);
      annotate = annotate || e.kind !== "BranchCreated";  // rules look at observations and endings too
    }
    if (!last) return;
    timeline.append(fragment);
    document.getElementById("seen-note").textContent = `You are looking at v${head}; what you send is recorded as seen there.`;
    if (stick) last.scrollIntoView({ block: "end" });
    if (annotate) refreshAnnotations();
  }

  // -- annotations beside actions -----------------------------------------------------------

  let annotationTimer = null;
  function refreshAnnotations() {
    clearTimeout(annotationTimer);
    annotationTimer = setTimeout(async () => {
      try {
        const data = await api("/api/annotations?run=" + encodeURIComponent(runId));
        for (const [eventId, decision] of Object.entries(data.decisions)) {
          const item = actions.get(eventId);
          if (!item) continue;
          const box = item.querySelector(".annotations");
          const badges = decision.reasons.map((r) => el("span", { class: `badge ${r.source}${r.masks ? " masks" : ""}`, title: r.detail },
            `${r.source} ${r.name}: ${r.detail}`));
          if (!decision.keep) badges.unshift(el("span", { class: "badge masked" }, "masked from training"));
          box.replaceChildren(...badges);
          item.classList.toggle("masked", !decision.keep);
        }
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

  function select(e) {
    selected = e;
    for (const item of timeline.querySelectorAll(".selected")) item.classList.remove("selected");
    items.get(e.version).classList.add("selected");
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
