"use strict";
// How one event reads on the run page: a one-line summary for its row, and the full view
// shown when the row is expanded. Everything is built with Console.el (textContent only):
// agent and tool output is untrusted.

const Render = (() => {
  const { el, fmt, runLink } = Console;
  const LONG_CHARS = 1500, LONG_LINES = 20;
  const DIFF_CELLS = 250000;  // beyond this many line pairs the diff shows old, then new, unaligned

  function firstLine(text, width = 160) {
    const line = String(text || "").trim().split("\n")[0];
    return line.length <= width ? line : line.slice(0, width - 1) + "…";
  }

  function block(text, label) {
    // Long text starts collapsed; short text is shown whole.
    const lines = text.split("\n").length;
    const pre = el("pre", {}, text);
    if (text.length <= LONG_CHARS && lines <= LONG_LINES) return pre;
    return el("details", {}, el("summary", {}, `${label}: ${fmt(lines)} lines, ${fmt(text.length)} characters`), pre);
  }

  // -- tool calls: edits as diffs, writes as files ------------------------------------------

  // The arguments of a file edit or write, whatever the tool is called: ours (edit_file,
  // write_file) and the str_replace_editor of imported SWE-agent and OpenHands runs.
  function fileChange(call) {
    const a = call.arguments || {};
    if (typeof a.path !== "string") return null;
    const old = typeof a.old === "string" ? a.old : a.old_str;
    const replacement = typeof a.new === "string" ? a.new : a.new_str;
    if (typeof old === "string" && typeof replacement === "string") return { path: a.path, old, new: replacement };
    const content = typeof a.content === "string" ? a.content : a.file_text;
    if (typeof content === "string") return { path: a.path, content };
    return null;
  }

  // Lines of `before` and `after` as [sign, line] pairs: common lines kept, the rest removed
  // or added (a longest-common-subsequence diff of what lies between the common ends).
  function lineDiff(before, after) {
    // Text ending in a newline has no last line after it: "a\n" is one line, as in a file.
    const lines = (text) => (text.endsWith("\n") ? text.slice(0, -1) : text).split("\n");
    const a = lines(before), b = lines(after);
    let start = 0, endA = a.length, endB = b.length;
    while (start < endA && start < endB && a[start] === b[start]) start++;
    while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
    const head = a.slice(0, start).map((line) => [" ", line]);
    const tail = a.slice(endA).map((line) => [" ", line]);
    const x = a.slice(start, endA), y = b.slice(start, endB);
    if (x.length * y.length > DIFF_CELLS) {
      return [...head, ...x.map((line) => ["-", line]), ...y.map((line) => ["+", line]), ...tail];
    }
    const lcs = Array.from({ length: x.length + 1 }, () => new Uint32Array(y.length + 1));
    for (let i = x.length - 1; i >= 0; i--) {
      for (let j = y.length - 1; j >= 0; j--) {
        lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    const middle = [];
    let i = 0, j = 0;
    while (i < x.length || j < y.length) {
      if (i < x.length && j < y.length && x[i] === y[j]) { middle.push([" ", x[i]]); i++; j++; }
      else if (i < x.length && (j === y.length || lcs[i + 1][j] >= lcs[i][j + 1])) middle.push(["-", x[i++]]);
      else middle.push(["+", y[j++]]);
    }
    return [...head, ...middle, ...tail];
  }

  const SIGN_CLASS = { " ": "ctx", "-": "del", "+": "add" };

  function diffView(change) {
    const lines = lineDiff(change.old, change.new);
    const added = lines.filter(([sign]) => sign === "+").length, removed = lines.filter(([sign]) => sign === "-").length;
    return el("figure", { class: "file diff" },
      el("figcaption", {}, el("code", {}, change.path), ` · +${added} −${removed} lines`),
      el("pre", { "aria-label": `changes to ${change.path}` },
        lines.map(([sign, line]) => el("span", { class: SIGN_CLASS[sign] }, `${sign} ${line}\n`))));
  }

  function fileView(change) {
    const lines = change.content.split("\n");
    if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
    const numbers = lines.map((_, n) => n + 1).join("\n");
    return el("figure", { class: "file" },
      el("figcaption", {}, el("code", {}, change.path), ` · ${fmt(lines.length)} lines, ${fmt(change.content.length)} characters`),
      el("div", { class: "file-body" },
        el("pre", { class: "gutter", "aria-hidden": "true" }, numbers),
        el("pre", { class: "code" }, lines.join("\n"))));
  }

  function toolCall(call) {
    const change = fileChange(call);
    let view;
    if (change && "old" in change) view = diffView(change);
    else if (change) view = fileView(change);
    else {
      const args = call.raw_arguments !== null && call.raw_arguments !== undefined
        ? call.raw_arguments : JSON.stringify(call.arguments, null, 2);
      view = block(args, "arguments");
    }
    return el("div", { class: "tool-call" }, el("span", { class: "tool-name" }, call.name), view);
  }

  // -- one line per call, per row ---------------------------------------------------------------

  const SHORT_ARG = { run_command: "command", create_session: "command", send_session_input: "text", think: "thought", search: "pattern", finish: "answer" };

  function shortCall(call) {
    const a = call.arguments || {};
    if (call.raw_arguments !== null && call.raw_arguments !== undefined) return `${call.name}(${firstLine(call.raw_arguments, 60)})`;
    const key = SHORT_ARG[call.name] || (typeof a.path === "string" ? "path" : null);
    const value = key && typeof a[key] === "string" ? a[key] : JSON.stringify(a);
    return `${call.name} ${firstLine(value, 100)}`;
  }

  function usageTitle(u, extra) {
    return `input ${fmt(u.input_tokens)}, cache read ${fmt(u.cache_read_tokens)}, cache write ${fmt(u.cache_write_tokens)}, ` +
      `output ${fmt(u.output_tokens)} tokens${extra || ""}`;
  }

  function compact(n) {
    return n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e4 ? `${Math.round(n / 1e3)}k` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n);
  }

  function seconds(ms) { return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`; }

  // Tokens, cost and latency of a model call (an action or a summary), as row cells.
  function modelMetrics(ev) {
    const u = ev.usage || {};
    const prompt = (u.input_tokens || 0) + (u.cache_read_tokens || 0) + (u.cache_write_tokens || 0);
    const discarded = (ev.discarded || []).length;
    return [
      el("span", { class: "metric tokens", title: usageTitle(u, discarded ? `; ${discarded} answer(s) discarded for a person's message` : "") },
        `${compact(prompt)}→${compact(u.output_tokens || 0)} tok`),
      el("span", { class: "metric cost", title: "what the model call cost" }, ev.cost_usd != null ? `$${ev.cost_usd.toFixed(4)}` : "—"),
      ev.latency_ms ? el("span", { class: "metric latency", title: "model latency" }, seconds(ev.latency_ms)) : null,
    ];
  }

  // The row line of a step: the action and the outcome of its calls.
  function stepLine(action, observations) {
    const ev = action.event;
    const what = ev.tool_calls.length ? ev.tool_calls.map(shortCall).join("; ") : firstLine(ev.text) || "(no text)";
    const outcome = observations.map((o) => {
      const x = o.event;
      if (x.origin === "timeout") return "timeout";
      if (x.origin === "notice") return "not run";
      if (x.exit_code !== null && x.exit_code !== undefined) return `exit ${x.exit_code}`;
      return x.is_error ? "error" : "ok";
    });
    const toolMs = observations.reduce((sum, o) => sum + (o.event.duration_ms || 0), 0);
    return [
      el("span", { class: "what" }, what),
      el("span", { class: "outcome" }, outcome.length ? outcome.join(", ") : "…"),
      ...modelMetrics(ev),
      observations.length ? el("span", { class: "metric duration", title: "tool time" }, `⚙ ${seconds(toolMs)}`) : null,
    ];
  }

  // The row line of any other event.
  function eventLine(e, versionOf) {
    const ev = e.event;
    switch (e.kind) {
      case "RunStarted": return `task ${ev.task_id} · model ${ev.model || "?"} · ${firstLine(ev.task)}`;
      case "ToolObserved": return `${ev.tool_name || "feedback"}${ev.exit_code != null ? ` · exit ${ev.exit_code}` : ""} · ${firstLine(ev.output)}`;
      case "HumanIntervened": {
        const target = ev.target_event_id ? ` of v${versionOf(ev.target_event_id) || "?"}` : "";
        const saw = ev.seen_version ? ` (saw v${ev.seen_version})` : "";
        return `${ev.kind}${target} from ${ev.annotator}${saw}: ${firstLine(ev.message)}`;
      }
      case "ContextSummarized":
        return [el("span", { class: "what" }, `summary of v${ev.replaces_from}–v${ev.replaces_to} · ${fmt(ev.tokens_before)} → ${fmt(ev.tokens_after)} tokens`),
                ...modelMetrics(ev)];
      case "ActionJudged":
        return `${ev.verdict}${ev.score != null ? ` (${ev.score})` : ""} by ${ev.judge_id} for v${versionOf(ev.target_event_id) || "?"}: ${firstLine(ev.reason)}`;
      case "BranchCreated": return `branched from ${ev.parent_stream} at v${ev.fork_version}${ev.reason ? ` — ${ev.reason}` : ""}`;
      case "RunReconfigured": return `settings changed: ${reconfigured(ev).join(" · ")}`;
      case "RunFinished": return `${ev.status}${ev.score != null ? ` · score ${ev.score}` : ""}${ev.error ? ` · ${firstLine(ev.error)}` : ""}`;
      default: return e.kind;
    }
  }

  function reconfigured(ev) {
    return Object.entries(ev).filter(([key, value]) => key !== "type" && key !== "reason" && value !== null)
      .map(([key, value]) => `${key} = ${JSON.stringify(value)}`);
  }

  // -- the full view of one event ---------------------------------------------------------------

  function body(e) {
    const ev = e.event;
    switch (e.kind) {
      case "RunStarted":
        return [el("div", { class: "muted" }, `task ${ev.task_id} · model ${ev.model || "?"} · summary at ${fmt(ev.summary_threshold)} tokens`),
                block(ev.task, "task")];
      case "AgentActed":
        return [
          el("div", { class: "muted" }, `${ev.model} · ${usageTitle(ev.usage)} · ${ev.cost_usd != null ? `$${ev.cost_usd.toFixed(4)}` : "no price"} · ` +
             `${seconds(ev.latency_ms || 0)}${ev.stop_reason ? ` · stop: ${ev.stop_reason}` : ""}`),
          ...(ev.discarded || []).map((d) => el("div", { class: "muted" },
             `an answer discarded for a person's message: ${usageTitle(d.usage)}${d.cost_usd != null ? ` · $${d.cost_usd.toFixed(4)}` : ""}`)),
          ev.reasoning ? el("details", { class: "reasoning" }, el("summary", {}, "reasoning"), el("pre", {}, ev.reasoning)) : null,
          ev.text ? el("div", { class: "text" }, block(ev.text, "text")) : null,
          ...ev.tool_calls.map(toolCall),
        ];
      case "ToolObserved":
        return [el("div", { class: "muted" },
                   `${ev.tool_name || "feedback"}${ev.exit_code !== null && ev.exit_code !== undefined ? ` · exit ${ev.exit_code}` : ""}` +
                   `${ev.is_error ? " · error" : ""}${ev.origin && ev.origin !== "tool" ? ` · ${ev.origin}` : ""}` +
                   `${ev.truncated ? ` · truncated from ${fmt(ev.original_chars)} characters` : ""} · ${seconds(ev.duration_ms || 0)}`),
                block(ev.output, "output")];
      case "HumanIntervened":
        return [el("div", {}, el("b", {}, `${ev.kind} from ${ev.annotator}`),
                   ev.seen_version ? el("span", { class: "muted" }, ` (saw v${ev.seen_version})`) : null),
                el("pre", {}, ev.message)];
      case "ContextSummarized":
        return [el("div", { class: "muted" },
                   `replaces v${ev.replaces_from}–v${ev.replaces_to} · ${fmt(ev.tokens_before)} → ${fmt(ev.tokens_after)} tokens · ${usageTitle(ev.usage)}`),
                block(ev.summary, "summary")];
      case "ActionJudged":
        return [el("div", {}, `${ev.verdict}${ev.score !== null && ev.score !== undefined ? ` (${ev.score})` : ""} by ${ev.judge_id}`),
                ev.reason ? el("pre", {}, ev.reason) : null];
      case "BranchCreated":
        return [el("div", {}, `branched from `, el("a", { href: runLink(ev.parent_stream) }, ev.parent_stream),
                   ` at v${ev.fork_version}`, ev.reason ? ` — ${ev.reason}` : "")];
      case "RunReconfigured":
        return [el("div", {}, el("b", {}, "settings changed"), ev.reason ? ` — ${ev.reason}` : ""),
                el("div", { class: "muted" }, reconfigured(ev).join(" · "))];
      case "RunFinished":
        return [el("div", {}, el("b", {}, ev.status), ev.score !== null && ev.score !== undefined ? ` · score ${ev.score}` : "",
                   ev.error ? ` · ${ev.error}` : ""),
                ev.final_answer ? block(ev.final_answer, "final answer") : null];
      default:
        return [el("pre", {}, JSON.stringify(ev, null, 2))];
    }
  }

  function full(e, runId) {
    const inherited = e.stream_id !== runId;
    return el("section", { class: `event kind-${e.kind}`, dataset: { version: e.version, kind: e.kind } },
      el("header", {},
        el("span", { class: "version" }, `v${e.version}`),
        el("span", { class: "kind" }, e.kind),
        el("span", { class: "actor" }, e.actor),
        inherited ? el("span", { class: "muted" }, `from ${e.stream_id}`) : null,
        el("time", { title: e.recorded_at }, e.recorded_at.slice(11, 19))),
      ...body(e));
  }

  return { block, toolCall, stepLine, eventLine, full };
})();
