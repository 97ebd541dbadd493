/**
 * The status page of a cart for people: what `GET /{uid}/status` answers a browser (a request
 * whose `Accept` prefers `text/html`; see ./status.ts). One HTML document with its CSS and
 * JavaScript inline, nothing fetched from elsewhere and no build step: the state, a progress
 * bar that moves with the cart's event stream (`GET /{uid}/events`, ./events.ts), the files
 * that failed and why (`GET /{uid}/files?state=error`), and a download link once the cart is
 * ready. It reads on a phone (one column, the viewport's width).
 *
 * The page's content-security-policy allows nothing but its own inline style and script (by
 * their SHA-256), requests to cartd itself (`connect-src 'self'`) and the empty `data:` icon
 * that keeps a browser from asking for `/favicon.ico` (which would be a cart's uid): no other
 * script, no style attribute, no frame, no form, no plug-in.
 *
 * Every URL in the page is relative to the page's own (`/{uid}/status`), so that the page works
 * behind a proxy that serves cartd under a prefix.
 *
 * @module
 */
import { createHash } from "node:crypto";

/** The page's style sheet. */
const STYLE = `
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --wait: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, sans-serif; }
main { max-width: 42rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.state { display: inline-block; padding: .1rem .6rem; border-radius: 1rem; font-weight: 600;
  border: 2px solid currentColor; color: var(--wait); }
.state[data-state="ready"] { color: var(--ok); }
.state[data-state="error"], .state[data-state="deleted"] { color: var(--bad); }
progress { width: 100%; height: 1.4rem; margin: .75rem 0 .25rem; }
.figures, .live { color: GrayText; margin: .25rem 0; }
.message { overflow-wrap: anywhere; }
.button { display: inline-block; margin: 1rem 0; padding: .7rem 1.4rem; border-radius: .4rem;
  background: var(--ok); color: #fff; font-weight: 600; text-decoration: none; }
table { width: 100%; border-collapse: collapse; font-size: .9rem; }
th, td { text-align: left; padding: .3rem; border-bottom: 1px solid GrayText;
  vertical-align: top; overflow-wrap: anywhere; }
[hidden] { display: none !important; }
`;

/** The page's script: renders a status (the JSON of `GET /{uid}/status`) and follows events. */
const SCRIPT = `"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const status = JSON.parse($("cart-status").textContent);
  // Opened through a signed link: the link's query opens the events and files too.
  const link = JSON.parse($("cart-link").textContent);
  const signed = (url) => link ? url + (url.includes("?") ? "&" : "?") + link : url;
  const FINAL = new Set(["ready", "error"]);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const size = (n) => {
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  };
  const duration = (s) => s < 90 ? s + " s" : s < 5400 ? Math.round(s / 60) + " min" :
    Math.round(s / 360) / 10 + " h";
  let failuresShown = -1;
  const loadFailures = async () => {
    const res = await fetch(signed("files?state=error&limit=100"), { headers: { Accept: "application/json" } });
    if (!res.ok) return;
    const page = await res.json();
    const rows = $("failed-rows");
    rows.replaceChildren();
    for (const file of page.files) {
      const tr = document.createElement("tr");
      for (const text of [file.path, file.error || ""]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      rows.append(tr);
    }
    $("failed-more").hidden = page.next === null;
  };
  const render = (s) => {
    $("state").textContent = s.state;
    $("state").dataset.state = s.state;
    $("message").textContent = s.message;
    $("message").hidden = !s.message;
    const byBytes = s.bytes.total !== null && s.bytes.total > 0;
    const total = byBytes ? s.bytes.total : s.files.total;
    const done = byBytes ? s.bytes.staged : s.files.staged;
    const bar = $("bar");
    bar.max = Math.max(1, total);
    bar.value = Math.min(done, total);
    bar.textContent = Math.floor(100 * bar.value / bar.max) + " %";
    let figures = s.files.staged + " of " + s.files.total + " files staged";
    if (byBytes) figures += " · " + size(s.bytes.staged) + " of " + size(s.bytes.total);
    if (s.files.error) figures += " · " + s.files.error + " failed";
    if (s.eta) figures += " · about " + duration(s.eta.seconds) + " left";
    $("figures").textContent = figures;
    const ready = s.state === "ready";
    $("download").hidden = !ready;
    if (ready && s.download) $("download-size").textContent = " (" + size(s.download.size) + ")";
    $("failed").hidden = s.files.error === 0;
    if (s.files.error !== failuresShown && s.files.error > 0) {
      failuresShown = s.files.error;
      loadFailures().catch(() => {});
    }
  };
  render(status);
  if (FINAL.has(status.state) || typeof EventSource !== "function") return;
  const live = $("live");
  const events = new EventSource(signed("events"));
  const follow = (e) => {
    const s = JSON.parse(e.data);
    render(s);
    live.textContent = "Updated live.";
    if (FINAL.has(s.state)) {
      events.close();
      live.textContent = "";
    }
  };
  events.addEventListener("state", follow);
  events.addEventListener("progress", follow);
  events.addEventListener("deleted", (e) => {
    events.close();
    $("state").textContent = "deleted";
    $("state").dataset.state = "deleted";
    $("message").textContent = JSON.parse(e.data).message;
    $("message").hidden = false;
    $("download").hidden = true;
    live.textContent = "";
  });
  events.onerror = () => {
    live.textContent = events.readyState === EventSource.CLOSED
      ? "No more updates: reload the page to see the cart's state."
      : "Connection lost; reconnecting…";
  };
})();
`;

