"use strict";
// The run's timeline as compact rows: one per step (an action and the observations of its
// calls together), one per other event. A row is a single line until it is expanded; the
// full view is built on first expand, so a 5,000-event run costs one short line per row.

const Timeline = (() => {
  const { el } = Console;
  const GROUPS = {
    AgentActed: "step", ToolObserved: "step", HumanIntervened: "human", ContextSummarized: "summary",
    ActionJudged: "judge", RunStarted: "run", BranchCreated: "run", RunReconfigured: "run", RunFinished: "run",
  };
  const SELECTABLE = new Set(["AgentActed", "ToolObserved", "RunStarted", "HumanIntervened"]);

  function create({ container, runId, onSelect, onContext, onRendered }) {
    const rows = [];                  // in order of their first event
    const rowByVersion = new Map();
    const versionByEventId = new Map();
    const rowByActionId = new Map();  // action event_id -> its step row
    const tools = new Set();
    let steps = 0, current = null;    // the latest step row and its calls still open
    let filter = () => true;

    // -- rows ---------------------------------------------------------------------------------

    function status(row) {
      if (row.kind !== "AgentActed") return "";
      const calls = row.events[0].event.tool_calls.length || 1;  // a turn without calls gets one feedback observation
      const observed = row.events.slice(1).map((e) => e.event);
      if (observed.some((o) => o.origin === "timeout")) return "timeout";
      if (observed.some((o) => o.is_error)) return "error";
      return observed.length < calls ? "pending" : "ok";
    }

    function line(row) {
      const first = row.events[0];
      const versions = row.events.map((e) => e.version);
      const said = row.kind === "AgentActed" ? Render.stepLine(first, row.events.slice(1)) : Render.eventLine(first, (id) => versionByEventId.get(id));
      const what = typeof said === "string" ? [el("span", { class: "what" }, said)] : said;
      return el("button", { type: "button", class: "toggle", "aria-expanded": String(row.open), "aria-controls": `detail-${first.version}` },
        el("span", { class: "step-no" }, row.step ? `#${row.step}` : ""),
        el("span", { class: "versions" }, versions.length > 1 ? `v${versions[0]}–${versions[versions.length - 1]}` : `v${versions[0]}`),
        el("span", { class: "kind" }, row.kind === "AgentActed" ? "step" : row.kind),
        ...what,
        el("time", { title: first.recorded_at }, first.recorded_at.slice(11, 19)));
    }

    function build(row) {
      const first = row.events[0];
      const inherited = first.stream_id !== runId;
      row.el = el("article", {
        class: `row kind-${row.kind}${inherited ? " inherited" : ""}`,
        dataset: { version: first.version, kind: row.kind, group: GROUPS[row.kind] || "other" },
      });
      if (row.step) row.el.dataset.step = row.step;
      row.annotations = el("div", { class: "annotations" });
      row.select = SELECTABLE.has(row.kind)
        ? el("button", { type: "button", class: "select", onclick: () => onSelect(first, row.el), "aria-label": `select v${first.version}` }, "select")
        : null;
      refresh(row);
    }

    // Redraws the row's line (and its open view) after an observation joined it or it was annotated.
    function refresh(row) {
      const first = row.events[0];
      row.el.dataset.versions = row.events.map((e) => e.version).join(" ");
      row.el.dataset.status = status(row);
      if (row.kind === "AgentActed") row.el.dataset.tools = first.event.tool_calls.map((c) => c.name).join(" ");
      row.el.replaceChildren(el("div", { class: "line" }, line(row), row.select), row.annotations);
      if (row.open) row.el.append(detail(row));
      row.el.classList.toggle("masked", Boolean(row.masked));
      row.el.classList.toggle("open", row.open);
    }

    function detail(row) {
      const first = row.events[0];
      const view = el("div", { class: "detail", id: `detail-${first.version}` }, row.events.map((e) => Render.full(e, runId)));
      if (row.kind === "AgentActed") {
        view.append(el("button", { type: "button", class: "context", onclick: () => onContext(first.version - 1, row.step) },
          `Context the model saw for step #${row.step}`));
      }
      return view;
    }

    function toggle(row, open = !row.open) {
      row.open = open;
      refresh(row);
    }

    container.addEventListener("click", (event) => {
      const button = event.target.closest("button.toggle");
      if (!button) return;
      const row = rowByVersion.get(Number(button.closest("article").dataset.version));
      if (row) toggle(row);
    });

    // -- adding events ----------------------------------------------------------------------------

    // Puts `e` into a row: an observation of the open step's calls joins that step.
    function place(e) {
      versionByEventId.set(e.event_id, e.version);
      if (e.kind === "ToolObserved" && current && current.calls.has(e.event.tool_call_id || "")) {
        current.row.events.push(e);
        rowByVersion.set(e.version, current.row);
        return current.row;
      }
      const row = { kind: e.kind, events: [e], open: false, masked: false, text: null, step: 0 };
      if (e.kind === "AgentActed") {
        row.step = ++steps;
        const ids = e.event.tool_calls.map((call) => call.id);
        current = { row, calls: new Set(ids.length ? ids : [""]) };
        rowByActionId.set(e.event_id, row);
        for (const call of e.event.tool_calls) tools.add(call.name);
      } else if (e.kind !== "HumanIntervened" && e.kind !== "ActionJudged") {
        current = null;  // a summary, a branch or an end closes the step; a person's word does not
      }
      rows.push(row);
      rowByVersion.set(e.version, row);
      return row;
    }

    // Adds a batch of events (in version order); the rows are appended in one go.
    function add(events) {
      const created = new Set(), changed = new Set();
      for (const e of events) {
        if (rowByVersion.has(e.version)) continue;
        const row = place(e);
        row.text = null;
        (row.el ? changed : created).add(row);  // a step and its results in one batch: drawn once
      }
      for (const row of created) build(row);
      for (const row of changed) refresh(row);
      for (const row of [...created, ...changed]) row.el.hidden = !filter(row);
      if (created.size) container.append(...[...created].map((row) => row.el));
      if (created.size || changed.size) onRendered();
      return created.size + changed.size > 0;
    }

    // Rule hits, verdicts and people's decisions beside the actions they are about.
    function annotate(decisions) {
      for (const [eventId, decision] of Object.entries(decisions)) {
        const row = rowByActionId.get(eventId);
        if (!row) continue;
        const badges = decision.reasons.map((r) => el("span", { class: `badge ${r.source}${r.masks ? " masks" : ""}`, title: r.detail },
          `${r.source} ${r.name}: ${r.detail}`));
        if (!decision.keep) badges.unshift(el("span", { class: "badge masked" }, "masked from training"));
        row.annotations.replaceChildren(...badges);
        if (row.masked !== !decision.keep) {
          row.masked = !decision.keep;
          refresh(row);
          row.el.hidden = !filter(row);
        }
      }
    }

    // -- search, filters, jump ---------------------------------------------------------------------

    function haystack(row) {
      if (row.text === null) row.text = row.events.map((e) => `${e.kind} ${e.actor} ${JSON.stringify(e.event)}`).join("\n").toLowerCase();
      return row.text;
    }

    // Shows only the rows that match; the number shown.
    function setFilter({ text, group, tool, state }) {
      const needle = text.trim().toLowerCase();
      filter = (row) => (!group || (GROUPS[row.kind] || "other") === group)
        && (!tool || (row.el.dataset.tools || "").split(" ").includes(tool))
        && (!state || (state === "masked" ? row.masked : row.el.dataset.status === state))
        && (!needle || haystack(row).includes(needle));
      let shown = 0;
      for (const row of rows) {
        row.el.hidden = !filter(row);
        shown += !row.el.hidden;
      }
      return shown;
    }

    function stepRow(n) { return rows.find((row) => row.step === n); }

    function open(row) {
      if (!row.open) toggle(row, true);
      row.el.scrollIntoView({ block: "start" });
      row.el.querySelector("button.toggle").focus({ preventScroll: true });
    }

    return {
      add, annotate, setFilter, stepRow, open,
      get steps() { return steps; },
      get size() { return rows.length; },
      get tools() { return [...tools].sort(); },
      last() { return rows.length ? rows[rows.length - 1].el : null; },
    };
  }

  return { create };
})();
