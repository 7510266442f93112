"use strict";
// The runs page: every run and branch, live, with model, status, agent, cost and score; filter and sort.
(async () => {
  const { el, stream, ago, fmt, runLink, syncClock, showConnection } = Console;
  const runs = new Map();
  let sortKey = "last_event_at", descending = true;

  const body = document.querySelector("#runs tbody");
  const filter = document.getElementById("filter");
  const statusFilter = document.getElementById("status-filter");
  const waitingOnly = document.getElementById("waiting-only");
  const agentOnly = document.getElementById("agent-only");

  function matches(run) {
    const text = filter.value.trim().toLowerCase();
    if (statusFilter.value && run.status !== statusFilter.value) return false;
    if (waitingOnly.checked && !run.open_interventions) return false;
    if (agentOnly.checked && !run.agent) return false;
    if (!text) return true;
    return [run.stream_id, run.task_id, run.task, run.status, run.model, run.last_action]
      .some((field) => String(field || "").toLowerCase().includes(text));
  }

  function compare(a, b) {
    const x = a[sortKey] ?? -Infinity, y = b[sortKey] ?? -Infinity;  // no cost or score yet: lowest
    const order = x === y ? 0 : typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return descending ? -order : order;
  }

  function gauge(run) {
    const share = run.summary_threshold ? Math.min(1, run.tokens / run.summary_threshold) : 0;
    return el("td", { class: "num", title: `${fmt(run.tokens)} of ${fmt(run.summary_threshold)} tokens before a summary` },
      el("span", { class: "mini-gauge" }, el("span", { class: share > 0.9 ? "fill hot" : "fill", style: { width: `${Math.round(share * 100)}%` } })),
      ` ${fmt(run.tokens)}`);
  }

  function row(run) {
    const name = el("td", { class: "run-id" },
      run.parent_id ? el("span", { class: "muted" }, "↳ ") : null,
      el("a", { href: runLink(run.stream_id) }, run.stream_id),
      run.parent_id ? el("div", { class: "muted small" }, `from ${run.parent_id} @v${run.fork_version}`) : null);
    // The status comes from the one status function (projections/status.py); "agent" says
    // whether an agent holds the run's lease right now.
    const status = el("td", { class: "status-cell" },
      el("span", { class: `status ${run.status}` }, run.status),
      el("span", { class: run.agent ? "agent" : "agent none", title: run.agent ? "an agent holds this run" : "no agent holds this run",
                   dataset: { agent: run.agent ? "yes" : "no" } }, run.agent ? "● agent" : "○ no agent"));
    return el("tr", { dataset: { stream: run.stream_id } },
      name,
      status,
      el("td", { class: "model" }, run.model),
      el("td", { class: "task", title: run.task }, run.task_id || run.task),
      el("td", { class: "num steps" }, fmt(run.steps)),
      gauge(run),
      el("td", { class: "num cost", title: "what this stream's own model calls cost" },
        run.cost_usd == null ? "—" : `$${run.cost_usd.toFixed(run.cost_usd < 0.01 ? 4 : 2)}`),
      el("td", { class: "num score" }, run.score != null ? String(run.score) : "—"),
      el("td", { class: "last-action", title: run.last_action }, run.last_action),
      el("td", { class: "ago", title: run.last_event_at, dataset: { at: run.last_event_at } }, ago(run.last_event_at)),
      el("td", { class: run.open_interventions ? "num open waiting" : "num open" }, fmt(run.open_interventions)));
  }

  function render() {
    const shown = [...runs.values()].filter(matches).sort(compare);
    body.replaceChildren(...shown.map(row));
    document.getElementById("count").textContent = `${shown.length} of ${runs.size} runs`;
    document.getElementById("empty").hidden = runs.size > 0;
    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === sortKey);
      th.classList.toggle("desc", th.dataset.sort === sortKey && descending);
    }
  }

  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      descending = th.dataset.sort === sortKey ? !descending : th.dataset.sort !== "stream_id";
      sortKey = th.dataset.sort;
      render();
    });
  }
  for (const input of [filter, statusFilter, waitingOnly, agentOnly]) input.addEventListener("input", render);

  // Live updates redraw the table at most once per frame, however many rows change.
  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }

  const source = await stream("/api/runs/stream");
  showConnection(source);
  source.addEventListener("runs", (message) => {
    const data = JSON.parse(message.data);
    syncClock(data.server_time);
    runs.clear();
    for (const run of data.runs) runs.set(run.stream_id, run);
    scheduleRender();
  });
  source.addEventListener("changed", (message) => {
    const data = JSON.parse(message.data);
    syncClock(data.server_time);
    for (const run of data.runs) runs.set(run.stream_id, run);
    scheduleRender();
  });
  setInterval(() => {
    for (const cell of document.querySelectorAll("td.ago")) cell.textContent = ago(cell.dataset.at);
  }, 1000);
})();
