"use strict";
// Shared by both pages. Agent output is untrusted: everything is put into the page with
// textContent (through el()), never as HTML.

const Console = (() => {
  const KEY_TOKEN = "apollo-es.token";
  const KEY_ANNOTATOR = "apollo-es.annotator";

  // The start-up URL carries the token in the fragment (never sent to the server);
  // keep it for this browser and take it out of the address bar.
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    localStorage.setItem(KEY_TOKEN, hash.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }

  function token() { return localStorage.getItem(KEY_TOKEN) || ""; }
  function annotator() { return (localStorage.getItem(KEY_ANNOTATOR) || "").trim(); }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "style") Object.assign(node.style, value);  // CSSOM: allowed by the page's CSP
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function api(path, options = {}) {
    const headers = { "Accept": "application/json" };
    if (token()) headers["Authorization"] = "Bearer " + token();
    let body;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const response = await fetch(path, { method: options.method || "GET", headers, body });
    let data = null;
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      const reason = data && data.error ? data.error : response.statusText;
      throw new Error(`${response.status}: ${reason}`);
    }
    return data;
  }

  // What the server allows; fetched once, before any read.
  const config = fetch("/api/config").then((response) => response.json());

  // EventSource cannot send headers. Off loopback, where reads need the token, the page
  // trades it once for a read-only HttpOnly cookie, so the token never appears in a URL.
  let session = null;
  async function stream(path) {
    const { reads_need_token } = await config;
    if (reads_need_token) {
      session = session || fetch("/api/session", { method: "POST", headers: { "Authorization": "Bearer " + token() } });
      await session;
    }
    return new EventSource(path);
  }

  let clockOffset = 0;  // server time minus this browser's, so "ago" is right on another machine
  function syncClock(serverTime) {
    if (serverTime) clockOffset = Date.parse(serverTime) - Date.now();
  }

  function ago(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, Math.round((Date.now() + clockOffset - Date.parse(iso)) / 1000));
    if (seconds < 60) return `${seconds}s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m ago`;
    return `${Math.floor(seconds / 86400)}d ago`;
  }

  function fmt(n) { return Number(n || 0).toLocaleString("en-US"); }

  function runLink(id) { return "/run?id=" + encodeURIComponent(id); }

  function showConnection(source) {
    const pill = document.getElementById("connection");
    source.addEventListener("open", () => { pill.textContent = "live"; pill.className = "pill live"; });
    source.addEventListener("error", () => {
      // The browser retries a dropped stream by itself, but not one the server refused.
      pill.textContent = source.readyState === EventSource.CLOSED ? "refused (token?) — reload" : "reconnecting…";
      pill.className = "pill down";
    });
  }

  function bindSettings() {
    const name = document.getElementById("annotator");
    const secret = document.getElementById("token");
    name.value = annotator();
    secret.value = token();
    document.getElementById("settings").addEventListener("submit", (event) => event.preventDefault());
    name.addEventListener("change", () => localStorage.setItem(KEY_ANNOTATOR, name.value.trim()));
    secret.addEventListener("change", () => localStorage.setItem(KEY_TOKEN, secret.value.trim()));
  }

  document.addEventListener("DOMContentLoaded", bindSettings);

  return { el, api, stream, config, ago, fmt, runLink, syncClock, showConnection, token, annotator };
})();
