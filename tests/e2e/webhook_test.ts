/**
 * Webhooks (issue 16, item 2) against a real cartd, the fake archive and real HTTP receivers
 * on 127.0.0.1 (the tests allow exactly `CARTD_WEBHOOK_ALLOW=127.0.0.1`; no other address is
 * ever contacted): events for ready and failed carts, signed and verified by the receiver and
 * by the Python example of docs/api.md; an endpoint that answers 500 and then 200, one that
 * hangs, one that redirects; a crash during an attempt, and an event left undelivered by a
 * worker without the secret, both sent after the restart with the id the state change made;
 * bad URLs at POST; production mode with two workers; and the delivery metrics.
 *
 * @module
 */
import assert from "node:assert/strict";
import mysql from "mysql2/promise";
import { DatabaseSync } from "node:sqlite";
import { startFakeArchive } from "../support/fake_archive.ts";
import { postCart, ROOT, startCartd, tempDir, waitFor, withCartd } from "../support/harness.ts";
import { eventually } from "../support/eventually.ts";
import { run } from "../support/run.ts";
import { AMQP_URL, deleteQueue, MYSQL_HOST, MYSQL_PORT, test } from "../support/services.ts";
import { type Received, startHangingReceiver, startReceiver } from "../support/webhook_receiver.ts";

const SECRET = "test-secret-0123456789abcdef";

/** Settings of a cartd that may call 127.0.0.1 only, with short limits. */
const HOOKS: Record<string, string> = {
  CARTD_WEBHOOK_SECRET: SECRET,
  CARTD_WEBHOOK_ALLOW: "127.0.0.1",
  CARTD_WEBHOOK_TIMEOUT: "2",
  CARTD_WEBHOOK_RETRY_DELAY: "0.3",
  CARTD_WEBHOOK_RETRY_FOR: "60",
};

/** A cart document of `ids` that names `webhook`. */
function cartOf(ids: string[], webhook?: string) {
  return {
    fileids: ids.map((id) => ({ id, path: `data/${id}.txt` })),
    ...(webhook === undefined ? {} : { webhook }),
  };
}

/** The value of the counter `cartd_webhook_deliveries_total{outcome}` at `url` (0 when absent). */
async function deliveries(url: string, outcome: string): Promise<number> {
  const text = await (await fetch(url + "_cartd/metrics")).text();
  const m = new RegExp(`^cartd_webhook_deliveries_total\\{outcome="${outcome}"\\} (\\d+)`, "m")
    .exec(text);
  return m ? Number(m[1]) : 0;
}

/** Waits `ms`. */
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The Python block of docs/api.md's "Webhooks" section (the receiver's verification). */
function pythonExample(): string {
  const doc = Deno.readTextFileSync(`${ROOT}docs/api.md`);
  const m = /^```python\n([\s\S]*?def verify_cartd_webhook[\s\S]*?)^```$/m.exec(doc);
  assert.ok(m, "docs/api.md has a python block defining verify_cartd_webhook");
  return m[1];
}

