"use strict";
// The context as the model saw it at a step: the server folds the stream up to that version
// through the same fold the agent uses (summaries applied, old observations elided as the
// run's agent did), and this dialog shows the messages it gives.

const ContextView = (() => {
  const { el, api, fmt } = Console;

  function message(m) {
    const calls = (m.tool_calls || []).map((call) => Render.toolCall(call));
    const label = m.source === "summary" ? "summary of earlier steps" : m.source === "human" ? "a person" : m.tool_name || m.source;
    return el("section", { class: `msg role-${m.role} source-${m.source}`, dataset: { version: m.version } },
      el("header", {}, el("b", {}, m.role), ` · ${label} · v${m.version}${m.is_error ? " · error" : ""}`),
      m.reasoning ? el("details", { class: "reasoning" }, el("summary", {}, "reasoning"), el("pre", {}, m.reasoning)) : null,
      m.content ? Render.block(m.content, "content") : null,
      ...calls);
  }

  // Opens the dialog on the context after `version` (0: the head, i.e. the next request).
  async function show(runId, version, title) {
    const dialog = document.getElementById("context-dialog");
    const body = document.getElementById("context-body");
    document.getElementById("context-title").textContent = title;
    body.replaceChildren(el("p", { class: "muted" }, "Folding the run…"));
    if (!dialog.open) dialog.showModal();
    try {
      const data = await api(`/api/context?run=${encodeURIComponent(runId)}&version=${version}`);
      const summaries = data.messages.filter((m) => m.source === "summary").length;
      body.replaceChildren(
        el("p", { class: "muted", id: "context-meta" },
          `After v${data.version} · ${fmt(data.messages.length)} messages · ~${fmt(data.tokens)} tokens · ${data.steps} steps so far` +
          (summaries ? ` · earlier steps replaced by ${summaries} summar${summaries === 1 ? "y" : "ies"}` : "")),
        el("details", {}, el("summary", {}, `system prompt and ${data.tools.length} tools`),
          el("pre", {}, data.system || "(no system prompt)"), el("p", { class: "muted" }, data.tools.join(", "))),
        ...data.messages.map(message));
    } catch (error) {
      body.replaceChildren(el("p", { class: "message error" }, `Could not fold the run — ${error.message}`));
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("context-close").addEventListener("click", () => document.getElementById("context-dialog").close());
  });

  return { show };
})();
