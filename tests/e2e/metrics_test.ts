/**
 * End-to-end tests of the metrics route (http/metrics.ts, lib/util/metrics.ts) against the
 * real cartd command and the fake archive: the text is Prometheus' format line by line; the
 * counters move as a cart is posted, staged (from disk, through a failed GET, from tape),
 * downloaded and deleted; the archive calls by method and outcome are the fake's request
 * log; the carts by state are the database's; and a cart whose uid is `metrics` is a cart.
 */
import assert from "node:assert/strict";
import { type FakeArchive, startFakeArchive } from "../support/fake_archive.ts";
import { eventually } from "../support/eventually.ts";
import { cartStatus, postCart, startCartd, waitFor } from "../support/harness.ts";

/** One sample of the text: a metric's name, its labels, its value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const SAMPLE =
  /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})? (\S+)$/;
const COMMENT = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/;
const TYPES = ["counter", "gauge", "histogram", "summary", "untyped"];

/** The samples of a Prometheus text, which must parse line by line. */
function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  const typed = new Set<string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const comment = COMMENT.exec(line);
    if (comment) {
      if (comment[1] === "TYPE") {
        assert.ok(TYPES.includes(comment[3]), `unknown type in ${JSON.stringify(line)}`);
        typed.add(comment[2]);
      }
      continue;
    }
    const m = SAMPLE.exec(line);
    assert.ok(m, `not a sample, HELP or TYPE line: ${JSON.stringify(line)}`);
    const value = Number(m[3].replace(/^\+Inf$/, "Infinity").replace(/^-Inf$/, "-Infinity"));
    assert.ok(!Number.isNaN(value) || m[3] === "NaN", `bad value in ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2];
    }
    const base = m[1].replace(/_(bucket|sum|count)$/, "");
    assert.ok(typed.has(m[1]) || typed.has(base), `no TYPE before ${m[1]}`);
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

/** The sum of the samples named `name` whose labels include `labels`. */
function sum(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name)
    .filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

/** Scrapes `path` (default cartd's own) and parses the answer, which must be 200 text. */
async function scrape(url: string, path = "_cartd/metrics"): Promise<Sample[]> {
  const res = await fetch(url + path);
  const text = await res.text();
  assert.equal(res.status, 200, text);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return parse(text);
}

/** True when cartd's archive calls by method are the fake's requests. */
function callsMatch(samples: Sample[], archive: FakeArchive): boolean {
  const fake = archive.totals();
  return sum(samples, "cartd_archive_requests_total", { method: "HEAD" }) === fake.head &&
    sum(samples, "cartd_archive_requests_total", { method: "POST" }) === fake.post &&
    sum(samples, "cartd_archive_requests_total", { method: "GET" }) === fake.get;
}

Deno.test("metrics: the text parses, and the counters follow a cart from POST to DELETE", async () => {
  await using archive = startFakeArchive();
  archive.put("disk", "on disk\n");
  archive.put("flaky", "second time lucky\n", { failGets: 1 });
  archive.put("tape", "from tape\n", { tapeMs: 100 });
  await using cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: archive.url } });

  const before = await scrape(cartd.url);
  assert.equal(sum(before, "cartd_carts"), 0);
  assert.equal(sum(before, "cartd_fetch_slots_in_use"), 0);
  assert.ok(sum(before, "cartd_fetch_slots") > 0);
  assert.ok(sum(before, "cartd_space_free_bytes") > 0);

  const doc = {
    fileids: [
      { id: "disk", path: "a/disk.txt" },
      { id: "flaky", path: "a/flaky.txt" },
      { id: "tape", path: "b/tape.txt" },
    ],
  };
  assert.equal((await postCart(cartd.url, "m1", doc)).status, 201);
  assert.equal((await waitFor(cartd.url, "m1", "ready"))[1], "ready");

  const ready = await scrape(cartd.url);
  assert.equal(sum(ready, "cartd_carts", { state: "ready" }), 1);
  assert.equal(sum(ready, "cartd_carts"), 1);
  assert.equal(sum(ready, "cartd_cart_events_total", { event: "posted" }), 1);
  assert.ok(sum(ready, "cartd_space_reserved_bytes") > 0);

  const tar = new Uint8Array(await (await fetch(cartd.url + "m1")).arrayBuffer());
  assert.ok(tar.length > 0);
  assert.equal((await fetch(cartd.url + "m1", { method: "DELETE" })).status, 200);

  let after: Sample[] = [];
  // The threads' archive calls reach the main thread's registry a moment after they end.
  await eventually("the metrics count every archive call the fake saw", async () => {
    after = await scrape(cartd.url);
    return callsMatch(after, archive);
  });
  const fake = archive.totals();
  assert.equal(sum(after, "cartd_archive_requests_total", { method: "GET", outcome: "5xx" }), 1);
  assert.equal(
    sum(after, "cartd_archive_requests_total", { method: "GET", outcome: "ok" }),
    fake.get - 1,
  );
  assert.ok(fake.post >= 1, "the tape file was recalled");
  assert.equal(
    sum(after, "cartd_archive_requests_total", { outcome: "ok" }),
    fake.head + fake.post + fake.get - 1,
  );
  for (const method of ["HEAD", "POST", "GET"]) {
    assert.equal(
      sum(after, "cartd_archive_request_duration_seconds_count", { method }),
      sum(after, "cartd_archive_requests_total", { method }),
      `the ${method} latencies`,
    );
  }
  const sizes = ["on disk\n", "second time lucky\n", "from tape\n"].map((t) => t.length);
  assert.equal(sum(after, "cartd_files_fetched_total"), 3);
  assert.equal(sum(after, "cartd_fetched_bytes_total"), sizes.reduce((a, b) => a + b));
  assert.equal(sum(after, "cartd_download_bytes_total"), tar.length);
  assert.equal(sum(after, "cartd_downloads_in_flight"), 0);
  assert.equal(sum(after, "cartd_cart_events_total", { event: "deleted" }), 1);
  assert.equal(sum(after, "cartd_carts"), 0);
  assert.equal(sum(after, "cartd_fetch_slots_in_use"), 0);
});

Deno.test("metrics: GET /metrics, and a cart whose uid is metrics", async () => {
  await using archive = startFakeArchive();
  archive.put("x", "x marks the spot\n");
  await using cartd = await startCartd({ env: { ARCHIVE_INTERFACE_URL: archive.url } });

  // No such cart: GET /metrics is the metrics; HEAD and DELETE are the cart API's, as before.
  assert.ok((await scrape(cartd.url, "metrics")).some((s) => s.name === "cartd_carts"));
  assert.equal((await cartStatus(cartd.url, "metrics"))[0], 404);
  assert.equal((await fetch(cartd.url + "metrics", { method: "DELETE" })).status, 404);

  // The cart "metrics" takes over /metrics; /_cartd/metrics stays the metrics.
  const doc = { fileids: [{ id: "x", path: "x.txt" }] };
  assert.equal((await postCart(cartd.url, "metrics", doc)).status, 201);
  assert.equal((await waitFor(cartd.url, "metrics", "ready"))[1], "ready");
  const res = await fetch(cartd.url + "metrics");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "application/octet-stream");
  const tar = new Uint8Array(await res.arrayBuffer());
  assert.ok(new TextDecoder().decode(tar).includes("x marks the spot"));
  const samples = await scrape(cartd.url);
  assert.equal(sum(samples, "cartd_carts", { state: "ready" }), 1);
  assert.equal(sum(samples, "cartd_download_bytes_total"), tar.length);

  assert.equal((await fetch(cartd.url + "metrics", { method: "DELETE" })).status, 200);
  assert.equal((await cartStatus(cartd.url, "metrics"))[0], 404);
  assert.equal(sum(await scrape(cartd.url, "metrics"), "cartd_carts"), 0);
});

Deno.test("metrics: carts created, ready, failed and purged; files recalled, tape waits; event streams open", async () => {
  await using archive = startFakeArchive();
  archive.put("disk", "on disk\n");
  archive.put("tape1", "from tape\n", { tapeMs: 100 });
  archive.put("tape2", "from tape too\n", { tapeMs: 100 });
  archive.put("broken", "x", { error: true, message: "tape library offline" });
  archive.put("slow", "x", { tapeMs: 600_000 });
  // Retention of 2 s: a ready cart is purged by the sweep (every second here) soon after.
  await using cartd = await startCartd({
    env: { ARCHIVE_INTERFACE_URL: archive.url, CARTD_RETENTION: "2" },
  });
  const cart = (ids: string[]) => ({ fileids: ids.map((id) => ({ id, path: `${id}.txt` })) });
  assert.equal((await postCart(cartd.url, "ok", cart(["disk", "tape1", "tape2"]))).status, 201);
  // An identical re-POST keeps the cart: posted twice, created once.
  assert.equal((await postCart(cartd.url, "ok", cart(["disk", "tape1", "tape2"]))).status, 201);
  assert.equal((await postCart(cartd.url, "bad", cart(["broken"]))).status, 201);
  assert.equal((await waitFor(cartd.url, "ok", "ready"))[1], "ready");
  assert.equal((await waitFor(cartd.url, "bad", "error"))[1], "error");
  let samples: Sample[] = [];
  const events = (event: string) => sum(samples, "cartd_cart_events_total", { event });
  samples = await scrape(cartd.url);
  assert.equal(events("posted"), 3);
  assert.equal(events("created"), 2);
  assert.equal(events("ready"), 1);
  assert.equal(events("failed"), 1);
  assert.equal(sum(samples, "cartd_files_recalled_total"), 2, "the two tape files");
  // Their waits: about 0.1 s each (the fake's tapeMs), under 5 s.
  assert.equal(sum(samples, "cartd_tape_wait_seconds_count"), 2);
  assert.equal(sum(samples, "cartd_tape_wait_seconds_bucket", { le: "5" }), 2);
  const waited = sum(samples, "cartd_tape_wait_seconds_sum");
  assert.ok(waited >= 0.2 && waited < 10, `tape waits sum to ${waited} s`);
  assert.equal(sum(samples, "cartd_files_shared_total"), 0);
  assert.equal(sum(samples, "cartd_event_streams_open"), 0);

  // Two open streams of a cart waiting on tape count while they are open.
  assert.equal((await postCart(cartd.url, "wait", cart(["slow"]))).status, 201);
  const streams = [0, 1].map(() => new AbortController());
  const bodies = await Promise.all(
    streams.map((ac) => fetch(`${cartd.url}wait/events`, { signal: ac.signal })),
  );
  assert.equal(sum(await scrape(cartd.url), "cartd_event_streams_open"), 2);
  for (const ac of streams) ac.abort();
  for (const body of bodies) await body.body?.cancel().catch(() => {});

  // One scrape reads the database's counts before the process's counters, so it can show the
  // purge counted and the cart still ready (the sweep ran in between): the next one does not.
  await eventually("retention purged the ready cart, which no longer counts as ready", async () => {
    samples = await scrape(cartd.url);
    return events("purged") === 1 && sum(samples, "cartd_carts", { state: "ready" }) === 0;
  }, 20_000);
  assert.equal(events("purged"), 1);
  assert.equal((await fetch(cartd.url + "wait", { method: "DELETE" })).status, 200);
});