/** Runs docs/api.md's Python example on one received request: what it returns. */
async function pythonVerifies(got: Received, body = got.body): Promise<boolean> {
  await using dir = await tempDir("cartd-test-python-");
  await Deno.writeTextFile(`${dir.path}/body`, body);
  const script = pythonExample() + `
import json, sys
headers = json.loads(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    body = f.read()
print("VALID" if verify_cartd_webhook(sys.argv[3].encode(), headers, body) else "INVALID")
`;
  const headers = Object.fromEntries(got.headers.entries());
  const r = await run("python3", [
    "-c",
    script,
    JSON.stringify(headers),
    `${dir.path}/body`,
    SECRET,
  ]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim() === "VALID";
}

Deno.test("a ready cart's event: POSTed once, signed, with its id; the docs' Python example verifies it", async () => {
  await using receiver = startReceiver(SECRET);
  await withCartd({ env: HOOKS }, async (c, archive) => {
    archive.put("a", "alpha");
    archive.put("b", "bravo!");
    const hook = `${receiver.url}hooks/cartd?team=7`;
    assert.equal((await postCart(c.url, "ready-cart", cartOf(["a", "b"], hook))).status, 201);
    assert.equal((await waitFor(c.url, "ready-cart", "ready"))[1], "ready");
    await eventually("the event arrives", () => receiver.received.length === 1);
    const [got] = receiver.received;
    assert.equal(got.path, "/hooks/cartd?team=7");
    assert.equal(got.headers.get("content-type"), "application/json");
    assert.ok(got.signed, "the signature verifies under the secret");
    assert.equal(got.headers.get("x-cartd-event"), "cart.ready");
    const body = got.json as {
      id: string;
      type: string;
      time: string;
      cart: Record<string, unknown>;
    };
    assert.match(body.id, /^[0-9a-f-]{36}$/);
    assert.equal(got.headers.get("x-cartd-event-id"), body.id);
    assert.equal(body.type, "cart.ready");
    assert.ok(Math.abs(Date.parse(body.time) - Date.now()) < 60_000);
    assert.deepEqual(
      { ...body.cart, download_etag: typeof body.cart.download_etag },
      {
        uid: "ready-cart",
        state: "ready",
        message: "",
        files: 2,
        bytes: 11,
        staged_files: 2,
        failed_files: 0,
        download_size: body.cart.download_size,
        download_etag: "string",
      },
    );
    // The download the event announces is the one GET serves.
    const download = await fetch(c.url + "ready-cart");
    assert.equal(download.headers.get("etag"), body.cart.download_etag);
    assert.equal(Number(download.headers.get("content-length")), body.cart.download_size);
    await download.body?.cancel();
    // The receiver's side, as docs/api.md shows it: the example accepts it, and not a forgery.
    assert.equal(await pythonVerifies(got), true);
    assert.equal(await pythonVerifies(got, got.body.replace("ready-cart", "other-cart")), false);
    // Delivered is delivered: no second POST.
    await pause(2500);
    assert.equal(receiver.received.length, 1);
    assert.equal(await deliveries(c.url, "delivered"), 1);
    assert.match(c.output(), /webhook delivered .*uid=ready-cart/);
  });
});

Deno.test("a failed cart's event says cart.failed and why; a cart without a webhook sends nothing", async () => {
  await using receiver = startReceiver(SECRET);
  await withCartd({ env: HOOKS }, async (c, archive) => {
    archive.put("f", "some bytes");
    archive.put("g", "other bytes");
    const wrong = {
      fileids: [{ id: "f", path: "f.txt", hashtype: "md5", hashsum: "0".repeat(32) }],
      webhook: receiver.url,
    };
    assert.equal((await postCart(c.url, "failing", wrong)).status, 201);
    assert.equal((await postCart(c.url, "quiet", cartOf(["g"]))).status, 201);
    assert.equal((await waitFor(c.url, "failing", "error"))[1], "error");
    assert.equal((await waitFor(c.url, "quiet", "ready"))[1], "ready");
    await eventually("the failure's event arrives", () => receiver.received.length === 1);
    const [got] = receiver.received;
    assert.ok(got.signed);
    const body = got.json as {
      type: string;
      cart: { uid: string; state: string; message: string };
    };
    assert.equal(body.type, "cart.failed");
    assert.equal(got.headers.get("x-cartd-event"), "cart.failed");
    assert.equal(body.cart.uid, "failing");
    assert.equal(body.cart.state, "error");
    assert.match(body.cart.message, /hash does not match/i);
    await pause(1500);
    assert.equal(receiver.received.length, 1, "the cart without a webhook sent nothing");
  });
});

Deno.test("an endpoint that answers 500 three times, then 200: tried again after growing delays, same id and body", async () => {
  await using receiver = startReceiver(SECRET);
  receiver.answer((_, n) => new Response("busy", { status: n <= 3 ? 500 : 200 }));
  await withCartd({ env: HOOKS }, async (c, archive) => {
    archive.put("a", "alpha");
    assert.equal((await postCart(c.url, "retried", cartOf(["a"], receiver.url))).status, 201);
    await eventually("four attempts", () => receiver.received.length === 4, 20_000);
    const [first, ...rest] = receiver.received;
    for (const got of receiver.received) {
      assert.ok(got.signed, "every attempt is signed");
      assert.equal(got.body, first.body, "every attempt sends the same body");
      assert.equal(got.headers.get("x-cartd-event-id"), first.headers.get("x-cartd-event-id"));
    }
    // CARTD_WEBHOOK_RETRY_DELAY=0.3: about 0.3, 0.6, 1.2 s (±10 %), each longer than the last.
    const gaps = rest.map((got, i) => got.at - receiver.received[i].at);
    assert.ok(gaps[0] >= 250, `first delay ${gaps[0]} ms`);
    assert.ok(gaps[1] > gaps[0] && gaps[2] > gaps[1], `delays grow: ${gaps.join(", ")} ms`);
    await eventually("delivered", async () => (await deliveries(c.url, "delivered")) === 1);
    assert.equal(await deliveries(c.url, "5xx"), 3);
    await pause(1500);
    assert.equal(receiver.received.length, 4, "nothing after the 200");
    assert.match(c.output(), /webhook attempt failed; it is tried again .*error="answered 500"/);
  });
});

Deno.test("endpoints that hang: two attempts at a time per host, each cut at CARTD_WEBHOOK_TIMEOUT and tried again; other carts and hosts go on meanwhile", async () => {
  await using hanging = startHangingReceiver(SECRET);
  await using quick = startReceiver(SECRET);
  await using archive = startFakeArchive();
  archive.put("a", "alpha");
  archive.put("b", "bravo");
  await withCartd({ archive, env: { ...HOOKS, CARTD_WEBHOOK_TIMEOUT: "4" } }, async (c) => {
    for (let i = 0; i < 5; i++) {
      assert.equal((await postCart(c.url, `hung${i}`, cartOf(["a"], hanging.url))).status, 201);
    }
    await eventually(
      "the hanging endpoint holds two attempts",
      () => hanging.received.length === 2,
    );
    await pause(1000);
    assert.equal(hanging.received.length, 2, "at most two attempts at once to one host");
    const held = hanging.received.slice(0, 2);
    // While those hang, another cart is staged and its webhook, on another host, delivered.
    assert.equal((await postCart(c.url, "free", cartOf(["b"], quick.url))).status, 201);
    assert.equal((await waitFor(c.url, "free", "ready"))[1], "ready");
    await eventually("the other host's event arrives", () => quick.received.length === 1);
    assert.ok(held.every((got) => !got.gone.aborted), "the hanging attempts are still open");
    // Then each attempt is cut (cartd closes the connection), and every event is tried again.
    await eventually("cartd gives up the attempts", () => held.every((got) => got.gone.aborted));
    await eventually("an event tried a second time", () => {
      const ids = hanging.received.map((got) => got.headers.get("x-cartd-event-id"));
      return new Set(ids).size < ids.length;
    }, 20_000);
    assert.ok(hanging.received.every((got) => got.signed));
    assert.ok(await deliveries(c.url, "timeout") >= 2);
    assert.match(
      c.output(),
      /webhook attempt failed; it is tried again .*no answer within 4000 ms/,
    );
  });
});

Deno.test("an endpoint that redirects: never followed, tried again until CARTD_WEBHOOK_RETRY_FOR, then given up", async () => {
  await using elsewhere = startReceiver(SECRET);
  await using redirecting = startReceiver(SECRET);
  redirecting.answer(() =>
    new Response(null, { status: 307, headers: { Location: `${elsewhere.url}stolen` } })
  );
  const env = { ...HOOKS, CARTD_WEBHOOK_RETRY_DELAY: "0.2", CARTD_WEBHOOK_RETRY_FOR: "2" };
  await withCartd({ env }, async (c, archive) => {
    archive.put("a", "alpha");
    assert.equal((await postCart(c.url, "moved", cartOf(["a"], redirecting.url))).status, 201);
    await eventually("given up", () => c.output().includes("webhook given up"), 15_000);
    const attempts = redirecting.received.length;
    assert.ok(attempts >= 3, `tried ${attempts} times within 2 s`);
    assert.equal(elsewhere.received.length, 0, "the redirect's target was never called");
    assert.equal(await deliveries(c.url, "3xx"), attempts);
    assert.equal(await deliveries(c.url, "given_up"), 1);
    await pause(1500);
    assert.equal(redirecting.received.length, attempts, "no attempt after giving up");
    assert.match(c.output(), /a redirect, which cartd does not follow/);
  });
});

Deno.test("a crash between the state change and the delivery: after the restart the event is sent, with the same id", async () => {
  await using receiver = startReceiver(SECRET);
  receiver.answer(() => "hang");
  await using archive = startFakeArchive();
  archive.put("a", "alpha");
  await using volume = await tempDir();
  const env = { ...HOOKS, ARCHIVE_INTERFACE_URL: archive.url };
  const first = await startCartd({ env, volume: volume.path });
  try {
    assert.equal((await postCart(first.url, "crash", cartOf(["a"], receiver.url))).status, 201);
    await eventually("the first attempt is in flight", () => receiver.received.length === 1);
  } finally {
    await first.kill(); // SIGKILL: no chance to record anything
  }
  const id = receiver.received[0].headers.get("x-cartd-event-id");
  assert.ok(id);
  receiver.answer(() => new Response("ok"));
  await using second = await startCartd({ env, volume: volume.path });
  try {
    // The dead process's claim lapses (CARTD_WEBHOOK_TIMEOUT + 5 s), then the event goes again.
    await eventually("the event arrives again", () => receiver.received.length === 2, 20_000);
    const again = receiver.received[1];
    assert.equal(again.headers.get("x-cartd-event-id"), id);
    assert.equal(again.body, receiver.received[0].body);
    assert.ok(again.signed);
    await eventually("recorded as delivered", () => second.output().includes("webhook delivered"));
    await pause(1500);
    assert.equal(receiver.received.length, 2);
  } catch (e) {
    console.error(second.output());
    throw e;
  }
});

Deno.test("POST with a webhook that may not be called: 400 naming the field, nothing stored", async () => {
  await using receiver = startReceiver(SECRET);
  const refused = async (url: string, uid: string, webhook: unknown, why: RegExp) => {
    const res = await postCart(url, uid, { ...cartOf(["a"]), webhook });
    const body = await res.json();
    assert.equal(res.status, 400, `${JSON.stringify(webhook)}: ${JSON.stringify(body)}`);
    assert.match(body.message, /^webhook: /);
    assert.match(body.message, why);
    const head = await fetch(url + uid, { method: "HEAD" });
    assert.equal(head.status, 404, `${JSON.stringify(webhook)}: nothing stored`);
  };
  // Allowed: 127.0.0.1 only.
  await withCartd({ env: HOOKS }, async (c) => {
    await refused(c.url, "b1", "ftp://127.0.0.1/x", /http: or https:/);
    await refused(c.url, "b2", "not a url", /absolute URL/);
    await refused(c.url, "b3", 12, /URL string/);
    await refused(c.url, "b4", "http://10.0.0.1/hook", /10\.0\.0\.1 is not an address/);
    await refused(c.url, "b5", "http://[::1]:9/", /::1 is not an address/);
    await refused(c.url, "b6", "http://user:pw@127.0.0.1/", /user name or password/);
    await refused(c.url, "b7", "http://127.0.0.2/", /127\.0\.0\.2 is not an address/);
    assert.equal((await postCart(c.url, "fine", cartOf(["a"], receiver.url))).status, 201);
  });
  // The default allow-list: public addresses only (nothing here is contacted: each is refused).
  const defaults = { ...HOOKS, CARTD_WEBHOOK_ALLOW: "" };
  await withCartd({ env: defaults }, async (c) => {
    await refused(c.url, "d1", receiver.url, /127\.0\.0\.1 is not an address.*by default only/);
    await refused(c.url, "d2", "http://localhost:9/", /localhost resolves to 127\.0\.0\.1/);
    await refused(c.url, "d3", "http://169.254.169.254/latest/meta-data/", /not an address/);
    await refused(c.url, "d4", "http://192.168.1.1/", /not an address/);
    await refused(c.url, "d5", "http://[::ffff:127.0.0.1]/", /not an address/);
    await refused(c.url, "d6", "https://[fe80::1]/", /not an address/);
    await refused(c.url, "d7", "http://100.64.0.1/", /not an address/);
    await refused(c.url, "d8", "http://0.0.0.0:8081/", /not an address/);
  });
  // No secret: no webhooks at all; a Pacifica document (no webhook) is served as ever.
  await withCartd({ env: { CARTD_WEBHOOK_ALLOW: "127.0.0.1" } }, async (c) => {
    await refused(c.url, "n1", receiver.url, /CARTD_WEBHOOK_SECRET/);
    assert.equal((await postCart(c.url, "pacifica", cartOf(["a"]))).status, 201);
  });
  assert.equal(receiver.received.length, 0, "no event was sent: no cart with a webhook got far");
});

test.mysqlAndAmqp("production mode: two workers share the outbox; each event is sent once, never twice at a time", async () => {
  const name = crypto.randomUUID().replaceAll("-", "").slice(0, 12);
  const database = `cartd_e2e_hooks_${name}`;
  const queue = `cartd.e2e.hooks.${name}`;
  await using receiver = startReceiver(SECRET);
  const open = new Map<string, number>();
  let overlaps = 0;
  receiver.answer(async (got) => {
    // Slow answers, so that two workers would overlap on one event if claims let them.
    const id = got.headers.get("x-cartd-event-id")!;
    open.set(id, (open.get(id) ?? 0) + 1);
    if (open.get(id)! > 1) overlaps++;
    await pause(400);
    open.set(id, open.get(id)! - 1);
    return new Response("ok");
  });
  await using archive = startFakeArchive();
  await using volume = await tempDir();
  const env = {
    ...HOOKS,
    DATABASE_URL: `mysql://root@${MYSQL_HOST}:${MYSQL_PORT}/${database}`,
    BROKER_URL: AMQP_URL,
    CARTD_QUEUE: queue,
    ARCHIVE_INTERFACE_URL: archive.url,
  };
  const started: { output(): string; stop(): Promise<void> }[] = [];
  try {
    const server = await startCartd({ role: "serve", env, volume: volume.path });
    started.push(server);
    for (let i = 0; i < 2; i++) {
      started.push(await startCartd({ role: "worker", env, volume: volume.path }));
    }
    const carts = 12;
    for (let i = 0; i < carts; i++) {
      archive.put(`f${i}`, `file ${i}`);
      assert.equal(
        (await postCart(server.url, `p${i}`, cartOf([`f${i}`], receiver.url))).status,
        201,
      );
    }
    await eventually("every event arrives", () => receiver.received.length >= carts, 30_000);
    await pause(2500); // a double send would come by now
    const ids = receiver.received.map((got) => got.headers.get("x-cartd-event-id"));
    assert.equal(ids.length, carts, "each event once");
    assert.equal(new Set(ids).size, carts);
    assert.equal(overlaps, 0);
    assert.ok(receiver.received.every((got) => got.signed));
    const logs = started.map((p) => p.output());
    assert.equal(
      logs[0].includes("webhook delivery started"),
      false,
      "the API process delivers nothing",
    );
    const delivered = logs.slice(1).map((log) => log.match(/webhook delivered/g)?.length ?? 0);
    assert.equal(delivered[0] + delivered[1], carts, `by worker: ${delivered.join(", ")}`);
  } catch (e) {
    for (const p of started) console.error(p.output());
    throw e;
  } finally {
    await Promise.all(started.map((p) => p.stop()));
    const connection = await mysql.createConnection({
      host: MYSQL_HOST,
      port: MYSQL_PORT,
      user: "root",
      password: "",
    });
    await connection.query(`DROP DATABASE IF EXISTS \`${database}\``);
    await connection.end();
    await deleteQueue(queue);
  }
});

Deno.test("an event written while no process delivers is sent by the next one, with the id made at the state change", async () => {
  await using receiver = startReceiver(SECRET);
  await using archive = startFakeArchive();
  archive.put("a", "alpha");
  await using volume = await tempDir();
  const env = { ...HOOKS, ARCHIVE_INTERFACE_URL: archive.url };
  // The API checks the URL and stores the cart; a worker without the secret makes it ready
  // (the event goes into the outbox) but delivers nothing.
  const api = await startCartd({ role: "serve", env, volume: volume.path });
  let ready: string;
  try {
    assert.equal((await postCart(api.url, "later", cartOf(["a"], receiver.url))).status, 201);
    const noSecret = { ...env, CARTD_WEBHOOK_SECRET: "" };
    const worker = await startCartd({ role: "worker", env: noSecret, volume: volume.path });
    try {
      assert.equal((await waitFor(api.url, "later", "ready"))[1], "ready");
      await pause(2000);
      assert.equal(receiver.received.length, 0, "nothing is sent without the secret");
    } finally {
      await worker.stop();
    }
    // The event as the state change wrote it.
    const db = new DatabaseSync(`${volume.path}/cartd.sqlite3`);
    try {
      const rows = db.prepare("SELECT id, status, attempts FROM webhook_events").all();
      assert.equal(rows.length, 1);
      assert.equal(rows[0].status, "pending");
      assert.equal(rows[0].attempts, 0);
      ready = String(rows[0].id);
    } finally {
      db.close();
    }
  } finally {
    await api.stop();
  }
  await using next = await startCartd({ env, volume: volume.path });
  try {
    await eventually("the event arrives", () => receiver.received.length === 1);
    assert.equal(receiver.received[0].headers.get("x-cartd-event-id"), ready);
    assert.equal(receiver.received[0].json.id, ready);
    assert.ok(receiver.received[0].signed);
  } catch (e) {
    console.error(next.output());
    throw e;
  }
});