/** `'sha256-…'` of a text, as a content-security-policy names an inline script or style. */
function cspHash(text: string): string {
  return `'sha256-${createHash("sha256").update(text).digest("base64")}'`;
}

/** The page's `Content-Security-Policy`. */
export const STATUS_PAGE_CSP: string = [
  "default-src 'none'",
  `script-src ${cspHash(SCRIPT)}`,
  `style-src ${cspHash(STYLE)}`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** Text made safe inside HTML elements and quoted attributes. */
function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

/** JSON made safe inside a `<script type="application/json">` element. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028")
    .replace(/\u2029/g, "\\u2029");
}

/** What the page shows at first (the script takes over from there). */
export interface PageStatus {
  /** The cart's uid. */
  uid: string;
  /** Its state. */
  state: string;
  /** Its message (empty unless it failed). */
  message: string;
  /** The status JSON of `GET /{uid}/status`, which the script renders and then follows. */
  json: unknown;
  /**
   * The signed link's query (no `?`) when the page was opened through one: its event stream,
   * its failed files and its download carry it (a browser sends no bearer token with them).
   */
  link?: string;
}

/** The status page of a cart (see the module doc), as HTML text. */
export function statusPage(status: PageStatus): string {
  const uid = escapeHtml(status.uid);
  const download = `../${encodeURIComponent(status.uid)}${status.link ? `?${status.link}` : ""}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cart ${uid} · cartd</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<main>
<h1>Cart <code>${uid}</code></h1>
<p><span id="state" class="state" data-state="${escapeHtml(status.state)}">${
    escapeHtml(status.state)
  }</span></p>
<p id="message" class="message"${status.message ? "" : " hidden"}>${escapeHtml(status.message)}</p>
<progress id="bar" max="1" value="0">0 %</progress>
<p id="figures" class="figures"></p>
<p id="download" hidden><a id="download-link" class="button" href="${
    escapeHtml(download)
  }" download>Download the cart<span id="download-size"></span></a></p>
<section id="failed" hidden>
<h2>Files that failed</h2>
<table><thead><tr><th>File</th><th>Why</th></tr></thead><tbody id="failed-rows"></tbody></table>
<p id="failed-more" hidden>More failed; the first 100 are shown (<code>GET files?state=error</code> has them all).</p>
</section>
<p id="live" class="live" aria-live="polite"></p>
</main>
<script type="application/json" id="cart-status">${scriptJson(status.json)}</script>
<script type="application/json" id="cart-link">${scriptJson(status.link ?? "")}</script>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
